//! The streaming, atomic artifact writer.
//!
//! [`ArtifactWriter`] collects metadata and tensors, then [`ArtifactWriter::write`] writes the
//! header and each tensor's bytes straight to a temporary file that is renamed into place. The
//! builder methods never panic: a bad input (a tensor name given twice, data that does not fill
//! its shape, a metadata value that cannot be serialised) is remembered and returned by `write`,
//! which then writes nothing.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use candle_core::{DType, Tensor};
use half::{bf16, f16};

use super::dtype::{bytes_of, ElemType, Element};
use super::error::{ArtifactError, Result};
use super::{Format, KEY_FORMAT, KEY_FORMAT_VERSION};

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
    /// `product(shape) * dtype.size()`, checked when the entry was added.
    len: usize,
    payload: Payload<'a>,
}

/// A problem found while building, reported by [`ArtifactWriter::write`] (which knows the path).
#[derive(Debug)]
enum Rejected {
    Duplicate { name: String },
    Length { name: String, shape: Vec<usize>, reason: String },
    Meta { key: String, reason: String },
}

impl Rejected {
    fn into_error(self, path: &Path) -> ArtifactError {
        let path = path.to_path_buf();
        match self {
            Rejected::Duplicate { name } => ArtifactError::DuplicateTensor { path, name },
            Rejected::Length { name, shape, reason } => {
                ArtifactError::DataLength { path, name, shape, reason }
            }
            Rejected::Meta { key, reason } => ArtifactError::MetaSerialize { path, key, reason },
        }
    }
}

/// Builds an artifact and writes it atomically.
///
/// The builder methods chain (`w.meta(..).push_f32(..)`) and never panic; the first invalid input
/// is returned as an [`ArtifactError`] by [`ArtifactWriter::write`], which then leaves the
/// destination untouched.
pub struct ArtifactWriter<'a> {
    format: Format,
    metadata: BTreeMap<String, String>,
    entries: Vec<Entry<'a>>,
    /// Sum of the entries' byte lengths (checked: it never overflows).
    total: usize,
    rejected: Option<Rejected>,
}

impl<'a> ArtifactWriter<'a> {
    /// An empty artifact of the given kind.
    pub fn new(format: Format) -> Self {
        let mut metadata = BTreeMap::new();
        metadata.insert(KEY_FORMAT.to_string(), format.name.to_string());
        metadata.insert(KEY_FORMAT_VERSION.to_string(), format.version.to_string());
        Self { format, metadata, entries: Vec::new(), total: 0, rejected: None }
    }

    /// The artifact kind being written.
    pub fn format(&self) -> Format {
        self.format
    }

    fn reject(&mut self, problem: Rejected) {
        self.rejected.get_or_insert(problem);
    }

    /// Sets a metadata key.
    pub fn meta(&mut self, key: &str, value: impl Into<String>) -> &mut Self {
        self.metadata.insert(key.to_string(), value.into());
        self
    }

    /// Sets a metadata key to the JSON serialisation of `value`. A value that cannot be
    /// serialised (a map with non-string keys, a failing `Serialize` impl) makes
    /// [`ArtifactWriter::write`] fail with [`ArtifactError::MetaSerialize`].
    pub fn meta_json<T: serde::Serialize + ?Sized>(&mut self, key: &str, value: &T) -> &mut Self {
        match serde_json::to_string(value) {
            Ok(s) => self.meta(key, s),
            Err(e) => {
                self.reject(Rejected::Meta { key: key.to_string(), reason: e.to_string() });
                self
            }
        }
    }

