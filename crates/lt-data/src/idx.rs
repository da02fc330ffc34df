//! MNIST and Fashion-MNIST in IDX format (gzipped or not).
//!
//! Files are looked for in this order: an explicit data root, the project's `data/` directory,
//! then the Debian package `dataset-fashion-mnist` (`/usr/share/datasets/fashion-mnist`); when
//! none has them they can be downloaded from the official location (MD5-verified).

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::dataset::ImageSet;
use crate::download::{download_verified, RemoteFile};
use crate::error::{io_err, DataError, Result};

/// Where Debian's `dataset-fashion-mnist` installs the files.
pub const DEBIAN_FASHION_MNIST: &str = "/usr/share/datasets/fashion-mnist";

/// Which IDX data set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdxVariant {
    /// Zalando's Fashion-MNIST.
    FashionMnist,
    /// LeCun's MNIST digits.
    Mnist,
}

impl IdxVariant {
    /// Sub-directory name under a data root.
    pub fn dir_name(self) -> &'static str {
        match self {
            IdxVariant::FashionMnist => "fashion-mnist",
            IdxVariant::Mnist => "mnist",
        }
    }

    /// Official download location.
    pub fn mirror(self) -> &'static str {
        match self {
            IdxVariant::FashionMnist => "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com",
            IdxVariant::Mnist => "https://ossci-datasets.s3.amazonaws.com/mnist",
        }
    }

    /// `(file stem, md5 of the published .gz)` for train images, train labels, test images, test labels.
    pub fn files(self) -> [(&'static str, &'static str); 4] {
        match self {
            IdxVariant::FashionMnist => [
                ("train-images-idx3-ubyte", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
                ("train-labels-idx1-ubyte", "25c81989df183df01b3e8a0aad5dffbe"),
                ("t10k-images-idx3-ubyte", "bef4ecab320f06d8554ea6380940ec79"),
                ("t10k-labels-idx1-ubyte", "bb300cfdad3c16e7a12a480ee83cd310"),
            ],
            IdxVariant::Mnist => [
                ("train-images-idx3-ubyte", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
                ("train-labels-idx1-ubyte", "d53e105ee54ea40749a09fcbcd1e9432"),
                ("t10k-images-idx3-ubyte", "9fb629c4189551a2d022fa330f9573f3"),
                ("t10k-labels-idx1-ubyte", "ec29112dd5afa0611ce80d1b7f02629c"),
            ],
        }
    }

    /// Class names.
    pub fn class_names(self) -> Vec<String> {
        match self {
            IdxVariant::FashionMnist => [
                "T-shirt/top",
                "Trouser",
                "Pullover",
                "Dress",
                "Coat",
                "Sandal",
                "Shirt",
                "Sneaker",
                "Bag",
                "Ankle boot",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
            IdxVariant::Mnist => (0..10).map(|d| d.to_string()).collect(),
        }
    }
}

/// An IDX array of unsigned bytes: its dimensions and data.
#[derive(Debug)]
pub struct IdxArray {
    /// Dimensions (e.g. `[60000, 28, 28]`).
    pub dims: Vec<usize>,
    /// Row-major bytes.
    pub data: Vec<u8>,
}

/// Parses an IDX file of unsigned bytes (`gz` bytes are decompressed first).
pub fn parse_idx(bytes: &[u8], expected_ndim: usize, source: &Path) -> Result<IdxArray> {
    let raw: std::borrow::Cow<[u8]> = if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(bytes).read_to_end(&mut out).map_err(|e| DataError::Format {
            path: source.to_path_buf(),
            detail: format!("corrupt gzip stream: {e}"),
        })?;
        out.into()
    } else {
        bytes.into()
    };
    let fmt = |detail: String| DataError::Format { path: source.to_path_buf(), detail };
    if raw.len() < 4 {
        return Err(DataError::Size {
            path: source.to_path_buf(),
            expected: "at least a 4-byte IDX magic".into(),
            found: raw.len() as u64,
        });
    }
    let magic = u32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]);
    let want_magic = 0x0800 | expected_ndim as u32;
    if magic != want_magic {
        return Err(fmt(format!("bad IDX magic number 0x{magic:08x}, expected 0x{want_magic:08x} (unsigned bytes, {expected_ndim} dimensions)")));
    }
    let header = 4 + 4 * expected_ndim;
    if raw.len() < header {
        return Err(DataError::Size {
            path: source.to_path_buf(),
            expected: format!("at least {header} header bytes"),
            found: raw.len() as u64,
        });
    }
    let dims: Vec<usize> = (0..expected_ndim)
        .map(|i| u32::from_be_bytes(raw[4 + 4 * i..8 + 4 * i].try_into().expect("4 bytes")) as usize)
        .collect();
    // The dimensions come from the file: their product may overflow (unless one of them is 0).
    let product =
        if dims.contains(&0) { Some(0) } else { dims.iter().try_fold(1usize, |n, &d| n.checked_mul(d)) };
    let total = product.and_then(|n| n.checked_add(header));
    let Some(total) = total else {
        return Err(fmt(format!("dimensions {dims:?} describe more bytes than this machine can address")));
    };
    if raw.len() != total {
        return Err(DataError::Size {
            path: source.to_path_buf(),
            expected: format!("{total} bytes ({header}-byte header + {dims:?} bytes)"),
            found: raw.len() as u64,
        });
    }
    Ok(IdxArray { dims, data: raw[header..].to_vec() })
}

