//! The fast backend on CUDA through cuDNN (feature `cudnn`): convolution forward and both
//! gradients ([`conv`]), batch norm in training and inference mode with its backward pass
//! ([`norm`]), max pooling and its backward pass ([`pool`]), and the residual add + ReLU and
//! the ReLU's gradient ([`elementwise`]).
//!
//! Activations are NHWC and convolution filters channels-last (`[C_out, k, k, C_in]`, cuDNN's
//! NHWC filter format): the descriptors agree on one layout, the one Hopper's tensor cores run
//! fastest. They are `f32`, or `bf16` in the mixed-precision mode ([`buffer`]). Everything stays
//! on the device. Descriptors, the algorithm chosen for each
//! convolution and a workspace are cached per thread and device, keyed by shape.
//!
//! cudarc's safe cuDNN wrappers keep their raw descriptors private and pick only the first
//! algorithm of cuDNN's list, so this module calls cuDNN through cudarc's `sys` layer with its own
//! small RAII wrappers.

mod algos;
mod buffer;
pub(crate) mod conv;
pub(crate) mod elementwise;
pub(crate) mod memory;
pub(crate) mod norm;
pub(crate) mod pool;

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::c_void;
use std::rc::Rc;
use std::sync::Arc;

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::{CudaDevice, DeviceId};
use candle_core::{CudaStorage, DType, Layout};
use cudarc::cudnn::sys;
use cudarc::driver::sys::CUdeviceptr;
use cudarc::driver::{CudaSlice, CudaStream, CudaView};
use half::bf16;

use crate::ops::conv::ConvShape;
use crate::ops::elementwise::{Nhwc, Window};
use buffer::{uninit_f32, Out, View};
pub(crate) use buffer::{uninit_like, Dt};

type CResult<T> = candle_core::Result<T>;

/// A failed cuDNN call: which one, and cuDNN's status.
#[derive(Debug, thiserror::Error)]
#[error("cuDNN {call} failed: {status:?} (run with CUDNN_LOGLEVEL_DBG=2 CUDNN_LOGDEST_DBG=stderr for cuDNN's reason)")]
pub(crate) struct CudnnError {
    call: &'static str,
    status: sys::cudnnStatus_t,
}

/// `Ok` for `CUDNN_STATUS_SUCCESS`, otherwise the error naming `call`.
fn check(call: &'static str, status: sys::cudnnStatus_t) -> CResult<()> {
    if status == sys::cudnnStatus_t::CUDNN_STATUS_SUCCESS {
        Ok(())
    } else {
        Err(candle_core::Error::wrap(CudnnError { call, status }))
    }
}

