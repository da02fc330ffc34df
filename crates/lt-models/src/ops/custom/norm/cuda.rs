//! Training-mode batch norm through cuDNN: the op, its backward pass and how the batch
//! statistics (and the running statistics cuDNN updates) travel from the forward pass to the
//! caller and to the backward pass.

use std::sync::{Arc, Mutex, OnceLock};

use candle_core::{CpuStorage, CudaStorage, CustomOp3, DType, Layout, Shape, Storage, Tensor};

use super::{check_channels, nhwc, Packed};
use crate::ops::{cudnn, BatchStats};

type CResult<T> = candle_core::Result<T>;

/// The batch statistics `[mean | invstd]` of one [`BnTrain`] call: handed from its forward
/// pass to the caller (`fresh`), then kept for its backward pass (`saved`); and the running
/// statistics cuDNN updated, when asked to (`running`, for the caller).
#[derive(Default)]
struct Stats {
    fresh: Mutex<Option<CudaStorage>>,
    saved: OnceLock<Tensor>,
    running: Mutex<Option<cudnn::norm::NewRunning>>,
}

/// The error of a poisoned lock of this module's side channels.
fn lock_err<T>(_: T) -> candle_core::Error {
    candle_core::Error::Msg("cuDNN batch norm: a side channel's lock is poisoned".into())
}

/// Training-mode batch norm through cuDNN: one call computes the output, which is the op's
/// result (a plain autograd node), and the statistics, which the op hands over on the side
/// (see [`Stats`]); the caller updates the running statistics from them on the device. Also
/// returns cuDNN's saved `[mean | invstd]` (see [`Packed`]), for [`train_backward`].
pub(crate) fn train_cudnn(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    relu: bool,
) -> CResult<(Tensor, BatchStats, Tensor)> {
    let (y, saved, _) = run(x, gamma, beta, (eps, relu), None)?;
    let c = x.dim(candle_core::D::Minus1)?;
    let layout = Packed { c, p: x.elem_count() / c };
    let mean = saved.narrow(0, layout.first(), c)?;
    let invstd = saved.narrow(0, layout.second(), c)?;
    // The biased batch variance from cuDNN's saved 1 / sqrt(var + eps); at least 0 (a channel
    // of equal values would otherwise get a rounding error's negative variance).
    let var = (invstd.sqr()?.recip()? - eps)?.relu()?;
    Ok((y, BatchStats { mean, var, count: layout.p }, saved))
}

/// [`train_cudnn`] that also folds the batch into the running statistics `running = (mean, var,
/// momentum)` in the same cuDNN call (`(1 - momentum) running + momentum batch`, the batch
/// variance unbiased, as PyTorch's): the output and the new running `(mean, var)`, new tensors
/// (the given ones are not changed). No statistics are computed for the caller, which saves the
/// separate update's kernels. The last tensor is cuDNN's saved `[mean | invstd]`, for
/// [`train_backward`].
pub(crate) fn train_cudnn_running(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    (eps, relu): (f64, bool),
    (mean, var, momentum): (&Tensor, &Tensor, f64),
) -> CResult<(Tensor, (Tensor, Tensor), Tensor)> {
    let c = x.dim(candle_core::D::Minus1)?;
    let running =
        (mean.to_dtype(DType::F32)?.contiguous()?, var.to_dtype(DType::F32)?.contiguous()?, momentum);
    let (y, saved, new) = run(x, gamma, beta, (eps, relu), Some(running))?;
    let Some((m, v)) = new else {
        candle_core::bail!("cuDNN batch norm: the forward pass left no running statistics")
    };
    let tensor = |s| Tensor::from_storage(Storage::Cuda(s), c, candle_core::op::BackpropOp::none(), false);
    Ok((y, (tensor(m), tensor(v)), saved))
}

