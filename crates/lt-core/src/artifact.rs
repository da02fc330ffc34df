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

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use half::{bf16, f16};
use memmap2::Mmap;

/// Metadata key holding the artifact kind.
pub const KEY_FORMAT: &str = "format";
/// Metadata key holding the artifact format version.
pub const KEY_FORMAT_VERSION: &str = "format_version";
/// Metadata key holding the fingerprint of the producing configuration and inputs.
pub const KEY_FINGERPRINT: &str = "fingerprint";

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

/// Everything that can go wrong reading or writing an artifact.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The file is not a valid safetensors file (truncated, bad header, overlapping data).
    #[error("{path}: not a valid safetensors file: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What the parser found.
        reason: String,
    },
    /// The file is a safetensors file but not the artifact kind or version expected.
    #[error("{path}: expected a `{expected}` artifact, found {found}")]
    WrongFormat {
        /// The file.
        path: PathBuf,
        /// The expected kind and version.
        expected: String,
        /// What the metadata says.
        found: String,
    },
    /// A tensor the reader needs is absent.
    #[error("{path}: missing tensor `{name}`")]
    MissingTensor {
        /// The file.
        path: PathBuf,
        /// The tensor name.
        name: String,
    },
    /// A tensor has another shape than expected.
    #[error("{path}: tensor `{name}` has shape {found:?}, expected {expected}")]
    Shape {
        /// The file.
        path: PathBuf,
        /// The tensor name.
        name: String,
        /// The expected shape, in words.
        expected: String,
        /// The shape in the file.
        found: Vec<usize>,
    },
    /// A tensor has a dtype the reader cannot use.
    #[error("{path}: tensor `{name}` has dtype {found}, expected {expected}")]
    DType {
        /// The file.
        path: PathBuf,
        /// The tensor name.
        name: String,
        /// The accepted dtypes, in words.
        expected: String,
        /// The dtype in the file.
        found: String,
    },
    /// A metadata key the reader needs is absent.
    #[error("{path}: metadata key `{key}` is missing")]
    MissingMeta {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
    },
    /// A metadata value cannot be parsed or is out of range.
    #[error("{path}: metadata `{key}` = {value:?}: {reason}")]
    BadMeta {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// The value found.
        value: String,
        /// What was expected.
        reason: String,
    },
    /// Tensor values are invalid (NaN, out of range, inconsistent with another tensor).
    #[error("{path}: tensor `{name}`: {reason}")]
    BadValue {
        /// The file.
        path: PathBuf,
        /// The tensor name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// A candle error while converting a tensor.
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
}

/// Result alias for artifact operations.
pub type Result<T, E = ArtifactError> = std::result::Result<T, E>;

/// Element types an artifact tensor may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ElemType {
    /// 32-bit float.
    F32,
    /// 16-bit IEEE float.
    F16,
    /// bfloat16.
    BF16,
    /// 64-bit float.
    F64,
    /// 64-bit signed integer.
    I64,
    /// 32-bit signed integer.
    I32,
    /// 32-bit unsigned integer.
    U32,
    /// Byte.
    U8,
}

impl ElemType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            ElemType::F64 | ElemType::I64 => 8,
            ElemType::F32 | ElemType::I32 | ElemType::U32 => 4,
            ElemType::F16 | ElemType::BF16 => 2,
            ElemType::U8 => 1,
        }
    }

    /// The safetensors dtype string.
    pub fn as_str(self) -> &'static str {
        match self {
            ElemType::F32 => "F32",
            ElemType::F16 => "F16",
            ElemType::BF16 => "BF16",
            ElemType::F64 => "F64",
            ElemType::I64 => "I64",
            ElemType::I32 => "I32",
            ElemType::U32 => "U32",
            ElemType::U8 => "U8",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "F32" => ElemType::F32,
            "F16" => ElemType::F16,
            "BF16" => ElemType::BF16,
            "F64" => ElemType::F64,
            "I64" => ElemType::I64,
            "I32" => ElemType::I32,
            "U32" => ElemType::U32,
            "U8" => ElemType::U8,
            _ => return None,
        })
    }

    fn from_candle(d: DType) -> Option<Self> {
        Some(match d {
            DType::F32 => ElemType::F32,
            DType::F16 => ElemType::F16,
            DType::BF16 => ElemType::BF16,
            DType::F64 => ElemType::F64,
            DType::I64 => ElemType::I64,
            DType::U32 => ElemType::U32,
            DType::U8 => ElemType::U8,
            _ => return None,
        })
    }
}

/// A tensor's bytes, borrowed or owned, in little-endian order.
pub type TensorData<'a> = Cow<'a, [u8]>;

