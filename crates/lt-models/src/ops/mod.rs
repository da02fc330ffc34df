//! The backbones' ops: convolution, batch norm (+ ReLU), residual add, shortcut and pooling on
//! NHWC activations, behind one API ([`Backend`]) with three routes:
//!
//! - **host**: [`Backend::Fast`] on the CPU (`f32`): candle custom ops (`ops::custom`) with explicit
//!   backward passes over the project's kernels ([`conv`], [`norm`], [`elementwise`]);
//! - **cuDNN**: [`Backend::Fast`] on CUDA (`f32`, or `bf16` activations and filters with `f32`
//!   batch-norm values in the mixed-precision mode; feature `cudnn`): convolution, batch norm,
//!   max pooling and the residual add + ReLU through cuDNN (channels-last activations and
//!   filters), the other element-wise ops through candle's CUDA kernels; nothing is copied to
//!   the host;
//! - **stock**: [`Backend::Candle`], or any other device or dtype: candle's own ops (`ops::stock`),
//!   the "stock candle" baseline of the benchmark and the reference of the op tests.
//!
//! Every route computes the same function and the same gradients; the tests check the host route
//! against the stock one, and `lt selftest --device cuda` checks the cuDNN route against PyTorch.
//! Activations are `[N, H, W, C]`; convolution weights keep PyTorch's `[C_out, C_in, k, k]`.

pub mod conv;
#[cfg(feature = "cudnn")]
mod cudnn;
mod custom;
pub mod elementwise;
mod explicit;
pub(crate) mod kernels;
pub mod norm;
pub(crate) mod stock;
mod strided;
mod strip;
pub(crate) mod winograd;

use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{DType, Tensor};

pub(crate) use explicit::BnSaved;
pub use kernels::{cpu_features, gemm_isa, kernel_name, Isa};

type CResult<T> = candle_core::Result<T>;

/// Which implementation runs the backbone ops.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Backend {
    /// The project's kernels on CPU (`f32`) and cuDNN on CUDA (`f32` and `bf16`); candle's ops
    /// elsewhere.
    #[default]
    Fast,
    /// candle's stock ops everywhere.
    Candle,
}

/// Batch statistics of one training-mode batch-norm call (detached).
#[derive(Clone, Debug)]
pub struct BatchStats {
    /// Per-channel mean, `[C]`.
    pub mean: Tensor,
    /// Per-channel biased variance, `[C]`.
    pub var: Tensor,
    /// Number of values per channel (`N * H * W`).
    pub count: usize,
}

/// Output side of a `k`-wide window (convolution or pooling) sliding with `stride` over `size`
/// values padded with `pad` on each side: `(size + 2 pad - k) / stride + 1`; `None` when the
/// window does not fit or the stride is zero.
pub fn window_out(size: usize, k: usize, stride: usize, pad: usize) -> Option<usize> {
    (stride > 0 && k > 0 && size + 2 * pad >= k).then(|| (size + 2 * pad - k) / stride + 1)
}

static CUDNN_TF32: AtomicBool = AtomicBool::new(false);

/// Allows cuDNN to use TF32 tensor-core math in `f32` convolutions (PyTorch's default, about 10
/// bits of mantissa in the products). Off by default: the project's `f32` convolutions use full
/// FP32 arithmetic (`CUDNN_FMA_MATH`), which the golden checks need. No effect on the CPU.
pub fn set_cudnn_tf32(allow: bool) {
    CUDNN_TF32.store(allow, Ordering::Relaxed);
}

/// Whether cuDNN may use TF32 math in `f32` convolutions (see [`set_cudnn_tf32`]).
pub fn cudnn_tf32() -> bool {
    CUDNN_TF32.load(Ordering::Relaxed)
}

static CUDNN_MEASURED: AtomicBool = AtomicBool::new(true);

