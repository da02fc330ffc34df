//! Pooling: global average pooling (CPU kernels) and max pooling (CPU kernels, cuDNN on CUDA).

use candle_core::{CpuStorage, CustomOp1, CustomOp3, Layout, Shape, Tensor};

use super::{cpu_f32, host_tensor, with_host, CResult};
use crate::ops::elementwise::{self, Nhwc, Window};

fn nhwc(dims: &[usize], what: &str) -> CResult<Nhwc> {
    match dims {
        &[n, h, w, c] => Ok(Nhwc { n, h, w, c }),
        _ => candle_core::bail!("{what}: expected NHWC, got {dims:?}"),
    }
}

/// Global average pooling `[N, H, W, C] -> [N, C]` on the CPU kernels.
pub(crate) fn avg_pool(x: &Tensor) -> CResult<Tensor> {
    x.contiguous()?.apply_op1(AvgPoolOp)
}

struct AvgPoolOp;

impl CustomOp1 for AvgPoolOp {
    fn name(&self) -> &'static str {
        "lt-global-avg-pool"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> CResult<(CpuStorage, Shape)> {
        let Nhwc { n, h, w, c } = nhwc(l.dims(), "avg pool")?;
        let mut out = vec![0f32; n * c];
        elementwise::avg_pool_forward(cpu_f32(s, l, "avg pool input")?, n, h * w, c, &mut out);
        Ok((CpuStorage::F32(out), Shape::from((n, c))))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> CResult<Option<Tensor>> {
        avg_pool_backward(x.dims(), grad).map(Some)
    }
}

/// The input gradient of global average pooling of an input of `dims`, on the host kernels.
pub(crate) fn avg_pool_backward(dims: &[usize], dy: &Tensor) -> CResult<Tensor> {
    let Nhwc { n, h, w, c } = nhwc(dims, "avg pool")?;
    with_host(dy, |dy| {
        let mut dx = vec![0f32; n * h * w * c];
        elementwise::avg_pool_backward(dy, n, h * w, c, &mut dx);
        host_tensor(dx, dims)
    })
}

/// Max pooling with window `k`, `stride`, `pad` (CPU kernels, or cuDNN on CUDA).
pub(crate) fn max_pool(x: &Tensor, k: usize, stride: usize, pad: usize) -> CResult<Tensor> {
    let win = Window { k, stride, pad };
    let s = nhwc(x.dims(), "max pool")?;
    if win.output(s).is_none() {
        candle_core::bail!(
            "max pool: window {k} / stride {stride} / padding {pad} does not fit input {:?}",
            x.dims()
        );
    }
    if s.len() > u32::MAX as usize {
        candle_core::bail!("max pool: input too large for 32-bit indices");
    }
    x.contiguous()?.apply_op1(MaxPoolOp { win })
}

/// The output shape of `win` over `s` (checked by [`max_pool`]).
fn output(s: Nhwc, win: Window) -> CResult<Nhwc> {
    win.output(s).ok_or_else(|| candle_core::Error::Msg(format!("max pool: {win:?} does not fit {s:?}")))
}

struct MaxPoolOp {
    win: Window,
}

impl CustomOp1 for MaxPoolOp {
    fn name(&self) -> &'static str {
        "lt-max-pool"
    }

    fn cpu_fwd(&self, st: &CpuStorage, l: &Layout) -> CResult<(CpuStorage, Shape)> {
        let s = nhwc(l.dims(), "max pool")?;
        let o = output(s, self.win)?;
        let (mut out, mut argmax) = (vec![0f32; o.len()], vec![0u32; o.len()]);
        elementwise::max_pool_forward(cpu_f32(st, l, "max pool input")?, s, self.win, &mut out, &mut argmax);
        Ok((CpuStorage::F32(out), Shape::from(&o.dims())))
    }

    #[cfg(feature = "cudnn")]
    fn cuda_fwd(
        &self,
        st: &candle_core::CudaStorage,
        l: &Layout,
    ) -> CResult<(candle_core::CudaStorage, Shape)> {
        let s = nhwc(l.dims(), "max pool")?;
        let o = output(s, self.win)?;
        Ok((crate::ops::cudnn::pool::max_forward((st, l), s, o, self.win)?, Shape::from(&o.dims())))
    }

    /// The fast backend's backward pass (this node is on its routes), which on CUDA falls back
    /// to candle's kernels should cuDNN refuse `bf16` pooling, as the taped executor does.
    fn bwd(&self, x: &Tensor, res: &Tensor, grad: &Tensor) -> CResult<Option<Tensor>> {
        crate::ops::Backend::Fast.max_pool_backward((x, res, grad), self.win).map(Some)
    }
}

/// The input gradient of max pooling with `win` from its input `x`, output `y` and output
/// gradient `dy` (host kernels, or cuDNN on CUDA).
pub(crate) fn max_pool_backward(x: &Tensor, y: &Tensor, dy: &Tensor, win: Window) -> CResult<Tensor> {
    x.contiguous()?.apply_op3_no_bwd(&y.contiguous()?, &dy.contiguous()?, &MaxPoolGrad { win })
}

/// The input gradient of max pooling from `(x, y, dy)`. On the CPU the positions of the maxima
/// are found again by the forward kernel (deterministic, so they are the forward pass's).
struct MaxPoolGrad {
    win: Window,
}

impl CustomOp3 for MaxPoolGrad {
    fn name(&self) -> &'static str {
        "lt-max-pool-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        _s2: &CpuStorage,
        _l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let s = nhwc(l1.dims(), "max pool backward")?;
        let o = output(s, self.win)?;
        let (mut out, mut argmax) = (vec![0f32; o.len()], vec![0u32; o.len()]);
        elementwise::max_pool_forward(cpu_f32(s1, l1, "max pool input")?, s, self.win, &mut out, &mut argmax);
        let dy = cpu_f32(s3, l3, "max pool output gradient")?;
        if dy.len() != o.len() {
            candle_core::bail!("max pool backward: gradient of {} values for output {o:?}", dy.len());
        }
        let mut dx = vec![0f32; s.len()];
        elementwise::max_pool_backward(dy, &argmax, s.n, s.len() / s.n.max(1), o.len() / s.n.max(1), &mut dx);
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }

    #[cfg(feature = "cudnn")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> CResult<(candle_core::CudaStorage, Shape)> {
        let s = nhwc(l1.dims(), "max pool backward")?;
        let o = output(s, self.win)?;
        let dx = crate::ops::cudnn::pool::max_backward((s1, l1), (s2, l2), (s3, l3), s, o, self.win)?;
        Ok((dx, l1.shape().clone()))
    }
}