type LazyFill<'a> = Box<dyn FnOnce(&mut dyn Write) -> io::Result<()> + 'a>;

enum Payload<'a> {
    Bytes(TensorData<'a>),
    Lazy(LazyFill<'a>),
}

struct Entry<'a> {
    name: String,
    dtype: ElemType,
    shape: Vec<usize>,
    payload: Payload<'a>,
}

/// Builds an artifact and writes it atomically.
pub struct ArtifactWriter<'a> {
    format: Format,
    metadata: BTreeMap<String, String>,
    entries: Vec<Entry<'a>>,
}

fn bytes_of<T: Copy>(data: &[T]) -> &[u8] {
    // SAFETY: plain-old-data numeric slices (f32, f16, u32, i64, u8) have no padding and any
    // byte pattern is a valid u8; the byte length is exact. The project targets little-endian
    // machines (checked at compile time below), which is safetensors' byte order.
    unsafe { std::slice::from_raw_parts(data.as_ptr() as *const u8, std::mem::size_of_val(data)) }
}

#[cfg(not(target_endian = "little"))]
compile_error!("lt-core writes safetensors (little-endian) by reinterpreting memory");

impl<'a> ArtifactWriter<'a> {
    /// An empty artifact of the given kind.
    pub fn new(format: Format) -> Self {
        let mut metadata = BTreeMap::new();
        metadata.insert(KEY_FORMAT.to_string(), format.name.to_string());
        metadata.insert(KEY_FORMAT_VERSION.to_string(), format.version.to_string());
        Self { format, metadata, entries: Vec::new() }
    }

    /// The artifact kind being written.
    pub fn format(&self) -> Format {
        self.format
    }

    /// Sets a metadata key.
    pub fn meta(&mut self, key: &str, value: impl Into<String>) -> &mut Self {
        self.metadata.insert(key.to_string(), value.into());
        self
    }

    /// Sets a metadata key to the JSON serialisation of `value`.
    pub fn meta_json<T: serde::Serialize>(&mut self, key: &str, value: &T) -> &mut Self {
        let s = serde_json::to_string(value).expect("metadata serialises to JSON");
        self.meta(key, s)
    }

    fn push(&mut self, name: &str, dtype: ElemType, shape: &[usize], payload: Payload<'a>) {
        assert!(!self.entries.iter().any(|e| e.name == name), "tensor `{name}` added twice to an artifact");
        self.entries.push(Entry { name: name.to_string(), dtype, shape: shape.to_vec(), payload });
    }

    fn push_slice<T: Copy>(&mut self, name: &str, dtype: ElemType, shape: &[usize], data: Cow<'a, [T]>)
    where
        [T]: ToOwned<Owned = Vec<T>>,
    {
        let n: usize = shape.iter().product();
        assert_eq!(n, data.len(), "tensor `{name}`: shape {shape:?} does not match {} values", data.len());
        let bytes: TensorData<'a> = match data {
            Cow::Borrowed(s) => Cow::Borrowed(bytes_of(s)),
            Cow::Owned(v) => Cow::Owned(bytes_of(&v).to_vec()),
        };
        self.push(name, dtype, shape, Payload::Bytes(bytes));
    }

    /// Adds an f32 tensor.
    pub fn push_f32(&mut self, name: &str, shape: &[usize], data: impl Into<Cow<'a, [f32]>>) -> &mut Self {
        self.push_slice(name, ElemType::F32, shape, data.into());
        self
    }

    /// Adds an f16 tensor.
    pub fn push_f16(&mut self, name: &str, shape: &[usize], data: impl Into<Cow<'a, [f16]>>) -> &mut Self {
        self.push_slice(name, ElemType::F16, shape, data.into());
        self
    }

    /// Adds a u32 tensor.
    pub fn push_u32(&mut self, name: &str, shape: &[usize], data: impl Into<Cow<'a, [u32]>>) -> &mut Self {
        self.push_slice(name, ElemType::U32, shape, data.into());
        self
    }

    /// Adds an i64 tensor.
    pub fn push_i64(&mut self, name: &str, shape: &[usize], data: impl Into<Cow<'a, [i64]>>) -> &mut Self {
        self.push_slice(name, ElemType::I64, shape, data.into());
        self
    }

    /// Adds a u8 tensor.
    pub fn push_u8(&mut self, name: &str, shape: &[usize], data: impl Into<Cow<'a, [u8]>>) -> &mut Self {
        self.push_slice(name, ElemType::U8, shape, data.into());
        self
    }