/// Runs [`BnTrain`]: the output, the saved statistics (also kept for the backward pass) and the
/// new running statistics when `running` is given.
fn run(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    (eps, relu): (f64, bool),
    running: Option<(Tensor, Tensor, f64)>,
) -> CResult<(Tensor, Tensor, Option<cudnn::norm::NewRunning>)> {
    let x = x.contiguous()?;
    let c = x.dim(candle_core::D::Minus1)?;
    let layout = Packed { c, p: x.elem_count() / c };
    let stats = Arc::new(Stats::default());
    let op = BnTrain { eps, relu, stats: stats.clone(), running };
    let y = x.apply_op3(&gamma.contiguous()?, &beta.contiguous()?, op)?;
    let fresh = stats.fresh.lock().map_err(lock_err)?.take();
    let Some(fresh) = fresh else {
        candle_core::bail!("cuDNN batch norm: the forward pass left no statistics")
    };
    let saved =
        Tensor::from_storage(Storage::Cuda(fresh), layout.len(), candle_core::op::BackpropOp::none(), false);
    if stats.saved.set(saved.clone()).is_err() {
        candle_core::bail!("cuDNN batch norm: statistics saved twice");
    }
    let new_running = stats.running.lock().map_err(lock_err)?.take();
    Ok((y, saved, new_running))
}

struct BnTrain {
    eps: f64,
    relu: bool,
    stats: Arc<Stats>,
    /// Running statistics `(mean, var, momentum)` for cuDNN to fold the batch into (into copies).
    running: Option<(Tensor, Tensor, f64)>,
}

