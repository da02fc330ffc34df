//! The backbones' hot path: convolution, batch norm (+ ReLU), residual add, shortcut and pooling
//! on NHWC activations, as candle custom ops with explicit forward and backward passes.
//!
//! [`Backend::Fast`] runs the project's CPU kernels ([`conv`], [`norm`], [`elementwise`] on the
//! register-blocked [`kernels`]) for `f32` tensors on the CPU and falls back to candle's own ops
//! elsewhere (CUDA); [`Backend::Candle`] always uses candle's ops (the "stock candle" baseline of
//! the benchmark and the reference of the op tests). Both compute the same function and the same
//! gradients; the tests check one against the other.
//!
//! Activations are `[N, H, W, C]`; convolution weights keep PyTorch's `[C_out, C_in, k, k]`.

pub mod conv;
#[cfg(feature = "cudnn")]
pub mod cudnn;
pub mod elementwise;
pub mod kernels;
pub mod norm;

use std::sync::{Arc, Mutex};

use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Device, Layout, Shape, Storage, Tensor,
};

type CResult<T> = candle_core::Result<T>;

/// Which implementation runs the backbone ops.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Backend {
    /// The project's kernels on CPU (`f32`), candle's ops on other devices.
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

fn cpu_f32<'a>(s: &'a CpuStorage, l: &Layout, what: &'static str) -> CResult<&'a [f32]> {
    let data = s.as_slice::<f32>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("{what}: the fast kernels need a contiguous tensor"),
    }
}

/// Runs `f` on the host `f32` data of a contiguous CPU tensor.
fn with_host<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> CResult<R>) -> CResult<R> {
    let t = t.contiguous()?;
    let (st, l) = t.storage_and_layout();
    match &*st {
        Storage::Cpu(cs) => f(cpu_f32(cs, l, "tensor")?),
        _ => candle_core::bail!("the fast kernels run on the CPU"),
    }
}

fn host_tensor(v: Vec<f32>, shape: impl Into<Shape>) -> CResult<Tensor> {
    Tensor::from_vec(v, shape, &Device::Cpu)
}

fn is_fast(backend: Backend, t: &Tensor) -> bool {
    backend == Backend::Fast && t.device().is_cpu() && t.dtype() == DType::F32
}

/// The convolution has a fast path on the CPU and, with the `cudnn` feature, on CUDA.
fn conv_is_fast(backend: Backend, t: &Tensor) -> bool {
    is_fast(backend, t)
        || (cfg!(feature = "cudnn")
            && backend == Backend::Fast
            && t.device().is_cuda()
            && t.dtype() == DType::F32)
}

// ---------------------------------------------------------------------------------------------
// Convolution

struct Conv2dOp {
    stride: usize,
    pad: usize,
}

impl Conv2dOp {
    fn shape(&self, x: &[usize], w: &[usize]) -> CResult<conv::ConvShape> {
        let (&[n, h, wd, cin], &[cout, wcin, k, k2]) = (x, w) else {
            candle_core::bail!(
                "conv2d: expected x [N, H, W, C] and w [C_out, C_in, k, k], got {x:?} and {w:?}"
            )
        };
        if wcin != cin || k != k2 {
            candle_core::bail!("conv2d: weight {w:?} does not fit input {x:?} (NHWC, square kernels)");
        }
        if h + 2 * self.pad < k || wd + 2 * self.pad < k {
            candle_core::bail!(
                "conv2d: input {x:?} smaller than the kernel {k}x{k} with padding {}",
                self.pad
            );
        }
        Ok(conv::ConvShape { n, h, w: wd, cin, cout, k, stride: self.stride, pad: self.pad })
    }
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
        let s = self.shape(l1.dims(), l2.dims())?;
        let x = cpu_f32(s1, l1, "conv2d input")?;
        let w = cpu_f32(s2, l2, "conv2d weight")?;
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
        let s = self.shape(l1.dims(), l2.dims())?;
        Ok((cudnn::forward(s1, l1, s2, l2, &s)?, Shape::from((s.n, s.oh(), s.ow(), s.cout))))
    }
    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> CResult<(Option<Tensor>, Option<Tensor>)> {
        let shape = self.shape(x.dims(), w.dims())?;
        let grad = grad.contiguous()?;
        let dx = if x.track_op() {
            Some(grad.apply_op2_no_bwd(&w.contiguous()?, &ConvGrad { shape, data: true })?)
        } else {
            None
        };
        let dw = if w.track_op() {
            Some(x.contiguous()?.apply_op2_no_bwd(&grad, &ConvGrad { shape, data: false })?)
        } else {
            None
        };
        Ok((dx, dw))
    }
}