    /// Adds a candle tensor (copied to the host; F32, F16, BF16, F64, I64, U32 or U8).
    pub fn push_tensor(&mut self, name: &str, t: &Tensor) -> Result<&mut Self> {
        let dtype = ElemType::from_candle(t.dtype()).ok_or_else(|| ArtifactError::DType {
            path: PathBuf::from("<writer>"),
            name: name.to_string(),
            expected: "F32, F16, BF16, F64, I64, U32 or U8".into(),
            found: format!("{:?}", t.dtype()),
        })?;
        let shape = t.dims().to_vec();
        let flat = t.flatten_all()?;
        let bytes: Vec<u8> = match dtype {
            ElemType::F32 => bytes_of(&flat.to_vec1::<f32>()?).to_vec(),
            ElemType::F16 => bytes_of(&flat.to_vec1::<f16>()?).to_vec(),
            ElemType::BF16 => bytes_of(&flat.to_vec1::<bf16>()?).to_vec(),
            ElemType::F64 => bytes_of(&flat.to_vec1::<f64>()?).to_vec(),
            ElemType::I64 => bytes_of(&flat.to_vec1::<i64>()?).to_vec(),
            ElemType::U32 => bytes_of(&flat.to_vec1::<u32>()?).to_vec(),
            ElemType::U8 => flat.to_vec1::<u8>()?,
            ElemType::I32 => unreachable!("candle has no i32 tensors"),
        };
        self.push(name, dtype, &shape, Payload::Bytes(Cow::Owned(bytes)));
        Ok(self)
    }

    /// Adds a tensor whose bytes `fill` writes during [`ArtifactWriter::write`]; it must write
    /// exactly `product(shape) * dtype.size()` bytes (checked).
    pub fn push_lazy<F>(&mut self, name: &str, dtype: ElemType, shape: &[usize], fill: F) -> &mut Self
    where
        F: FnOnce(&mut dyn Write) -> io::Result<()> + 'a,
    {
        self.push(name, dtype, shape, Payload::Lazy(Box::new(fill)));
        self
    }

    fn header(&self) -> Vec<u8> {
        let mut map = serde_json::Map::new();
        map.insert("__metadata__".into(), serde_json::to_value(&self.metadata).expect("string map"));
        let mut offset = 0usize;
        for e in &self.entries {
            let len = e.shape.iter().product::<usize>() * e.dtype.size();
            map.insert(
                e.name.clone(),
                serde_json::json!({
                    "dtype": e.dtype.as_str(),
                    "shape": e.shape,
                    "data_offsets": [offset, offset + len],
                }),
            );
            offset += len;
        }
        let mut header = serde_json::to_vec(&serde_json::Value::Object(map)).expect("json");
        // Pad with spaces so that the data starts 8-byte aligned (as the reference writer does).
        while (header.len() + 8) % 8 != 0 {
            header.push(b' ');
        }
        header
    }

    /// Writes the artifact atomically to `path` (temporary file, sync, rename).
    pub fn write(self, path: &Path) -> Result<()> {
        let header = self.header();
        let io_err = |source| ArtifactError::Io { path: path.to_path_buf(), source };
        crate::atomic::write_atomic(path, move |w| {
            w.write_all(&(header.len() as u64).to_le_bytes())?;
            w.write_all(&header)?;
            for e in self.entries {
                let expected = e.shape.iter().product::<usize>() * e.dtype.size();
                match e.payload {
                    Payload::Bytes(b) => {
                        debug_assert_eq!(b.len(), expected);
                        w.write_all(&b)?;
                    }
                    Payload::Lazy(fill) => {
                        let mut counter = CountingWriter { inner: w, count: 0 };
                        fill(&mut counter)?;
                        if counter.count != expected {
                            return Err(io::Error::other(format!(
                                "tensor `{}`: the producer wrote {} bytes, expected {}",
                                e.name, counter.count, expected
                            )));
                        }
                    }
                }
            }
            Ok(())
        })
        .map_err(io_err)
    }
}

struct CountingWriter<'w, W: Write> {
    inner: &'w mut W,
    count: usize,
}

