//! CIFAR-10 and CIFAR-100, binary version, from a directory or the official `.tar.gz` archives.
//!
//! Layout (reference sheet section 5): CIFAR-10 has `data_batch_{1..5}.bin` and `test_batch.bin`,
//! 10,000 records each of 1 label byte + 3,072 pixel bytes (1,024 R, 1,024 G, 1,024 B, row-major
//! 32x32). CIFAR-100 has `train.bin` (50,000) and `test.bin` (10,000) with 3,074-byte records:
//! coarse label, fine label, pixels; the fine label is used.

use std::path::{Path, PathBuf};

use crate::dataset::ImageSet;
use crate::download::{download_verified, extract_tar_gz_atomic, read_tar_gz_members, RemoteFile};
use crate::error::{io_err, DataError, Result};

/// Records in the test file of either variant.
const TEST_RECORDS: usize = 10_000;

/// Largest class-names file read from an archive (CIFAR-100's is about 1 KiB).
const NAMES_FILE_MAX: u64 = 1 << 16;

/// Official location of the archives.
pub const DEFAULT_MIRROR: &str = "https://www.cs.toronto.edu/~kriz";

/// Which CIFAR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CifarVariant {
    /// CIFAR-10 (10 classes).
    Cifar10,
    /// CIFAR-100 (100 fine classes).
    Cifar100,
}

impl CifarVariant {
    /// Name of the official binary archive.
    pub fn archive_name(self) -> &'static str {
        match self {
            CifarVariant::Cifar10 => "cifar-10-binary.tar.gz",
            CifarVariant::Cifar100 => "cifar-100-binary.tar.gz",
        }
    }

    /// Published MD5 of the archive.
    pub fn archive_md5(self) -> &'static str {
        match self {
            CifarVariant::Cifar10 => "c32a1d4ab5d03f1284b67883e8d87530",
            CifarVariant::Cifar100 => "03b5dce01913d631647c71ecec9e9cb8",
        }
    }

    /// Directory the archive extracts to.
    pub fn dir_name(self) -> &'static str {
        match self {
            CifarVariant::Cifar10 => "cifar-10-batches-bin",
            CifarVariant::Cifar100 => "cifar-100-binary",
        }
    }

    /// Training files in order.
    pub fn train_files(self) -> &'static [&'static str] {
        match self {
            CifarVariant::Cifar10 => &[
                "data_batch_1.bin",
                "data_batch_2.bin",
                "data_batch_3.bin",
                "data_batch_4.bin",
                "data_batch_5.bin",
            ],
            CifarVariant::Cifar100 => &["train.bin"],
        }
    }

    /// Test file.
    pub fn test_file(self) -> &'static str {
        match self {
            CifarVariant::Cifar10 => "test_batch.bin",
            CifarVariant::Cifar100 => "test.bin",
        }
    }

    /// Records per training file.
    pub fn records_per_train_file(self) -> usize {
        match self {
            CifarVariant::Cifar10 => 10_000,
            CifarVariant::Cifar100 => 50_000,
        }
    }

    /// Bytes per record.
    pub fn record_len(self) -> usize {
        match self {
            CifarVariant::Cifar10 => 3073,
            CifarVariant::Cifar100 => 3074,
        }
    }

    /// Number of (fine) classes.
    pub fn classes(self) -> usize {
        match self {
            CifarVariant::Cifar10 => 10,
            CifarVariant::Cifar100 => 100,
        }
    }

    /// File with one class name per line.
    pub fn names_file(self) -> &'static str {
        match self {
            CifarVariant::Cifar10 => "batches.meta.txt",
            CifarVariant::Cifar100 => "fine_label_names.txt",
        }
    }
}

/// Training and test sets of a CIFAR variant.
#[derive(Clone, Debug)]
pub struct CifarSplits {
    /// 50,000 training images in file order.
    pub train: ImageSet,
    /// 10,000 test images.
    pub test: ImageSet,
}

/// Parses the records of one CIFAR binary file.
///
/// `bytes` must hold exactly `records` records (checked); every label must be in range.
pub fn parse_records(
    bytes: &[u8],
    variant: CifarVariant,
    records: usize,
    source: &Path,
) -> Result<(Vec<u8>, Vec<u32>)> {
    let rl = variant.record_len();
    let expected = match rl.checked_mul(records) {
        Some(n) => format!("{n} bytes ({records} records of {rl} bytes)"),
        None => format!("{records} records of {rl} bytes, more than this machine can address"),
    };
    if Some(bytes.len()) != rl.checked_mul(records) {
        return Err(DataError::Size { path: source.to_path_buf(), expected, found: bytes.len() as u64 });
    }
    let mut pixels = Vec::with_capacity(records * 3072);
    let mut labels = Vec::with_capacity(records);
    let (label_at, classes) = match variant {
        CifarVariant::Cifar10 => (0, 10),
        CifarVariant::Cifar100 => (1, 100),
    };
    for (r, rec) in bytes.chunks_exact(rl).enumerate() {
        let y = rec[label_at];
        if y as usize >= classes {
            return Err(DataError::Label { path: source.to_path_buf(), record: r, label: y as i64, classes });
        }
        if variant == CifarVariant::Cifar100 && rec[0] >= 20 {
            return Err(DataError::Format {
                path: source.to_path_buf(),
                detail: format!("record {r} has coarse label {}, outside 0..20", rec[0]),
            });
        }
        labels.push(y as u32);
        pixels.extend_from_slice(&rec[rl - 3072..]);
    }
    Ok((pixels, labels))
}

