//! Training-mode batch norm through cuDNN: the op, its backward pass and how the batch
//! statistics travel from the forward pass to the caller and to the backward pass.

use std::sync::{Arc, Mutex, OnceLock};

use candle_core::{CpuStorage, CudaStorage, CustomOp3, Layout, Shape, Storage, Tensor};

use super::{check_channels, nhwc, Packed};
use crate::ops::{cudnn, BatchStats};

type CResult<T> = candle_core::Result<T>;

/// The batch statistics `[mean | invstd]` of one [`BnTrain`] call: handed from its forward
/// pass to the caller (`fresh`), then kept for its backward pass (`saved`).
#[derive(Default)]
struct Stats {
    fresh: Mutex<Option<CudaStorage>>,
    saved: OnceLock<Tensor>,
}

/// Training-mode batch norm through cuDNN: one call computes the output, which is the op's
/// result (a plain autograd node), and the statistics, which the op hands over on the side
/// (see [`Stats`]); the running statistics are updated from them on the device.
pub(crate) fn train_cudnn(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    relu: bool,
) -> CResult<(Tensor, BatchStats)> {
    let x = x.contiguous()?;
    let c = x.dim(candle_core::D::Minus1)?;
    let layout = Packed { c, p: x.elem_count() / c };
    let stats = Arc::new(Stats::default());
    let op = BnTrain { eps, relu, stats: stats.clone() };
    let y = x.apply_op3(&gamma.contiguous()?, &beta.contiguous()?, op)?;
    let fresh = stats.fresh.lock().map_err(|_| candle_core::Error::Msg("bn statistics lock".into()))?.take();
    let Some(fresh) = fresh else {
        candle_core::bail!("cuDNN batch norm: the forward pass left no statistics")
    };
    let saved =
        Tensor::from_storage(Storage::Cuda(fresh), layout.len(), candle_core::op::BackpropOp::none(), false);
    if stats.saved.set(saved.clone()).is_err() {
        candle_core::bail!("cuDNN batch norm: statistics saved twice");
    }
    let mean = saved.narrow(0, layout.first(), c)?;
    let invstd = saved.narrow(0, layout.second(), c)?;
    // The biased batch variance from cuDNN's saved 1 / sqrt(var + eps).
    let var = (invstd.sqr()?.recip()? - eps)?;
    Ok((y, BatchStats { mean, var, count: layout.p }))
}

struct BnTrain {
    eps: f64,
    relu: bool,
    stats: Arc<Stats>,
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
        let (y, stats) =
            cudnn::norm::train_forward((s1, l1), (s2, l2), (s3, l3), shape, self.eps, self.relu)?;
        let mut fresh =
            self.stats.fresh.lock().map_err(|_| candle_core::Error::Msg("bn statistics lock".into()))?;
        *fresh = Some(stats);
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
        let c = x.dim(candle_core::D::Minus1)?;
        let layout = Packed { c, p: x.elem_count() / c };
        let Some(stats) = self.stats.saved.get() else {
            candle_core::bail!("cuDNN batch norm backward: no saved statistics")
        };
        let (x, y, dy) = (x.contiguous()?, res.contiguous()?, grad.contiguous()?);
        let gamma = gamma.contiguous()?;
        let in_f32 = || -> CResult<(Tensor, CudaStorage)> {
            let f32 = |t: &Tensor| t.to_dtype(candle_core::DType::F32);
            let (dx, params) = self.gradients((&f32(&x)?, &f32(&y)?, &f32(&dy)?), &gamma, stats)?;
            Ok((dx.to_dtype(x.dtype())?, params))
        };
        let (dx, params) = if x.dtype() == candle_core::DType::F32 {
            self.gradients((&x, &y, &dy), &gamma, stats)?
        } else if cudnn::refused(BF16_BACKWARD) {
            in_f32()?
        } else {
            match self.gradients((&x, &y, &dy), &gamma, stats) {
                Ok(r) => r,
                Err(e) => {
                    cudnn::fall_back(BF16_BACKWARD, cudnn::Instead::CudnnInF32, &e);
                    in_f32()?
                }
            }
        };
        let params = Tensor::from_storage(
            Storage::Cuda(params),
            layout.len(),
            candle_core::op::BackpropOp::none(),
            false,
        );
        let dgamma = params.narrow(0, layout.first(), c)?;
        let dbeta = params.narrow(0, layout.second(), c)?;
        Ok((x.track_op().then_some(dx), Some(dgamma), Some(dbeta)))
    }
}

/// The refusal named in the warning when cuDNN has no `bf16` batch-norm backward pass (the
/// pass then runs in `f32`).
const BF16_BACKWARD: &str = "bf16 batch norm (backward)";

impl BnTrain {
    /// `dx` (the type of `x`) and the `f32` parameter gradients `[dgamma | dbeta]` (see
    /// [`Packed`]) from contiguous `(x, y, dy)`; where cuDNN refuses the ReLU's gradient, the
    /// mask is applied with candle's kernels before the plain batch-norm backward pass.
    fn gradients(
        &self,
        (x, y, dy): (&Tensor, &Tensor, &Tensor),
        gamma: &Tensor,
        stats: &Tensor,
    ) -> CResult<(Tensor, CudaStorage)> {
        let op = |relu| BnTrainGrad {
            gamma: gamma.clone(),
            stats: stats.clone(),
            eps: self.eps,
            relu,
            params: Mutex::new(None),
        };
        let first = op(self.relu);
        let (grad_op, dx) = match x.apply_op3_no_bwd(y, dy, &first) {
            Ok(dx) => (first, dx),
            Err(e) if self.relu && !cudnn::refused(BF16_BACKWARD) => {
                cudnn::fall_back("the ReLU gradient inside batch norm", cudnn::Instead::Candle, &e);
                let dz = (dy * y.gt(0f32)?.to_dtype(dy.dtype())?)?;
                let plain = op(false);
                let dx = x.apply_op3_no_bwd(y, &dz, &plain)?;
                (plain, dx)
            }
            Err(e) => return Err(e),
        };
        let params =
            grad_op.params.lock().map_err(|_| candle_core::Error::Msg("bn gradient lock".into()))?.take();
        let Some(params) = params else {
            candle_core::bail!("cuDNN batch norm backward: the pass left no parameter gradients")
        };
        Ok((dx, params))
    }
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
        *self.params.lock().map_err(|_| candle_core::Error::Msg("bn gradient lock".into()))? = Some(params);
        Ok((dx, l1.shape().clone()))
    }
}
