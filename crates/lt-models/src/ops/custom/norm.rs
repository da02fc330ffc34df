//! Batch norm (+ ReLU): training mode (batch statistics) and eval mode (running statistics).
//!
//! On the CPU the statistics are computed before the op is applied and travel in its fields; on
//! CUDA one cuDNN call computes them with the output, and the op hands them over to its caller
//! and keeps them for its backward pass.

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Shape, Tensor};

use super::{cpu_f32, host_tensor, with_host, CResult};
use crate::ops::{norm, BatchStats};

/// The batch statistics a host training-mode batch norm normalised with, for its backward pass.
pub(crate) struct HostStats {
    /// Per-channel batch mean.
    pub mean: Vec<f32>,
    /// Per-channel `1 / sqrt(var + eps)`.
    pub invstd: Vec<f32>,
}

/// Training-mode batch norm on the CPU kernels: the output, the batch statistics and what the
/// backward pass needs of them.
pub(crate) fn train_host(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    relu: bool,
) -> CResult<(Tensor, BatchStats, HostStats)> {
    let x = x.contiguous()?;
    let c = x.dim(candle_core::D::Minus1)?;
    let chunk = norm::chunk_pixels(x.dims());
    let stats = with_host(&x, |xv| Ok(norm::train_stats(xv, c, chunk, eps)))?;
    let op = BatchNormOp { relu, mean: stats.mean.clone(), invstd: stats.invstd.clone() };
    let y = x.apply_op3(&gamma.contiguous()?, &beta.contiguous()?, op)?;
    let var: Vec<f32> = stats.var.iter().map(|&v| v as f32).collect();
    let count = x.elem_count() / c;
    let saved = HostStats { mean: stats.mean.clone(), invstd: stats.invstd };
    Ok((y, BatchStats { mean: host_tensor(stats.mean, c)?, var: host_tensor(var, c)?, count }, saved))
}

/// The gradients `(dx when want_dx, dgamma, dbeta)` of a host training-mode batch norm from its
/// input `x`, output `y` (the ReLU's mask) and output gradient `dy`.
pub(crate) fn train_backward_host(
    stats: &HostStats,
    (x, y, dy): (&Tensor, &Tensor, &Tensor),
    gamma: &Tensor,
    relu: bool,
    want_dx: bool,
) -> CResult<(Option<Tensor>, Tensor, Tensor)> {
    let saved = HostSaved { relu, mean: &stats.mean, invstd: &stats.invstd, batch_statistics: true };
    saved.backward((x, want_dx), gamma, y, dy)
}

/// NHWC dims.
#[cfg_attr(not(feature = "cudnn"), allow(dead_code))]
fn nhwc(dims: &[usize]) -> CResult<crate::ops::elementwise::Nhwc> {
    match dims {
        &[n, h, w, c] => Ok(crate::ops::elementwise::Nhwc { n, h, w, c }),
        _ => candle_core::bail!("batch norm: expected NHWC, got {dims:?}"),
    }
}

/// Checks that the per-channel arguments have `c` values.
fn check_channels(what: &str, x: &[usize], per_channel: &[&[usize]]) -> CResult<usize> {
    let c = *x.last().unwrap_or(&0);
    if per_channel.iter().any(|d| *d != [c]) {
        candle_core::bail!("{what}: input {x:?} with per-channel arguments {per_channel:?}");
    }
    Ok(c)
}

/// Training-mode batch norm with the batch statistics (`mean`, `invstd`) computed beforehand.
struct BatchNormOp {
    relu: bool,
    mean: Vec<f32>,
    invstd: Vec<f32>,
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
        let c = check_channels("batch norm", l1.dims(), &[l2.dims(), l3.dims()])?;
        if self.mean.len() != c {
            candle_core::bail!("batch norm: statistics of {} channels for {c}", self.mean.len());
        }
        let (g, b) = (cpu_f32(s2, l2, "bn weight")?, cpu_f32(s3, l3, "bn bias")?);
        let (scale, shift) = norm::train_scale_shift(g, b, &self.mean, &self.invstd);
        let x = cpu_f32(s1, l1, "batch norm input")?;
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
        let saved =
            HostSaved { relu: self.relu, mean: &self.mean, invstd: &self.invstd, batch_statistics: true };
        let (dx, dg, db) = saved.backward((x, x.track_op()), gamma, res, grad)?;
        Ok((dx, Some(dg), Some(db)))
    }
}

/// The statistics a host batch-norm backward pass needs.
struct HostSaved<'a> {
    relu: bool,
    mean: &'a [f32],
    invstd: &'a [f32],
    batch_statistics: bool,
}

