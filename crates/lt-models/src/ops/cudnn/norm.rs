//! Spatial batch norm through cuDNN on NHWC activations: training forward (output and batch
//! statistics in one call), its backward pass, and inference with running statistics. A ReLU
//! that follows is applied in place by cuDNN's activation forward, and its gradient mask by
//! cuDNN's activation backward before the batch-norm backward call. Activations are `f32` or
//! `bf16`; the per-channel values (parameters, statistics, their gradients) are `f32` either way.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use candle_core::{CudaStorage, Layout, Tensor};
use cudarc::driver::{DevicePtr, DevicePtrMut};

use super::{
    check, cptr, device, mptr, one, uninit_f32, view, view_f32, with_ctx, zero, CResult, Dt, Out, View,
};
use crate::ops::custom::norm::Packed;
use crate::ops::elementwise::Nhwc;
use cudarc::cudnn::sys;

/// Inference's mode, and training's where the persistent one is not used ([`training_call`]).
const SPATIAL: sys::cudnnBatchNormMode_t = sys::cudnnBatchNormMode_t::CUDNN_BATCHNORM_SPATIAL;
/// Training's mode for `f32` activations: cuDNN's kernels for NHWC activations, as PyTorch takes
/// for channels-last training (its spatial mode otherwise). `bf16` batch norm keeps the spatial
/// mode (PyTorch does not send it to cuDNN at all, so nothing vouches for it in this mode).
const PERSISTENT: sys::cudnnBatchNormMode_t = sys::cudnnBatchNormMode_t::CUDNN_BATCHNORM_SPATIAL_PERSISTENT;

/// Set once cuDNN has refused an `f32` training call in the persistent mode: the spatial mode from
/// then on, for every shape, forward and backward, in this process.
static PERSISTENT_REFUSED: AtomicBool = AtomicBool::new(false);

/// Whether a failed call's `status` is a refusal of what it was asked (returned before any work
/// was launched), rather than a failure while running it.
fn refusal(status: sys::cudnnStatus_t) -> bool {
    let name = format!("{status:?}");
    name.contains("NOT_SUPPORTED") || name.contains("BAD_PARAM")
}

/// Runs a training call (`call`, for the messages) on activations of type `dt` as `f(mode)`: for
/// `f32` in the persistent mode, unless [`crate::ops::BN_SPATIAL_ENV`] is `1` or cuDNN has refused
/// it in this process; otherwise in the spatial mode. A refusal of the persistent mode (a
/// not-supported or bad-parameter status, returned before anything runs) makes the call again in
/// the spatial mode, and when that succeeds the process keeps the spatial mode, warned once; any
/// other failure is the call's error (a retry could fold the batch into the running statistics
/// twice). Both modes take and give the same per-channel statistics, so a forward pass in one and
/// a backward pass in the other agree.
fn training_call(
    call: &'static str,
    dt: Dt,
    f: impl Fn(sys::cudnnBatchNormMode_t) -> sys::cudnnStatus_t,
) -> CResult<()> {
    static SPATIAL_ASKED: OnceLock<bool> = OnceLock::new();
    let asked =
        *SPATIAL_ASKED.get_or_init(|| std::env::var(crate::ops::BN_SPATIAL_ENV).is_ok_and(|v| v == "1"));
    if dt != Dt::F32 || asked || PERSISTENT_REFUSED.load(Ordering::Relaxed) {
        return check(call, f(SPATIAL));
    }
    let status = f(PERSISTENT);
    if status == sys::cudnnStatus_t::CUDNN_STATUS_SUCCESS {
        return Ok(());
    }
    if !refusal(status) {
        return check(call, status);
    }
    check(call, f(SPATIAL))?;
    if !PERSISTENT_REFUSED.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            "cuDNN refused the persistent batch-norm mode for [{dt:?}] ({call}: {status:?}); using its spatial mode from now on"
        );
    }
    Ok(())
}

/// The packed layout of the results for activations of shape `s`.
fn packed(s: Nhwc) -> Packed {
    Packed { c: s.c, p: s.n * s.h * s.w }
}

