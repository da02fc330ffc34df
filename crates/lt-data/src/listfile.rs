//! Split list files of ImageNet-LT and iNaturalist-2018 (`<relative path> <label>` per line).

use std::path::{Path, PathBuf};

use crate::error::{io_err, DataError, Result};
use crate::files::ImageEntry;

/// Parses a list file: one `<relative path> <label>` per line, blank lines ignored.
/// Every label must be `< classes`; a line without a label is an error naming the line.
pub fn parse_list(path: &Path, classes: usize) -> Result<Vec<ImageEntry>> {
    let text = std::fs::read_to_string(path).map_err(io_err(path))?;
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
            return Err(DataError::Label { path: path.to_path_buf(), record: line_no, label, classes });
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
