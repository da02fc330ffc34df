//! Spatial batch norm through cuDNN on NHWC activations: training forward (output and batch
//! statistics in one call), its backward pass, and inference with running statistics. A ReLU
//! that follows is applied in place by cuDNN's activation forward; its gradient mask is applied
//! by the caller (candle ops) before the backward call.

use candle_core::{CudaStorage, Layout, Tensor};
use cudarc::driver::{DevicePtr, DevicePtrMut};

use super::{check, cptr, device, mptr, one, view, with_ctx, zero, ActDesc, CResult, Ctx, TensorDesc};
use crate::ops::custom::norm::Packed;
use crate::ops::elementwise::Nhwc;
use cudarc::cudnn::sys;

const MODE: sys::cudnnBatchNormMode_t = sys::cudnnBatchNormMode_t::CUDNN_BATCHNORM_SPATIAL;

/// The packed layout of the results for activations of shape `s`.
fn packed(s: Nhwc) -> Packed {
    Packed { c: s.c, p: s.n * s.h * s.w }
}

impl Ctx {
    /// `y = max(y, 0)` in place on `len` values described by `desc`.
    ///
    /// # Safety
    /// `y` must point to a live device buffer that `desc` describes.
    unsafe fn relu_in_place(&mut self, desc: &TensorDesc, y: *mut std::ffi::c_void) -> CResult<()> {
        let act = ActDesc::new()?;
        let (relu, nan) = (
            sys::cudnnActivationMode_t::CUDNN_ACTIVATION_RELU,
            sys::cudnnNanPropagation_t::CUDNN_PROPAGATE_NAN,
        );
        // SAFETY: `act` is live.
        check("cudnnSetActivationDescriptor", unsafe {
            sys::cudnnSetActivationDescriptor(act.0, relu, nan, 0.0)
        })?;
        // SAFETY: the caller's contract; cuDNN allows the input and output to be the same buffer.
        let status =
            unsafe { sys::cudnnActivationForward(self.handle.0, act.0, one(), desc.0, y, zero(), desc.0, y) };
        check("cudnnActivationForward", status)
    }
}

