//! The `folder` data set: a user's image folder (layout in [`crate::folder`]) as a
//! [`DataBundle`], and [`write_png_folder`], which writes in-memory images (Fashion-MNIST-LT) as
//! such a folder.
//!
//! Before anything trains, every file is checked: each class must have training images, every image
//! file's header must decode (PNG or JPEG; the error names the file and what was expected) and a
//! PNG cut short must be found, and files without an image extension are counted and logged, never
//! silently dropped. Images of any size and colour mode (grey, RGB, RGBA, 16-bit, CMYK JPEG) are
//! decoded to 8-bit RGB (alpha dropped) and resized by the transforms. A seeded validation set is
//! drawn from the training images as for the other data sets
//! ([`crate::longtail::ldam_selection_with_val_counts`]): the same number of each class, fewer from
//! a class too small to give it, none from a class of one image.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use lt_core::fingerprint::Fingerprint;

use crate::bundle::{DataBundle, DataOptions, DatasetName};
use crate::dataset::{Dataset, ImageSet, Subset};
use crate::error::{io_err, DataError, Result};
use crate::files::{EvalTransform, ImageFileDataset, TrainTransform};
use crate::folder::{is_image_name, scan_folder, FolderSplits, EXTENSIONS};
use crate::longtail::{class_counts, exponential_profile, ldam_selection_with_val_counts};
use crate::transform::Normalize;

/// Resize side of the evaluation transform for a crop of `crop` (the standard 256 for 224).
pub fn eval_resize(crop: u32) -> u32 {
    crop * 256 / 224
}

/// Loads an image folder (see the module docs).
pub(crate) fn folder_bundle(root: &Path, opts: &DataOptions) -> Result<DataBundle> {
    if opts.image_size == 0 {
        return Err(DataError::Invalid("the folder data set needs an image size >= 1, got 0".into()));
    }
    let f = scan_folder(root, opts.test_fraction, opts.seed)?;
    check_classes(root, &f)?;
    log_skipped(root, &f.classes);
    if opts.check_images {
        preflight(&f.train.iter().chain(&f.test).map(|e| e.path.clone()).collect::<Vec<_>>())?;
    }
    let files = files_fingerprint(root, &f)?;
    let classes = f.classes.len();
    let size = opts.image_size;
    let train_tf = TrainTransform { jitter: None, ..TrainTransform::standard(size, None) };
    let train_tf = if opts.augment {
        train_tf
    } else {
        TrainTransform { scale: (1.0, 1.0), ratio: (1.0, 1.0), flip: false, ..train_tf }
    };
    let eval_tf = EvalTransform { resize: eval_resize(size), crop: size };
    let make = |entries| -> Arc<dyn Dataset> {
        Arc::new(ImageFileDataset::new(
            PathBuf::new(),
            entries,
            classes,
            train_tf.clone(),
            eval_tf.clone(),
            Normalize::imagenet(),
        ))
    };
    let full = make(f.train);
    let test = make(f.test);
    let n = full.len();
    let counts = class_counts(full.labels(), classes);
    let profile = match opts.imbalance {
        Some(rho) => exponential_profile(counts.iter().copied().min().unwrap_or(0), classes, rho)?,
        None => counts.clone(),
    };
    let wanted = opts.val_per_class.or(DatasetName::Folder.default_val_per_class()).unwrap_or(0);
    let v = val_sizes(wanted, &counts, &profile, &f.classes);
    let s = ldam_selection_with_val_counts(full.labels(), &profile, opts.seed as u32, &v)?;
    let has_val = !s.val.is_empty();
    let val: Option<Arc<dyn Dataset>> =
        has_val.then(|| Arc::new(Subset::new(full.clone(), s.val.clone())) as _);
    Ok(DataBundle {
        name: DatasetName::Folder,
        class_names: f.classes,
        train: Arc::new(Subset::new(full, s.train.clone())),
        val,
        test,
        train_indices: s.train,
        val_indices: has_val.then_some(s.val),
        original_train_len: n,
        imbalance: opts.imbalance,
        source: format!(
            "image folder {} ({})",
            root.display(),
            if f.held_out { "held-out test folder" } else { "seeded split" }
        ),
        files: Some(files),
    })
}

/// [`DataBundle::files`] of a scanned folder: each image's path under `root` and its size in
/// bytes, the training images and then the test images, in the scan's order. Paths under the root,
/// so that a copy of the folder elsewhere is the same data. Sizes, not contents, so that loading
/// never reads every image: an image replaced by another of exactly the same size goes unseen.
fn files_fingerprint(root: &Path, f: &FolderSplits) -> Result<String> {
    let mut fp = Fingerprint::new();
    for (set, entries) in [("train", &f.train), ("test", &f.test)] {
        for e in entries {
            let size = std::fs::metadata(&e.path).map_err(io_err(&e.path))?.len();
            let under = e.path.strip_prefix(root).unwrap_or(&e.path);
            // Joined with `/` whatever the system's separator.
            let path: Vec<_> = under.components().map(|c| c.as_os_str().to_string_lossy()).collect();
            fp = fp.part(set, &format!("{size} {}", path.join("/")));
        }
    }
    Ok(fp.finish())
}