/// A gradient of the convolution: of the input (`data`: arguments `dy`, `w`) or of the weight
/// (arguments `x`, `dy`). CPU kernels or cuDNN.
struct ConvGrad {
    shape: conv::ConvShape,
    data: bool,
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
        let (a, b) = (cpu_f32(s1, l1, "conv gradient argument")?, cpu_f32(s2, l2, "conv gradient argument")?);
        if self.data {
            let mut dx = vec![0f32; s.input_len()];
            conv::backward_input(a, b, s, &mut dx);
            Ok((CpuStorage::F32(dx), Shape::from((s.n, s.h, s.w, s.cin))))
        } else {
            let mut dw = vec![0f32; s.weight_len()];
            conv::backward_weight(a, b, s, &mut dw);
            Ok((CpuStorage::F32(dw), Shape::from((s.cout, s.cin, s.k, s.k))))
        }
    }
    #[cfg(feature = "cudnn")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> CResult<(candle_core::CudaStorage, Shape)> {
        let s = &self.shape;
        if self.data {
            Ok((cudnn::backward_data(s1, l1, s2, l2, s)?, Shape::from((s.n, s.h, s.w, s.cin))))
        } else {
            Ok((cudnn::backward_filter(s1, l1, s2, l2, s)?, Shape::from((s.cout, s.cin, s.k, s.k))))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Batch norm (training mode), optionally fused with ReLU

type SavedStats = Arc<Mutex<Option<(Vec<f32>, Vec<f32>, Vec<f64>)>>>;

struct BatchNormOp {
    eps: f64,
    relu: bool,
    saved: SavedStats,
}

impl CustomOp3 for BatchNormOp {
    fn name(&self) -> &'static str {
        "lt-batchnorm-nhwc"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let c = *l1.dims().last().unwrap_or(&0);
        if l2.dims() != [c] || l3.dims() != [c] {
            candle_core::bail!(
                "batch norm: weight {:?} / bias {:?} do not match {c} channels",
                l2.dims(),
                l3.dims()
            );
        }
        let x = cpu_f32(s1, l1, "batch norm input")?;
        if x.len() <= c {
            candle_core::bail!(
                "batch norm in training mode needs more than one value per channel, got shape {:?}",
                l1.dims()
            );
        }
        let mut out = vec![0f32; x.len()];
        let stats = norm::forward_train(
            x,
            c,
            cpu_f32(s2, l2, "bn weight")?,
            cpu_f32(s3, l3, "bn bias")?,
            self.eps,
            self.relu,
            &mut out,
        );
        *self.saved.lock().expect("stats lock") = Some(stats);
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        _beta: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> CResult<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let guard = self.saved.lock().expect("stats lock");
        let Some((mean, invstd, _)) = guard.as_ref() else {
            candle_core::bail!("batch norm backward without a forward pass");
        };
        bn_backward(x, gamma, res, grad, self.relu, mean, invstd, norm::backward_train)
    }
}

type BnBackward = fn(
    &[f32],
    Option<&[f32]>,
    &[f32],
    usize,
    &[f32],
    &[f32],
    &[f32],
    Option<&mut [f32]>,
) -> (Vec<f32>, Vec<f32>);

/// The shared backward of both batch-norm ops: gradients of `x` (when it is tracked), `gamma` and
/// `beta`, with the ReLU mask taken from the output `res`.
#[allow(clippy::too_many_arguments)]
fn bn_backward(
    x: &Tensor,
    gamma: &Tensor,
    res: &Tensor,
    grad: &Tensor,
    relu: bool,
    mean: &[f32],
    invstd: &[f32],
    kernel: BnBackward,
) -> CResult<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
    let c = mean.len();
    let want_dx = x.track_op();
    with_host(x, |xv| {
        with_host(grad, |dy| {
            with_host(gamma, |g| {
                let run = |y: Option<&[f32]>| {
                    let mut dx = if want_dx { vec![0f32; xv.len()] } else { Vec::new() };
                    let (dg, db) =
                        kernel(xv, y, dy, c, g, mean, invstd, want_dx.then_some(dx.as_mut_slice()));
                    let dx = if want_dx { Some(host_tensor(dx, x.dims())?) } else { None };
                    Ok((dx, Some(host_tensor(dg, c)?), Some(host_tensor(db, c)?)))
                };
                if relu {
                    with_host(res, |y| run(Some(y)))
                } else {
                    run(None)
                }
            })
        })
    })
}

