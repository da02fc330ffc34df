//! The ops' backward passes called directly, for the taped executor ([`crate::exec::taped`]): the
//! same gradients the ops' autograd nodes give (each op's backward pass is one of these
//! functions), without candle's autograd around them. They cover the host and cuDNN routes of
//! [`Backend::Fast`]; on the cuDNN route the ops it leaves to candle (the shortcut, the average
//! pooling) have their gradients written out, and an op that fell back to candle's kernels (a
//! convolution cuDNN has no algorithm for, a refused `bf16` max pooling) gets its gradient from
//! candle's autograd on a graph of that one op.

use candle_core::{DType, Tensor, Var};

use super::elementwise::{shortcut_dims, Window};
use super::{custom, stock, Backend, BatchStats, CResult, Route};

/// What a training-mode batch norm keeps for its backward pass: the batch statistics it
/// normalised with, and the type it ran in (`f32` where cuDNN refused a `bf16` batch norm).
pub(crate) struct BnSaved {
    stats: Saved,
    #[cfg_attr(not(feature = "cudnn"), allow(dead_code))]
    ran_in: DType,
}

enum Saved {
    /// The host kernels' mean and `1 / sqrt(var + eps)`.
    Host(custom::norm::HostStats),
    /// cuDNN's saved `[mean | invstd]`.
    #[cfg(feature = "cudnn")]
    Cudnn(Tensor),
}

impl BnSaved {
    /// cuDNN's saved statistics of a batch norm that ran in `ran_in`.
    #[cfg(feature = "cudnn")]
    pub(crate) fn cudnn(stats: Tensor, ran_in: DType) -> Self {
        Self { stats: Saved::Cudnn(stats), ran_in }
    }
}

impl Backend {
    /// Whether the explicit backward passes cover activations of `dtype` on `device`: the host
    /// and cuDNN routes.
    pub(crate) fn has_explicit_backward(self, device: &candle_core::Device, dtype: DType) -> bool {
        matches!(self.route_for(device, dtype), Route::Host | Route::Cudnn)
    }

    /// [`Backend::batch_norm_train`] that also returns what [`Backend::batch_norm_train_backward`]
    /// needs (`None` on the stock route, whose gradients come from candle's autograd).
    pub(crate) fn batch_norm_train_saved(
        self,
        x: &Tensor,
        (gamma, beta): (&Tensor, &Tensor),
        (eps, relu): (f64, bool),
    ) -> CResult<(Tensor, BatchStats, Option<BnSaved>)> {
        super::check_batch_values(x)?;
        match self.route(x) {
            Route::Host => {
                let (y, stats, host) = custom::norm::train_host(x, gamma, beta, eps, relu)?;
                Ok((y, stats, Some(BnSaved { stats: Saved::Host(host), ran_in: DType::F32 })))
            }
            #[cfg(feature = "cudnn")]
            Route::Cudnn => {
                let (y, (stats, saved)) = super::in_f32_if_refused(super::BF16_BN_TRAIN, x, |x| {
                    let (y, stats, saved) = custom::norm::train_cudnn(x, gamma, beta, eps, relu)?;
                    Ok((y, (stats, BnSaved::cudnn(saved, x.dtype()))))
                })?;
                Ok((y, stats, Some(saved)))
            }
            _ => {
                let (y, stats) = stock::batch_norm_train(x, gamma, beta, eps, relu)?;
                Ok((y, stats, None))
            }
        }
    }

