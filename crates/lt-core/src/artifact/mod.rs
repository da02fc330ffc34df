//! Safetensors artifacts with metadata: the contract between stages.
//!
//! Every artifact is a safetensors file whose metadata carries at least
//! - `format`: the artifact kind (e.g. `lt.split`, `lt.features`),
//! - `format_version`: an integer bumped on every incompatible change,
//!
//! and usually `fingerprint` (see [`crate::fingerprint`]) and `config` (JSON). Readers check the
//! format name and version they expect ([`Artifact::open`]) and report every problem as an
//! [`ArtifactError`] naming the file, the tensor or key, and what was expected.
//!
//! Writes are atomic and streaming: [`ArtifactWriter`] writes the header, then each tensor's bytes
//! straight to the temporary file; tensors added with [`ArtifactWriter::push_lazy`] are produced
//! by a callback during the write, so a large artifact never needs to be gathered in memory.
//!
//! The module is split by concern (private submodules, re-exported here): `error` (the error
//! type), `dtype` (element types and the sealed [`Element`] trait), `writer` and `reader`.

mod dtype;
mod error;
mod reader;
mod writer;

pub use dtype::{ElemType, Element};
pub use error::{ArtifactError, Result};
pub use reader::{Artifact, TensorInfo};
pub use writer::{ArtifactWriter, TensorData};

/// Metadata key holding the artifact kind.
pub const KEY_FORMAT: &str = "format";
/// Metadata key holding the artifact format version.
pub const KEY_FORMAT_VERSION: &str = "format_version";
/// Metadata key holding the fingerprint of the producing configuration and inputs.
pub const KEY_FINGERPRINT: &str = "fingerprint";
/// Metadata key holding the name of the data set an artifact was made from (`synthetic`,
/// `cifar10-lt`, `folder`, ...).
pub const KEY_DATASET: &str = "dataset";

/// An artifact kind and the version of its layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Format {
    /// Kind name, e.g. `lt.split`.
    pub name: &'static str,
    /// Layout version; readers accept exactly this version.
    pub version: u32,
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} v{}", self.name, self.version)
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    const FMT: Format = Format { name: "lt.test", version: 2 };

    #[test]
    fn roundtrip_with_metadata_lazy_tensors_and_python_compatible_header() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.safetensors");
        let data = vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0];
        let mut w = ArtifactWriter::new(FMT);
        w.meta("k", "v").push_f32("x", &[2, 3], data.as_slice()).push_u32("labels", &[3], vec![0u32, 2, 1]);
        w.push_lazy("big", ElemType::F32, &[4], |out| {
            for i in 0..4 {
                out.write_all(&(i as f32).to_le_bytes())?;
            }
            Ok(())
        });
        w.write(&path).unwrap();

        // The file is readable by the reference safetensors parser.
        let bytes = std::fs::read(&path).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(st.tensor("x").unwrap().shape(), &[2, 3]);
        let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        assert_eq!((8 + header_len) % 8, 0, "data section is 8-byte aligned");

        let a = Artifact::open(&path, FMT).unwrap();
        assert_eq!(a.meta("k").unwrap(), "v");
        assert_eq!(a.f32("x").unwrap(), data);
        assert_eq!(a.f32("big").unwrap(), vec![0.0, 1.0, 2.0, 3.0]);
        assert_eq!(a.indices("labels", 3).unwrap(), vec![0, 2, 1]);
        let err = a.indices("labels", 2).unwrap_err().to_string();
        assert!(err.contains("labels") && err.contains("outside 0..2"), "{err}");
        let t = a.tensor("x", &Device::Cpu).unwrap();
        assert_eq!(t.dims(), &[2, 3]);
        a.expect_shape("x", &[Some(2), None]).unwrap();
        let err = a.expect_shape("x", &[Some(3), None]).unwrap_err().to_string();
        assert!(err.contains("expected [3, *]") && err.contains("[2, 3]"), "{err}");
    }

    #[test]
    fn errors_name_the_file_and_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.safetensors");
        let mut w = ArtifactWriter::new(FMT);
        w.push_f32("x", &[2], vec![1.0, 2.0]);
        w.write(&path).unwrap();

        let other = Format { name: "lt.other", version: 1 };
        let err = Artifact::open(&path, other).unwrap_err().to_string();
        assert!(err.contains("expected a `lt.other v1` artifact, found `lt.test` v2"), "{err}");
        let a = Artifact::open(&path, FMT).unwrap();
        assert!(a.f32("y").unwrap_err().to_string().contains("missing tensor `y`"));
        assert!(a.meta("nope").unwrap_err().to_string().contains("metadata key `nope` is missing"));
        assert!(a.i64("x").unwrap_err().to_string().contains("has dtype F32, expected an integer"));

        // Truncated file.
        let bytes = std::fs::read(&path).unwrap();
        let cut = dir.path().join("cut.safetensors");
        std::fs::write(&cut, &bytes[..bytes.len() - 3]).unwrap();
        let err = Artifact::open_any(&cut).unwrap_err().to_string();
        assert!(err.contains("cut.safetensors") && err.contains("not a valid safetensors"), "{err}");
        // Not safetensors at all.
        let junk = dir.path().join("junk.bin");
        std::fs::write(&junk, b"hello world, not a tensor file").unwrap();
        let err = Artifact::open_any(&junk).unwrap_err().to_string();
        assert!(err.contains("junk.bin") && err.contains("not a valid safetensors"), "{err}");
        let missing = Artifact::open_any(&dir.path().join("none")).unwrap_err().to_string();
        assert!(missing.contains("none"), "{missing}");
    }
}