struct BatchNormEvalOp {
    eps: f64,
    relu: bool,
    mean: Vec<f32>,
    var: Vec<f32>,
}

impl BatchNormEvalOp {
    fn invstd(&self) -> Vec<f32> {
        self.var.iter().map(|&v| (1.0 / (v as f64 + self.eps).sqrt()) as f32).collect()
    }
}

impl CustomOp3 for BatchNormEvalOp {
    fn name(&self) -> &'static str {
        "lt-batchnorm-eval-nhwc"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let c = self.mean.len();
        if l1.dims().last() != Some(&c) || l2.dims() != [c] || l3.dims() != [c] {
            candle_core::bail!(
                "batch norm (eval): input {:?}, weight {:?}, bias {:?} for {c} channels",
                l1.dims(),
                l2.dims(),
                l3.dims()
            );
        }
        let (x, g, b) =
            (cpu_f32(s1, l1, "bn input")?, cpu_f32(s2, l2, "bn weight")?, cpu_f32(s3, l3, "bn bias")?);
        let invstd = self.invstd();
        let scale: Vec<f32> = (0..c).map(|k| g[k] * invstd[k]).collect();
        let shift: Vec<f32> = (0..c).map(|k| b[k] - self.mean[k] * scale[k]).collect();
        let mut out = vec![0f32; x.len()];
        norm::affine(x, c, &scale, &shift, self.relu, &mut out);
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        _beta: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> CResult<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        bn_backward(x, gamma, res, grad, self.relu, &self.mean, &self.invstd(), norm::backward_eval)
    }
}

// ---------------------------------------------------------------------------------------------
// Residual add + ReLU, option-A shortcut, pooling

struct AddReluOp;

impl CustomOp2 for AddReluOp {
    fn name(&self) -> &'static str {
        "lt-add-relu"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        if l1.dims() != l2.dims() {
            candle_core::bail!("add_relu: shapes {:?} and {:?} differ", l1.dims(), l2.dims());
        }
        let (a, b) = (cpu_f32(s1, l1, "add_relu lhs")?, cpu_f32(s2, l2, "add_relu rhs")?);
        let mut out = vec![0f32; a.len()];
        elementwise::add_relu(a, b, &mut out);
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> CResult<(Option<Tensor>, Option<Tensor>)> {
        let g = with_host(res, |y| {
            with_host(grad, |dy| {
                let mut out = vec![0f32; y.len()];
                elementwise::relu_backward(y, dy, &mut out);
                host_tensor(out, res.dims())
            })
        })?;
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
        with_host(res, |y| {
            with_host(grad, |dy| {
                let mut out = vec![0f32; y.len()];
                elementwise::relu_backward(y, dy, &mut out);
                Ok(Some(host_tensor(out, res.dims())?))
            })
        })
    }
}

struct ShortcutOp {
    pad: usize,
}

impl CustomOp1 for ShortcutOp {
    fn name(&self) -> &'static str {
        "lt-shortcut-a"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> CResult<(CpuStorage, Shape)> {
        let &[n, h, w, c] = l.dims() else {
            candle_core::bail!("shortcut: expected NHWC, got {:?}", l.dims())
        };
        let x = cpu_f32(s, l, "shortcut input")?;
        let (oh, ow, oc) = (h.div_ceil(2), w.div_ceil(2), c + 2 * self.pad);
        let mut out = vec![0f32; n * oh * ow * oc];
        elementwise::shortcut_forward(x, n, h, w, c, self.pad, &mut out);
        Ok((CpuStorage::F32(out), Shape::from((n, oh, ow, oc))))
    }
    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> CResult<Option<Tensor>> {
        let (n, h, w, c) = x.dims4()?;
        with_host(grad, |dy| {
            let mut dx = vec![0f32; n * h * w * c];
            elementwise::shortcut_backward(dy, n, h, w, c, self.pad, &mut dx);
            Ok(Some(host_tensor(dx, x.dims())?))
        })
    }
}

struct AvgPoolOp;

impl CustomOp1 for AvgPoolOp {
    fn name(&self) -> &'static str {
        "lt-global-avg-pool"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> CResult<(CpuStorage, Shape)> {
        let &[n, h, w, c] = l.dims() else {
            candle_core::bail!("avg pool: expected NHWC, got {:?}", l.dims())
        };
        let mut out = vec![0f32; n * c];
        elementwise::avg_pool_forward(cpu_f32(s, l, "avg pool input")?, n, h * w, c, &mut out);
        Ok((CpuStorage::F32(out), Shape::from((n, c))))
    }
    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> CResult<Option<Tensor>> {
        let (n, h, w, c) = x.dims4()?;
        with_host(grad, |dy| {
            let mut dx = vec![0f32; n * h * w * c];
            elementwise::avg_pool_backward(dy, n, h * w, c, &mut dx);
            Ok(Some(host_tensor(dx, x.dims())?))
        })
    }
}