macro_rules! descriptor {
    ($(#[$doc:meta])* $name:ident, $raw:ty, $create:ident, $destroy:ident) => {
        $(#[$doc])*
        pub(crate) struct $name($raw);

        impl $name {
            fn new() -> CResult<Self> {
                let mut d: $raw = std::ptr::null_mut();
                // SAFETY: cuDNN writes a new descriptor into `d`.
                check(stringify!($create), unsafe { sys::$create(&mut d) })?;
                Ok(Self(d))
            }
        }

        impl Drop for $name {
            fn drop(&mut self) {
                // SAFETY: the descriptor was created by `new` and is destroyed exactly once.
                let _ = unsafe { sys::$destroy(self.0) };
            }
        }
    };
}

descriptor!(
    /// A tensor descriptor.
    TensorDesc, sys::cudnnTensorDescriptor_t, cudnnCreateTensorDescriptor, cudnnDestroyTensorDescriptor
);
descriptor!(
    /// A filter descriptor.
    FilterDesc, sys::cudnnFilterDescriptor_t, cudnnCreateFilterDescriptor, cudnnDestroyFilterDescriptor
);
descriptor!(
    /// A convolution descriptor.
    ConvDesc,
    sys::cudnnConvolutionDescriptor_t,
    cudnnCreateConvolutionDescriptor,
    cudnnDestroyConvolutionDescriptor
);
descriptor!(
    /// A pooling descriptor.
    PoolDesc, sys::cudnnPoolingDescriptor_t, cudnnCreatePoolingDescriptor, cudnnDestroyPoolingDescriptor
);
descriptor!(
    /// A tensor-operation descriptor.
    OpTensorDesc,
    sys::cudnnOpTensorDescriptor_t,
    cudnnCreateOpTensorDescriptor,
    cudnnDestroyOpTensorDescriptor
);
descriptor!(
    /// An activation descriptor.
    ActDesc,
    sys::cudnnActivationDescriptor_t,
    cudnnCreateActivationDescriptor,
    cudnnDestroyActivationDescriptor
);

/// The shape and type of an op's input: what a refusal of cuDNN's can depend on.
#[derive(Clone, Debug)]
struct Input {
    dims: Vec<usize>,
    dtype: DType,
}

impl Input {
    fn of(t: &candle_core::Tensor) -> Self {
        Self { dims: t.dims().to_vec(), dtype: t.dtype() }
    }

    /// Whether `t` has this shape and type.
    fn is_of(&self, t: &candle_core::Tensor) -> bool {
        self.dims == t.dims() && self.dtype == t.dtype()
    }
}

/// The ops cuDNN has refused in this process, with the input each was refused for (see
/// [`fall_back`]).
static REFUSED: std::sync::Mutex<Vec<(&'static str, Input)>> = std::sync::Mutex::new(Vec::new());

/// The ops that have run out of memory in this process (each warned about once, see [`fall_back`]).
static OUT_OF_MEMORY: std::sync::Mutex<Vec<&'static str>> = std::sync::Mutex::new(Vec::new());

/// What runs an op that cuDNN refused (see [`fall_back`]).
#[derive(Clone, Copy, Debug)]
pub(crate) enum Instead {
    /// candle's kernels.
    Candle,
    /// cuDNN on the `f32` values (a `bf16` op cast up and its result back).
    CudnnInF32,
}

/// Records that cuDNN refused op `what` on input `on` (its shape and type), which then runs
/// `instead` (slower, same results); [`refused`] then answers `true` for them. The first refusal
/// of each op is warned about, naming the op, the input, cuDNN's error and what runs it; those
/// for other inputs are logged at debug level. Keyed by input, so that an op cuDNN refuses for
/// some shapes only runs the same way for each shape throughout a process.
///
/// Running out of memory (`ops::out_of_memory`) is not a refusal: nothing is recorded (the next
/// call asks cuDNN again), the device's memory pool hands back the freed memory it keeps for
/// reuse (cuDNN's own allocations do not come from it), and the caller's fallback runs this
/// once; the first time for each op is warned about, later ones are logged at debug level.
pub(crate) fn fall_back(
    what: &'static str,
    on: &candle_core::Tensor,
    instead: Instead,
    e: &candle_core::Error,
) {
    let instead = match instead {
        Instead::Candle => "candle's kernels",
        Instead::CudnnInF32 => "cuDNN in f32",
    };
    if super::out_of_memory(e) {
        let released = if memory::release_kept(on.device()) {
            "the pool's kept memory was released"
        } else {
            "the pool's kept memory could not be released"
        };
        let (dims, dtype) = (on.dims(), on.dtype());
        let first = OUT_OF_MEMORY.lock().map(|mut ops| {
            let first = !ops.contains(&what);
            if first {
                ops.push(what);
            }
            first
        });
        if first.unwrap_or(true) {
            tracing::warn!(
                "cuDNN ran out of memory in {what} for {dims:?} {dtype:?} ({e}); {released}; using {instead} this once"
            );
        } else {
            tracing::debug!(
                "cuDNN ran out of memory in {what} for {dims:?} {dtype:?} again ({e}); {released}; using {instead} this once"
            );
        }
        return;
    }
    let input = Input::of(on);
    let first = REFUSED.lock().map(|mut w| {
        let first = !w.iter().any(|(op, _)| *op == what);
        if !w.iter().any(|(op, i)| *op == what && i.is_of(on)) {
            w.push((what, input.clone()));
        }
        first
    });
    let Input { dims, dtype } = input;
    if first.unwrap_or(true) {
        tracing::warn!("cuDNN refused {what} for {dims:?} {dtype:?} ({e}); using {instead} for it");
    } else {
        tracing::debug!("cuDNN refused {what} for {dims:?} {dtype:?} too ({e}); using {instead} for it");
    }
}

/// Whether cuDNN has refused op `what` for an input of the shape and type of `on` before in this
/// process (so that the caller goes straight to its fallback instead of asking again).
pub(crate) fn refused(what: &'static str, on: &candle_core::Tensor) -> bool {
    // Asked at every call of the ops that can be refused: no allocation.
    REFUSED.lock().map(|w| w.iter().any(|(op, i)| *op == what && i.is_of(on))).unwrap_or(false)
}

/// `attempt` (a cuDNN call on input `on`), or `fallback` (what runs `instead`) once cuDNN has
/// refused `what` for an input like `on`: the refusal is recorded ([`fall_back`]) and `attempt`
/// is not tried again for such an input in this process (unless it ran out of memory: see
/// [`fall_back`]).
pub(crate) fn or_fall_back<R>(
    what: &'static str,
    on: &candle_core::Tensor,
    instead: Instead,
    attempt: impl FnOnce() -> CResult<R>,
    fallback: impl FnOnce() -> CResult<R>,
) -> CResult<R> {
    if refused(what, on) {
        return fallback();
    }
    attempt().or_else(|e| {
        fall_back(what, on, instead, &e);
        fallback()
    })
}

/// `i32` dims for cuDNN (which takes C ints).
fn ints<const N: usize>(v: [usize; N]) -> CResult<[i32; N]> {
    let mut out = [0i32; N];
    for (o, x) in out.iter_mut().zip(v) {
        *o = i32::try_from(x)
            .map_err(|_| candle_core::Error::Msg(format!("cuDNN: dimension {x} exceeds i32")))?;
    }
    Ok(out)
}

impl TensorDesc {
    /// A packed NHWC tensor of `s` with elements of `dt`.
    fn nhwc(s: Nhwc, dt: Dt) -> CResult<Self> {
        let d = Self::new()?;
        let [n, c, h, w] = ints([s.n, s.c, s.h, s.w])?;
        let (fmt, ty) = (sys::cudnnTensorFormat_t::CUDNN_TENSOR_NHWC, dt.cudnn());
        // SAFETY: `d` is a live descriptor.
        check("cudnnSetTensor4dDescriptor", unsafe {
            sys::cudnnSetTensor4dDescriptor(d.0, fmt, ty, n, c, h, w)
        })?;
        Ok(d)
    }

    /// The `1 x C x 1 x 1` descriptor of spatial batch-norm parameters for activations `x`.
    /// The parameters and statistics are `f32` buffers whatever `x` holds: a derived type other
    /// than FLOAT (the documentation promises FLOAT for HALF input; bf16 is assumed to follow)
    /// is refused, so that the op runs another way instead of misreading them.
    fn batch_norm_params(x: &TensorDesc) -> CResult<Self> {
        let d = Self::new()?;
        let mode = sys::cudnnBatchNormMode_t::CUDNN_BATCHNORM_SPATIAL;
        // SAFETY: both descriptors are live; `x` is set.
        check("cudnnDeriveBNTensorDescriptor", unsafe {
            sys::cudnnDeriveBNTensorDescriptor(d.0, x.0, mode)
        })?;
        // The type read as a plain integer (a value the bindings' enum lacks stays defined).
        let mut ty = u32::MAX;
        let mut dims = [0i32; 8];
        let [n, c, h, w, ns, cs, hs, ws] = dims.each_mut();
        // SAFETY: `d` is live and set; every out-pointer is to a local of the size cuDNN writes
        // (`cudnnDataType_t` is a C enum, 32 bits).
        check("cudnnGetTensor4dDescriptor", unsafe {
            sys::cudnnGetTensor4dDescriptor(d.0, (&mut ty as *mut u32).cast(), n, c, h, w, ns, cs, hs, ws)
        })?;
        if ty != sys::cudnnDataType_t::CUDNN_DATA_FLOAT as u32 {
            tracing::debug!("cuDNN derived batch-norm parameters of type {ty} (FLOAT is 0)");
            return Err(candle_core::Error::wrap(CudnnError {
                call: "cudnnDeriveBNTensorDescriptor (parameters not FLOAT)",
                status: sys::cudnnStatus_t::CUDNN_STATUS_NOT_SUPPORTED,
            }));
        }
        Ok(d)
    }
}

/// A cuDNN handle bound to a device's stream.
struct Handle(sys::cudnnHandle_t);

impl Handle {
    fn new(stream: &CudaStream) -> CResult<Self> {
        stream.context().bind_to_thread().map_err(candle_core::Error::wrap)?;
        let mut h: sys::cudnnHandle_t = std::ptr::null_mut();
        // SAFETY: cuDNN writes a new handle into `h`.
        check("cudnnCreate", unsafe { sys::cudnnCreate(&mut h) })?;
        let handle = Self(h);
        // SAFETY: the handle is live and the stream outlives it (`Ctx` keeps the stream).
        check("cudnnSetStream", unsafe {
            sys::cudnnSetStream(handle.0, stream.cu_stream() as sys::cudaStream_t)
        })?;
        Ok(handle)
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        // SAFETY: the handle was created by `new` and is destroyed exactly once.
        let _ = unsafe { sys::cudnnDestroy(self.0) };
    }
}

/// Per thread and device: the handle, cached descriptors and plans, and the workspace. Fields
/// drop in order, so the handle and buffers go before the stream and device that own them.
pub(crate) struct Ctx {
    handle: Handle,
    convs: HashMap<conv::Key, conv::ConvPlan>,
    /// Convolution shapes (and arithmetic) cuDNN has no plan for (warned about once).
    refused: std::collections::HashSet<(ConvShape, conv::Math)>,
    tensors: HashMap<(Nhwc, Dt), Rc<TensorDesc>>,
    bn_params: HashMap<(Nhwc, Dt), Rc<TensorDesc>>,
    pools: HashMap<Window, Rc<PoolDesc>>,
    /// The ReLU activation and the addition, described once.
    relu: Option<Rc<ActDesc>>,
    add: Option<Rc<OpTensorDesc>>,
    workspace: Option<CudaSlice<u8>>,
    stream: Arc<CudaStream>,
    dev: CudaDevice,
}

thread_local! {
    static CTX: RefCell<HashMap<DeviceId, Ctx>> = RefCell::new(HashMap::new());
}

/// Runs `f` with this thread's cuDNN context for `dev`.
fn with_ctx<R>(dev: &CudaDevice, f: impl FnOnce(&mut Ctx) -> CResult<R>) -> CResult<R> {
    CTX.with(|map| {
        let mut map =
            map.try_borrow_mut().map_err(|_| candle_core::Error::Msg("cuDNN context re-entered".into()))?;
        let ctx = match map.entry(dev.id()) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                let stream = dev.cuda_stream();
                e.insert(Ctx {
                    handle: Handle::new(&stream)?,
                    convs: HashMap::new(),
                    refused: Default::default(),
                    tensors: HashMap::new(),
                    bn_params: HashMap::new(),
                    pools: HashMap::new(),
                    relu: None,
                    add: None,
                    workspace: None,
                    stream,
                    dev: dev.clone(),
                })
            }
        };
        f(ctx)
    })
}

impl Ctx {
    /// The cached NHWC descriptor of `s` with elements of `dt`.
    fn tensor(&mut self, s: Nhwc, dt: Dt) -> CResult<Rc<TensorDesc>> {
        if let Some(d) = self.tensors.get(&(s, dt)) {
            return Ok(d.clone());
        }
        let d = Rc::new(TensorDesc::nhwc(s, dt)?);
        self.tensors.insert((s, dt), d.clone());
        Ok(d)
    }

    /// The cached batch-norm parameter descriptor for activations of shape `s` and type `dt`
    /// (`f32` parameters for both types: [`TensorDesc::batch_norm_params`] checks).
    fn bn_params(&mut self, s: Nhwc, dt: Dt) -> CResult<Rc<TensorDesc>> {
        if let Some(d) = self.bn_params.get(&(s, dt)) {
            return Ok(d.clone());
        }
        let d = Rc::new(TensorDesc::batch_norm_params(&*self.tensor(s, dt)?)?);
        self.bn_params.insert((s, dt), d.clone());
        Ok(d)
    }

    /// Makes the workspace at least `bytes` long (operations on the stream are ordered, so one
    /// workspace serves them all).
    fn ensure_workspace(&mut self, bytes: usize) -> CResult<()> {
        if self.workspace.as_ref().is_none_or(|w| w.len() < bytes) {
            self.workspace = None;
            self.workspace = Some(self.dev.alloc_zeros::<u8>(bytes.max(256))?);
        }
        Ok(())
    }
}

/// The offsets of the contiguous `len` values of `(s, l)`, checked against the buffer.
fn span(l: &Layout, len: usize, buffer: usize, what: &str) -> CResult<(usize, usize)> {
    let (a, b) = l
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg(format!("{what}: cuDNN ops need contiguous tensors")))?;
    if b - a != len {
        candle_core::bail!("{what}: {} values where cuDNN's descriptor describes {len}", b - a);
    }
    if b > buffer {
        candle_core::bail!("{what}: layout ends at {b}, the buffer holds {buffer}");
    }
    Ok((a, b))
}

