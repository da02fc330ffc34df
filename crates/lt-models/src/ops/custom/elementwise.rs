//! Residual add + ReLU, ReLU and the option-A shortcut on the CPU kernels; the residual add +
//! ReLU and the ReLU's gradient through cuDNN on CUDA too.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor};

use super::{cpu_f32, host_tensor, with_host, CResult};
use crate::ops::elementwise::{self, Nhwc};

/// `max(a + b, 0)`.
pub(crate) fn add_relu(a: &Tensor, b: &Tensor) -> CResult<Tensor> {
    a.contiguous()?.apply_op2(&b.contiguous()?, Binary::AddRelu)
}

/// `max(x, 0)`.
pub(crate) fn relu(x: &Tensor) -> CResult<Tensor> {
    x.contiguous()?.apply_op1(ReluOp)
}

/// The option-A shortcut.
pub(crate) fn shortcut_a(x: &Tensor, pad: usize) -> CResult<Tensor> {
    x.contiguous()?.apply_op1(ShortcutOp { pad })
}

/// `dy * (y > 0)`, shaped like `y`, on the tensors' device (host kernels or cuDNN, candle's
/// kernels where cuDNN refuses).
pub(crate) fn relu_grad(y: &Tensor, grad: &Tensor) -> CResult<Tensor> {
    let (y, grad) = (y.contiguous()?, grad.contiguous()?);
    let fused = || y.apply_op2_no_bwd(&grad, &Binary::ReluGrad);
    #[cfg(feature = "cudnn")]
    if y.device().is_cuda() {
        use crate::ops::cudnn;
        let masked = || crate::ops::stock::relu_grad(&y, &grad);
        return cudnn::or_fall_back("the ReLU gradient", &y, cudnn::Instead::Candle, fused, masked);
    }
    fused()
}

/// The element-wise ops of two same-shape tensors, on the CPU kernels or through cuDNN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Binary {
    /// `max(a + b, 0)`, differentiable.
    AddRelu,
    /// `dy * (y > 0)` from a ReLU's output `y` and output gradient `dy` (a backward pass).
    ReluGrad,
}

impl Binary {
    /// What the op and its two arguments are called in errors.
    fn names(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Binary::AddRelu => ("add_relu", "add_relu lhs", "add_relu rhs"),
            Binary::ReluGrad => ("relu backward", "relu output", "relu output gradient"),
        }
    }

    /// Fails unless both arguments have the same dims.
    fn check(self, l1: &Layout, l2: &Layout) -> CResult<()> {
        if l1.dims() != l2.dims() {
            candle_core::bail!("{}: shapes {:?} and {:?} differ", self.names().0, l1.dims(), l2.dims());
        }
        Ok(())
    }
}

impl CustomOp2 for Binary {
    fn name(&self) -> &'static str {
        match self {
            Binary::AddRelu => "lt-add-relu",
            Binary::ReluGrad => "lt-relu-backward",
        }
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        self.check(l1, l2)?;
        let (_, lhs, rhs) = self.names();
        let (a, b) = (cpu_f32(s1, l1, lhs)?, cpu_f32(s2, l2, rhs)?);
        let mut out = vec![0f32; a.len()];
        match self {
            Binary::AddRelu => elementwise::add_relu(a, b, &mut out),
            Binary::ReluGrad => elementwise::relu_backward(a, b, &mut out),
        }
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    #[cfg(feature = "cudnn")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> CResult<(candle_core::CudaStorage, Shape)> {
        use crate::ops::cudnn::elementwise as cudnn;
        self.check(l1, l2)?;
        let s = nhwc(l1.dims())?;
        let out = match self {
            Binary::AddRelu => cudnn::add_relu((s1, l1), (s2, l2), s)?,
            Binary::ReluGrad => cudnn::relu_backward((s1, l1), (s2, l2), s)?,
        };
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> CResult<(Option<Tensor>, Option<Tensor>)> {
        if *self != Binary::AddRelu {
            candle_core::bail!("{} is a backward pass and has no gradient of its own", self.names().0);
        }
        let g = relu_grad(res, grad)?;
        Ok((a.track_op().then(|| g.clone()), b.track_op().then_some(g)))
    }
}

struct ReluOp;

impl CustomOp1 for ReluOp {
    fn name(&self) -> &'static str {
        "lt-relu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> CResult<(CpuStorage, Shape)> {
        let x = cpu_f32(s, l, "relu input")?;
        Ok((CpuStorage::F32(x.iter().map(|v| v.max(0.0)).collect()), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, res: &Tensor, grad: &Tensor) -> CResult<Option<Tensor>> {
        Ok(Some(relu_grad(res, grad)?))
    }
}

struct ShortcutOp {
    pad: usize,
}

fn nhwc(dims: &[usize]) -> CResult<Nhwc> {
    match dims {
        &[n, h, w, c] => Ok(Nhwc { n, h, w, c }),
        _ => candle_core::bail!("expected NHWC activations, got {dims:?}"),
    }
}

impl CustomOp1 for ShortcutOp {
    fn name(&self) -> &'static str {
        "lt-shortcut-a"
    }

    fn cpu_fwd(&self, st: &CpuStorage, l: &Layout) -> CResult<(CpuStorage, Shape)> {
        let s = nhwc(l.dims())?;
        let (oh, ow, oc) = elementwise::shortcut_dims(s.h, s.w, s.c, self.pad);
        let mut out = vec![0f32; s.n * oh * ow * oc];
        elementwise::shortcut_forward(cpu_f32(st, l, "shortcut input")?, s, self.pad, &mut out);
        Ok((CpuStorage::F32(out), Shape::from((s.n, oh, ow, oc))))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> CResult<Option<Tensor>> {
        shortcut_backward(x.dims(), grad, self.pad).map(Some)
    }
}

/// The input gradient of the option-A shortcut of an input of `dims`, on the host kernels.
pub(crate) fn shortcut_backward(dims: &[usize], dy: &Tensor, pad: usize) -> CResult<Tensor> {
    let s = nhwc(dims)?;
    with_host(dy, |dy| {
        let mut dx = vec![0f32; s.len()];
        elementwise::shortcut_backward(dy, s, pad, &mut dx);
        host_tensor(dx, dims)
    })
}