struct MaxPoolOp {
    k: usize,
    stride: usize,
    pad: usize,
    argmax: Arc<Mutex<Vec<u32>>>,
}

impl CustomOp1 for MaxPoolOp {
    fn name(&self) -> &'static str {
        "lt-max-pool"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> CResult<(CpuStorage, Shape)> {
        let &[n, h, w, c] = l.dims() else {
            candle_core::bail!("max pool: expected NHWC, got {:?}", l.dims())
        };
        if h + 2 * self.pad < self.k || w + 2 * self.pad < self.k || self.pad * 2 > self.k {
            candle_core::bail!(
                "max pool: window {} / padding {} does not fit input {:?}",
                self.k,
                self.pad,
                l.dims()
            );
        }
        let oh = (h + 2 * self.pad - self.k) / self.stride + 1;
        let ow = (w + 2 * self.pad - self.k) / self.stride + 1;
        let mut out = vec![0f32; n * oh * ow * c];
        let mut am = vec![0u32; out.len()];
        if n * h * w * c > u32::MAX as usize {
            candle_core::bail!("max pool: input too large for 32-bit indices");
        }
        elementwise::max_pool_forward(
            cpu_f32(s, l, "max pool input")?,
            n,
            h,
            w,
            c,
            self.k,
            self.stride,
            self.pad,
            &mut out,
            &mut am,
        );
        *self.argmax.lock().expect("argmax lock") = am;
        Ok((CpuStorage::F32(out), Shape::from((n, oh, ow, c))))
    }
    fn bwd(&self, x: &Tensor, res: &Tensor, grad: &Tensor) -> CResult<Option<Tensor>> {
        let n = x.dim(0)?;
        let (in_len, out_len) = (x.elem_count() / n, res.elem_count() / n);
        let am = self.argmax.lock().expect("argmax lock");
        with_host(grad, |dy| {
            let mut dx = vec![0f32; x.elem_count()];
            elementwise::max_pool_backward(dy, &am, n, in_len, out_len, &mut dx);
            Ok(Some(host_tensor(dx, x.dims())?))
        })
    }
}

// ---------------------------------------------------------------------------------------------
// The backend API