/// How cuDNN's convolution algorithms are chosen, per shape, on first use: `true` (the default)
/// times every algorithm cuDNN offers (`cudnnFindConvolution*Algorithm`, like PyTorch's
/// `cudnn.benchmark`), `false` takes cuDNN's heuristic ranking without running anything. Either
/// way deterministic algorithms come first, and a process keeps its choice per shape. Timings can
/// choose differently from one process to the next, so a training run repeats bit for bit in
/// another process only with the heuristic ranking (on the same GPU and cuDNN version, and where
/// its chosen algorithms are deterministic).
pub fn set_cudnn_measured_search(measure: bool) {
    CUDNN_MEASURED.store(measure, Ordering::Relaxed);
}

/// Whether cuDNN's algorithms are chosen by timing them (see [`set_cudnn_measured_search`]).
pub fn cudnn_measured_search() -> bool {
    CUDNN_MEASURED.load(Ordering::Relaxed)
}

/// The most device memory candle's allocations on a CUDA `device` held at once since the last
/// [`reset_device_memory_peak`] (bytes; the high-water mark of the device's default memory pool,
/// from which cudarc allocates). `None` on the CPU, or in a build without the `cudnn` feature.
pub fn device_memory_peak(device: &candle_core::Device) -> Option<u64> {
    #[cfg(feature = "cudnn")]
    return cudnn::memory::peak(device);
    #[cfg(not(feature = "cudnn"))]
    {
        let _ = device;
        None
    }
}

/// Bytes of a CUDA `device`'s memory free now for new allocations (the driver's count and the
/// freed memory the device's pool keeps for reuse). `None` on the CPU, or in a build without the
/// `cudnn` feature.
pub fn device_memory_free(device: &candle_core::Device) -> Option<u64> {
    #[cfg(feature = "cudnn")]
    return cudnn::memory::free(device);
    #[cfg(not(feature = "cudnn"))]
    {
        let _ = device;
        None
    }
}

/// Starts a new [`device_memory_peak`] measurement (no effect where there is none).
pub fn reset_device_memory_peak(device: &candle_core::Device) {
    #[cfg(feature = "cudnn")]
    cudnn::memory::reset_peak(device);
    #[cfg(not(feature = "cudnn"))]
    let _ = device;
}

/// Name of the environment variable that, set to `1`, keeps the driver's default of returning
/// freed device memory at every synchronisation (see [`prepare_device`]); for measuring what
/// keeping it is worth.
pub const RELEASE_FREED_ENV: &str = "LT_CUDA_RELEASE_FREED";

/// Name of the environment variable that, set to `1`, runs training batch norm on `f32`
/// activations in cuDNN's spatial mode instead of its persistent one (the default there,
/// PyTorch's for channels-last training; `bf16` always takes the spatial mode); for measuring what
/// the persistent mode is worth, or ruling it out.
pub const BN_SPATIAL_ENV: &str = "LT_CUDNN_BN_SPATIAL";

/// Prepares a CUDA `device` for training and evaluation; no effect on the CPU, or in a build
/// without the `cudnn` feature. Call it once, right after `Device::new_cuda` (`lt` does):
///
/// - the device's memory pool keeps freed memory for reuse instead of returning it to the driver
///   at every synchronisation (the driver's default), as PyTorch's caching allocator does: every
///   step allocates the same sizes again ([`RELEASE_FREED_ENV`]`=1` keeps the default);
/// - cudarc's per-allocation CUDA events are turned off: two event creations and destructions
///   per allocation that nothing waits on, since cudarc waits on them only between streams made
///   with its `new_stream`, which neither candle nor this project makes (a program that does
///   should not call this function). candle runs each host thread's ops on that thread's own
///   stream (the per-thread default stream), which cudarc does not order: a tensor made on one
///   thread and used on another must be finished first (`Device::synchronize` on the thread that
///   made it), as `lt_data`'s loader does with its batches.
pub fn prepare_device(device: &candle_core::Device) -> CResult<()> {
    #[cfg(feature = "cudnn")]
    if let candle_core::Device::Cuda(d) = device {
        let release = std::env::var(RELEASE_FREED_ENV).is_ok_and(|v| v == "1");
        cudnn::memory::keep_freed_memory(device, release)?;
        // SAFETY: no stream of this device is made with `new_stream`, so cudarc's events order
        // nothing; across host threads (each with its own stream) a tensor is used only after the
        // thread that made it has synchronised (see above).
        unsafe { d.disable_event_tracking() };
    }
    let _ = device;
    Ok(())
}

