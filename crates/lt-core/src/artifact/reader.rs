//! The memory-mapped artifact reader with typed accessors.
//!
//! [`Artifact::open_any`] validates the whole header before returning (tensor offsets inside the
//! file, known dtypes), so the accessors never index outside the map; every problem is an
//! [`ArtifactError`] naming the file and the tensor or key.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use half::{bf16, f16};
use memmap2::Mmap;

use super::dtype::ElemType;
use super::error::{shorten, ArtifactError, Result};
use super::{Format, KEY_FORMAT, KEY_FORMAT_VERSION};

/// The float dtypes [`Artifact::f32`] reads, in an error's words.
const FLOATS: &str = "a float dtype (F32, F16, BF16, F64)";

/// Where a tensor lives in an open artifact.
#[derive(Clone, Debug)]
pub struct TensorInfo {
    /// Element type.
    pub dtype: ElemType,
    /// Shape.
    pub shape: Vec<usize>,
    start: usize,
    end: usize,
}

impl TensorInfo {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// An open, memory-mapped artifact.
pub struct Artifact {
    path: PathBuf,
    mmap: Mmap,
    data_start: usize,
    tensors: BTreeMap<String, TensorInfo>,
    metadata: HashMap<String, String>,
}

impl std::fmt::Debug for Artifact {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Artifact").field("path", &self.path).field("tensors", &self.tensors.len()).finish()
    }
}

impl Artifact {
    /// Opens `path` and checks that it is an artifact of kind `format` (name and version).
    pub fn open(path: &Path, format: Format) -> Result<Self> {
        let a = Self::open_any(path)?;
        a.check_format(format)?;
        Ok(a)
    }

    /// Opens any safetensors file (for example weights from elsewhere) without a format check.
    pub fn open_any(path: &Path) -> Result<Self> {
        let io_err = |error| ArtifactError::Io { path: path.to_path_buf(), error };
        let file = File::open(path).map_err(io_err)?;
        if file.metadata().map_err(io_err)?.is_dir() {
            let reason = "it is a directory".to_string();
            return Err(ArtifactError::Corrupt { path: path.to_path_buf(), reason });
        }
        // SAFETY: `Mmap::map` is unsafe because another process could modify or truncate the file
        // while it is mapped, which would change (or, for a truncation, unmap) memory that safe
        // code reads through `&[u8]`. The map is read-only and the project never modifies an
        // artifact in place: every writer goes through `crate::atomic`, which writes a temporary
        // file and renames it over the destination, so this mapping keeps the old inode intact.
        // A file modified in place by an outside program is outside that contract.
        let mmap = unsafe { Mmap::map(&file) }.map_err(io_err)?;
        let corrupt = |reason: String| ArtifactError::Corrupt { path: path.to_path_buf(), reason };
        if mmap.len() < 8 {
            return Err(corrupt(format!("{} bytes, shorter than the 8-byte header length", mmap.len())));
        }
        let (n, meta) = safetensors::SafeTensors::read_metadata(&mmap).map_err(|e| corrupt(e.to_string()))?;
        let data_start = n.checked_add(8).filter(|&s| s <= mmap.len()).ok_or_else(|| {
            corrupt(format!("header length {n} runs past the end of the file ({} bytes)", mmap.len()))
        })?;
        let available = mmap.len() - data_start;
        // Sorted, so that the first bad tensor reported does not depend on hash order.
        let infos: BTreeMap<String, &safetensors::tensor::TensorInfo> = meta.tensors().into_iter().collect();
        let mut tensors = BTreeMap::new();
        for (name, info) in infos {
            let dtype = ElemType::from_safetensors(info.dtype).ok_or_else(|| ArtifactError::DType {
                path: path.to_path_buf(),
                name: name.clone(),
                expected: "a numeric dtype (F32, F16, BF16, F64, I64, I32, U32, U8)".into(),
                found: format!("{:?}", info.dtype),
            })?;
            let (start, end) = info.data_offsets;
            if start > end || end > available {
                return Err(corrupt(format!(
                    "tensor `{name}` at bytes {start}..{end} of a data section of {available} bytes"
                )));
            }
            tensors.insert(name, TensorInfo { dtype, shape: info.shape.clone(), start, end });
        }
        if meta.data_len() > available {
            return Err(corrupt(format!(
                "truncated: header promises {} data bytes, file holds {available}",
                meta.data_len()
            )));
        }
        let metadata = meta.metadata().clone().unwrap_or_default();
        Ok(Self { path: path.to_path_buf(), mmap, data_start, tensors, metadata })
    }

    /// Fails unless the metadata names `format` with its exact version.
    pub fn check_format(&self, format: Format) -> Result<()> {
        let name = self.metadata.get(KEY_FORMAT);
        let version = self.metadata.get(KEY_FORMAT_VERSION);
        let ok =
            name.map(|s| s.as_str()) == Some(format.name) && version == Some(&format.version.to_string());
        if ok {
            return Ok(());
        }
        let found = match (name, version) {
            (Some(n), Some(v)) => format!("`{}` v{}", shorten(n), shorten(v)),
            (Some(n), None) => format!("`{}` without a version", shorten(n)),
            _ => "a file without artifact metadata".to_string(),
        };
        Err(ArtifactError::WrongFormat { path: self.path.clone(), expected: format.to_string(), found })
    }