impl<W: Write> Write for CountingWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

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
        let io_err = |source| ArtifactError::Io { path: path.to_path_buf(), source };
        let file = File::open(path).map_err(io_err)?;
        // SAFETY: the map is read-only; artifacts are replaced by rename, never modified in place,
        // so the mapped file does not change under us.
        let mmap = unsafe { Mmap::map(&file) }.map_err(io_err)?;
        let corrupt = |reason: String| ArtifactError::Corrupt { path: path.to_path_buf(), reason };
        if mmap.len() < 8 {
            return Err(corrupt(format!("{} bytes, shorter than the 8-byte header length", mmap.len())));
        }
        let (n, meta) = safetensors::SafeTensors::read_metadata(&mmap).map_err(|e| corrupt(e.to_string()))?;
        let data_start = 8 + n;
        let mut tensors = BTreeMap::new();
        for (name, info) in meta.tensors() {
            let dtype_str = format!("{:?}", info.dtype);
            let dtype = ElemType::parse(&dtype_str).ok_or_else(|| ArtifactError::DType {
                path: path.to_path_buf(),
                name: name.clone(),
                expected: "a numeric dtype".into(),
                found: dtype_str.clone(),
            })?;
            let (start, end) = info.data_offsets;
            tensors.insert(name, TensorInfo { dtype, shape: info.shape.clone(), start, end });
        }
        if data_start + meta.data_len() > mmap.len() {
            return Err(corrupt(format!(
                "truncated: header promises {} data bytes, file holds {}",
                meta.data_len(),
                mmap.len().saturating_sub(data_start)
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
            (Some(n), Some(v)) => format!("`{n}` v{v}"),
            (Some(n), None) => format!("`{n}` without a version"),
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
        v.parse::<T>().map_err(|e| ArtifactError::BadMeta {
            path: self.path.clone(),
            key: key.to_string(),
            value: v.to_string(),
            reason: e.to_string(),
        })
    }

    /// A metadata value holding JSON, deserialised.
    pub fn meta_json<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<T> {
        let v = self.meta(key)?;
        serde_json::from_str(v).map_err(|e| ArtifactError::BadMeta {
            path: self.path.clone(),
            key: key.to_string(),
            value: if v.len() > 200 { format!("{}...", &v[..200]) } else { v.to_string() },
            reason: e.to_string(),
        })
    }

    /// An error about this artifact's metadata key `key`.
    pub fn bad_meta(&self, key: &str, reason: impl Into<String>) -> ArtifactError {
        ArtifactError::BadMeta {
            path: self.path.clone(),
            key: key.to_string(),
            value: self.metadata.get(key).cloned().unwrap_or_default(),
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
        Ok(&self.mmap[self.data_start + info.start..self.data_start + info.end])
    }

    /// A tensor converted to `f32` (from F32, F16, BF16 or F64).
    pub fn f32(&self, name: &str) -> Result<Vec<f32>> {
        let info = self.info(name)?.clone();
        let b = self.bytes(name)?;
        Ok(match info.dtype {
            ElemType::F32 => {
                b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
            }
            ElemType::F16 => b.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            ElemType::BF16 => b.chunks_exact(2).map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            ElemType::F64 => {
                b.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32).collect()
            }
            other => return Err(self.dtype_error(name, "a float dtype (F32, F16, BF16, F64)", other)),
        })
    }

    /// An integer tensor converted to `i64` (from I64, I32, U32 or U8).
    pub fn i64(&self, name: &str) -> Result<Vec<i64>> {
        let info = self.info(name)?.clone();
        let b = self.bytes(name)?;
        Ok(match info.dtype {
            ElemType::I64 => {
                b.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes"))).collect()
            }
            ElemType::I32 => {
                b.chunks_exact(4).map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64).collect()
            }
            ElemType::U32 => {
                b.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64).collect()
            }
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

    /// A tensor as a candle tensor on `device` (float dtypes keep their dtype).
    pub fn tensor(&self, name: &str, device: &Device) -> Result<Tensor> {
        let info = self.info(name)?.clone();
        let b = self.bytes(name)?;
        let t = match info.dtype {
            ElemType::F32
            | ElemType::F16
            | ElemType::BF16
            | ElemType::F64
            | ElemType::U8
            | ElemType::U32
            | ElemType::I64 => {
                let dt = match info.dtype {
                    ElemType::F32 => DType::F32,
                    ElemType::F16 => DType::F16,
                    ElemType::BF16 => DType::BF16,
                    ElemType::F64 => DType::F64,
                    ElemType::U8 => DType::U8,
                    ElemType::U32 => DType::U32,
                    _ => DType::I64,
                };
                Tensor::from_raw_buffer(b, dt, &info.shape, device)?
            }
            ElemType::I32 => {
                let v: Vec<i64> = self.i64(name)?;
                Tensor::from_vec(v, info.shape.as_slice(), device)?
            }
        };
        Ok(t)
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

#[cfg(test)]
mod tests {
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
    fn lazy_producer_writing_the_wrong_length_fails_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.safetensors");
        let mut w = ArtifactWriter::new(FMT);
        w.push_lazy("big", ElemType::F32, &[4], |out| out.write_all(&[0u8; 12]));
        let err = w.write(&path).unwrap_err().to_string();
        assert!(err.contains("wrote 12 bytes, expected 16"), "{err}");
        assert!(!path.exists());
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