/// Where an op runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    Host,
    #[cfg_attr(not(feature = "cudnn"), allow(dead_code))]
    Cudnn,
    Stock,
}

impl Backend {
    /// The route of an op on `t`: the host kernels take `f32`, cuDNN `f32` and `bf16`
    /// activations (the mixed-precision mode); anything else runs candle's ops.
    fn route(self, t: &Tensor) -> Route {
        self.route_for(t.device(), t.dtype())
    }

    /// The route of an op on activations of `dtype` on `device` (see [`Backend::route`]).
    fn route_for(self, device: &candle_core::Device, dtype: DType) -> Route {
        if self != Backend::Fast {
            Route::Stock
        } else if device.is_cpu() && dtype == DType::F32 {
            Route::Host
        } else if device.is_cuda() && cudnn_takes(dtype) {
            Route::Cudnn
        } else {
            Route::Stock
        }
    }

    /// Convolution of NHWC `x` with `w` (`[C_out, C_in, k, k]`), no bias.
    pub fn conv2d(self, x: &Tensor, w: &Tensor, stride: usize, pad: usize) -> CResult<Tensor> {
        match self.route(x) {
            Route::Host => custom::conv::conv2d_host(x, w, stride, pad),
            #[cfg(feature = "cudnn")]
            Route::Cudnn => custom::conv::conv2d_cudnn(x, w, stride, pad),
            _ => stock::conv2d(x, w, stride, pad),
        }
    }

    /// `w` (`[C_out, C_in, k, k]`) prepared once for repeated inference with fixed weights
    /// ([`Backend::conv2d_prepared`]): on the cuDNN route (`w` on CUDA in a type cuDNN takes)
    /// transposed to cuDNN's channels-last filter layout; `None` elsewhere, where there is
    /// nothing to prepare.
    pub(crate) fn prepared_filter(self, w: &Tensor) -> CResult<Option<Tensor>> {
        match self.route(w) {
            #[cfg(feature = "cudnn")]
            Route::Cudnn => custom::conv::filter_khwc(w).map(Some),
            _ => Ok(None),
        }
    }

    /// Convolution of NHWC `x` with a filter from [`Backend::prepared_filter`], without an
    /// autograd node; `None` where it does not run (not the cuDNN route, or no cuDNN algorithm
    /// for the shape, in every direction when `backward`: [`Backend::conv2d_backward_prepared`]
    /// follows): then [`Backend::conv2d`] with the original filter.
    pub(crate) fn conv2d_prepared(
        self,
        x: &Tensor,
        prepared: &Tensor,
        (stride, pad): (usize, usize),
        backward: bool,
    ) -> CResult<Option<Tensor>> {
        match self.route(x) {
            #[cfg(feature = "cudnn")]
            Route::Cudnn => custom::conv::conv2d_cudnn_khwc(x, prepared, (stride, pad), backward),
            _ => {
                let _ = (prepared, stride, pad, backward);
                Ok(None)
            }
        }
    }

    /// Training-mode batch norm over NHWC `x` (statistics of this batch), with ReLU when `relu`.
    pub fn batch_norm_train(
        self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        eps: f64,
        relu: bool,
    ) -> CResult<(Tensor, BatchStats)> {
        let (y, stats, _) = self.batch_norm_train_saved(x, (gamma, beta), (eps, relu))?;
        Ok((y, stats))
    }

    /// Whether [`Backend::batch_norm_train_running`] runs for activations `x`: on the cuDNN
    /// route, whose training batch norm updates running statistics in the same call.
    pub(crate) fn folds_running_statistics(self, x: &Tensor) -> bool {
        #[cfg(feature = "cudnn")]
        return self.route(x) == Route::Cudnn && !cudnn::refused(FOLD_RUNNING, x);
        #[cfg(not(feature = "cudnn"))]
        {
            let _ = x;
            false
        }
    }