fn find_file(dirs: &[PathBuf], stem: &str) -> Option<PathBuf> {
    for d in dirs {
        for name in [format!("{stem}.gz"), stem.to_string()] {
            let p = d.join(&name);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

/// Reads an images file and a labels file into an [`ImageSet`] (labels checked `< 10`).
pub fn load_pair(images: &Path, labels: &Path, class_names: Vec<String>) -> Result<ImageSet> {
    let ib = std::fs::read(images).map_err(io_err(images))?;
    let lb = std::fs::read(labels).map_err(io_err(labels))?;
    let img = parse_idx(&ib, 3, images)?;
    let lab = parse_idx(&lb, 1, labels)?;
    if img.dims[0] != lab.dims[0] {
        return Err(DataError::Format {
            path: labels.to_path_buf(),
            detail: format!("{} labels for {} images in {}", lab.dims[0], img.dims[0], images.display()),
        });
    }
    let classes = class_names.len();
    for (i, &y) in lab.data.iter().enumerate() {
        if y as usize >= classes {
            return Err(DataError::Label { path: labels.to_path_buf(), record: i, label: y as i64, classes });
        }
    }
    Ok(ImageSet {
        channels: 1,
        height: img.dims[1],
        width: img.dims[2],
        pixels: img.data,
        labels: lab.data.iter().map(|&y| y as u32).collect(),
        num_classes: classes,
        class_names,
    })
}

/// The directories searched for a variant, in order: with a data root given, `<explicit>` and
/// `<explicit>/<name>` only; otherwise `<project>/<name>` and, for Fashion-MNIST, the Debian
/// package directory.
pub fn search_dirs(variant: IdxVariant, explicit: Option<&Path>, project_data: &Path) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(e) = explicit {
        // Only there: a data root given never falls back to another copy.
        dirs.push(e.to_path_buf());
        dirs.push(e.join(variant.dir_name()));
        return dirs;
    }
    dirs.push(project_data.join(variant.dir_name()));
    if variant == IdxVariant::FashionMnist {
        dirs.push(PathBuf::from(DEBIAN_FASHION_MNIST));
    }
    dirs
}

/// Training and test sets of an IDX data set, found in `dirs` or downloaded into `download_to`.
pub fn load(
    variant: IdxVariant,
    dirs: &[PathBuf],
    download_to: Option<&Path>,
    mirror: Option<&str>,
) -> Result<(ImageSet, ImageSet)> {
    let files = variant.files();
    let mut paths = Vec::new();
    for (stem, md5) in files {
        let p =
            match find_file(dirs, stem) {
                Some(p) => p,
                None => match download_to {
                    Some(root) => {
                        let dest = root.join(variant.dir_name()).join(format!("{stem}.gz"));
                        let url =
                            format!("{}/{stem}.gz", mirror.unwrap_or(variant.mirror()).trim_end_matches('/'));
                        download_verified(&RemoteFile { url, md5: md5.to_string() }, &dest)?;
                        dest
                    }
                    None => return Err(DataError::NotFound {
                        what: format!("{} file {stem}[.gz]", variant.dir_name()),
                        searched: dirs.to_vec(),
                        hint: match variant {
                            IdxVariant::FashionMnist => {
                                "; install it with `apt-get install dataset-fashion-mnist` or pass --download"
                                    .into()
                            }
                            IdxVariant::Mnist => "; pass --download to fetch it".into(),
                        },
                    }),
                },
            };
        paths.push(p);
    }
    let names = variant.class_names();
    let train = load_pair(&paths[0], &paths[1], names.clone())?;
    let test = load_pair(&paths[2], &paths[3], names)?;
    Ok((train, test))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idx(dims: &[u32], data: &[u8]) -> Vec<u8> {
        let mut out = vec![0u8, 0, 0x08, dims.len() as u8];
        for d in dims {
            out.extend_from_slice(&d.to_be_bytes());
        }
        out.extend_from_slice(data);
        out
    }

    /// Found by the `idx` fuzz target: dimensions whose product overflows `usize` panicked.
    #[test]
    fn dimensions_whose_product_overflows_are_a_format_error() {
        let p = Path::new("huge-idx3-ubyte");
        for dims in [[u32::MAX, u32::MAX, u32::MAX], [u32::MAX, u32::MAX, 2], [1 << 31, 1 << 31, 1 << 31]] {
            let err = parse_idx(&idx(&dims, &[0; 4]), 3, p).unwrap_err();
            assert!(matches!(err, DataError::Format { .. }), "{err}");
            let msg = err.to_string();
            assert!(msg.contains("huge-idx3-ubyte") && msg.contains("more bytes than"), "{msg}");
        }
        // A zero dimension makes the product zero whatever the others are.
        let ok = parse_idx(&idx(&[u32::MAX, u32::MAX, u32::MAX, 0], &[]), 4, p).unwrap();
        assert_eq!((ok.dims[3], ok.data.len()), (0, 0));
    }
}