/// The device buffer of a one-dimensional tensor `t` of `c` values (per-channel values, or the
/// saved statistics), with its layout.
fn per_channel<'a>(
    t: &'a Tensor,
    c: usize,
    what: &str,
) -> CResult<(impl std::ops::Deref<Target = candle_core::Storage> + 'a, Layout)> {
    if t.dims() != [c] {
        candle_core::bail!("{what}: {:?} where [{c}] was expected", t.dims());
    }
    let (st, l) = t.storage_and_layout();
    Ok((st, l.clone()))
}

fn cuda(st: &candle_core::Storage) -> CResult<&CudaStorage> {
    match st {
        candle_core::Storage::Cuda(s) => Ok(s),
        _ => candle_core::bail!("cuDNN batch norm: a per-channel tensor is not on CUDA"),
    }
}

/// Running statistics for [`train_forward`] to fold the batch into: `(mean, var, momentum)`.
pub(crate) type Running<'a> = (&'a Tensor, &'a Tensor, f64);

/// New running statistics `(mean, var)` from [`train_forward`].
pub(crate) type NewRunning = (CudaStorage, CudaStorage);

/// Training forward for input `x` and parameters `gamma`, `beta`: the output `y` (ReLU applied
/// when `relu`), the statistics `[mean | invstd]` in one buffer (the first two parts of
/// [`Packed`]), cuDNN's saved batch mean and `1 / sqrt(var + eps)`, and with `running`, new
/// running statistics `(mean, var)`: copies of the given ones that cuDNN updates with the batch
/// (`(1 - momentum) running + momentum batch`, the batch variance unbiased).
pub(crate) fn train_forward(
    x: (&CudaStorage, &Layout),
    gamma: (&CudaStorage, &Layout),
    beta: (&CudaStorage, &Layout),
    shape: Nhwc,
    (eps, relu): (f64, bool),
    running: Option<Running>,
) -> CResult<(CudaStorage, CudaStorage, Option<NewRunning>)> {
    let dev = device(x.0);
    let layout = packed(shape);
    let c = layout.c;
    let (xv, gv, bv) =
        (view(x, layout.p * c, "bn input")?, view_f32(gamma, c, "bn weight")?, view_f32(beta, c, "bn bias")?);
    let dt = xv.dt();
    let mut y = Out::new(&dev, dt, layout.p * c)?;
    // The padding between the two parts is never read.
    let mut stats = uninit_f32(&dev, layout.len())?;
    let stream = dev.cuda_stream();
    let (mut mean, mut rest) = stats.split_at_mut(layout.second());
    let mut invstd = rest.slice_mut(0..c);
    let mut mean = mean.slice_mut(0..c);
    let (xp, _g1) = xv.ptr(&stream);
    let (gp, _g2) = gv.device_ptr(&stream);
    let (bp, _g3) = bv.device_ptr(&stream);
    let (yp, _g4) = y.ptr_mut(&stream);
    let (mp, _g5) = mean.device_ptr_mut(&stream);
    let (ip, _g6) = invstd.device_ptr_mut(&stream);
    let mut new_running = match running {
        Some((mean, var, _)) => Some((
            copy_per_channel(mean, c, "bn running mean")?,
            copy_per_channel(var, c, "bn running variance")?,
        )),
        None => None,
    };
    let running_ptrs =
        new_running.as_mut().map(|(m, v)| (m.device_ptr_mut(&stream), v.device_ptr_mut(&stream)));
    let (rmp, rvp, momentum) = match (&running_ptrs, running) {
        (Some(((m, _), (v, _))), Some((_, _, momentum))) => (mptr(*m), mptr(*v), momentum),
        // Not requested: both null, which cuDNN allows together (the factor is then unused).
        _ => (std::ptr::null_mut(), std::ptr::null_mut(), 1.0),
    };
    with_ctx(&dev, |ctx| {
        let desc = ctx.tensor(shape, dt)?;
        let params = ctx.bn_params(shape, dt)?;
        // SAFETY: `desc` describes the `p * c` values of `x` and `y`, `params` the `c` values of
        // gamma, beta, mean and invstd and of the running statistics when requested (lengths
        // checked above); otherwise both running pointers are null.
        training_call("cudnnBatchNormalizationForwardTraining", dt, |mode| unsafe {
            sys::cudnnBatchNormalizationForwardTraining(
                ctx.handle.0,
                mode,
                one(),
                zero(),
                desc.0,
                cptr(xp),
                desc.0,
                mptr(yp),
                params.0,
                cptr(gp),
                cptr(bp),
                momentum,
                rmp,
                rvp,
                eps,
                mptr(mp),
                mptr(ip),
            )
        })?;
        if relu {
            // SAFETY: `y` is the `p * c` values `desc` describes.
            unsafe { ctx.relu_in_place(&desc, mptr(yp))? };
        }
        Ok(())
    })?;
    drop(running_ptrs);
    drop((_g1, _g2, _g3, _g4, _g5, _g6));
    let new_running = new_running.map(|(m, v)| {
        (CudaStorage::wrap_cuda_slice(m, dev.clone()), CudaStorage::wrap_cuda_slice(v, dev.clone()))
    });
    Ok((y.into_storage(dev.clone()), CudaStorage::wrap_cuda_slice(stats, dev), new_running))
}