    /// Training-mode batch norm over NHWC `x` (with ReLU when `relu`) that also folds the batch
    /// into the running statistics `(mean, var)` with weight `momentum`, as
    /// `(1 - momentum) running + momentum batch` with the batch variance unbiased: the output
    /// and the new running `(mean, var)`, and what [`Backend::batch_norm_train_backward`] needs.
    /// Only where [`Backend::folds_running_statistics`]; elsewhere an error. When cuDNN refuses,
    /// the refusal is recorded and `folds_running_statistics` answers `false` for such inputs.
    pub(crate) fn batch_norm_train_running(
        self,
        x: &Tensor,
        (gamma, beta): (&Tensor, &Tensor),
        (eps, relu): (f64, bool),
        running: (&Tensor, &Tensor, f64),
    ) -> CResult<(Tensor, (Tensor, Tensor), BnSaved)> {
        check_batch_values(x)?;
        match self.route(x) {
            #[cfg(feature = "cudnn")]
            Route::Cudnn => in_f32_if_refused(BF16_BN_TRAIN, x, |x| {
                let (y, new, saved) =
                    custom::norm::train_cudnn_running(x, gamma, beta, (eps, relu), running)?;
                Ok((y, (new, BnSaved::cudnn(saved, x.dtype()))))
            })
            .map(|(y, (new, saved))| (y, new, saved))
            .inspect_err(|e| cudnn::fall_back(FOLD_RUNNING, x, cudnn::Instead::Candle, e)),
            _ => {
                let _ = (gamma, beta, eps, relu, running);
                candle_core::bail!("batch norm: only the cuDNN route updates running statistics itself")
            }
        }
    }

    /// Eval-mode batch norm over NHWC `x` with fixed `stats` (running mean and variance), with
    /// ReLU when `relu`. Differentiable with respect to `x`, `gamma` and `beta`.
    pub fn batch_norm_eval(
        self,
        x: &Tensor,
        affine: (&Tensor, &Tensor),
        stats: (&Tensor, &Tensor),
        eps: f64,
        relu: bool,
    ) -> CResult<Tensor> {
        match self.route(x) {
            Route::Stock => stock::batch_norm_eval(x, affine, stats, eps, relu),
            Route::Host => custom::norm::eval(x, affine, stats, eps, relu, true),
            #[cfg(feature = "cudnn")]
            Route::Cudnn => in_f32_if_refused(BF16_BN_EVAL, x, |x| {
                Ok((custom::norm::eval(x, affine, stats, eps, relu, false)?, ()))
            })
            .map(|(y, ())| y),
            #[cfg(not(feature = "cudnn"))]
            Route::Cudnn => custom::norm::eval(x, affine, stats, eps, relu, false),
        }
    }

    /// `max(a + b, 0)`.
    pub fn add_relu(self, a: &Tensor, b: &Tensor) -> CResult<Tensor> {
        match self.route(a) {
            Route::Host => custom::elementwise::add_relu(a, b),
            #[cfg(feature = "cudnn")]
            Route::Cudnn if a.rank() == 4 && a.dims() == b.dims() => cudnn::or_fall_back(
                "the residual add + ReLU",
                a,
                cudnn::Instead::Candle,
                || custom::elementwise::add_relu(a, b),
                || stock::add_relu(a, b),
            ),
            _ => stock::add_relu(a, b),
        }
    }

    /// `max(x, 0)`.
    pub fn relu(self, x: &Tensor) -> CResult<Tensor> {
        match self.route(x) {
            Route::Host => custom::elementwise::relu(x),
            _ => x.relu(),
        }
    }

    /// Option-A shortcut: `x[:, ::2, ::2, :]` zero-padded with `pad` channels on each side.
    pub fn shortcut_a(self, x: &Tensor, pad: usize) -> CResult<Tensor> {
        match self.route(x) {
            Route::Host => custom::elementwise::shortcut_a(x, pad),
            _ => stock::shortcut_a(x, pad),
        }
    }

    /// Global average pooling `[N, H, W, C] -> [N, C]`.
    pub fn avg_pool(self, x: &Tensor) -> CResult<Tensor> {
        match self.route(x) {
            Route::Host => custom::pool::avg_pool(x),
            _ => x.mean((1, 2)),
        }
    }