impl Backend {
    /// Convolution of NHWC `x` with `w` (`[C_out, C_in, k, k]`), no bias.
    pub fn conv2d(self, x: &Tensor, w: &Tensor, stride: usize, pad: usize) -> CResult<Tensor> {
        if conv_is_fast(self, x) {
            x.contiguous()?.apply_op2(&w.contiguous()?, Conv2dOp { stride, pad })
        } else {
            x.permute((0, 3, 1, 2))?.conv2d(w, pad, stride, 1, 1)?.permute((0, 2, 3, 1))
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
        let c = x.dim(candle_core::D::Minus1)?;
        let count = x.elem_count() / c;
        if is_fast(self, x) {
            let saved: SavedStats = Arc::new(Mutex::new(None));
            let y = x.contiguous()?.apply_op3(
                &gamma.contiguous()?,
                &beta.contiguous()?,
                BatchNormOp { eps, relu, saved: saved.clone() },
            )?;
            let guard = saved.lock().expect("stats lock");
            let (mean, _, var) = guard.as_ref().expect("forward stored the statistics");
            let stats = BatchStats {
                mean: host_tensor(mean.clone(), c)?,
                var: host_tensor(var.iter().map(|&v| v as f32).collect(), c)?,
                count,
            };
            Ok((y, stats))
        } else {
            let flat = x.reshape((count, c))?;
            let mean = flat.mean_keepdim(0)?;
            let centered = flat.broadcast_sub(&mean)?;
            let var = centered.sqr()?.mean_keepdim(0)?;
            let xhat = centered.broadcast_div(&(var.clone() + eps)?.sqrt()?)?;
            let mut y = xhat.broadcast_mul(&gamma.reshape((1, c))?)?.broadcast_add(&beta.reshape((1, c))?)?;
            if relu {
                y = y.relu()?;
            }
            let stats =
                BatchStats { mean: mean.flatten_all()?.detach(), var: var.flatten_all()?.detach(), count };
            Ok((y.reshape(x.dims())?, stats))
        }
    }

    /// Eval-mode batch norm over NHWC `x` with fixed `mean` and `var` (running statistics), with
    /// ReLU when `relu`. Differentiable with respect to `x`, `gamma` and `beta`.
    #[allow(clippy::too_many_arguments)]
    pub fn batch_norm_eval(
        self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        mean: &Tensor,
        var: &Tensor,
        eps: f64,
        relu: bool,
    ) -> CResult<Tensor> {
        if is_fast(self, x) {
            let op = BatchNormEvalOp {
                eps,
                relu,
                mean: mean.to_dtype(DType::F32)?.to_vec1()?,
                var: var.to_dtype(DType::F32)?.to_vec1()?,
            };
            x.contiguous()?.apply_op3(&gamma.contiguous()?, &beta.contiguous()?, op)
        } else {
            let c = x.dim(candle_core::D::Minus1)?;
            let scale = gamma.broadcast_div(&(var.to_dtype(x.dtype())? + eps)?.sqrt()?)?;
            let shift = (beta - mean.to_dtype(x.dtype())?.mul(&scale)?)?;
            let y = x
                .broadcast_mul(&scale.reshape((1, 1, 1, c))?)?
                .broadcast_add(&shift.reshape((1, 1, 1, c))?)?;
            if relu {
                y.relu()
            } else {
                Ok(y)
            }
        }
    }

    /// `max(a + b, 0)`.
    pub fn add_relu(self, a: &Tensor, b: &Tensor) -> CResult<Tensor> {
        if is_fast(self, a) {
            a.contiguous()?.apply_op2(&b.contiguous()?, AddReluOp)
        } else {
            (a + b)?.relu()
        }
    }

    /// `max(x, 0)`.
    pub fn relu(self, x: &Tensor) -> CResult<Tensor> {
        if is_fast(self, x) {
            x.contiguous()?.apply_op1(ReluOp)
        } else {
            x.relu()
        }
    }

    /// Option-A shortcut: `x[:, ::2, ::2, :]` zero-padded with `pad` channels on each side.
    pub fn shortcut_a(self, x: &Tensor, pad: usize) -> CResult<Tensor> {
        if is_fast(self, x) {
            x.contiguous()?.apply_op1(ShortcutOp { pad })
        } else {
            let (n, h, w, c) = x.dims4()?;
            // Pad H and W to even sizes, view as (n, h/2, 2, w/2, 2, c) and keep the first of each pair.
            let x = if h % 2 == 1 { x.pad_with_zeros(1, 0, 1)? } else { x.clone() };
            let x = if w % 2 == 1 { x.pad_with_zeros(2, 0, 1)? } else { x };
            let (h2, w2) = (h.div_ceil(2), w.div_ceil(2));
            let sub =
                x.reshape((n, h2, 2, w2, 2, c))?.narrow(2, 0, 1)?.narrow(4, 0, 1)?.reshape((n, h2, w2, c))?;
            sub.pad_with_zeros(3, pad, pad)
        }
    }

    /// Global average pooling `[N, H, W, C] -> [N, C]`.
    pub fn avg_pool(self, x: &Tensor) -> CResult<Tensor> {
        if is_fast(self, x) {
            x.contiguous()?.apply_op1(AvgPoolOp)
        } else {
            x.mean((1, 2))
        }
    }

    /// Max pooling with a `k x k` window, stride and padding (torchvision's stem uses 3, 2, 1).
    pub fn max_pool(self, x: &Tensor, k: usize, stride: usize, pad: usize) -> CResult<Tensor> {
        if is_fast(self, x) {
            x.contiguous()?.apply_op1(MaxPoolOp { k, stride, pad, argmax: Arc::new(Mutex::new(Vec::new())) })
        } else {
            // Pad with a very negative value, take the k*k strided windows, reduce with max.
            let (n, h, w, c) = x.dims4()?;
            let neg = |shape: (usize, usize, usize, usize)| {
                Tensor::full(-1e30f32, shape, x.device())?.to_dtype(x.dtype())
            };
            let mut xp = x.clone();
            if pad > 0 {
                xp = Tensor::cat(&[&neg((n, pad, w, c))?, &xp, &neg((n, pad, w, c))?], 1)?;
                let hp = h + 2 * pad;
                xp = Tensor::cat(&[&neg((n, hp, pad, c))?, &xp, &neg((n, hp, pad, c))?], 2)?;
            }
            let oh = (h + 2 * pad - k) / stride + 1;
            let ow = (w + 2 * pad - k) / stride + 1;
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
    }
}

#[cfg(test)]
mod tests;
