//! The buffers of the cuDNN calls: the element types they take ([`Dt`]), the activations a call
//! reads ([`View`]) and the uninitialised outputs it writes in full ([`Out`]).

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::CudaDevice;
use candle_core::{CudaStorage, DType};
use cudarc::cudnn::sys;
use cudarc::driver::sys::CUdeviceptr;
use cudarc::driver::{CudaSlice, CudaStream, CudaView, DevicePtr, DevicePtrMut, SyncOnDrop};
use half::bf16;

use super::{device, CResult};

/// The element type of the activations and filters a cuDNN call takes: `f32`, or `bf16` in the
/// mixed-precision mode ([`crate::Precision::Bf16`]). Per-channel batch-norm values (parameters,
/// statistics and their gradients) are `f32` with either, as cuDNN wants them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Dt {
    /// `f32`.
    F32,
    /// `bf16` (cuDNN computes in `f32`).
    Bf16,
}

impl Dt {
    /// The cuDNN element type of candle's `dtype`, if the ops here take it.
    pub(crate) fn of_dtype(dtype: DType) -> Option<Self> {
        match dtype {
            DType::F32 => Some(Dt::F32),
            DType::BF16 => Some(Dt::Bf16),
            _ => None,
        }
    }

    /// The element type of `s`; an error for any other than `f32` and `bf16`.
    pub(super) fn of(s: &CudaStorage) -> CResult<Self> {
        let dtype = s.dtype();
        Self::of_dtype(dtype).ok_or_else(|| {
            candle_core::Error::Msg(format!("the cuDNN ops take f32 or bf16 tensors, got {dtype:?}"))
        })
    }

    /// cuDNN's name of the type.
    pub(super) fn cudnn(self) -> sys::cudnnDataType_t {
        match self {
            Dt::F32 => sys::cudnnDataType_t::CUDNN_DATA_FLOAT,
            Dt::Bf16 => sys::cudnnDataType_t::CUDNN_DATA_BFLOAT16,
        }
    }
}

/// A contiguous device buffer of activations (or a filter) that a cuDNN call reads.
pub(crate) enum View<'a> {
    /// `f32` values.
    F32(CudaView<'a, f32>),
    /// `bf16` values.
    Bf16(CudaView<'a, bf16>),
}

impl View<'_> {
    /// The element type.
    pub(super) fn dt(&self) -> Dt {
        match self {
            View::F32(_) => Dt::F32,
            View::Bf16(_) => Dt::Bf16,
        }
    }

    /// The one element type of `views` (one call's activations), named `what` in the error when
    /// they differ.
    pub(super) fn common_dt(views: &[&View], what: &str) -> CResult<Dt> {
        let dt = views.first().map_or(Dt::F32, |v| v.dt());
        if views.iter().any(|v| v.dt() != dt) {
            let types: Vec<String> = views.iter().map(|v| format!("{:?}", v.dt())).collect();
            candle_core::bail!("{what}: arguments of different types ({})", types.join(", "));
        }
        Ok(dt)
    }

    /// The device pointer, valid while the guard lives.
    pub(super) fn ptr<'b>(&'b self, stream: &'b CudaStream) -> (CUdeviceptr, SyncOnDrop<'b>) {
        match self {
            View::F32(v) => v.device_ptr(stream),
            View::Bf16(v) => v.device_ptr(stream),
        }
    }
}

/// A new device buffer of activations (or a filter) for a cuDNN call to write in full.
pub(crate) enum Out {
    /// `f32` values.
    F32(CudaSlice<f32>),
    /// `bf16` values.
    Bf16(CudaSlice<bf16>),
}

impl Out {
    /// `len` values of `dt`, uninitialised: every call here passes `beta = 0`, with which cuDNN
    /// writes each output value without reading it, so a zero fill would be a wasted pass.
    pub(super) fn new(dev: &CudaDevice, dt: Dt, len: usize) -> CResult<Self> {
        Ok(match dt {
            Dt::F32 => Out::F32(uninit_f32(dev, len)?),
            // SAFETY: the buffer is written in full (by cuDNN or a strided copy) before it is
            // read; device memory is never read through a Rust reference.
            Dt::Bf16 => Out::Bf16(unsafe { dev.alloc::<bf16>(len)? }),
        })
    }

    /// The device pointer, valid while the guard lives.
    pub(super) fn ptr_mut<'b>(&'b mut self, stream: &'b CudaStream) -> (CUdeviceptr, SyncOnDrop<'b>) {
        match self {
            Out::F32(v) => v.device_ptr_mut(stream),
            Out::Bf16(v) => v.device_ptr_mut(stream),
        }
    }

    /// The buffer as candle's storage on `dev`.
    pub(super) fn into_storage(self, dev: CudaDevice) -> CudaStorage {
        match self {
            Out::F32(v) => CudaStorage::wrap_cuda_slice(v, dev),
            Out::Bf16(v) => CudaStorage::wrap_cuda_slice(v, dev),
        }
    }
}

/// A new storage of `len` values of `s`'s element type, uninitialised, for a copy that writes
/// every value (the filter transposes of the convolution).
pub(crate) fn uninit_like(s: &CudaStorage, len: usize) -> CResult<CudaStorage> {
    let dev = device(s);
    Ok(Out::new(&dev, Dt::of(s)?, len)?.into_storage(dev))
}

/// `len` uninitialised `f32` values, for a call that writes them in full (activations, or
/// per-channel results).
pub(super) fn uninit_f32(dev: &CudaDevice, len: usize) -> CResult<CudaSlice<f32>> {
    // SAFETY: the buffer is written in full (by cuDNN or a strided copy) before it is read;
    // device memory is never read through a Rust reference.
    unsafe { dev.alloc::<f32>(len) }
}
