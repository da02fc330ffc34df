//! Users' own data: an image folder with one sub-folder per class (torchvision's `ImageFolder`).
//!
//! Either `root/train/<class>/...` and `root/test/<class>/...` (or `val/`, not both), or a flat
//! `root/<class>/...` split into train and test by a seeded, per-class draw. Folders whose names
//! start with a dot (`.ipynb_checkpoints`) are never classes.

use std::path::{Path, PathBuf};

use lt_core::Rng;

use crate::error::{io_err, DataError, Result};
use crate::files::ImageEntry;

/// File extensions read as images (case-insensitive); other files are skipped.
pub const EXTENSIONS: [&str; 5] = ["jpg", "jpeg", "png", "bmp", "webp"];

/// Whether `p`'s name starts with a dot (`.ipynb_checkpoints`, `.git`): never a class.
fn hidden(p: &Path) -> bool {
    p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.'))
}

/// The sub-folders of `dir`, sorted, hidden ones left out (and logged).
fn sorted_dirs(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io_err(dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    v.sort();
    for p in v.iter().filter(|p| hidden(p)) {
        tracing::info!("skipped the hidden folder {} (not a class)", p.display());
    }
    v.retain(|p| !hidden(p));
    Ok(v)
}

/// Whether the file name `p` is read as an image: an image extension ([`EXTENSIONS`]), and not
/// hidden (macOS's `._photo.jpg` beside each copied photo holds no image).
pub(crate) fn is_image_name(p: &Path) -> bool {
    let ext = p.extension().map(|x| x.to_string_lossy().to_lowercase()).unwrap_or_default();
    EXTENSIONS.contains(&ext.as_str()) && !hidden(p)
}

fn images_in(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io_err(dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && is_image_name(p))
        .collect();
    v.sort();
    Ok(v)
}

/// An image folder scanned into entries (paths absolute).
#[derive(Clone, Debug)]
pub struct FolderSplits {
    /// Class names (sorted sub-folder names).
    pub classes: Vec<String>,
    /// Training entries.
    pub train: Vec<ImageEntry>,
    /// Test entries.
    pub test: Vec<ImageEntry>,
    /// Whether the test set came from a held-out folder (`false`: seeded split).
    pub held_out: bool,
}

fn scan(dir: &Path, classes: &[String]) -> Result<Vec<ImageEntry>> {
    let mut out = Vec::new();
    for (c, name) in classes.iter().enumerate() {
        let d = dir.join(name);
        if !d.is_dir() {
            continue;
        }
        for p in images_in(&d)? {
            out.push(ImageEntry { path: p, label: c as u32 });
        }
    }
    Ok(out)
}

/// The test fraction's rule, strictly between 0 and 1 (0 would leave no test set), for
/// `DataSpec::validate` and for callers of [`scan_folder`] without a spec.
pub(crate) fn check_test_fraction(f: f64) -> lt_core::check::Result {
    let open = (std::ops::Bound::Excluded(0.0), std::ops::Bound::Excluded(1.0));
    lt_core::check::in_range("data.test_fraction", f, open)
}

/// A flat folder's classes, with `test_fraction` of each class (at least one image where the
/// class has two or more) drawn for the test set by a draw seeded with `seed`.
fn seeded_split(root: &Path, test_fraction: f64, seed: u64) -> Result<FolderSplits> {
    check_test_fraction(test_fraction)?;
    let classes: Vec<String> =
        sorted_dirs(root)?.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
    let all = scan(root, &classes)?;
    let mut rng = Rng::stream(seed, &[lt_core::rng::streams::FOLDER_SPLIT]);
    let (mut train, mut test) = (Vec::new(), Vec::new());
    for c in 0..classes.len() as u32 {
        let mut members: Vec<ImageEntry> = all.iter().filter(|e| e.label == c).cloned().collect();
        rng.shuffle(&mut members);
        // At least one test image where the class has two, and at least one training image.
        let n_test = ((members.len() as f64 * test_fraction).round() as usize)
            .max(usize::from(members.len() >= 2))
            .min(members.len().saturating_sub(1));
        test.extend(members.drain(..n_test));
        train.extend(members);
    }
    Ok(FolderSplits { classes, train, test, held_out: false })
}

/// The test folder beside `root/train/`: `test/`, else `val/`, if there is one.
fn test_dir(root: &Path) -> Option<PathBuf> {
    ["test", "val"].iter().map(|d| root.join(d)).find(|d| d.is_dir())
}

/// Whether the folder at `root` holds its own test set (`train/` with `test/` or `val/` beside
/// it), so that no test fraction is drawn from it.
pub fn holds_test_set(root: &Path) -> bool {
    root.join("train").is_dir() && test_dir(root).is_some()
}

/// Scans an image folder. With `train/` and `test/` (or `val/`) sub-folders the test set is held
/// out; otherwise `test_fraction` of each class (at least one image when the class has two or
/// more) goes to the test set, chosen by a draw seeded with `seed`.
pub fn scan_folder(root: &Path, test_fraction: f64, seed: u64) -> Result<FolderSplits> {
    if !root.is_dir() {
        return Err(DataError::NotFound {
            what: "image folder".into(),
            searched: vec![root.to_path_buf()],
            hint: String::new(),
        });
    }
    // An empty folder holds no data rather than wrong data (a mount point of a disk not mounted).
    if std::fs::read_dir(root).map_err(io_err(root))?.next().is_none() {
        return Err(DataError::NotFound {
            what: "images".into(),
            searched: vec![root.to_path_buf()],
            hint: " (an empty folder: no class sub-folders with images; is a disk not mounted there?)".into(),
        });
    }
    let train_dir = root.join("train");
    let test_dir = test_dir(root);
    if train_dir.is_dir() && root.join("test").is_dir() && root.join("val").is_dir() {
        return Err(DataError::Format {
            path: root.to_path_buf(),
            detail: "both test/ and val/ beside train/: the test set is one held-out folder, and the \
                     validation images are drawn from train/ (keep one of test/ and val/, or move val/'s \
                     images into train/)"
                .into(),
        });
    }
    let splits = if let (true, Some(test_dir)) = (train_dir.is_dir(), test_dir.clone()) {
        let classes: Vec<String> = sorted_dirs(&train_dir)?
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        for d in sorted_dirs(&test_dir)? {
            let name = d.file_name().unwrap().to_string_lossy().into_owned();
            if !classes.contains(&name) {
                return Err(DataError::Format {
                    path: d.clone(),
                    detail: format!(
                        "test class folder `{name}` has no training folder in {}",
                        train_dir.display()
                    ),
                });
            }
        }
        let train = scan(&train_dir, &classes)?;
        let test = scan(&test_dir, &classes)?;
        FolderSplits { classes, train, test, held_out: true }
    } else {
        seeded_split(root, test_fraction, seed)?
    };
    if splits.classes.is_empty() || splits.train.is_empty() {
        let detail = if train_dir.is_dir() && test_dir.is_none() {
            // `train/` was taken for a class folder and held no images itself.
            "no class sub-folders with images: there is a train/ folder but no test/ or val/ beside it \
             (give both for a held-out test set, or put the class folders directly in the root for a \
             seeded split)"
        } else {
            "no class sub-folders with images (expected <root>/<class>/<image> or <root>/train/<class>/<image> \
             with <root>/test/<class>/<image>)"
        };
        return Err(DataError::Format { path: root.to_path_buf(), detail: detail.into() });
    }
    Ok(splits)
}