impl HostSaved<'_> {
    /// Gradients of `x` (when `want_dx`), `gamma` and `beta` on the host kernels, with the ReLU
    /// mask taken from the output `res`.
    fn backward(
        &self,
        (x, want_dx): (&Tensor, bool),
        gamma: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> CResult<(Option<Tensor>, Tensor, Tensor)> {
        let c = self.mean.len();
        with_host(x, |xv| {
            with_host(grad, |dy| {
                with_host(gamma, |g| {
                    let run = |relu: norm::Relu| {
                        let b = norm::BnBackward {
                            x: xv,
                            relu,
                            gamma: g,
                            mean: self.mean,
                            invstd: self.invstd,
                            batch_statistics: self.batch_statistics,
                        };
                        let mut dx = if want_dx { vec![0f32; xv.len()] } else { Vec::new() };
                        let (dg, db) = b.run(dy, want_dx.then_some(dx.as_mut_slice()));
                        let dx = if want_dx { Some(host_tensor(dx, x.dims())?) } else { None };
                        Ok((dx, host_tensor(dg, c)?, host_tensor(db, c)?))
                    };
                    if self.relu {
                        with_host(res, |y| run(norm::Relu::Output(y)))
                    } else {
                        run(norm::Relu::None)
                    }
                })
            })
        })
    }
}

/// Eval-mode batch norm with fixed statistics: host kernels on the CPU, cuDNN on CUDA.
pub(crate) fn eval(
    x: &Tensor,
    (gamma, beta): (&Tensor, &Tensor),
    (mean, var): (&Tensor, &Tensor),
    eps: f64,
    relu: bool,
    host: bool,
) -> CResult<Tensor> {
    check_channels("batch norm (eval)", x.dims(), &[gamma.dims(), beta.dims(), mean.dims(), var.dims()])?;
    let stats = (mean.to_dtype(DType::F32)?.contiguous()?, var.to_dtype(DType::F32)?.contiguous()?);
    if host && !(stats.0.device().is_cpu() && stats.1.device().is_cpu()) {
        candle_core::bail!("batch norm (eval): running statistics on {:?} for a CPU input", mean.device());
    }
    let op = BatchNormEvalOp { eps, relu, mean: stats.0, var: stats.1 };
    x.contiguous()?.apply_op3(&gamma.contiguous()?, &beta.contiguous()?, op)
}

/// Eval-mode batch norm: `y = x * scale + shift` (see [`norm::eval_scale_shift`]).
struct BatchNormEvalOp {
    eps: f64,
    relu: bool,
    mean: Tensor,
    var: Tensor,
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
        let c = check_channels("batch norm (eval)", l1.dims(), &[l2.dims(), l3.dims()])?;
        let (g, b) = (cpu_f32(s2, l2, "bn weight")?, cpu_f32(s3, l3, "bn bias")?);
        let (scale, shift) = with_host(&self.mean, |m| {
            with_host(&self.var, |v| Ok(norm::eval_scale_shift(g, b, m, v, self.eps)))
        })?;
        let x = cpu_f32(s1, l1, "bn input")?;
        let mut out = vec![0f32; x.len()];
        norm::affine(x, c, &scale, &shift, self.relu, &mut out);
        Ok((CpuStorage::F32(out), l1.shape().clone()))
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
        check_channels("batch norm (eval)", l1.dims(), &[l2.dims(), l3.dims()])?;
        let shape = nhwc(l1.dims())?;
        let stats = (&self.mean, &self.var);
        let y = crate::ops::cudnn::norm::inference(
            (s1, l1),
            (s2, l2),
            (s3, l3),
            stats,
            shape,
            self.eps,
            self.relu,
        )?;
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
        let stats = (&self.mean, &self.var);
        let (dx, dg, db) = eval_backward((x, res, grad), gamma, stats, (self.eps, self.relu), x.track_op())?;
        Ok((dx, Some(dg), Some(db)))
    }
}

/// The gradients `(dx when want_dx, dgamma, dbeta)` of eval-mode batch norm with the fixed
/// statistics `(mean, var)` from its input `x`, output `y` (the ReLU's mask) and output gradient
/// `dy`: the host kernels on the CPU, candle's ops elsewhere.
pub(crate) fn eval_backward(
    (x, y, dy): (&Tensor, &Tensor, &Tensor),
    gamma: &Tensor,
    (mean, var): (&Tensor, &Tensor),
    (eps, relu): (f64, bool),
    want_dx: bool,
) -> CResult<(Option<Tensor>, Tensor, Tensor)> {
    if x.device().is_cpu() && x.dtype() == DType::F32 {
        let mean = mean.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        let invstd: Vec<f32> = var
            .to_dtype(DType::F32)?
            .to_vec1::<f32>()?
            .iter()
            .map(|&v| norm::invstd(v as f64, eps))
            .collect();
        let saved = HostSaved { relu, mean: &mean, invstd: &invstd, batch_statistics: false };
        saved.backward((x, want_dx), gamma, y, dy)
    } else {
        let (mean, var) = (mean.to_dtype(DType::F32)?, var.to_dtype(DType::F32)?);
        let (dx, dg, db) = eval_backward_on_device(x, gamma, y, dy, (&mean, &var), eps, relu)?;
        Ok((want_dx.then_some(dx), dg, db))
    }
}

