//! Convolution: forward and both gradients on the CPU kernels, and through cuDNN on CUDA.

use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};

use super::{cpu_f32, CResult};
use crate::ops::conv::{self, ConvShape};

/// Memory layout of a convolution weight.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum WeightLayout {
    /// PyTorch's `[C_out, C_in, k, k]` (the CPU kernels).
    Oihw,
    /// Channels-last `[C_out, k, k, C_in]` (cuDNN's NHWC filter format, "KRSC").
    #[cfg_attr(not(feature = "cudnn"), allow(dead_code))]
    Ohwi,
}

impl WeightLayout {
    /// The weight's dims for `s` in this layout.
    fn dims(self, s: &ConvShape) -> (usize, usize, usize, usize) {
        match self {
            WeightLayout::Oihw => (s.cout, s.cin, s.k, s.k),
            WeightLayout::Ohwi => (s.cout, s.k, s.k, s.cin),
        }
    }
}

/// The convolution geometry of NHWC input dims `x` and weight dims `w` in `layout`.
pub(crate) fn shape_of(
    x: &[usize],
    w: &[usize],
    layout: WeightLayout,
    stride: usize,
    pad: usize,
) -> CResult<ConvShape> {
    let (&[n, h, wd, cin], &[cout, a, b, c]) = (x, w) else {
        candle_core::bail!("conv2d: expected x [N, H, W, C] and a 4-d weight, got {x:?} and {w:?}")
    };
    let (wcin, k, k2) = match layout {
        WeightLayout::Oihw => (a, b, c),
        WeightLayout::Ohwi => (c, a, b),
    };
    if wcin != cin || k != k2 {
        candle_core::bail!(
            "conv2d: weight {w:?} ({layout:?}) does not fit input {x:?} (NHWC, square kernels)"
        );
    }
    let s = ConvShape { n, h, w: wd, cin, cout, k, stride, pad };
    if !s.fits() {
        candle_core::bail!(
            "conv2d: input {x:?} does not fit the kernel {k}x{k} with stride {stride}, padding {pad}"
        );
    }
    Ok(s)
}

/// `conv(x, w)` on the CPU kernels (`w` in PyTorch's layout).
pub(crate) fn conv2d_host(x: &Tensor, w: &Tensor, stride: usize, pad: usize) -> CResult<Tensor> {
    let op = Conv2dOp { stride, pad, layout: WeightLayout::Oihw };
    x.contiguous()?.apply_op2(&w.contiguous()?, op)
}

/// `conv(x, w)` through cuDNN: the weight is transposed to the channels-last filter layout on
/// the device (a differentiable permute), so that activations and filter agree on NHWC, the
/// layout Hopper's tensor cores run fastest.
/// Shapes cuDNN has no algorithm for (it says so when asked, once per shape) run on candle's
/// convolution instead.
#[cfg(feature = "cudnn")]
pub(crate) fn conv2d_cudnn(x: &Tensor, w: &Tensor, stride: usize, pad: usize) -> CResult<Tensor> {
    let s = shape_of(x.dims(), w.dims(), WeightLayout::Oihw, stride, pad)?;
    let usable = match x.device() {
        candle_core::Device::Cuda(dev) => crate::ops::cudnn::conv::usable(dev, &s),
        _ => false,
    };
    if !usable {
        return crate::ops::stock::conv2d(x, w, stride, pad);
    }
    let w_khwc = w.permute((0, 2, 3, 1))?.contiguous()?;
    let op = Conv2dOp { stride, pad, layout: WeightLayout::Ohwi };
    x.contiguous()?.apply_op2(&w_khwc, op)
}

struct Conv2dOp {
    stride: usize,
    pad: usize,
    layout: WeightLayout,
}

impl CustomOp2 for Conv2dOp {
    fn name(&self) -> &'static str {
        "lt-conv2d-nhwc"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        if self.layout != WeightLayout::Oihw {
            candle_core::bail!("conv2d: the CPU kernels take [C_out, C_in, k, k] weights");
        }
        let s = shape_of(l1.dims(), l2.dims(), self.layout, self.stride, self.pad)?;
        let (x, w) = (cpu_f32(s1, l1, "conv2d input")?, cpu_f32(s2, l2, "conv2d weight")?);
        let mut out = vec![0f32; s.output_len()];
        conv::forward(x, w, &s, &mut out);
        Ok((CpuStorage::F32(out), Shape::from((s.n, s.oh(), s.ow(), s.cout))))
    }

    #[cfg(feature = "cudnn")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> CResult<(candle_core::CudaStorage, Shape)> {
        if self.layout != WeightLayout::Ohwi {
            candle_core::bail!("conv2d: cuDNN takes channels-last [C_out, k, k, C_in] weights");
        }
        let s = shape_of(l1.dims(), l2.dims(), self.layout, self.stride, self.pad)?;
        let y = crate::ops::cudnn::conv::forward((s1, l1), (s2, l2), &s)?;
        Ok((y, Shape::from((s.n, s.oh(), s.ow(), s.cout))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> CResult<(Option<Tensor>, Option<Tensor>)> {
        let shape = shape_of(x.dims(), w.dims(), self.layout, self.stride, self.pad)?;
        let grad = grad.contiguous()?;
        let layout = self.layout;
        let dx = if x.track_op() {
            Some(grad.apply_op2_no_bwd(&w.contiguous()?, &ConvGrad { shape, layout, data: true })?)
        } else {
            None
        };
        let dw = if w.track_op() {
            Some(x.contiguous()?.apply_op2_no_bwd(&grad, &ConvGrad { shape, layout, data: false })?)
        } else {
            None
        };
        Ok((dx, dw))
    }
}

/// A gradient of the convolution: of the input (`data`: arguments `dy`, `w`) or of the weight
/// (arguments `x`, `dy`; the result in the weight's layout).
struct ConvGrad {
    shape: ConvShape,
    layout: WeightLayout,
    data: bool,
}

impl ConvGrad {
    fn out_shape(&self) -> Shape {
        let s = &self.shape;
        if self.data {
            Shape::from((s.n, s.h, s.w, s.cin))
        } else {
            Shape::from(self.layout.dims(s))
        }
    }
}

impl CustomOp2 for ConvGrad {
    fn name(&self) -> &'static str {
        if self.data {
            "lt-conv2d-backward-data"
        } else {
            "lt-conv2d-backward-filter"
        }
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let s = &self.shape;
        if self.layout != WeightLayout::Oihw {
            candle_core::bail!("conv2d gradient: the CPU kernels take [C_out, C_in, k, k] weights");
        }
        let (a, b) = (cpu_f32(s1, l1, "conv gradient argument")?, cpu_f32(s2, l2, "conv gradient argument")?);
        let out = if self.data {
            let mut dx = vec![0f32; s.input_len()];
            conv::backward_input(a, b, s, &mut dx);
            dx
        } else {
            let mut dw = vec![0f32; s.weight_len()];
            conv::backward_weight(a, b, s, &mut dw);
            dw
        };
        Ok((CpuStorage::F32(out), self.out_shape()))
    }

    #[cfg(feature = "cudnn")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> CResult<(candle_core::CudaStorage, Shape)> {
        use crate::ops::cudnn::conv as cc;
        let out = if self.data {
            cc::backward_data((s1, l1), (s2, l2), &self.shape)?
        } else {
            cc::backward_filter((s1, l1), (s2, l2), &self.shape)?
        };
        Ok((out, self.out_shape()))
    }
}