    /// Max pooling with a `k x k` window, stride and padding (torchvision's stem uses 3, 2, 1);
    /// padding never wins.
    pub fn max_pool(self, x: &Tensor, k: usize, stride: usize, pad: usize) -> CResult<Tensor> {
        match self.route(x) {
            Route::Stock => stock::max_pool(x, k, stride, pad),
            #[cfg(feature = "cudnn")]
            Route::Cudnn if x.dtype() != DType::F32 => cudnn::or_fall_back(
                BF16_MAX_POOL,
                x,
                cudnn::Instead::Candle,
                || custom::pool::max_pool(x, k, stride, pad),
                || stock::max_pool(x, k, stride, pad),
            ),
            _ => custom::pool::max_pool(x, k, stride, pad),
        }
    }
}

/// Whether the cuDNN route takes activations of `dtype` (never in a build without `cudnn`).
fn cudnn_takes(dtype: DType) -> bool {
    #[cfg(feature = "cudnn")]
    return cudnn::Dt::of_dtype(dtype).is_some();
    #[cfg(not(feature = "cudnn"))]
    {
        let _ = dtype;
        false
    }
}

/// Whether `e` says the device (or cuDNN's host side) ran out of memory: the driver's
/// `CUDA_ERROR_OUT_OF_MEMORY` or cuDNN's allocation failures. Not a refusal of cuDNN's: the
/// cuDNN route does not record the op as refused for that input (which would run it the slow
/// way for the rest of the process after a passing shortage), see `cudnn::fall_back`.
#[cfg_attr(not(feature = "cudnn"), allow(dead_code))]
fn out_of_memory(e: &candle_core::Error) -> bool {
    let text = e.to_string();
    ["OUT_OF_MEMORY", "ALLOCATION_FAILED", "ALLOC_FAILED"].iter().any(|m| text.contains(m))
}

/// Fails unless training-mode batch norm has more than one value per channel in `x`.
fn check_batch_values(x: &Tensor) -> CResult<()> {
    let c = x.dim(candle_core::D::Minus1)?;
    if x.elem_count() <= c {
        candle_core::bail!(
            "batch norm in training mode needs more than one value per channel, got shape {:?}",
            x.dims()
        );
    }
    Ok(())
}

/// The `bf16` calls cuDNN may refuse (its support for `bf16` outside convolutions varies by
/// version), named in the warning of [`cudnn::fall_back`].
#[cfg(feature = "cudnn")]
const BF16_BN_TRAIN: &str = "bf16 batch norm (training)";
#[cfg(feature = "cudnn")]
const BF16_BN_EVAL: &str = "bf16 batch norm (inference)";
#[cfg(feature = "cudnn")]
const BF16_MAX_POOL: &str = "bf16 max pooling";
/// The running statistics' update inside cuDNN's training batch norm (refused, the update runs on
/// candle's kernels from the batch statistics).
#[cfg(feature = "cudnn")]
const FOLD_RUNNING: &str = "the running statistics' update in batch norm";

/// `f(x)` through cuDNN; for a `bf16` `x` that cuDNN refuses (`what`, warned about once),
/// `f` in `f32` with the output cast back: casts that are nodes of the graph, so the gradients
/// follow. The first element of `f`'s result is its output.
#[cfg(feature = "cudnn")]
fn in_f32_if_refused<R>(
    what: &'static str,
    x: &Tensor,
    f: impl Fn(&Tensor) -> CResult<(Tensor, R)>,
) -> CResult<(Tensor, R)> {
    let dtype = x.dtype();
    let via_f32 = || -> CResult<(Tensor, R)> {
        let (y, r) = f(&x.to_dtype(DType::F32)?)?;
        Ok((y.to_dtype(dtype)?, r))
    };
    if dtype == DType::F32 {
        return f(x);
    }
    cudnn::or_fall_back(what, x, cudnn::Instead::CudnnInF32, || f(x), via_f32)
}

#[cfg(test)]
mod miri_tests;
#[cfg(test)]
mod tests;
