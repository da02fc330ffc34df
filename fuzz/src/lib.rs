//! Helpers shared by the fuzz targets: a scratch directory per process and small writers.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// A scratch directory private to this fuzzing process (removed when the process exits cleanly).
pub fn scratch() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::Builder::new().prefix("srepr-fuzz-").tempdir().expect("scratch dir")).path()
}

/// Writes `bytes` to `name` in the scratch directory and returns its path.
pub fn scratch_file(name: &str, bytes: &[u8]) -> PathBuf {
    let p = scratch().join(name);
    std::fs::write(&p, bytes).expect("write scratch file");
    p
}

/// Asserts that error `e` names the file `file` (or is candle's own, which knows no file: a
/// `Candle` variant, maybe inside another error's, whose message is candle's alone).
pub fn assert_names_file(e: &(impl std::fmt::Display + std::fmt::Debug), file: &str) {
    let s = e.to_string();
    assert!(s.contains(file) || format!("{e:?}").contains("Candle("), "error without the file: {s}");
}

/// Gzip-compresses `bytes` (fast level).
pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).expect("in memory");
    e.finish().expect("in memory")
}

/// Splits `data` at a point chosen by its first two bytes: `(head, tail)` (the length bytes
/// excluded). Lets one input carry two files.
pub fn split2(data: &[u8]) -> (&[u8], &[u8]) {
    if data.len() < 2 {
        return (data, &[]);
    }
    let n = u16::from_le_bytes([data[0], data[1]]) as usize;
    let rest = &data[2..];
    rest.split_at(n.min(rest.len()))
}