/// A new device buffer holding a copy of the `c` per-channel `f32` values of `t`.
fn copy_per_channel(t: &Tensor, c: usize, what: &str) -> CResult<cudarc::driver::CudaSlice<f32>> {
    let (st, l) = per_channel(t, c, what)?;
    let st = cuda(&st)?;
    let src = view_f32((st, &l), c, what)?;
    let dev = device(st);
    let mut copy = uninit_f32(&dev, c)?;
    dev.cuda_stream().memcpy_dtod(&src, &mut copy).map_err(candle_core::Error::wrap)?;
    Ok(copy)
}

/// Training backward: from `x`, the statistics `[mean | invstd]` of [`train_forward`], its output
/// `y` and the output gradient `dy`, returns `dx` (the type of `x`) and the `f32` parameter
/// gradients `[dgamma | dbeta]` (the first two parts of [`Packed`]). With `relu` the gradient
/// goes through the ReLU's mask (`y > 0`) first, by cuDNN's activation backward.
pub(crate) fn train_backward(
    x: (&CudaStorage, &Layout),
    stats: &Tensor,
    (y, dy): ((&CudaStorage, &Layout), (&CudaStorage, &Layout)),
    gamma: &Tensor,
    shape: Nhwc,
    (eps, relu): (f64, bool),
) -> CResult<(CudaStorage, CudaStorage)> {
    let dev = device(x.0);
    let layout = packed(shape);
    let c = layout.c;
    let xv = view(x, layout.p * c, "bn input")?;
    let yv = view(y, layout.p * c, "bn output")?;
    let dyv = view(dy, layout.p * c, "bn output gradient")?;
    let dt = View::common_dt(&[&xv, &yv, &dyv], "batch norm backward (input, output, gradient)")?;
    let (sst, sl) = per_channel(stats, layout.len(), "bn saved statistics")?;
    let sv = view_f32((cuda(&sst)?, &sl), layout.len(), "bn saved statistics")?;
    let (gst, gl) = per_channel(gamma, c, "bn weight")?;
    let gv = view_f32((cuda(&gst)?, &gl), c, "bn weight")?;
    let (mean, invstd) =
        (sv.slice(layout.first()..layout.first() + c), sv.slice(layout.second()..layout.second() + c));
    let mut dx = Out::new(&dev, dt, layout.p * c)?;
    // The padding between the two parts is never read.
    let mut grads = uninit_f32(&dev, layout.len())?;
    // The gradient before the ReLU (only with `relu`).
    let mut dz = if relu { Some(Out::new(&dev, dt, layout.p * c)?) } else { None };
    let stream = dev.cuda_stream();
    let (mut dgamma, mut rest) = grads.split_at_mut(layout.second());
    let mut dbeta = rest.slice_mut(0..c);
    let mut dgamma = dgamma.slice_mut(0..c);
    let (xp, _g1) = xv.ptr(&stream);
    let (yp, _g2) = yv.ptr(&stream);
    let (dyp, _g3) = dyv.ptr(&stream);
    let (gp, _g4) = gv.device_ptr(&stream);
    let (mp, _g5) = mean.device_ptr(&stream);
    let (ip, _g6) = invstd.device_ptr(&stream);
    let (dxp, _g7) = dx.ptr_mut(&stream);
    let (dgp, _g8) = dgamma.device_ptr_mut(&stream);
    let (dbp, _g9) = dbeta.device_ptr_mut(&stream);
    let dz_ptr = dz.as_mut().map(|d| d.ptr_mut(&stream));
    with_ctx(&dev, |ctx| {
        let desc = ctx.tensor(shape, dt)?;
        let params = ctx.bn_params(shape, dt)?;
        let grad = match &dz_ptr {
            Some((dzp, _)) => {
                // SAFETY: `y`, `dy` and `dz` are the `p * c` values `desc` describes.
                unsafe { ctx.relu_backward(&desc, cptr(yp), cptr(dyp), mptr(*dzp))? };
                cptr(*dzp)
            }
            None => cptr(dyp),
        };
        // SAFETY: `desc` describes the `p * c` values of `x`, `grad` and `dx`, `params` the `c`
        // values of gamma, the saved statistics and the parameter gradients (lengths checked).
        training_call("cudnnBatchNormalizationBackward", dt, |mode| unsafe {
            sys::cudnnBatchNormalizationBackward(
                ctx.handle.0,
                mode,
                one(),
                zero(),
                one(),
                zero(),
                desc.0,
                cptr(xp),
                desc.0,
                grad,
                desc.0,
                mptr(dxp),
                params.0,
                cptr(gp),
                mptr(dgp),
                mptr(dbp),
                eps,
                cptr(mp),
                cptr(ip),
            )
        })
    })?;
    drop(dz_ptr);
    drop((_g1, _g2, _g3, _g4, _g5, _g6, _g7, _g8, _g9));
    Ok((dx.into_storage(dev.clone()), CudaStorage::wrap_cuda_slice(grads, dev)))
}

