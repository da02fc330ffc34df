//! Stable fingerprints of configurations and inputs.
//!
//! A stage records in its output artifact a fingerprint of everything that determined it (its
//! configuration and the fingerprints of its input artifacts). The orchestrator recomputes the
//! fingerprint a stage would have and skips the stage when the existing artifact carries the same.

use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};

/// The lower-case hex digest of a file's bytes with hash `D` (any RustCrypto hash: `sha2::Sha256`,
/// `md5::Md5`, ...), read in 1 MiB blocks so that large files never sit in memory.
pub fn file_digest<D: Digest>(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = D::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// The first 12 characters of a fingerprint, as messages show it (the whole when shorter).
pub fn short(fingerprint: &str) -> &str {
    fingerprint.get(..12).unwrap_or(fingerprint)
}

/// An incremental SHA-256 over labelled parts; the hex digest is the fingerprint.
#[derive(Clone, Default)]
pub struct Fingerprint {
    hasher: Sha256,
}

impl Fingerprint {
    /// An empty fingerprint builder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a labelled string part. Labels and values are length-prefixed, so `("ab", "c")` and
    /// `("a", "bc")` give different fingerprints.
    pub fn part(mut self, label: &str, value: &str) -> Self {
        for s in [label, value] {
            self.hasher.update((s.len() as u64).to_le_bytes());
            self.hasher.update(s.as_bytes());
        }
        self
    }

    /// Adds a labelled part given as raw bytes.
    pub fn bytes(mut self, label: &str, value: &[u8]) -> Self {
        self.hasher.update((label.len() as u64).to_le_bytes());
        self.hasher.update(label.as_bytes());
        self.hasher.update((value.len() as u64).to_le_bytes());
        self.hasher.update(value);
        self
    }

    /// Adds a labelled part serialised as canonical JSON (serde_json with sorted map keys when the
    /// value is built from `BTreeMap`s and structs).
    pub fn json<T: serde::Serialize>(self, label: &str, value: &T) -> Self {
        let s = serde_json::to_string(value).unwrap_or_default();
        self.part(label, &s)
    }

    /// The hex digest (64 characters).
    pub fn finish(self) -> String {
        hex::encode(self.hasher.finalize())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_digest_is_the_hash_of_the_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"abc").unwrap();
        // SHA-256("abc"), FIPS 180-2 appendix B.1.
        assert_eq!(
            file_digest::<Sha256>(&p).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(file_digest::<Sha256>(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn parts_are_length_prefixed_and_order_sensitive() {
        let a = Fingerprint::new().part("ab", "c").finish();
        let b = Fingerprint::new().part("a", "bc").finish();
        assert_ne!(a, b);
        let c = Fingerprint::new().part("x", "1").part("y", "2").finish();
        let d = Fingerprint::new().part("y", "2").part("x", "1").finish();
        assert_ne!(c, d);
        assert_eq!(c, Fingerprint::new().part("x", "1").part("y", "2").finish());
        assert_eq!(c.len(), 64);
    }
}