impl CustomOp3 for BnTrain {
    fn name(&self) -> &'static str {
        "lt-batchnorm-cudnn"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        candle_core::bail!("the cuDNN batch norm runs on CUDA")
    }

    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
        s3: &CudaStorage,
        l3: &Layout,
    ) -> CResult<(CudaStorage, Shape)> {
        check_channels("batch norm", l1.dims(), &[l2.dims(), l3.dims()])?;
        let shape = nhwc(l1.dims())?;
        let running = self.running.as_ref().map(|(m, v, momentum)| (m, v, *momentum));
        let (y, stats, new_running) =
            cudnn::norm::train_forward((s1, l1), (s2, l2), (s3, l3), shape, (self.eps, self.relu), running)?;
        *self.stats.fresh.lock().map_err(lock_err)? = Some(stats);
        *self.stats.running.lock().map_err(lock_err)? = new_running;
        Ok((y, l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        _beta: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> CResult<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let Some(stats) = self.stats.saved.get() else {
            candle_core::bail!("cuDNN batch norm backward: no saved statistics")
        };
        let (dx, dgamma, dbeta) = train_backward((x, res, grad), gamma, stats, (self.eps, self.relu))?;
        Ok((x.track_op().then_some(dx), Some(dgamma), Some(dbeta)))
    }
}

/// The gradients `(dx, dgamma, dbeta)` of a cuDNN training-mode batch norm from its input `x`,
/// output `y`, output gradient `dy`, `gamma` and the statistics cuDNN saved in the forward pass
/// (`[mean | invstd]`, see [`Packed`]): `dx` of the type of `x`, the others `f32`. Where cuDNN
/// refuses a `bf16` pass, it runs in `f32` (warned once). The op's own backward pass, and the
/// taped executor's.
pub(crate) fn train_backward(
    (x, y, dy): (&Tensor, &Tensor, &Tensor),
    gamma: &Tensor,
    stats: &Tensor,
    (eps, relu): (f64, bool),
) -> CResult<(Tensor, Tensor, Tensor)> {
    let c = x.dim(candle_core::D::Minus1)?;
    let layout = Packed { c, p: x.elem_count() / c };
    let (x, y, dy) = (x.contiguous()?, y.contiguous()?, dy.contiguous()?);
    let gamma = gamma.contiguous()?;
    let in_f32 = || -> CResult<(Tensor, CudaStorage)> {
        let f32 = |t: &Tensor| t.to_dtype(DType::F32);
        let dy32 = f32(&dy)?;
        // Without a ReLU the output is not read (the taped executor passes `dy` for it).
        let y32 = if relu { f32(&y)? } else { dy32.clone() };
        let (dx, params) = gradients((&f32(&x)?, &y32, &dy32), &gamma, stats, (eps, relu))?;
        Ok((dx.to_dtype(x.dtype())?, params))
    };
    let native = || gradients((&x, &y, &dy), &gamma, stats, (eps, relu));
    let (dx, params) = if x.dtype() == DType::F32 {
        native()?
    } else {
        cudnn::or_fall_back(BF16_BACKWARD, &x, cudnn::Instead::CudnnInF32, native, in_f32)?
    };
    let params =
        Tensor::from_storage(Storage::Cuda(params), layout.len(), candle_core::op::BackpropOp::none(), false);
    let dgamma = params.narrow(0, layout.first(), c)?;
    let dbeta = params.narrow(0, layout.second(), c)?;
    Ok((dx, dgamma, dbeta))
}

/// The refusal named in the warning when cuDNN has no `bf16` batch-norm backward pass (the
/// pass then runs in `f32`).
const BF16_BACKWARD: &str = "bf16 batch norm (backward)";

/// The refusal named in the warning when cuDNN has no fused ReLU gradient in its batch-norm
/// backward pass (the mask is then applied with candle's kernels first).
const RELU_IN_BACKWARD: &str = "the ReLU gradient inside batch norm";

/// `dx` (the type of `x`) and the `f32` parameter gradients `[dgamma | dbeta]` (see [`Packed`])
/// from contiguous `(x, y, dy)`; where cuDNN refuses the ReLU's gradient, the mask is applied
/// with candle's kernels before the plain batch-norm backward pass.
fn gradients(
    (x, y, dy): (&Tensor, &Tensor, &Tensor),
    gamma: &Tensor,
    stats: &Tensor,
    (eps, relu): (f64, bool),
) -> CResult<(Tensor, CudaStorage)> {
    let op = |relu| BnTrainGrad {
        gamma: gamma.clone(),
        stats: stats.clone(),
        eps,
        relu,
        params: Mutex::new(None),
    };
    let masked = || crate::ops::stock::relu_grad(y, dy);
    let fused = relu && !cudnn::refused(RELU_IN_BACKWARD, x);
    let (grad_op, dx) = if relu && !fused {
        let plain = op(false);
        let dx = x.apply_op3_no_bwd(y, &masked()?, &plain)?;
        (plain, dx)
    } else {
        let first = op(fused);
        match x.apply_op3_no_bwd(y, dy, &first) {
            Ok(dx) => (first, dx),
            // Whose refusal it was, the plain pass says: the ReLU's only when it runs (a refused
            // batch norm fails both, and its caller's fallback takes over).
            Err(e) if fused => {
                // Out of memory: the pool's kept memory released first, for the plain pass.
                let oom = crate::ops::out_of_memory(&e);
                if oom {
                    cudnn::fall_back(RELU_IN_BACKWARD, x, cudnn::Instead::Candle, &e);
                }
                let plain = op(false);
                let dx = x.apply_op3_no_bwd(y, &masked()?, &plain)?;
                if !oom {
                    cudnn::fall_back(RELU_IN_BACKWARD, x, cudnn::Instead::Candle, &e);
                }
                (plain, dx)
            }
            Err(e) => return Err(e),
        }
    };
    let params = grad_op.params.lock().map_err(lock_err)?.take();
    let Some(params) = params else {
        candle_core::bail!("cuDNN batch norm backward: the pass left no parameter gradients")
    };
    Ok((dx, params))
}

/// The gradients of [`BnTrain`] from `(x, its output y, the output gradient dy)`: the op's
/// result is `dx` (of the type of `x`); the `f32` parameter gradients `[dgamma | dbeta]` (the
/// first two parts of [`Packed`]) are handed over in `params`.
struct BnTrainGrad {
    gamma: Tensor,
    stats: Tensor,
    eps: f64,
    relu: bool,
    params: Mutex<Option<CudaStorage>>,
}

impl CustomOp3 for BnTrainGrad {
    fn name(&self) -> &'static str {
        "lt-batchnorm-cudnn-backward"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        candle_core::bail!("the cuDNN batch norm runs on CUDA")
    }

    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
        s3: &CudaStorage,
        l3: &Layout,
    ) -> CResult<(CudaStorage, Shape)> {
        check_channels("batch norm backward", l1.dims(), &[self.gamma.dims()])?;
        if l2.dims() != l1.dims() || l3.dims() != l1.dims() {
            candle_core::bail!(
                "batch norm backward: input {:?}, output {:?} and gradient {:?} differ",
                l1.dims(),
                l2.dims(),
                l3.dims()
            );
        }
        let shape = nhwc(l1.dims())?;
        let (dx, params) = cudnn::norm::train_backward(
            (s1, l1),
            &self.stats,
            ((s2, l2), (s3, l3)),
            &self.gamma,
            shape,
            (self.eps, self.relu),
        )?;
        *self.params.lock().map_err(lock_err)? = Some(params);
        Ok((dx, l1.shape().clone()))
    }
}
