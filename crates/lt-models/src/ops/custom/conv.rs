//! Convolution: forward and both gradients on the CPU kernels, and through cuDNN on CUDA; the
//! weight is `[C_out, C_in, k, k]` (PyTorch's layout) on both.

use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};

use super::{cpu_f32, CResult};
use crate::ops::conv::{self, ConvShape};

/// The convolution geometry of NHWC input dims `x` and `[C_out, C_in, k, k]` weight dims `w`.
pub(crate) fn shape_of(x: &[usize], w: &[usize], stride: usize, pad: usize) -> CResult<ConvShape> {
    let (&[n, h, wd, cin], &[cout, wcin, k, k2]) = (x, w) else {
        candle_core::bail!("conv2d: expected x [N, H, W, C] and a 4-d weight, got {x:?} and {w:?}")
    };
    if wcin != cin || k != k2 {
        candle_core::bail!(
            "conv2d: weight {w:?} ([C_out, C_in, k, k]) does not fit input {x:?} (NHWC, square kernels)"
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
    let op = Conv2dOp { stride, pad, khwc: false };
    x.contiguous()?.apply_op2(&w.contiguous()?, op)
}

/// `conv(x, w)` through cuDNN. The op takes the weight in PyTorch's layout; on the device it is
/// transposed to the channels-last filter layout (`[C_out, k, k, C_in]`) for each call, so that
/// activations and filter agree on NHWC, the layout Hopper's tensor cores run fastest, without
/// a permute and a copy as nodes of the autograd graph (and their gradients) per convolution.
/// Shapes cuDNN has no algorithm for (it says so when asked, once per shape) run on candle's
/// convolution instead.
#[cfg(feature = "cudnn")]
pub(crate) fn conv2d_cudnn(x: &Tensor, w: &Tensor, stride: usize, pad: usize) -> CResult<Tensor> {
    if !cudnn_runs(x, w, stride, pad)? {
        return crate::ops::stock::conv2d(x, w, stride, pad);
    }
    x.contiguous()?.apply_op2(&w.contiguous()?, Conv2dOp { stride, pad, khwc: false })
}

/// `w` (`[C_out, C_in, k, k]`) transposed to cuDNN's channels-last filter layout
/// `[C_out, k, k, C_in]`, once, for [`conv2d_cudnn_khwc`].
#[cfg(feature = "cudnn")]
pub(crate) fn filter_khwc(w: &Tensor) -> CResult<Tensor> {
    w.permute((0, 2, 3, 1))?.contiguous()
}

/// `conv(x, w)` through cuDNN with the filter already channels-last (from [`filter_khwc`]),
/// without an autograd node (inference with fixed weights, or the taped executor's forward pass,
/// `backward`); `None` where cuDNN has no algorithm for the shape (forward, and backward when
/// `backward`).
#[cfg(feature = "cudnn")]
pub(crate) fn conv2d_cudnn_khwc(
    x: &Tensor,
    w: &Tensor,
    (stride, pad): (usize, usize),
    backward: bool,
) -> CResult<Option<Tensor>> {
    let s = shape_of(x.dims(), &pytorch_dims(w.dims())?, stride, pad)?;
    if !cudnn_has(x, &s, backward) {
        return Ok(None);
    }
    let op = Conv2dOp { stride, pad, khwc: true };
    Ok(Some(x.contiguous()?.apply_op2_no_bwd(&w.contiguous()?, &op)?))
}

/// The `[C_out, C_in, k, k]` dims of a channels-last `[C_out, k, k, C_in]` filter.
#[cfg_attr(not(feature = "cudnn"), allow(dead_code))]
fn pytorch_dims(khwc: &[usize]) -> CResult<[usize; 4]> {
    match *khwc {
        [cout, k, k2, cin] => Ok([cout, cin, k, k2]),
        _ => candle_core::bail!("conv2d: expected a [C_out, k, k, C_in] filter, got {khwc:?}"),
    }
}

/// Whether cuDNN runs this convolution of [`conv2d_cudnn`] (it has algorithms for the shape in
/// every direction); where not, candle's convolution does.
#[cfg(feature = "cudnn")]
pub(crate) fn cudnn_runs(x: &Tensor, w: &Tensor, stride: usize, pad: usize) -> CResult<bool> {
    Ok(cudnn_has(x, &shape_of(x.dims(), w.dims(), stride, pad)?, true))
}

/// Whether cuDNN has algorithms for convolution `s` of `x` (on CUDA, in its type): forward, and
/// for the backward passes when `backward`.
#[cfg(feature = "cudnn")]
fn cudnn_has(x: &Tensor, s: &ConvShape, backward: bool) -> bool {
    match x.device() {
        candle_core::Device::Cuda(dev) => crate::ops::cudnn::conv::usable(dev, s, x.dtype(), backward),
        _ => false,
    }
}

/// The gradients of `conv(x, w)` for the output gradient `dy`: of the input when `want.0`, of
/// the weight when `want.1` (PyTorch's layout), with the host kernels or cuDNN (the tensors'
/// device). The op's own backward pass, and the taped executor's.
pub(crate) fn backward(
    x: &Tensor,
    w: &Tensor,
    dy: &Tensor,
    (stride, pad): (usize, usize),
    want: (bool, bool),
) -> CResult<(Option<Tensor>, Option<Tensor>)> {
    let shape = shape_of(x.dims(), w.dims(), stride, pad)?;
    gradients(x, (w, false), dy, shape, want)
}

/// [`backward`] through cuDNN with the filter channels-last, as the forward ran it (from
/// [`filter_khwc`], kept by the taped executor): the input's gradient reads it as it is, where
/// [`backward`] transposes the filter again (one kernel and one allocation fewer per
/// convolution and step). The weight's gradient is in PyTorch's layout, as there.
#[cfg(feature = "cudnn")]
pub(crate) fn backward_khwc(
    x: &Tensor,
    khwc: &Tensor,
    dy: &Tensor,
    (stride, pad): (usize, usize),
    want: (bool, bool),
) -> CResult<(Option<Tensor>, Option<Tensor>)> {
    let shape = shape_of(x.dims(), &pytorch_dims(khwc.dims())?, stride, pad)?;
    gradients(x, (khwc, true), dy, shape, want)
}

/// The gradients of convolution `shape` of `x` with filter `w` (channels-last when `w.1`).
fn gradients(
    x: &Tensor,
    (w, khwc): (&Tensor, bool),
    dy: &Tensor,
    shape: ConvShape,
    want: (bool, bool),
) -> CResult<(Option<Tensor>, Option<Tensor>)> {
    let dy = dy.contiguous()?;
    let dx = if want.0 {
        Some(dy.apply_op2_no_bwd(&w.contiguous()?, &ConvGrad { shape, data: true, khwc })?)
    } else {
        None
    };
    let dw = if want.1 {
        Some(x.contiguous()?.apply_op2_no_bwd(&dy, &ConvGrad { shape, data: false, khwc: false })?)
    } else {
        None
    };
    Ok((dx, dw))
}

/// The weights `[C_out, C_in, k, k]` at `(s, l)` copied into a new channels-last buffer
/// `[C_out, k, k, C_in]` (candle's strided copy of the permuted layout).
#[cfg(feature = "cudnn")]
fn filter_to_khwc(
    s: &candle_core::CudaStorage,
    l: &Layout,
    shape: &ConvShape,
) -> CResult<candle_core::CudaStorage> {
    transposed(s, &l.permute(&[0, 2, 3, 1])?, shape.weight_len())
}

/// A channels-last filter `[C_out, k, k, C_in]` (contiguous) copied into PyTorch's layout.
#[cfg(feature = "cudnn")]
fn filter_from_khwc(s: &candle_core::CudaStorage, shape: &ConvShape) -> CResult<candle_core::CudaStorage> {
    let khwc = Layout::contiguous((shape.cout, shape.k, shape.k, shape.cin));
    transposed(s, &khwc.permute(&[0, 3, 1, 2])?, shape.weight_len())
}

/// The `len` values of `s` read through the strided layout `l`, as a new contiguous buffer.
#[cfg(feature = "cudnn")]
fn transposed(s: &candle_core::CudaStorage, l: &Layout, len: usize) -> CResult<candle_core::CudaStorage> {
    use candle_core::backend::BackendStorage;
    if l.shape().elem_count() != len {
        candle_core::bail!("conv2d: a filter of {} values where {len} were expected", l.shape().elem_count());
    }
    // Every value is written by the copy.
    let mut out = crate::ops::cudnn::uninit_like(s, len)?;
    s.copy_strided_src(&mut out, 0, l)?;
    Ok(out)
}

struct Conv2dOp {
    stride: usize,
    pad: usize,
    /// The filter argument is already channels-last `[C_out, k, k, C_in]` (cuDNN only; no
    /// backward pass).
    khwc: bool,
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
        if self.khwc {
            candle_core::bail!("conv2d: a channels-last filter is for cuDNN");
        }
        let s = shape_of(l1.dims(), l2.dims(), self.stride, self.pad)?;
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
        let (y, s) = if self.khwc {
            let s = shape_of(l1.dims(), &pytorch_dims(l2.dims())?, self.stride, self.pad)?;
            (crate::ops::cudnn::conv::forward((s1, l1), (s2, l2), &s)?, s)
        } else {
            let s = shape_of(l1.dims(), l2.dims(), self.stride, self.pad)?;
            let w = filter_to_khwc(s2, l2, &s)?;
            let wl = Layout::contiguous((s.cout, s.k, s.k, s.cin));
            (crate::ops::cudnn::conv::forward((s1, l1), (&w, &wl), &s)?, s)
        };
        Ok((y, Shape::from((s.n, s.oh(), s.ow(), s.cout))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> CResult<(Option<Tensor>, Option<Tensor>)> {
        if self.khwc {
            candle_core::bail!("conv2d with a channels-last filter has no backward pass");
        }
        backward(x, w, grad, (self.stride, self.pad), (x.track_op(), w.track_op()))
    }
}

/// A gradient of the convolution: of the input (`data`: arguments `dy`, `w`) or of the weight
/// (arguments `x`, `dy`); weights in PyTorch's layout `[C_out, C_in, k, k]`, or the input's
/// gradient's filter argument channels-last `[C_out, k, k, C_in]` when `khwc` (cuDNN only).
struct ConvGrad {
    shape: ConvShape,
    data: bool,
    khwc: bool,
}

impl ConvGrad {
    fn out_shape(&self) -> Shape {
        let s = &self.shape;
        if self.data {
            Shape::from((s.n, s.h, s.w, s.cin))
        } else {
            Shape::from((s.cout, s.cin, s.k, s.k))
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
        if self.khwc {
            candle_core::bail!("conv2d backward: a channels-last filter is for cuDNN");
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
        let s = &self.shape;
        let out = if self.data && self.khwc {
            cc::backward_data((s1, l1), (s2, l2), s)?
        } else if self.data {
            let w = filter_to_khwc(s2, l2, s)?;
            cc::backward_data((s1, l1), (&w, &Layout::contiguous((s.cout, s.k, s.k, s.cin))), s)?
        } else {
            filter_from_khwc(&cc::backward_filter((s1, l1), (s2, l2), s)?, s)?
        };
        Ok((out, self.out_shape()))
    }
}