/// Device buffers of per-channel `f32` values as tensors' storage: `[C]` views of `t`.
fn per_channel<'a>(
    t: &'a Tensor,
    c: usize,
    what: &str,
) -> CResult<(impl std::ops::Deref<Target = candle_core::Storage> + 'a, Layout)> {
    if t.dims() != [c] {
        candle_core::bail!("{what}: {:?} for {c} channels", t.dims());
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

/// Training forward: writes `[mean | invstd | y]` (see [`Packed`]) for input `x` and parameters
/// `gamma`, `beta`; the statistics are cuDNN's saved batch mean and `1 / sqrt(var + eps)`.
pub(crate) fn train_forward(
    x: (&CudaStorage, &Layout),
    gamma: (&CudaStorage, &Layout),
    beta: (&CudaStorage, &Layout),
    shape: Nhwc,
    eps: f64,
    relu: bool,
) -> CResult<CudaStorage> {
    let dev = device(x.0);
    let layout = packed(shape);
    let c = layout.c;
    let (xv, gv, bv) =
        (view(x, layout.p * c, "bn input")?, view(gamma, c, "bn weight")?, view(beta, c, "bn bias")?);
    let mut out = dev.alloc_zeros::<f32>(layout.len())?;
    let stream = dev.cuda_stream();
    let (mut stats, mut y) = out.split_at_mut(layout.data());
    let (mut mean, mut rest) = stats.split_at_mut(layout.second());
    let mut invstd = rest.slice_mut(0..c);
    let mut mean = mean.slice_mut(0..c);
    let (xp, _g1) = xv.device_ptr(&stream);
    let (gp, _g2) = gv.device_ptr(&stream);
    let (bp, _g3) = bv.device_ptr(&stream);
    let (yp, _g4) = y.device_ptr_mut(&stream);
    let (mp, _g5) = mean.device_ptr_mut(&stream);
    let (ip, _g6) = invstd.device_ptr_mut(&stream);
    with_ctx(&dev, |ctx| {
        let desc = ctx.tensor(shape)?;
        let params = ctx.bn_params(shape)?;
        // SAFETY: `desc` describes the `p * c` values of `x` and `y`, `params` the `c` values of
        // gamma, beta, mean and invstd (lengths checked above); the running statistics are not
        // requested (both null, which cuDNN allows together).
        let status = unsafe {
            sys::cudnnBatchNormalizationForwardTraining(
                ctx.handle.0,
                MODE,
                one(),
                zero(),
                desc.0,
                cptr(xp),
                desc.0,
                mptr(yp),
                params.0,
                cptr(gp),
                cptr(bp),
                1.0,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                eps,
                mptr(mp),
                mptr(ip),
            )
        };
        check("cudnnBatchNormalizationForwardTraining", status)?;
        if relu {
            // SAFETY: `y` is the `p * c` values `desc` describes.
            unsafe { ctx.relu_in_place(&desc, mptr(yp))? };
        }
        Ok(())
    })?;
    drop((_g1, _g2, _g3, _g4, _g5, _g6));
    Ok(CudaStorage::wrap_cuda_slice(out, dev))
}

/// Training backward: from `x`, the packed forward output (its saved statistics) and the packed
/// output gradient whose activation part is `dz` (the ReLU mask already applied), writes
/// `[dgamma | dbeta | dx]`.
pub(crate) fn train_backward(
    x: (&CudaStorage, &Layout),
    saved: (&CudaStorage, &Layout),
    dz: (&CudaStorage, &Layout),
    gamma: &Tensor,
    shape: Nhwc,
    eps: f64,
) -> CResult<CudaStorage> {
    let dev = device(x.0);
    let layout = packed(shape);
    let c = layout.c;
    let xv = view(x, layout.p * c, "bn input")?;
    let sv = view(saved, layout.len(), "bn saved statistics")?;
    let dzv = view(dz, layout.p * c, "bn output gradient")?;
    let (gst, gl) = per_channel(gamma, c, "bn weight")?;
    let gv = view((cuda(&gst)?, &gl), c, "bn weight")?;
    let (mean, invstd) =
        (sv.slice(layout.first()..layout.first() + c), sv.slice(layout.second()..layout.second() + c));
    let mut out = dev.alloc_zeros::<f32>(layout.len())?;
    let stream = dev.cuda_stream();
    let (mut grads, mut dx) = out.split_at_mut(layout.data());
    let (mut dgamma, mut rest) = grads.split_at_mut(layout.second());
    let mut dbeta = rest.slice_mut(0..c);
    let mut dgamma = dgamma.slice_mut(0..c);
    let (xp, _g1) = xv.device_ptr(&stream);
    let (dzp, _g2) = dzv.device_ptr(&stream);
    let (gp, _g3) = gv.device_ptr(&stream);
    let (mp, _g4) = mean.device_ptr(&stream);
    let (ip, _g5) = invstd.device_ptr(&stream);
    let (dxp, _g6) = dx.device_ptr_mut(&stream);
    let (dgp, _g7) = dgamma.device_ptr_mut(&stream);
    let (dbp, _g8) = dbeta.device_ptr_mut(&stream);
    with_ctx(&dev, |ctx| {
        let desc = ctx.tensor(shape)?;
        let params = ctx.bn_params(shape)?;
        // SAFETY: `desc` describes the `p * c` values of `x`, `dz` and `dx`, `params` the `c`
        // values of gamma, the saved statistics and the parameter gradients (lengths checked).
        let status = unsafe {
            sys::cudnnBatchNormalizationBackward(
                ctx.handle.0,
                MODE,
                one(),
                zero(),
                one(),
                zero(),
                desc.0,
                cptr(xp),
                desc.0,
                cptr(dzp),
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
        };
        check("cudnnBatchNormalizationBackward", status)
    })?;
    drop((_g1, _g2, _g3, _g4, _g5, _g6, _g7, _g8));
    Ok(CudaStorage::wrap_cuda_slice(out, dev))
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
    let (xv, gv, bv) = (view(x, p * c, "bn input")?, view(gamma, c, "bn weight")?, view(beta, c, "bn bias")?);
    let (mst, ml) = per_channel(mean, c, "bn running mean")?;
    let (vst, vl) = per_channel(var, c, "bn running variance")?;
    let (mv, vv) = (
        view((cuda(&mst)?, &ml), c, "bn running mean")?,
        view((cuda(&vst)?, &vl), c, "bn running variance")?,
    );
    let mut y = dev.alloc_zeros::<f32>(p * c)?;
    let stream = dev.cuda_stream();
    let (xp, _g1) = xv.device_ptr(&stream);
    let (gp, _g2) = gv.device_ptr(&stream);
    let (bp, _g3) = bv.device_ptr(&stream);
    let (mp, _g4) = mv.device_ptr(&stream);
    let (vp, _g5) = vv.device_ptr(&stream);
    let (yp, _g6) = y.device_ptr_mut(&stream);
    with_ctx(&dev, |ctx| {
        let desc = ctx.tensor(shape)?;
        let params = ctx.bn_params(shape)?;
        // SAFETY: `desc` describes the `p * c` values of `x` and `y`, `params` the `c` values of
        // gamma, beta, mean and var (lengths checked above).
        let status = unsafe {
            sys::cudnnBatchNormalizationForwardInference(
                ctx.handle.0,
                MODE,
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
    Ok(CudaStorage::wrap_cuda_slice(y, dev))
}