/// The validation images of each class: `wanted`, lowered (and logged) where a class must keep at
/// least half of its training selection; 0 for a class that cannot spare one. The selection
/// criteria average over classes, so classes with fewer validation images (or none) leave the
/// others' as they are.
fn val_sizes(wanted: usize, counts: &[usize], profile: &[usize], names: &[String]) -> Vec<usize> {
    // Class c can give its unused images and half of its selection.
    let sizes: Vec<usize> =
        (0..counts.len()).map(|c| wanted.min(counts[c] - profile[c] + profile[c] / 2)).collect();
    let short: Vec<usize> = (0..sizes.len()).filter(|&c| sizes[c] < wanted).collect();
    if let Some(&tight) = short.iter().min_by_key(|&&c| sizes[c]) {
        let none = short.iter().filter(|&&c| sizes[c] == 0).count();
        tracing::warn!(
            "validation set: {} of {} classes give fewer than {wanted} images, as each keeps at least half of its \
             training images (fewest: class `{}`, {} images before the draw, {} for validation){}",
            short.len(),
            counts.len(),
            names[tight],
            counts[tight],
            sizes[tight],
            match (none, sizes.iter().all(|&v| v == 0)) {
                (_, true) => " (no validation set: stage 2 uses its default knobs)".to_string(),
                (0, _) => String::new(),
                (n, _) => format!("; {n} class(es) have none, and the knobs are chosen on the others"),
            }
        );
    }
    sizes
}

/// Every class has training images (an empty class folder is an error naming it).
fn check_classes(root: &Path, f: &FolderSplits) -> Result<()> {
    let counts = class_counts(&f.train.iter().map(|e| e.label).collect::<Vec<_>>(), f.classes.len());
    if let Some(c) = counts.iter().position(|&n| n == 0) {
        let dir = if f.held_out { root.join("train").join(&f.classes[c]) } else { root.join(&f.classes[c]) };
        return Err(DataError::Format {
            path: dir,
            detail: format!(
                "class `{}` has no training images (expected files ending in .{}); add images or remove the folder",
                f.classes[c],
                EXTENSIONS.join(", .")
            ),
        });
    }
    let test = class_counts(&f.test.iter().map(|e| e.label).collect::<Vec<_>>(), f.classes.len());
    for (c, _) in test.iter().enumerate().filter(|(_, &n)| n == 0) {
        tracing::warn!("class `{}` has no test images: its test accuracy is not measured", f.classes[c]);
    }
    Ok(())
}

/// Logs the files of the class folders that are not read (no image extension, or hidden).
fn log_skipped(root: &Path, classes: &[String]) {
    let mut skipped = Vec::new();
    let dirs = ["train", "test", "val"].iter().map(|d| root.join(d)).chain([root.to_path_buf()]);
    for base in dirs {
        for class in classes {
            let Ok(rd) = std::fs::read_dir(base.join(class)) else { continue };
            skipped.extend(
                rd.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_file() && !is_image_name(p)),
            );
        }
    }
    if let Some(first) = skipped.first() {
        tracing::warn!(
            "skipped {} file(s) without an image extension (.{}) or hidden, e.g. {}",
            skipped.len(),
            EXTENSIONS.join(", ."),
            first.display()
        );
    }
}

