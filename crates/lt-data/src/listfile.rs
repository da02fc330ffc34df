//! Split list files of ImageNet-LT and iNaturalist-2018 (`<relative path> <label>` per line).

use std::path::{Path, PathBuf};

use crate::error::{io_err, DataError, Result};
use crate::files::ImageEntry;

/// Parses a list file: one `<relative path> <label>` per line, blank lines ignored (a UTF-8
/// byte-order mark at the start too). Every label must be `< classes`; a line without a label,
/// or with another, is an error naming the line.
pub fn parse_list(path: &Path, classes: usize) -> Result<Vec<ImageEntry>> {
    let text = std::fs::read_to_string(path).map_err(io_err(path))?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let (p, l) = line.rsplit_once(char::is_whitespace).ok_or_else(|| DataError::ListLine {
            path: path.to_path_buf(),
            line: line_no,
            detail: format!("expected `<relative path> <label>`, found {line:?} (no label)"),
        })?;
        let label: i64 = l.trim().parse().map_err(|_| DataError::ListLine {
            path: path.to_path_buf(),
            line: line_no,
            detail: format!("label {l:?} is not an integer"),
        })?;
        if label < 0 || label as usize >= classes {
            return Err(DataError::ListLine {
                path: path.to_path_buf(),
                line: line_no,
                detail: format!("label {label} is outside 0..{classes}"),
            });
        }
        out.push(ImageEntry { path: PathBuf::from(p.trim()), label: label as u32 });
    }
    if out.is_empty() {
        return Err(DataError::Format {
            path: path.to_path_buf(),
            detail: "the list file has no entries".into(),
        });
    }
    Ok(out)
}

/// Checks a benchmark's lists against each other before anything trains: an image listed in
/// two lists is refused (a training or validation image in the test set, say), one listed more
/// than once in a list is warned about. With `images`, every listed image must also be under
/// `dir` and readable (the check an image folder's files get): a missing one is named with its
/// list, and where its folder holds the images directly (ImageNet's validation archive unpacks
/// flat), with how to sort them.
pub fn check_lists(dir: &Path, lists: &[(&str, &[ImageEntry])], images: bool) -> Result<()> {
    let mut seen: std::collections::HashMap<&Path, &str> = std::collections::HashMap::new();
    for &(name, entries) in lists {
        let mut repeated = std::collections::BTreeSet::new();
        for e in entries {
            match seen.insert(&e.path, name) {
                Some(other) if other == name => {
                    repeated.insert(&e.path);
                }
                Some(other) => {
                    return Err(DataError::Invalid(format!(
                    "{} is listed in {other} and in {name} (in {}): a split must not hold another's images",
                    e.path.display(),
                    dir.display()
                )))
                }
                None => {}
            }
        }
        if let Some(first) = repeated.first() {
            tracing::warn!(
                "{name} lists {} image(s) more than once, e.g. {}: each counts as often as it is listed",
                repeated.len(),
                first.display()
            );
        }
    }
    if !images {
        return Ok(());
    }
    let paths: Vec<PathBuf> =
        lists.iter().flat_map(|&(_, entries)| entries.iter().map(|e| dir.join(&e.path))).collect();
    // One pass over the files: a file the check could not open because it is not there is said
    // to be missing, with its list.
    crate::folder_data::preflight(&paths).map_err(|e| match e {
        DataError::Image { path, .. } if !path.is_file() => missing(dir, lists, path),
        other => other,
    })
}

/// The error for `path`, listed in one of `lists` (under `dir`) but not there.
fn missing(dir: &Path, lists: &[(&str, &[ImageEntry])], path: PathBuf) -> DataError {
    let name = lists
        .iter()
        .find(|(_, entries)| entries.iter().any(|e| dir.join(&e.path) == path))
        .map_or("a list", |(name, _)| name);
    let flat = path.parent().and_then(|class| Some(class.parent()?.join(path.file_name()?)));
    let hint = match flat.filter(|f| f.is_file()) {
        Some(f) => format!(
            "; {} is there: sort the images into their class folders as the list names them (ImageNet's \
             validation archive unpacks flat; see docs/datasets.md)",
            f.display()
        ),
        None => String::new(),
    };
    DataError::Format { path, detail: format!("listed in {name}, but there is no such file{hint}") }
}

/// The list files of a large-scale long-tailed benchmark.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListBenchmark {
    /// ImageNet-LT (Liu et al. 2019): 1,000 classes, train / val / test lists.
    ImageNetLt,
    /// iNaturalist-2018: 8,142 classes, train / val lists (val is the test set).
    INat2018,
}

impl ListBenchmark {
    /// Number of classes.
    pub fn classes(self) -> usize {
        match self {
            ListBenchmark::ImageNetLt => 1000,
            ListBenchmark::INat2018 => 8142,
        }
    }

    /// Directory names tried under a data root.
    pub fn dir_names(self) -> &'static [&'static str] {
        match self {
            ListBenchmark::ImageNetLt => &["imagenet-lt", "ImageNet_LT"],
            ListBenchmark::INat2018 => &["inat2018", "iNaturalist18"],
        }
    }

    /// `(train, val, test)` list file names; `val` is `None` where the test set is the val split.
    pub fn list_names(self) -> (&'static str, Option<&'static str>, &'static str) {
        match self {
            ListBenchmark::ImageNetLt => {
                ("ImageNet_LT_train.txt", Some("ImageNet_LT_val.txt"), "ImageNet_LT_test.txt")
            }
            ListBenchmark::INat2018 => ("iNaturalist18_train.txt", None, "iNaturalist18_val.txt"),
        }
    }

    /// Locates the directory holding the list files under `roots`.
    pub fn locate(self, roots: &[PathBuf]) -> Result<PathBuf> {
        let (train, _, _) = self.list_names();
        let mut searched = Vec::new();
        for r in roots {
            for cand in std::iter::once(r.clone()).chain(self.dir_names().iter().map(|d| r.join(d))) {
                if cand.join(train).is_file() {
                    return Ok(cand);
                }
                searched.push(cand);
            }
        }
        Err(DataError::NotFound {
            what: train.to_string(),
            searched,
            hint: "; see docs/datasets.md (the list files come from the decoupling repository, images from image-net.org / the iNat challenge)".into(),
        })
    }
}