    /// The file this artifact was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// All metadata.
    pub fn metadata(&self) -> &HashMap<String, String> {
        &self.metadata
    }

    /// A metadata value, or an error naming the missing key.
    pub fn meta(&self, key: &str) -> Result<&str> {
        self.metadata
            .get(key)
            .map(|s| s.as_str())
            .ok_or_else(|| ArtifactError::MissingMeta { path: self.path.clone(), key: key.to_string() })
    }

    /// A metadata value if present.
    pub fn meta_opt(&self, key: &str) -> Option<&str> {
        self.metadata.get(key).map(|s| s.as_str())
    }

    /// A metadata value parsed with `FromStr`.
    pub fn meta_parse<T: std::str::FromStr>(&self, key: &str) -> Result<T>
    where
        T::Err: std::fmt::Display,
    {
        let v = self.meta(key)?;
        v.parse::<T>().map_err(|e| self.bad_meta(key, e.to_string()))
    }

    /// A metadata value holding JSON, deserialised.
    pub fn meta_json<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<T> {
        let v = self.meta(key)?;
        serde_json::from_str(v).map_err(|e| self.bad_meta(key, e.to_string()))
    }

    /// An error about this artifact's metadata key `key` (its value quoted, shortened when long).
    pub fn bad_meta(&self, key: &str, reason: impl Into<String>) -> ArtifactError {
        ArtifactError::BadMeta {
            path: self.path.clone(),
            key: key.to_string(),
            value: self.metadata.get(key).map(|v| shorten(v)).unwrap_or_default(),
            reason: reason.into(),
        }
    }

    /// An error about this artifact's tensor `name`.
    pub fn bad_value(&self, name: &str, reason: impl Into<String>) -> ArtifactError {
        ArtifactError::BadValue { path: self.path.clone(), name: name.to_string(), reason: reason.into() }
    }

    /// Tensor names in sorted order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(|s| s.as_str())
    }

    /// Whether a tensor exists.
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// Where and what a tensor is.
    pub fn info(&self, name: &str) -> Result<&TensorInfo> {
        self.tensors
            .get(name)
            .ok_or_else(|| ArtifactError::MissingTensor { path: self.path.clone(), name: name.to_string() })
    }

    /// Checks a tensor's shape; `None` entries in `expected` match any size.
    pub fn expect_shape(&self, name: &str, expected: &[Option<usize>]) -> Result<&TensorInfo> {
        let info = self.info(name)?;
        let ok = info.shape.len() == expected.len()
            && info.shape.iter().zip(expected).all(|(&d, e)| e.is_none_or(|e| e == d));
        if ok {
            Ok(info)
        } else {
            let words: Vec<String> =
                expected.iter().map(|e| e.map(|d| d.to_string()).unwrap_or_else(|| "*".into())).collect();
            Err(ArtifactError::Shape {
                path: self.path.clone(),
                name: name.to_string(),
                expected: format!("[{}]", words.join(", ")),
                found: info.shape.clone(),
            })
        }
    }

    /// The raw little-endian bytes of a tensor (zero-copy from the map).
    pub fn bytes(&self, name: &str) -> Result<&[u8]> {
        let info = self.info(name)?;
        // `open_any` checked `start <= end <= available`, so this range lies inside the map.
        Ok(&self.mmap[self.data_start + info.start..self.data_start + info.end])
    }

    /// Checks that a tensor has one of the float dtypes [`Artifact::f32`] reads (F32, F16, BF16,
    /// F64), without reading its values.
    pub fn expect_float(&self, name: &str) -> Result<&TensorInfo> {
        let info = self.info(name)?;
        match info.dtype {
            ElemType::F32 | ElemType::F16 | ElemType::BF16 | ElemType::F64 => Ok(info),
            other => Err(self.dtype_error(name, FLOATS, other)),
        }
    }

    /// A tensor converted to `f32` (from F32, F16, BF16 or F64).
    pub fn f32(&self, name: &str) -> Result<Vec<f32>> {
        let info = self.info(name)?;
        let b = self.bytes(name)?;
        Ok(match info.dtype {
            ElemType::F32 => b.chunks_exact(4).map(|c| f32::from_le_bytes(le(c))).collect(),
            ElemType::F16 => b.chunks_exact(2).map(|c| f16::from_le_bytes(le(c)).to_f32()).collect(),
            ElemType::BF16 => b.chunks_exact(2).map(|c| bf16::from_le_bytes(le(c)).to_f32()).collect(),
            ElemType::F64 => b.chunks_exact(8).map(|c| f64::from_le_bytes(le(c)) as f32).collect(),
            other => return Err(self.dtype_error(name, FLOATS, other)),
        })
    }

    /// An integer tensor converted to `i64` (from I64, I32, U32 or U8).
    pub fn i64(&self, name: &str) -> Result<Vec<i64>> {
        let info = self.info(name)?;
        let b = self.bytes(name)?;
        Ok(match info.dtype {
            ElemType::I64 => b.chunks_exact(8).map(|c| i64::from_le_bytes(le(c))).collect(),
            ElemType::I32 => b.chunks_exact(4).map(|c| i32::from_le_bytes(le(c)) as i64).collect(),
            ElemType::U32 => b.chunks_exact(4).map(|c| u32::from_le_bytes(le(c)) as i64).collect(),
            ElemType::U8 => b.iter().map(|&x| x as i64).collect(),
            other => return Err(self.dtype_error(name, "an integer dtype (I64, I32, U32, U8)", other)),
        })
    }

    /// An integer tensor as `usize` values, each checked to be `< bound` (e.g. labels < classes).
    pub fn indices(&self, name: &str, bound: usize) -> Result<Vec<usize>> {
        let v = self.i64(name)?;
        let mut out = Vec::with_capacity(v.len());
        for (i, &x) in v.iter().enumerate() {
            if x < 0 || x as u64 >= bound as u64 {
                return Err(self.bad_value(name, format!("entry {i} is {x}, outside 0..{bound}")));
            }
            out.push(x as usize);
        }
        Ok(out)
    }

    /// A tensor as a candle tensor on `device` (float dtypes keep their dtype; I32 becomes I64).
    pub fn tensor(&self, name: &str, device: &Device) -> Result<Tensor> {
        let info = self.info(name)?;
        let dt = match info.dtype {
            ElemType::F32 => DType::F32,
            ElemType::F16 => DType::F16,
            ElemType::BF16 => DType::BF16,
            ElemType::F64 => DType::F64,
            ElemType::U8 => DType::U8,
            ElemType::U32 => DType::U32,
            ElemType::I64 => DType::I64,
            ElemType::I32 => return Ok(Tensor::from_vec(self.i64(name)?, info.shape.as_slice(), device)?),
        };
        Ok(Tensor::from_raw_buffer(self.bytes(name)?, dt, &info.shape, device)?)
    }

    fn dtype_error(&self, name: &str, expected: &str, found: ElemType) -> ArtifactError {
        ArtifactError::DType {
            path: self.path.clone(),
            name: name.to_string(),
            expected: expected.to_string(),
            found: found.as_str().to_string(),
        }
    }
}