    /// The gradients `(dx when want_dx, dgamma, dbeta)` of a training-mode batch norm (+ ReLU when
    /// `relu`) from its input `x`, output `y` (read only for the ReLU's mask: `None` without
    /// one), output gradient `dy` and what its forward pass `saved`; `dx` has the type of `x`, the
    /// others are `f32`.
    pub(crate) fn batch_norm_train_backward(
        self,
        saved: &BnSaved,
        (x, y, dy): (&Tensor, Option<&Tensor>, &Tensor),
        gamma: &Tensor,
        (eps, relu): (f64, bool),
        want_dx: bool,
    ) -> CResult<(Option<Tensor>, Tensor, Tensor)> {
        let y = relu_output(y, dy, relu)?;
        match &saved.stats {
            Saved::Host(stats) => {
                let _ = eps;
                custom::norm::train_backward_host(stats, (x, y, dy), gamma, relu, want_dx)
            }
            #[cfg(feature = "cudnn")]
            Saved::Cudnn(stats) => {
                let ran = |t: &Tensor| t.to_dtype(saved.ran_in);
                let dy_ran = ran(dy)?;
                let y_ran = if relu { ran(y)? } else { dy_ran.clone() };
                let (dx, dg, db) = custom::norm::train_backward_cudnn(
                    (&ran(x)?, &y_ran, &dy_ran),
                    gamma,
                    stats,
                    (eps, relu),
                )?;
                Ok((want_dx.then(|| dx.to_dtype(x.dtype())).transpose()?, dg, db))
            }
        }
    }

    /// The gradients `(dx when want_dx, dgamma, dbeta)` of an eval-mode batch norm (+ ReLU) with
    /// the running statistics `(mean, var)` it normalised with; `y` as in
    /// [`Backend::batch_norm_train_backward`].
    pub(crate) fn batch_norm_eval_backward(
        self,
        (x, y, dy): (&Tensor, Option<&Tensor>, &Tensor),
        gamma: &Tensor,
        stats: (&Tensor, &Tensor),
        (eps, relu): (f64, bool),
        want_dx: bool,
    ) -> CResult<(Option<Tensor>, Tensor, Tensor)> {
        let y = relu_output(y, dy, relu)?;
        custom::norm::eval_backward((x, y, dy), gamma, stats, (eps, relu), want_dx)
    }

    /// The gradients `(dx when want_dx, dw)` of [`Backend::conv2d`] for the output gradient `dy`.
    pub(crate) fn conv2d_backward(
        self,
        (x, w, dy): (&Tensor, &Tensor, &Tensor),
        (stride, pad): (usize, usize),
        want_dx: bool,
    ) -> CResult<(Option<Tensor>, Tensor)> {
        let on_candle = match self.route(x) {
            Route::Host => false,
            #[cfg(feature = "cudnn")]
            Route::Cudnn => !custom::conv::cudnn_runs(x, w, stride, pad)?,
            _ => true,
        };
        if on_candle {
            let g = local_grads(&[x, w], dy, |t| stock::conv2d(&t[0], &t[1], stride, pad))?;
            return Ok((want_dx.then(|| g[0].clone()), g[1].clone()));
        }
        match custom::conv::backward(x, w, dy, (stride, pad), (want_dx, true))? {
            (dx, Some(dw)) => Ok((dx, dw)),
            (_, None) => candle_core::bail!("conv2d backward: no filter gradient"),
        }
    }

    /// The gradients `(dx when want_dx, dw)` of [`Backend::conv2d_prepared`] with the filter
    /// [`Backend::prepared_filter`] gave, for the output gradient `dy`: `dw` in PyTorch's layout,
    /// and the prepared filter read as it is for `dx`. Only where `conv2d_prepared` ran.
    pub(crate) fn conv2d_backward_prepared(
        self,
        (x, prepared, dy): (&Tensor, &Tensor, &Tensor),
        (stride, pad): (usize, usize),
        want_dx: bool,
    ) -> CResult<(Option<Tensor>, Tensor)> {
        match self.route(x) {
            #[cfg(feature = "cudnn")]
            Route::Cudnn => {
                match custom::conv::backward_khwc(x, prepared, dy, (stride, pad), (want_dx, true))? {
                    (dx, Some(dw)) => Ok((dx, dw)),
                    (_, None) => candle_core::bail!("conv2d backward: no filter gradient"),
                }
            }
            _ => {
                let _ = (prepared, dy, stride, pad, want_dx);
                candle_core::bail!("conv2d backward: a prepared filter on a route without one")
            }
        }
    }

    /// The gradient of both inputs of [`Backend::add_relu`] from its output `y` and output
    /// gradient `dy`.
    pub(crate) fn add_relu_backward(self, y: &Tensor, dy: &Tensor) -> CResult<Tensor> {
        match self.route(y) {
            Route::Host | Route::Cudnn => custom::elementwise::relu_grad(y, dy),
            Route::Stock => stock::relu_grad(y, dy),
        }
    }