/// Inference: `y = gamma * (x - mean) / sqrt(var + eps) + beta` with the running statistics
/// `(mean, var)`, then ReLU when `relu`.
pub(crate) fn inference(
    x: (&CudaStorage, &Layout),
    gamma: (&CudaStorage, &Layout),
    beta: (&CudaStorage, &Layout),
    (mean, var): (&Tensor, &Tensor),
    shape: Nhwc,
    eps: f64,
    relu: bool,
) -> CResult<CudaStorage> {
    let dev = device(x.0);
    let (c, p) = (shape.c, shape.n * shape.h * shape.w);
    let xv = view(x, p * c, "bn input")?;
    let (gv, bv) = (view_f32(gamma, c, "bn weight")?, view_f32(beta, c, "bn bias")?);
    let dt = xv.dt();
    let (mst, ml) = per_channel(mean, c, "bn running mean")?;
    let (vst, vl) = per_channel(var, c, "bn running variance")?;
    let (mv, vv) = (
        view_f32((cuda(&mst)?, &ml), c, "bn running mean")?,
        view_f32((cuda(&vst)?, &vl), c, "bn running variance")?,
    );
    let mut y = Out::new(&dev, dt, p * c)?;
    let stream = dev.cuda_stream();
    let (xp, _g1) = xv.ptr(&stream);
    let (gp, _g2) = gv.device_ptr(&stream);
    let (bp, _g3) = bv.device_ptr(&stream);
    let (mp, _g4) = mv.device_ptr(&stream);
    let (vp, _g5) = vv.device_ptr(&stream);
    let (yp, _g6) = y.ptr_mut(&stream);
    with_ctx(&dev, |ctx| {
        let desc = ctx.tensor(shape, dt)?;
        let params = ctx.bn_params(shape, dt)?;
        // SAFETY: `desc` describes the `p * c` values of `x` and `y`, `params` the `c` values of
        // gamma, beta, mean and var (lengths checked above).
        let status = unsafe {
            sys::cudnnBatchNormalizationForwardInference(
                ctx.handle.0,
                SPATIAL,
                one(),
                zero(),
                desc.0,
                cptr(xp),
                desc.0,
                mptr(yp),
                params.0,
                cptr(gp),
                cptr(bp),
                cptr(mp),
                cptr(vp),
                eps,
            )
        };
        check("cudnnBatchNormalizationForwardInference", status)?;
        if relu {
            // SAFETY: `y` is the `p * c` values `desc` describes.
            unsafe { ctx.relu_in_place(&desc, mptr(yp))? };
        }
        Ok(())
    })?;
    drop((_g1, _g2, _g3, _g4, _g5, _g6));
    Ok(y.into_storage(dev))
}