/// The first `N` bytes of a chunk from `chunks_exact(N)` as an array (the chunk has exactly `N`).
fn le<const N: usize>(chunk: &[u8]) -> [u8; N] {
    std::array::from_fn(|i| chunk[i])
}

#[cfg(test)]
mod tests {
    use super::super::ArtifactWriter;
    use super::*;

    const FMT: Format = Format { name: "lt.test", version: 1 };

    /// Writes a raw safetensors file: 8-byte header length, `header`, `data`.
    fn raw(dir: &Path, header: &str, data: &[u8]) -> PathBuf {
        let path = dir.join("raw.safetensors");
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend_from_slice(data);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    #[test]
    fn a_long_multibyte_metadata_value_is_quoted_without_panicking() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.safetensors");
        // Not JSON; `é` takes bytes 1-2, 3-4, ...: byte 200 is inside a character.
        let value = format!("x{}", "é".repeat(150));
        let mut w = ArtifactWriter::new(FMT);
        w.meta("class_names", value.clone());
        w.write(&path).unwrap();
        let a = Artifact::open(&path, FMT).unwrap();
        let err = a.meta_json::<Vec<String>>("class_names").unwrap_err().to_string();
        assert!(err.contains("metadata `class_names`") && err.contains("..."), "{err}");
        assert!(!err.contains(&value), "the whole value is quoted: {err}");
        let err = a.meta_parse::<u32>("class_names").unwrap_err().to_string();
        assert!(err.contains("invalid digit") && err.contains("..."), "{err}");
    }

    #[test]
    fn an_unsupported_dtype_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let header = r#"{"flags":{"dtype":"BOOL","shape":[2],"data_offsets":[0,2]}}"#;
        let path = raw(dir.path(), header, &[0, 1]);
        let err = Artifact::open_any(&path).unwrap_err().to_string();
        assert!(err.contains("raw.safetensors") && err.contains("tensor `flags` has dtype BOOL"), "{err}");
    }

    #[test]
    fn the_first_bad_tensor_reported_does_not_depend_on_hash_order() {
        let dir = tempfile::tempdir().unwrap();
        let header = r#"{"b":{"dtype":"I8","shape":[1],"data_offsets":[0,1]},"a":{"dtype":"BOOL","shape":[1],"data_offsets":[1,2]}}"#;
        let path = raw(dir.path(), header, &[0, 1]);
        for _ in 0..8 {
            let err = Artifact::open_any(&path).unwrap_err().to_string();
            assert!(err.contains("tensor `a`"), "{err}");
        }
    }
}