/// The contiguous activations (or filter) of `s` with layout `l`, `f32` or `bf16`, checked to
/// hold exactly `len` values (the length the descriptors describe).
fn view<'a>((s, l): (&'a CudaStorage, &Layout), len: usize, what: &str) -> CResult<View<'a>> {
    Ok(match Dt::of(s)? {
        Dt::F32 => {
            let slice = s.as_cuda_slice::<f32>()?;
            let (a, b) = span(l, len, slice.len(), what)?;
            View::F32(slice.slice(a..b))
        }
        Dt::Bf16 => {
            let slice = s.as_cuda_slice::<bf16>()?;
            let (a, b) = span(l, len, slice.len(), what)?;
            View::Bf16(slice.slice(a..b))
        }
    })
}

/// The contiguous `f32` values of `s` with layout `l` (per-channel batch-norm values), checked
/// to hold exactly `len` values.
fn view_f32<'a>((s, l): (&'a CudaStorage, &Layout), len: usize, what: &str) -> CResult<CudaView<'a, f32>> {
    if s.dtype() != DType::F32 {
        candle_core::bail!("{what}: f32 expected, got {:?}", s.dtype());
    }
    let slice = s.as_cuda_slice::<f32>()?;
    let (a, b) = span(l, len, slice.len(), what)?;
    Ok(slice.slice(a..b))
}