fn class_names(text: Option<&[u8]>, variant: CifarVariant) -> Vec<String> {
    let names: Vec<String> = text
        .map(|t| {
            String::from_utf8_lossy(t)
                .lines()
                .map(|l| l.trim().to_string())
                .filter(|l| !l.is_empty())
                .collect()
        })
        .unwrap_or_default();
    if names.len() == variant.classes() {
        names
    } else {
        (0..variant.classes()).map(|c| format!("class_{c}")).collect()
    }
}

fn assemble(
    variant: CifarVariant,
    mut get: impl FnMut(&str) -> Result<Option<(Vec<u8>, PathBuf)>>,
) -> Result<CifarSplits> {
    let names_text = get(variant.names_file())?.map(|(b, _)| b);
    let names = class_names(names_text.as_deref(), variant);
    let mut build = |files: &[&str], records: usize| -> Result<ImageSet> {
        let mut pixels = Vec::new();
        let mut labels = Vec::new();
        for f in files {
            let (bytes, path) = get(f)?.ok_or_else(|| DataError::NotFound {
                what: format!("CIFAR file {f}"),
                searched: vec![],
                hint: String::new(),
            })?;
            let (p, l) = parse_records(&bytes, variant, records, &path)?;
            pixels.extend(p);
            labels.extend(l);
        }
        Ok(ImageSet {
            channels: 3,
            height: 32,
            width: 32,
            pixels,
            labels,
            num_classes: variant.classes(),
            class_names: names.clone(),
        })
    };
    let train = build(variant.train_files(), variant.records_per_train_file())?;
    let test = build(&[variant.test_file()], TEST_RECORDS)?;
    Ok(CifarSplits { train, test })
}

/// Reads CIFAR from a directory holding the `.bin` files.
pub fn load_dir(dir: &Path, variant: CifarVariant) -> Result<CifarSplits> {
    assemble(variant, |name| {
        let p = dir.join(name);
        if !p.exists() {
            if name == variant.names_file() {
                return Ok(None);
            }
            return Err(DataError::NotFound {
                what: format!("CIFAR file {name}"),
                searched: vec![dir.to_path_buf()],
                hint: String::new(),
            });
        }
        let bytes = std::fs::read(&p).map_err(io_err(&p))?;
        Ok(Some((bytes, p)))
    })
}

/// Reads CIFAR straight from the official `.tar.gz` archive (no extraction).
pub fn load_archive(archive: &Path, variant: CifarVariant) -> Result<CifarSplits> {
    let rl = variant.record_len() as u64;
    let want = |name: &str| {
        if variant.train_files().contains(&name) {
            Some(rl * variant.records_per_train_file() as u64)
        } else if name == variant.test_file() {
            Some(rl * TEST_RECORDS as u64)
        } else if name == variant.names_file() {
            Some(NAMES_FILE_MAX)
        } else {
            None
        }
    };
    let mut members = read_tar_gz_members(archive, want)?;
    assemble(variant, |name| match members.iter().position(|(n, _)| n == name) {
        Some(i) => {
            let (n, bytes) = members.swap_remove(i);
            Ok(Some((bytes, archive.join(n))))
        }
        None if name == variant.names_file() => Ok(None),
        None => Err(DataError::Format {
            path: archive.to_path_buf(),
            detail: format!("archive has no member {name}"),
        }),
    })
}

/// Where a CIFAR copy was found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CifarSource {
    /// A directory holding the `.bin` files.
    Dir(PathBuf),
    /// The official archive.
    Archive(PathBuf),
}

/// Looks for CIFAR in each root: `<root>/<dir_name>/`, `<root>/` itself, `<root>/<archive_name>`.
pub fn locate(variant: CifarVariant, roots: &[PathBuf]) -> Option<CifarSource> {
    for root in roots {
        let first = variant.train_files()[0];
        for d in [root.join(variant.dir_name()), root.clone()] {
            if d.join(first).is_file() {
                return Some(CifarSource::Dir(d));
            }
        }
        let a = root.join(variant.archive_name());
        if a.is_file() {
            return Some(CifarSource::Archive(a));
        }
    }
    None
}

/// Downloads the official archive into `root` (verifying its MD5) and extracts it atomically to
/// `<root>/<dir_name>`. `mirror` replaces [`DEFAULT_MIRROR`] (tests use a loopback server).
pub fn fetch(variant: CifarVariant, root: &Path, mirror: Option<&str>) -> Result<PathBuf> {
    let remote = RemoteFile {
        url: format!("{}/{}", mirror.unwrap_or(DEFAULT_MIRROR).trim_end_matches('/'), variant.archive_name()),
        md5: variant.archive_md5().to_string(),
    };
    fetch_from(variant, root, &remote)
}