    /// The input gradient of [`Backend::shortcut_a`] for an input of `dims`.
    pub(crate) fn shortcut_backward(self, dims: &[usize], dy: &Tensor, pad: usize) -> CResult<Tensor> {
        if self.route(dy) == Route::Host {
            return custom::elementwise::shortcut_backward(dims, dy, pad);
        }
        let &[n, h, w, c] = dims else {
            candle_core::bail!("shortcut backward: expected NHWC, got {dims:?}")
        };
        let (h2, w2, _) = shortcut_dims(h, w, c, pad);
        // The kept channels, each value back at its even position, zeros between.
        dy.narrow(3, pad, c)?
            .reshape((n, h2, 1, w2, 1, c))?
            .pad_with_zeros(2, 0, 1)?
            .pad_with_zeros(4, 0, 1)?
            .reshape((n, 2 * h2, 2 * w2, c))?
            .narrow(1, 0, h)?
            .narrow(2, 0, w)?
            .contiguous()
    }

    /// The input gradient of [`Backend::avg_pool`] for an input of `dims`.
    pub(crate) fn avg_pool_backward(self, dims: &[usize], dy: &Tensor) -> CResult<Tensor> {
        if self.route(dy) == Route::Host {
            return custom::pool::avg_pool_backward(dims, dy);
        }
        let &[n, h, w, c] = dims else {
            candle_core::bail!("avg pool backward: expected NHWC, got {dims:?}")
        };
        (dy / (h * w) as f64)?.reshape((n, 1, 1, c))?.broadcast_as((n, h, w, c))?.contiguous()
    }

    /// The input gradient of [`Backend::max_pool`] with `win` from its input `x`, output `y` and
    /// output gradient `dy`.
    pub(crate) fn max_pool_backward(
        self,
        (x, y, dy): (&Tensor, &Tensor, &Tensor),
        win: Window,
    ) -> CResult<Tensor> {
        let on_candle = || {
            let g = local_grads(&[x], dy, |t| stock::max_pool(&t[0], win.k, win.stride, win.pad))?;
            Ok(g[0].clone())
        };
        match self.route(x) {
            Route::Host => custom::pool::max_pool_backward(x, y, dy, win),
            #[cfg(feature = "cudnn")]
            Route::Cudnn if x.dtype() != DType::F32 => super::cudnn::or_fall_back(
                super::BF16_MAX_POOL,
                x,
                super::cudnn::Instead::Candle,
                || custom::pool::max_pool_backward(x, y, dy, win),
                on_candle,
            ),
            Route::Cudnn => custom::pool::max_pool_backward(x, y, dy, win),
            Route::Stock => on_candle(),
        }
    }
}

/// The output a batch norm's backward pass takes: `y` with a ReLU (its mask), and without one
/// `dy`, which stands in for it unread (the passes take one tensor of `x`'s shape and type).
fn relu_output<'a>(y: Option<&'a Tensor>, dy: &'a Tensor, relu: bool) -> CResult<&'a Tensor> {
    match (y, relu) {
        (Some(y), _) => Ok(y),
        (None, false) => Ok(dy),
        (None, true) => candle_core::bail!("batch norm backward: the ReLU's mask needs the output"),
    }
}