/// Gradients `(dx, dgamma, dbeta)` of eval-mode batch norm (+ ReLU, mask `y > 0` from the output
/// `res`) with candle's ops on the tensors' device: `dz = dy * mask`, `dbeta = sum dz`,
/// `dgamma = sum dz * (x - mean) * invstd`, `dx = dz * gamma * invstd`. Computed in `f32` (the
/// type of the per-channel values); `dx` has the type of `x`.
fn eval_backward_on_device(
    x: &Tensor,
    gamma: &Tensor,
    res: &Tensor,
    grad: &Tensor,
    (mean, var): (&Tensor, &Tensor),
    eps: f64,
    relu: bool,
) -> CResult<(Tensor, Tensor, Tensor)> {
    let f32 = candle_core::DType::F32;
    let grad32 = grad.to_dtype(f32)?;
    let dz = if relu { crate::ops::stock::relu_grad(res, &grad32)? } else { grad32 };
    let invstd = (var + eps)?.sqrt()?.recip()?;
    let dbeta = dz.sum((0, 1, 2))?;
    let xhat = x.to_dtype(f32)?.broadcast_sub(mean)?.broadcast_mul(&invstd)?;
    let dgamma = (&dz * xhat)?.sum((0, 1, 2))?;
    let dx = dz.broadcast_mul(&(gamma * invstd)?)?.to_dtype(x.dtype())?;
    Ok((dx, dgamma, dbeta))
}

/// Where cuDNN's training-mode batch norm puts its per-channel `f32` results: the forward pass's
/// statistics buffer holds `[mean | invstd]`, the backward pass's parameter gradients `[dgamma |
/// dbeta]`, each part padded to 64 values so that both start 256-byte aligned.
#[cfg_attr(not(feature = "cudnn"), allow(dead_code))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Packed {
    /// Channels.
    pub c: usize,
    /// Values per channel (`N * H * W`).
    pub p: usize,
}

#[cfg_attr(not(feature = "cudnn"), allow(dead_code))]
impl Packed {
    /// Length of one padded per-channel part.
    pub fn part(&self) -> usize {
        self.c.div_ceil(64) * 64
    }
    /// Offset of the first part (mean, dgamma).
    pub fn first(&self) -> usize {
        0
    }
    /// Offset of the second part (invstd, dbeta).
    pub fn second(&self) -> usize {
        self.part()
    }
    /// Length of the buffer.
    pub fn len(&self) -> usize {
        2 * self.part()
    }
}

#[cfg(feature = "cudnn")]
pub(crate) use cuda::{train_backward as train_backward_cudnn, train_cudnn, train_cudnn_running};

#[cfg(feature = "cudnn")]
mod cuda;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eval_backward_on_device_matches_the_host_kernel() {
        let dev = candle_core::Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (2, 3, 4, 5), &dev).unwrap();
        let dy = Tensor::randn(0f32, 1.0, (2, 3, 4, 5), &dev).unwrap();
        let gamma = Tensor::new(&[0.5f32, 1.5, -1.0, 2.0, 0.1], &dev).unwrap();
        let beta = Tensor::new(&[0.1f32, -0.2, 0.3, 0.0, 1.0], &dev).unwrap();
        let mean = Tensor::new(&[0.2f32, -0.1, 0.0, 0.4, -0.3], &dev).unwrap();
        let var = Tensor::new(&[0.5f32, 1.0, 2.0, 0.25, 1.5], &dev).unwrap();
        for relu in [false, true] {
            let y =
                crate::ops::stock::batch_norm_eval(&x, (&gamma, &beta), (&mean, &var), 1e-5, relu).unwrap();
            let (dx, dg, db) =
                eval_backward_on_device(&x, &gamma, &y, &dy, (&mean, &var), 1e-5, relu).unwrap();
            let invstd: Vec<f32> =
                var.to_vec1::<f32>().unwrap().iter().map(|&v| norm::invstd(v as f64, 1e-5)).collect();
            let (xv, yv, dyv) = (
                x.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                y.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                dy.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            );
            let (g, m) = (gamma.to_vec1::<f32>().unwrap(), mean.to_vec1::<f32>().unwrap());
            let b = norm::BnBackward {
                x: &xv,
                relu: if relu { norm::Relu::Output(&yv) } else { norm::Relu::None },
                gamma: &g,
                mean: &m,
                invstd: &invstd,
                batch_statistics: false,
            };
            let mut hdx = vec![0f32; xv.len()];
            let (hdg, hdb) = b.run(&dyv, Some(&mut hdx));
            let close = |a: &Tensor, b: &[f32], what: &str| {
                for (u, v) in a.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().zip(b) {
                    assert!((u - v).abs() < 1e-4 * (1.0 + v.abs()), "{what} relu={relu}: {u} vs {v}");
                }
            };
            close(&dx, &hdx, "dx");
            close(&dg, &hdg, "dgamma");
            close(&db, &hdb, "dbeta");
        }
    }

    #[test]
    fn packed_parts_are_aligned_and_disjoint() {
        let p = Packed { c: 16, p: 10 };
        assert_eq!((p.first(), p.second(), p.len()), (0, 64, 128));
        let p = Packed { c: 130, p: 3 };
        assert_eq!((p.part(), p.second() % 64, p.len()), (192, 0, 384));
    }
}