/// Checks every image file before anything trains, naming the first that fails (in order; the
/// files are read on rayon's threads): its header must decode (format and size), and a PNG that
/// does not end with its `IEND` chunk (a download or copy cut short) must decode in full, as the
/// loader decodes it. Reading the header and a PNG's last bytes costs two small reads per file.
/// A cut-short JPEG is not looked for: the decoder fills in its missing rows, and the loader
/// reads it the same way.
pub(crate) fn preflight(paths: &[PathBuf]) -> Result<()> {
    use rayon::prelude::*;
    let started = Instant::now();
    let decoded = std::sync::atomic::AtomicUsize::new(0);
    let failed = paths
        .par_iter()
        .map(|p| {
            let c = check_image(p);
            if let Ok(true) = c {
                decoded.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            c
        })
        .find_first(Result::is_err);
    if let Some(Err(e)) = failed {
        return Err(e);
    }
    let decoded = decoded.into_inner();
    tracing::info!(
        "checked {} image files in {:.1} s ({decoded} PNG files without their end decoded in full)",
        paths.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// One file of [`preflight`]; whether it was decoded in full.
fn check_image(path: &Path) -> Result<bool> {
    let refuse = |detail: String| DataError::Image { path: path.to_path_buf(), detail };
    let reader = image::ImageReader::open(path)
        .and_then(|r| r.with_guessed_format())
        .map_err(|err| refuse(format!("not a readable PNG or JPEG image: {err}")))?;
    let png = reader.format() == Some(image::ImageFormat::Png);
    match reader.into_dimensions() {
        Ok((w, h)) if w > 0 && h > 0 => {}
        Ok((w, h)) => return Err(refuse(format!("a {w}x{h} image has no pixels"))),
        Err(err) => return Err(refuse(format!("not a readable PNG or JPEG image: {err}"))),
    }
    if png && !ends_with(path, &PNG_END).map_err(|err| refuse(err.to_string()))? {
        crate::files::decode_rgb(path).map_err(|err| match err {
            DataError::Image { detail, .. } => refuse(format!("the file is cut short or corrupt: {detail}")),
            other => other,
        })?;
        return Ok(true);
    }
    Ok(false)
}

/// The last bytes of a complete PNG file: its `IEND` chunk (length 0, type, CRC).
const PNG_END: [u8; 12] = [0, 0, 0, 0, b'I', b'E', b'N', b'D', 0xAE, 0x42, 0x60, 0x82];

/// Whether the file at `path` ends with `end`.
fn ends_with(path: &Path, end: &[u8]) -> std::io::Result<bool> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path)?;
    let len = f.metadata()?.len();
    if len < end.len() as u64 {
        return Ok(false);
    }
    f.seek(SeekFrom::Start(len - end.len() as u64))?;
    let mut last = vec![0u8; end.len()];
    f.read_exact(&mut last)?;
    Ok(last == end)
}

/// The folder name of class `c` of `classes`: its index, zero-padded so that the folders sort in
/// label order, then its name with path separators replaced (`0-T-shirt-top`).
pub fn class_folder_name(c: usize, name: &str, classes: usize) -> String {
    let width = classes.saturating_sub(1).to_string().len();
    let clean: String = name.chars().map(|ch| if ch == '/' || ch == '\\' { '-' } else { ch }).collect();
    format!("{c:0width$}-{clean}")
}

/// Writes images `indices` of `set` as PNG files `dir/<class folder>/<index>.png` (grey or RGB as
/// the set is; class folders from [`class_folder_name`], the index zero-padded to 6 digits).
pub fn write_png_folder(set: &ImageSet, indices: &[usize], dir: &Path) -> Result<()> {
    let (w, h) = (set.width as u32, set.height as u32);
    let plane = set.width * set.height;
    for &i in indices {
        let label = set.labels[i] as usize;
        let name = set.class_names.get(label).cloned().unwrap_or_else(|| label.to_string());
        let class_dir = dir.join(class_folder_name(label, &name, set.num_classes));
        std::fs::create_dir_all(&class_dir).map_err(io_err(&class_dir))?;
        let path = class_dir.join(format!("{i:06}.png"));
        let img = set.image(i);
        let saved = match set.channels {
            1 => image::GrayImage::from_raw(w, h, img.to_vec()).map(|g| g.save(&path)),
            3 => {
                let hwc: Vec<u8> =
                    (0..plane).flat_map(|p| [img[p], img[plane + p], img[2 * plane + p]]).collect();
                image::RgbImage::from_raw(w, h, hwc).map(|g| g.save(&path))
            }
            c => return Err(DataError::Invalid(format!("cannot write {c}-channel images as PNG"))),
        };
        match saved {
            Some(Ok(())) => {}
            Some(Err(e)) => return Err(DataError::Image { path, detail: e.to_string() }),
            None => return Err(DataError::Invalid(format!("image {i} is not {w}x{h}"))),
        }
    }
    Ok(())
}

/// What [`write_longtail_folder`] writes.
#[derive(Clone, Debug)]
pub struct FolderExport {
    /// The first this many classes.
    pub classes: usize,
    /// Training images of the largest class.
    pub n_max: usize,
    /// Imbalance ratio of the exponential profile.
    pub imbalance: f64,
    /// Test images per class (the first ones of each class in file order).
    pub test_per_class: usize,
}

/// Writes a long-tailed image folder (`dir/train/<class>/…`, `dir/test/<class>/…`) from a
/// balanced in-memory training pool and test set: the LDAM-DRW selection (seed 0) of the
/// exponential profile over the first `classes` classes. Returns the training indices written
/// (into `pool`), class by class.
pub fn write_longtail_folder(
    pool: &ImageSet,
    test: &ImageSet,
    dir: &Path,
    e: &FolderExport,
) -> Result<Vec<usize>> {
    if e.classes == 0 || e.classes > pool.num_classes {
        return Err(DataError::Invalid(format!(
            "cannot write {} of the {} classes",
            e.classes, pool.num_classes
        )));
    }
    let mut counts = exponential_profile(e.n_max, e.classes, e.imbalance)?;
    counts.resize(pool.num_classes, 0);
    let train = crate::longtail::ldam_selection(&pool.labels, &counts, 0)?;
    write_png_folder(pool, &train, &dir.join("train"))?;
    let mut taken = vec![0usize; e.classes];
    let test_idx: Vec<usize> = (0..test.len())
        .filter(|&i| {
            let c = test.labels[i] as usize;
            let keep = c < e.classes && taken[c] < e.test_per_class;
            if keep {
                taken[c] += 1;
            }
            keep
        })
        .collect();
    write_png_folder(test, &test_idx, &dir.join("test"))?;
    Ok(train)
}
