//! The stock route: every op built from candle's own tensor ops (any device, any float dtype,
//! gradients by candle's autograd). The "stock candle" baseline of the benchmark and the
//! reference the fast routes are tested against.

use candle_core::{DType, Tensor};

use super::{elementwise, window_out, BatchStats};

type CResult<T> = candle_core::Result<T>;

/// Convolution of NHWC `x` with `w` (`[C_out, C_in, k, k]`) through candle's NCHW convolution.
/// Half-precision operands are convolved in `f32` and the result rounded back (products summed
/// in `f32`, as cuDNN does with `bf16` data; candle's CPU matrix product has no `bf16`).
pub(crate) fn conv2d(x: &Tensor, w: &Tensor, stride: usize, pad: usize) -> CResult<Tensor> {
    let dtype = x.dtype();
    if matches!(dtype, DType::BF16 | DType::F16) {
        let y = conv2d(&x.to_dtype(DType::F32)?, &w.to_dtype(DType::F32)?, stride, pad)?;
        return y.to_dtype(dtype);
    }
    x.permute((0, 3, 1, 2))?.conv2d(w, pad, stride, 1, 1)?.permute((0, 2, 3, 1))
}

/// Training-mode batch norm: batch mean and biased variance over `N, H, W`. Computed in the
/// type of `gamma` (a `bf16` input is normalised in `f32`, as cuDNN does); the output has the type
/// of `x`.
pub(crate) fn batch_norm_train(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    relu: bool,
) -> CResult<(Tensor, BatchStats)> {
    let c = x.dim(candle_core::D::Minus1)?;
    let count = x.elem_count() / c;
    let flat = x.reshape((count, c))?.to_dtype(gamma.dtype())?;
    let mean = flat.mean_keepdim(0)?;
    let centered = flat.broadcast_sub(&mean)?;
    let var = centered.sqr()?.mean_keepdim(0)?;
    let xhat = centered.broadcast_div(&(var.clone() + eps)?.sqrt()?)?;
    let mut y = xhat.broadcast_mul(&gamma.reshape((1, c))?)?.broadcast_add(&beta.reshape((1, c))?)?;
    if relu {
        y = y.relu()?;
    }
    let stats = BatchStats { mean: mean.flatten_all()?.detach(), var: var.flatten_all()?.detach(), count };
    Ok((y.reshape(x.dims())?.to_dtype(x.dtype())?, stats))
}

/// Eval-mode batch norm: `x * scale + shift` with `scale = gamma / sqrt(var + eps)` and
/// `shift = beta - mean * scale`, computed in the type of `gamma`; the output has the type of `x`.
pub(crate) fn batch_norm_eval(
    x: &Tensor,
    (gamma, beta): (&Tensor, &Tensor),
    (mean, var): (&Tensor, &Tensor),
    eps: f64,
    relu: bool,
) -> CResult<Tensor> {
    let c = x.dim(candle_core::D::Minus1)?;
    let dtype = gamma.dtype();
    let scale = gamma.broadcast_div(&(var.to_dtype(dtype)? + eps)?.sqrt()?)?;
    let shift = (beta - mean.to_dtype(dtype)?.mul(&scale)?)?;
    let y = x
        .to_dtype(dtype)?
        .broadcast_mul(&scale.reshape((1, 1, 1, c))?)?
        .broadcast_add(&shift.reshape((1, 1, 1, c))?)?;
    let y = if relu { y.relu()? } else { y };
    y.to_dtype(x.dtype())
}

/// `max(a + b, 0)`.
pub(crate) fn add_relu(a: &Tensor, b: &Tensor) -> CResult<Tensor> {
    (a + b)?.relu()
}

/// A ReLU's input gradient `dy * (y > 0)` from its output `y`, in the type of `dy`.
pub(crate) fn relu_grad(y: &Tensor, dy: &Tensor) -> CResult<Tensor> {
    dy * y.gt(0f32)?.to_dtype(dy.dtype())?
}

/// Option-A shortcut from strided views: pad H and W to even sizes, view as
/// `(n, h/2, 2, w/2, 2, c)`, keep the first of each pair, pad the channels.
pub(crate) fn shortcut_a(x: &Tensor, pad: usize) -> CResult<Tensor> {
    let (n, h, w, c) = x.dims4()?;
    let x = if h % 2 == 1 { x.pad_with_zeros(1, 0, 1)? } else { x.clone() };
    let x = if w % 2 == 1 { x.pad_with_zeros(2, 0, 1)? } else { x };
    let (h2, w2, _) = elementwise::shortcut_dims(h, w, c, pad);
    let sub = x.reshape((n, h2, 2, w2, 2, c))?.narrow(2, 0, 1)?.narrow(4, 0, 1)?.reshape((n, h2, w2, c))?;
    sub.pad_with_zeros(3, pad, pad)
}

/// The value the stock max pooling pads with: below any activation, so padding never wins.
const PAD_VALUE: f32 = -1e30;

/// Max pooling from strided windows: pad with [`PAD_VALUE`], take the `k * k` strided views,
/// reduce with `max` (differentiable for any window and stride, unlike candle's `max_pool2d`).
pub(crate) fn max_pool(x: &Tensor, k: usize, stride: usize, pad: usize) -> CResult<Tensor> {
    let (n, h, w, c) = x.dims4()?;
    let (Some(oh), Some(ow)) = (window_out(h, k, stride, pad), window_out(w, k, stride, pad)) else {
        candle_core::bail!(
            "max pool: window {k} / stride {stride} / padding {pad} does not fit {:?}",
            x.dims()
        )
    };
    let fill =
        |shape: (usize, usize, usize, usize)| Tensor::full(PAD_VALUE, shape, x.device())?.to_dtype(x.dtype());
    let mut xp = x.clone();
    if pad > 0 {
        xp = Tensor::cat(&[&fill((n, pad, w, c))?, &xp, &fill((n, pad, w, c))?], 1)?;
        let hp = h + 2 * pad;
        xp = Tensor::cat(&[&fill((n, hp, pad, c))?, &xp, &fill((n, hp, pad, c))?], 2)?;
    }
    let mut windows = Vec::with_capacity(k * k);
    for ky in 0..k {
        for kx in 0..k {
            let v = xp.narrow(1, ky, (oh - 1) * stride + 1)?.narrow(2, kx, (ow - 1) * stride + 1)?;
            let v = if stride == 1 {
                v
            } else {
                let v = v.pad_with_zeros(1, 0, stride - 1)?.pad_with_zeros(2, 0, stride - 1)?;
                v.reshape((n, oh, stride, ow, stride, c))?
                    .narrow(2, 0, 1)?
                    .narrow(4, 0, 1)?
                    .reshape((n, oh, ow, c))?
            };
            windows.push(v);
        }
    }
    Tensor::stack(&windows, 0)?.max(0)
}