    /// Adds an entry after checking its name and size; `values` is the number of elements
    /// supplied (`None` for lazy entries, whose byte count is checked during the write).
    fn add(
        &mut self,
        name: &str,
        dtype: ElemType,
        shape: &[usize],
        values: Option<usize>,
        payload: Payload<'a>,
    ) {
        if self.entries.iter().any(|e| e.name == name) {
            return self.reject(Rejected::Duplicate { name: name.to_string() });
        }
        let length =
            |reason: String| Rejected::Length { name: name.to_string(), shape: shape.to_vec(), reason };
        let numel = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
        let len = numel.and_then(|n| n.checked_mul(dtype.size()));
        let (Some(numel), Some(len), Some(total)) = (numel, len, len.and_then(|l| self.total.checked_add(l)))
        else {
            return self.reject(length("its size in bytes overflows".into()));
        };
        if let Some(values) = values.filter(|&v| v != numel) {
            return self.reject(length(format!("{values} values were given, expected {numel}")));
        }
        self.total = total;
        self.entries.push(Entry { name: name.to_string(), dtype, shape: shape.to_vec(), len, payload });
    }

    /// Adds a tensor of any [`Element`] type; `data` holds `product(shape)` values in row-major
    /// order (checked by [`ArtifactWriter::write`]). Borrowed data is written without a copy.
    pub fn push<T: Element>(
        &mut self,
        name: &str,
        shape: &[usize],
        data: impl Into<Cow<'a, [T]>>,
    ) -> &mut Self {
        let data = data.into();
        let values = data.len();
        let bytes: TensorData<'a> = match data {
            Cow::Borrowed(s) => Cow::Borrowed(bytes_of(s)),
            Cow::Owned(v) => Cow::Owned(bytes_of(&v).to_vec()),
        };
        self.add(name, T::ELEM, shape, Some(values), Payload::Bytes(bytes));
        self
    }

    /// Adds an f32 tensor.
    pub fn push_f32(&mut self, name: &str, shape: &[usize], data: impl Into<Cow<'a, [f32]>>) -> &mut Self {
        self.push(name, shape, data)
    }

    /// Adds an f16 tensor.
    pub fn push_f16(&mut self, name: &str, shape: &[usize], data: impl Into<Cow<'a, [f16]>>) -> &mut Self {
        self.push(name, shape, data)
    }

    /// Adds a bf16 tensor.
    pub fn push_bf16(&mut self, name: &str, shape: &[usize], data: impl Into<Cow<'a, [bf16]>>) -> &mut Self {
        self.push(name, shape, data)
    }

    /// Adds a u32 tensor.
    pub fn push_u32(&mut self, name: &str, shape: &[usize], data: impl Into<Cow<'a, [u32]>>) -> &mut Self {
        self.push(name, shape, data)
    }

    /// Adds an i64 tensor.
    pub fn push_i64(&mut self, name: &str, shape: &[usize], data: impl Into<Cow<'a, [i64]>>) -> &mut Self {
        self.push(name, shape, data)
    }

    /// Adds a u8 tensor.
    pub fn push_u8(&mut self, name: &str, shape: &[usize], data: impl Into<Cow<'a, [u8]>>) -> &mut Self {
        self.push(name, shape, data)
    }

    /// Adds a candle tensor (copied to the host; F32, F16, BF16, F64, I64, U32 or U8).
    ///
    /// # Errors
    /// Another dtype, or a failure copying the tensor to the host.
    pub fn push_tensor(&mut self, name: &str, t: &Tensor) -> Result<&mut Self> {
        fn host<T: Element + candle_core::WithDType>(t: &Tensor) -> Result<Vec<T>> {
            Ok(t.flatten_all()?.to_vec1::<T>()?)
        }
        let shape = t.dims().to_vec();
        match t.dtype() {
            DType::F32 => Ok(self.push(name, &shape, host::<f32>(t)?)),
            DType::F16 => Ok(self.push(name, &shape, host::<f16>(t)?)),
            DType::BF16 => Ok(self.push(name, &shape, host::<bf16>(t)?)),
            DType::F64 => Ok(self.push(name, &shape, host::<f64>(t)?)),
            DType::I64 => Ok(self.push(name, &shape, host::<i64>(t)?)),
            DType::U32 => Ok(self.push(name, &shape, host::<u32>(t)?)),
            DType::U8 => Ok(self.push(name, &shape, host::<u8>(t)?)),
            other => Err(ArtifactError::DType {
                path: PathBuf::from("<writer>"),
                name: name.to_string(),
                expected: "F32, F16, BF16, F64, I64, U32 or U8".into(),
                found: format!("{other:?}"),
            }),
        }
    }

    /// Adds a tensor whose bytes `fill` writes during [`ArtifactWriter::write`]; it must write
    /// exactly `product(shape) * dtype.size()` bytes (checked).
    pub fn push_lazy<F>(&mut self, name: &str, dtype: ElemType, shape: &[usize], fill: F) -> &mut Self
    where
        F: FnOnce(&mut dyn Write) -> io::Result<()> + 'a,
    {
        self.add(name, dtype, shape, None, Payload::Lazy(Box::new(fill)));
        self
    }

    fn header(&self) -> Vec<u8> {
        use serde_json::Value;
        let mut map = serde_json::Map::new();
        let metadata = self.metadata.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect();
        map.insert("__metadata__".into(), Value::Object(metadata));
        let mut offset = 0usize;
        for e in &self.entries {
            map.insert(
                e.name.clone(),
                serde_json::json!({
                    "dtype": e.dtype.as_str(),
                    "shape": e.shape,
                    "data_offsets": [offset, offset + e.len],
                }),
            );
            offset += e.len;
        }
        let mut header = Value::Object(map).to_string().into_bytes();
        // Pad with spaces so that the data starts 8-byte aligned (as the reference writer does).
        while !(header.len() + 8).is_multiple_of(8) {
            header.push(b' ');
        }
        header
    }

    /// Writes the artifact atomically to `path` (temporary file, sync, rename).
    ///
    /// # Errors
    /// The first invalid input given to the builder ([`ArtifactError::DuplicateTensor`],
    /// [`ArtifactError::DataLength`], [`ArtifactError::MetaSerialize`]; nothing is written then),
    /// a lazy producer's failure or wrong byte count, or an I/O error. On error the destination is
    /// left as it was.
    pub fn write(self, path: &Path) -> Result<()> {
        if let Some(problem) = self.rejected {
            return Err(problem.into_error(path));
        }
        let header = self.header();
        let io_err = |error| ArtifactError::Io { path: path.to_path_buf(), error };
        crate::atomic::write_atomic(path, move |w| {
            w.write_all(&(header.len() as u64).to_le_bytes())?;
            w.write_all(&header)?;
            for e in self.entries {
                match e.payload {
                    Payload::Bytes(b) => w.write_all(&b)?,
                    Payload::Lazy(fill) => {
                        let mut counter = CountingWriter { inner: w, count: 0 };
                        fill(&mut counter)?;
                        if counter.count != e.len {
                            return Err(io::Error::other(format!(
                                "tensor `{}`: the producer wrote {} bytes, expected {}",
                                e.name, counter.count, e.len
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

#[cfg(test)]
mod tests {
    use super::super::{Artifact, Format};
    use super::*;

    const FMT: Format = Format { name: "lt.test", version: 2 };

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

    /// Writes `w` over an existing artifact and returns the error; the old file must survive.
    fn refused(w: ArtifactWriter<'_>) -> String {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.safetensors");
        let mut old = ArtifactWriter::new(FMT);
        old.push_u8("old", &[1], vec![7u8]);
        old.write(&path).unwrap();
        let err = w.write(&path).unwrap_err().to_string();
        assert!(err.contains("a.safetensors"), "{err}");
        let a = Artifact::open(&path, FMT).unwrap();
        assert_eq!(a.i64("old").unwrap(), vec![7], "the previous file was replaced");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "a temporary was left");
        err
    }

    #[test]
    fn a_duplicate_tensor_name_is_an_error_not_a_panic() {
        let mut w = ArtifactWriter::new(FMT);
        w.push_f32("x", &[1], vec![1.0]).push_u8("x", &[1], vec![1u8]).push_u8("later", &[1], vec![2u8]);
        let err = refused(w);
        assert!(err.contains("tensor `x` was added twice"), "{err}");
        // Through push_tensor and push_lazy as well.
        let t = Tensor::new(&[1.0f32], &candle_core::Device::Cpu).unwrap();
        let mut w = ArtifactWriter::new(FMT);
        w.push_tensor("t", &t).unwrap().push_tensor("t", &t).unwrap();
        assert!(refused(w).contains("tensor `t` was added twice"));
        let mut w = ArtifactWriter::new(FMT);
        w.push_lazy("l", ElemType::U8, &[0], |_| Ok(())).push_lazy("l", ElemType::U8, &[0], |_| Ok(()));
        assert!(refused(w).contains("tensor `l` was added twice"));
    }

    #[test]
    fn data_not_filling_its_shape_is_an_error_not_a_panic() {
        let mut w = ArtifactWriter::new(FMT);
        w.push_f32("x", &[2, 3], vec![1.0; 5]);
        let err = refused(w);
        assert!(err.contains("tensor `x` has shape [2, 3] but 5 values were given, expected 6"), "{err}");
    }

    #[test]
    fn a_shape_whose_size_overflows_is_an_error_not_a_panic() {
        let mut w = ArtifactWriter::new(FMT);
        w.push_lazy("huge", ElemType::F64, &[usize::MAX / 4, 2], |_| Ok(()));
        let err = refused(w);
        assert!(err.contains("tensor `huge` has shape") && err.contains("overflows"), "{err}");
        let mut w = ArtifactWriter::new(FMT);
        w.push_lazy("a", ElemType::U8, &[usize::MAX - 1], |_| Ok(())).push_lazy(
            "b",
            ElemType::U8,
            &[2],
            |_| Ok(()),
        );
        let err = refused(w);
        assert!(err.contains("tensor `b`") && err.contains("overflows"), "{err}");
    }

    #[test]
    fn metadata_that_cannot_be_serialised_is_an_error_not_a_panic() {
        // JSON object keys must be strings: a map keyed by tuples does not serialise.
        let map: BTreeMap<(u8, u8), u8> = [((1, 2), 3)].into_iter().collect();
        let mut w = ArtifactWriter::new(FMT);
        w.meta_json("pairs", &map).push_u8("x", &[1], vec![1u8]);
        let err = refused(w);
        assert!(err.contains("metadata `pairs` cannot be serialised to JSON"), "{err}");
    }

    #[test]
    fn the_generic_push_and_the_typed_pushers_agree() {
        let dir = tempfile::tempdir().unwrap();
        let (p1, p2) = (dir.path().join("1"), dir.path().join("2"));
        let mut w = ArtifactWriter::new(FMT);
        w.push_i64("a", &[2], vec![1i64, -1]).push_bf16("b", &[1], vec![bf16::from_f32(0.5)]);
        w.write(&p1).unwrap();
        let mut w = ArtifactWriter::new(FMT);
        w.push::<i64>("a", &[2], vec![1, -1]).push::<bf16>("b", &[1], vec![bf16::from_f32(0.5)]);
        w.write(&p2).unwrap();
        assert_eq!(std::fs::read(&p1).unwrap(), std::fs::read(&p2).unwrap());
        let a = Artifact::open(&p1, FMT).unwrap();
        assert_eq!(a.info("b").unwrap().dtype, ElemType::BF16);
        assert_eq!(a.f32("b").unwrap(), vec![0.5]);
    }

    #[test]
    fn an_unsupported_candle_dtype_is_refused_by_push_tensor() {
        let t = Tensor::new(&[1i32], &candle_core::Device::Cpu).unwrap();
        let mut w = ArtifactWriter::new(FMT);
        let err = w.push_tensor("i", &t).err().unwrap().to_string();
        assert!(err.contains("tensor `i` has dtype I32"), "{err}");
    }
}