/// The gradients of `f` at `inputs` for the output gradient `dy`, from candle's autograd on a
/// graph of `f` alone (over copies of the inputs): for ops that ran on candle's kernels.
fn local_grads(
    inputs: &[&Tensor],
    dy: &Tensor,
    f: impl FnOnce(&[Tensor]) -> CResult<Tensor>,
) -> CResult<Vec<Tensor>> {
    let vars = inputs.iter().map(|t| Var::from_tensor(t)).collect::<CResult<Vec<_>>>()?;
    let leaves: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let y = f(&leaves)?;
    let grads = (y.to_dtype(DType::F32)? * dy.to_dtype(DType::F32)?)?.sum_all()?.backward()?;
    vars.iter()
        .zip(inputs)
        .map(|(v, t)| match grads.get(v.as_tensor()) {
            Some(g) => g.to_dtype(t.dtype()),
            None => Tensor::zeros(t.shape(), t.dtype(), t.device()),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn randn(shape: &[usize], seed: u64) -> Tensor {
        let n: usize = shape.iter().product();
        let mut v = vec![0f32; n];
        lt_core::Rng::new(seed).fill_normal(&mut v, 0.0, 1.0);
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn assert_close(a: &Tensor, b: &Tensor, what: &str) {
        assert_eq!(a.dims(), b.dims(), "{what}: shapes");
        let (a, b) = (
            a.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            b.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        );
        for (i, (u, v)) in a.iter().zip(&b).enumerate() {
            assert!((u - v).abs() <= 1e-5 * (1.0 + v.abs()), "{what}[{i}]: {u} vs {v}");
        }
    }

    /// The written-out gradients of the cuDNN route's candle ops (shortcut, average pooling), run
    /// here on the stock route, against candle's autograd through the ops themselves; odd sides
    /// included (the shortcut pads them).
    #[test]
    fn written_out_gradients_match_autograd() {
        let b = Backend::Candle;
        for (h, w) in [(4, 4), (5, 3)] {
            let x = randn(&[2, h, w, 3], 1);
            let (h2, w2, oc) = shortcut_dims(h, w, 3, 2);
            let dy = randn(&[2, h2, w2, oc], 2);
            let g = local_grads(&[&x], &dy, |t| stock::shortcut_a(&t[0], 2)).unwrap();
            assert_close(&b.shortcut_backward(x.dims(), &dy, 2).unwrap(), &g[0], "shortcut");
            let host = custom::elementwise::shortcut_backward(x.dims(), &dy, 2).unwrap();
            assert_close(&host, &g[0], "host shortcut");
            let dy = randn(&[2, 3], 3);
            let g = local_grads(&[&x], &dy, |t| t[0].mean((1, 2))).unwrap();
            assert_close(&b.avg_pool_backward(x.dims(), &dy).unwrap(), &g[0], "avg pool");
            assert_close(&Backend::Fast.avg_pool_backward(x.dims(), &dy).unwrap(), &g[0], "host avg pool");
        }
    }

    /// The local-autograd fallback gives the gradient of the function it is handed: for
    /// `sum(dy * x * w)`, `dy * w` and `dy * x`.
    #[test]
    fn local_grads_are_the_functions_gradients() {
        let (x, w, dy) = (randn(&[3, 4], 4), randn(&[3, 4], 5), randn(&[3, 4], 6));
        let g = local_grads(&[&x, &w], &dy, |t| &t[0] * &t[1]).unwrap();
        assert_close(&g[0], &(&dy * &w).unwrap(), "d/dx");
        assert_close(&g[1], &(&dy * &x).unwrap(), "d/dw");
    }

    /// Conv and max-pool backward passes on the stock route (the local-autograd fallback) agree
    /// with the host kernels.
    #[test]
    fn fallback_gradients_match_the_host_kernels() {
        let (x, w) = (randn(&[2, 6, 6, 3], 7), randn(&[4, 3, 3, 3], 8));
        let dy = randn(&[2, 3, 3, 4], 9);
        let (dxs, dws) = Backend::Candle.conv2d_backward((&x, &w, &dy), (2, 1), true).unwrap();
        let (dxh, dwh) = Backend::Fast.conv2d_backward((&x, &w, &dy), (2, 1), true).unwrap();
        assert_close(&dxs.unwrap(), &dxh.unwrap(), "conv dx");
        assert_close(&dws, &dwh, "conv dw");
        let win = Window { k: 3, stride: 2, pad: 1 };
        let y = Backend::Fast.max_pool(&x, 3, 2, 1).unwrap();
        let dy = randn(y.dims(), 10);
        let s = Backend::Candle.max_pool_backward((&x, &y, &dy), win).unwrap();
        let h = Backend::Fast.max_pool_backward((&x, &y, &dy), win).unwrap();
        assert_close(&s, &h, "max pool dx");
    }
}