/// Runs `f(ctx, dt, a, b, out)` on the device pointers of two contiguous inputs `a`, `b` of
/// `a_len` and `b_len` values and one element type `dt` (named `what` in errors) and of a new
/// buffer of `out_len` values of `dt`, which it returns: the frame of every cuDNN call here with
/// two inputs and one output.
fn two_to_one(
    a: (&CudaStorage, &Layout),
    b: (&CudaStorage, &Layout),
    (a_len, b_len, out_len): (usize, usize, usize),
    what: [&str; 2],
    f: impl FnOnce(&mut Ctx, Dt, *const c_void, *const c_void, *mut c_void) -> CResult<()>,
) -> CResult<CudaStorage> {
    let dev = device(a.0);
    let (av, bv) = (view(a, a_len, what[0])?, view(b, b_len, what[1])?);
    let dt = View::common_dt(&[&av, &bv], &format!("{} and {}", what[0], what[1]))?;
    let mut out = Out::new(&dev, dt, out_len)?;
    let stream = dev.cuda_stream();
    {
        let (ap, _ga) = av.ptr(&stream);
        let (bp, _gb) = bv.ptr(&stream);
        let (op, _go) = out.ptr_mut(&stream);
        with_ctx(&dev, |ctx| f(ctx, dt, cptr(ap), cptr(bp), mptr(op)))?;
    }
    Ok(out.into_storage(dev))
}

/// A device pointer as cuDNN's `const void*`.
fn cptr(p: CUdeviceptr) -> *const c_void {
    p as usize as *const c_void
}

/// A device pointer as cuDNN's `void*`.
fn mptr(p: CUdeviceptr) -> *mut c_void {
    p as usize as *mut c_void
}

/// Scaling factors `alpha = 1`, `beta = 0` (overwrite the output), as cuDNN's `const void*` to
/// host floats (the scaling type of `f32` and of `bf16` data).
const ONE: f32 = 1.0;
const ZERO: f32 = 0.0;

fn one() -> *const c_void {
    (&ONE as *const f32).cast()
}

fn zero() -> *const c_void {
    (&ZERO as *const f32).cast()
}

/// The device of a CUDA storage.
fn device(s: &CudaStorage) -> CudaDevice {
    s.device().clone()
}