/// [`fetch`] from an explicit remote file (URL and MD5), e.g. a private mirror of a re-packed
/// archive.
pub fn fetch_from(variant: CifarVariant, root: &Path, remote: &RemoteFile) -> Result<PathBuf> {
    let archive = root.join(variant.archive_name());
    download_verified(remote, &archive)?;
    let dir = root.join(variant.dir_name());
    if !dir.join(variant.train_files()[0]).is_file() {
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(io_err(&dir))?;
        }
        extract_tar_gz_atomic(&archive, &dir, 1)?;
    }
    Ok(dir)
}

/// Finds CIFAR under `roots` or, when `download_to` is given, downloads it there; then reads it.
pub fn load(
    variant: CifarVariant,
    roots: &[PathBuf],
    download_to: Option<&Path>,
    mirror: Option<&str>,
) -> Result<CifarSplits> {
    let source = match locate(variant, roots) {
        Some(s) => s,
        None => match download_to {
            Some(root) => CifarSource::Dir(fetch(variant, root, mirror)?),
            None => {
                return Err(DataError::NotFound {
                    what: format!(
                        "{} ({} or {})",
                        variant.archive_name(),
                        variant.dir_name(),
                        variant.archive_name()
                    ),
                    searched: roots.to_vec(),
                    hint: format!(
                        "; download it from {DEFAULT_MIRROR}/{} or pass --download",
                        variant.archive_name()
                    ),
                })
            }
        },
    };
    match source {
        CifarSource::Dir(d) => load_dir(&d, variant),
        CifarSource::Archive(a) => load_archive(&a, variant),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the `cifar` fuzz target: a record count whose byte size overflows panicked.
    #[test]
    fn a_record_count_whose_size_overflows_is_a_size_error() {
        let p = Path::new("data_batch_1.bin");
        for (variant, records) in
            [(CifarVariant::Cifar10, usize::MAX), (CifarVariant::Cifar100, usize::MAX / 1000)]
        {
            let err = parse_records(&[0; 3073], variant, records, p).unwrap_err();
            assert!(matches!(err, DataError::Size { found: 3073, .. }), "{err}");
            let msg = err.to_string();
            assert!(msg.contains("data_batch_1.bin") && msg.contains("more than this machine"), "{msg}");
        }
        let err = parse_records(&[0; 3073], CifarVariant::Cifar10, 2, p).unwrap_err().to_string();
        assert!(err.contains("3073 bytes, expected 6146 bytes (2 records of 3073 bytes)"), "{err}");
    }

    /// A `.tar.gz` holding one member whose header announces `size` bytes, followed by `data`.
    fn archive_with_header_size(dir: &Path, name: &str, size: u64, data: &[u8]) -> PathBuf {
        use std::io::Write;
        let mut h = tar::Header::new_gnu();
        h.set_path(name).unwrap();
        h.set_size(size);
        h.set_mode(0o644);
        h.set_cksum();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(h.as_bytes()).unwrap();
        gz.write_all(data).unwrap();
        let path = dir.join("cifar-10-binary.tar.gz");
        std::fs::write(&path, gz.finish().unwrap()).unwrap();
        path
    }

    /// The archive reader reserved `Vec::with_capacity(header size)` before reading: a header
    /// announcing 2^62 bytes aborted the process (allocation failure) instead of an error.
    #[test]
    fn an_archive_member_announcing_a_huge_size_is_refused_before_any_allocation() {
        let dir = tempfile::tempdir().unwrap();
        let a =
            archive_with_header_size(dir.path(), "cifar-10-batches-bin/test_batch.bin", 1 << 62, &[0; 64]);
        let err = load_archive(&a, CifarVariant::Cifar10).unwrap_err();
        assert!(matches!(err, DataError::Format { .. }), "{err}");
        let msg = err.to_string();
        assert!(msg.contains("cifar-10-binary.tar.gz") && msg.contains("member test_batch.bin"), "{msg}");
        assert!(msg.contains(&format!("{} bytes, more than the 30730000 expected", 1u64 << 62)), "{msg}");
        // An oversized class-names file too.
        let a = archive_with_header_size(dir.path(), "x/batches.meta.txt", 1 << 20, &[b'a'; 64]);
        let msg = load_archive(&a, CifarVariant::Cifar10).unwrap_err().to_string();
        assert!(msg.contains("member batches.meta.txt: 1048576 bytes, more than the 65536"), "{msg}");
    }

    #[test]
    fn an_archive_member_shorter_than_its_header_says_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let a = archive_with_header_size(
            dir.path(),
            "cifar-10-batches-bin/test_batch.bin",
            30_730_000,
            &[7; 100],
        );
        let msg = load_archive(&a, CifarVariant::Cifar10).unwrap_err().to_string();
        assert!(msg.contains("cifar-10-binary.tar.gz") && msg.contains("test_batch.bin"), "{msg}");
    }
}
