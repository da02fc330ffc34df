//! SGD with momentum, Nesterov and weight decay, with PyTorch's semantics.
//!
//! Per parameter `p` with gradient `g`: `g <- g + wd * p`; momentum buffer `buf <- g` on the
//! first step, then `buf <- mu * buf + g`; Nesterov: `g <- g + mu * buf`, else `g <- buf`;
//! `p <- p - lr * g`. Buffers are stored detached from any autograd graph.
//!
//! A step with momentum updates each `f32` parameter and its buffer in place, computing the same
//! `f32` operations in the same order as the tensor ops (`affine` is `x * mul + add`), so the
//! same bits: on the CPU in two passes (`MomentumPass`, `ParameterPass`) of parallel tasks; on
//! CUDA (feature `cuda`) both passes fused in one kernel that updates up to 96 parameters per
//! launch (one launch for ResNet-32's, where the tensor ops take nine kernels and allocations per
//! parameter); elsewhere (another dtype, the first step's new buffer, a CUDA driver that cannot
//! load the kernel or whose trial step does not give the CPU's bits) the tensor ops run.
//! [`check_in_place_passes`] compares both on a device.

#[cfg(feature = "cuda")]
mod cuda;
#[cfg(any(test, feature = "cuda"))]
mod table;

use std::collections::BTreeMap;

use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, DType, Layout, Tensor, Var};
use rayon::prelude::*;

/// SGD state: hyper-parameters and one momentum buffer per parameter name.
pub struct Sgd {
    /// Momentum `mu`.
    pub momentum: f64,
    /// Nesterov momentum.
    pub nesterov: bool,
    /// Weight decay.
    pub weight_decay: f64,
    buffers: BTreeMap<String, Tensor>,
}

impl Sgd {
    /// A fresh optimizer (no momentum yet).
    pub fn new(momentum: f64, nesterov: bool, weight_decay: f64) -> Self {
        Self { momentum, nesterov, weight_decay, buffers: BTreeMap::new() }
    }

    /// Applies one step with learning rate `lr` to every named parameter.
    ///
    /// # Errors
    /// A parameter without a gradient in `grads` is an error (nothing is updated): a step must
    /// never leave part of a model untrained without a word. Pass only the parameters to train.
    /// So is a parameter listed twice (it would be updated twice, on CUDA by two blocks at once),
    /// or a name given to two parameters (their momentum buffers are kept by name).
    pub fn step(&mut self, params: &[(String, Var)], grads: &GradStore, lr: f64) -> candle_core::Result<()> {
        if let Some((name, _)) = params.iter().find(|(_, v)| grads.get(v.as_tensor()).is_none()) {
            candle_core::bail!(
                "SGD step: parameter `{name}` has no gradient (is it part of the loss's graph?)"
            );
        }
        let mut seen = std::collections::HashSet::with_capacity(params.len());
        if let Some((name, _)) = params.iter().find(|(_, v)| !seen.insert(v.as_tensor().id())) {
            candle_core::bail!("SGD step: parameter `{name}` is listed twice (or is another's variable)");
        }
        let mut names = std::collections::HashSet::with_capacity(params.len());
        if let Some((name, _)) = params.iter().find(|(n, _)| !names.insert(n)) {
            candle_core::bail!("SGD step: two parameters are named `{name}` (momentum is kept by name)");
        }
        self.step_with(params, grads, lr, true)
    }

    /// [`Sgd::step`], with the in-place passes where they apply when `fused` (else the tensor
    /// ops throughout: what the tests compare the passes with).
    fn step_with(
        &mut self,
        params: &[(String, Var)],
        grads: &GradStore,
        lr: f64,
        fused: bool,
    ) -> candle_core::Result<()> {
        let (mu, wd) = (self.momentum as f32, self.weight_decay as f32);
        // The parameters the CUDA kernel updates, all in one step after the loop.
        let mut on_cuda = Vec::new();
        for (name, var) in params {
            let Some(g) = grads.get(var.as_tensor()) else { continue };
            let p = var.as_detached_tensor();
            if fused && self.momentum != 0.0 {
                if let Some(buf) = self.buffers.get(name).filter(|b| in_place(&[&p, g, b])) {
                    if p.device().is_cuda() {
                        on_cuda.push((p, g.clone(), buf.clone()));
                    } else {
                        host_passes((&p, g, buf), (mu, wd, lr as f32, self.nesterov))?;
                    }
                    continue;
                }
            }
            let mut g = g.detach();
            if self.weight_decay != 0.0 {
                g = (g + p.affine(self.weight_decay, 0.0)?)?;
            }
            if self.momentum != 0.0 {
                let buf = match self.buffers.remove(name) {
                    Some(b) => (b.affine(self.momentum, 0.0)? + &g)?,
                    // A storage of its own: the in-place passes write to it on later steps.
                    None => g.copy()?,
                }
                .detach();
                g = if self.nesterov { (g + buf.affine(self.momentum, 0.0)?)? } else { buf.clone() };
                self.buffers.insert(name.clone(), buf);
            }
            var.set(&(p - g.affine(lr, 0.0)?)?.detach())?;
        }
        #[cfg(feature = "cuda")]
        cuda::step(&on_cuda, (mu, wd, lr as f32, self.nesterov))?;
        #[cfg(not(feature = "cuda"))]
        debug_assert!(on_cuda.is_empty(), "the passes run on CUDA only with the `cuda` feature");
        Ok(())
    }

    /// The momentum buffers (for checkpoints).
    pub fn buffers(&self) -> &BTreeMap<String, Tensor> {
        &self.buffers
    }

    /// Restores momentum buffers from a checkpoint (names, shapes and element types checked
    /// against `params`; nothing changes when one does not fit).
    pub fn set_buffers(
        &mut self,
        buffers: BTreeMap<String, Tensor>,
        params: &[(String, Var)],
    ) -> Result<(), String> {
        for (name, b) in &buffers {
            let (_, var) = params
                .iter()
                .find(|(n, _)| n == name)
                .ok_or_else(|| format!("momentum buffer `{name}`: a parameter the model does not have"))?;
            if var.dims() != b.dims() {
                return Err(format!(
                    "momentum buffer `{name}` has shape {:?}, the parameter {:?}",
                    b.dims(),
                    var.dims()
                ));
            }
            if var.dtype() != b.dtype() {
                return Err(format!(
                    "momentum buffer `{name}` is {:?}, the model's is {:?}",
                    b.dtype(),
                    var.dtype()
                ));
            }
        }
        self.buffers = buffers;
        Ok(())
    }
}

/// The CPU's step with momentum on one parameter `p`, its gradient `g` and its buffer `buf`
/// (contiguous `f32` CPU tensors of one shape): the two in-place passes.
fn host_passes(
    (p, g, buf): (&Tensor, &Tensor, &Tensor),
    (mu, wd, lr, nesterov): (f32, f32, f32, bool),
) -> candle_core::Result<()> {
    buf.inplace_op3(g, p, &MomentumPass { mu, wd })?;
    p.inplace_op3(g, buf, &ParameterPass { lr, wd, nesterov: nesterov.then_some(mu) })
}

/// Whether the in-place passes can update these tensors: all `f32`, contiguous, of one shape, on
/// one device where the passes run ([`passes_run_on`]).
fn in_place(ts: &[&Tensor]) -> bool {
    ts.iter().all(|t| t.dtype() == DType::F32 && t.is_contiguous() && t.dims() == ts[0].dims())
        && ts.iter().all(|t| t.device().same_device(ts[0].device()))
        && ts.first().is_some_and(|t| passes_run_on(t.device()))
}

/// The half-cosine learning-rate curve: `to + (from - to) * (1 + cos(angle)) / 2`, `from` at
/// angle 0 and `to` at angle `pi`. Stage 1's schedule (`lt_train::schedule`) and stage 2's
/// re-training both take their rates from it, each with its own angle (the fraction of the
/// decay done, times `pi`).
pub fn cosine(from: f64, to: f64, angle: f64) -> f64 {
    to + (from - to) * 0.5 * (1.0 + angle.cos())
}

/// Name of the environment variable that, set to `1`, keeps SGD's tensor ops on CUDA instead of
/// its in-place kernels (to measure what the kernels are worth, or to rule them out).
pub const CUDA_TENSOR_OPS_ENV: &str = "LT_SGD_TENSOR_OPS";

/// Whether the in-place passes run on `device`: the CPU; CUDA where [`CUDA_TENSOR_OPS_ENV`] is not
/// `1` and the kernel loads and its trial step on three values gives the CPU passes' bits (tried
/// once per process; a failure is warned about and the tensor ops run from then on).
pub fn passes_run_on(device: &candle_core::Device) -> bool {
    match device {
        candle_core::Device::Cpu => true,
        #[cfg(feature = "cuda")]
        candle_core::Device::Cuda(dev) => {
            static LOADED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
            *LOADED.get_or_init(|| {
                if std::env::var(CUDA_TENSOR_OPS_ENV).is_ok_and(|v| v == "1") {
                    return false;
                }
                match cuda::load(dev) {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::warn!(
                            "SGD: the in-place CUDA step did not load or run ({e}); using tensor ops"
                        );
                        false
                    }
                }
            })
        }
        _ => false,
    }
}

/// What [`check_in_place_passes`] found.
#[derive(Clone, Copy, Debug)]
pub struct PassCheck {
    /// Values (parameters and momentum buffers, after every step) whose bits differ between the
    /// in-place passes and the tensor ops.
    pub differing: usize,
    /// Values compared.
    pub compared: usize,
    /// Whether the in-place passes ran on the device (else both sides ran the tensor ops).
    pub in_place: bool,
}

/// The shapes of [`check_in_place_passes`]'s 100 parameters: one over several tasks of the CPU
/// passes and blocks of the CUDA kernel, one small, one 2-d, three around the kernel's blocks of
/// 8,192 values, and more small ones, so that the kernel needs a second launch (96 per launch).
fn check_shapes() -> Vec<Vec<usize>> {
    let mut shapes = vec![vec![3 * PASS_CHUNK + 17], vec![5], vec![7, 9], vec![8191], vec![8192], vec![8193]];
    shapes.extend((0..94).map(|i| vec![1 + (i * 37) % 300]));
    shapes
}

/// The bits of an `f32` tensor's values, in order (how the SGD checks compare two steps).
fn bits(t: &Tensor) -> candle_core::Result<Vec<u32>> {
    Ok(t.flatten_all()?.to_vec1::<f32>()?.into_iter().map(f32::to_bits).collect())
}

/// Deterministic values of both signs and several magnitudes.
fn check_values(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let h = (i as u32).wrapping_mul(2654435761).wrapping_add(seed.wrapping_mul(40503));
            ((h >> 8) % 2001) as f32 / 1000.0 - 1.0
        })
        .collect()
}

/// The momentum, Nesterov and weight-decay settings of the SGD checks.
const CHECK_SETTINGS: [(f64, bool, f64); 4] =
    [(0.9, true, 5e-4), (0.9, false, 5e-4), (0.5, true, 0.0), (0.9, false, 0.0)];

/// The SGD checks' parameters on `device`: the shapes of [`check_shapes`], deterministic values.
fn check_params(device: &candle_core::Device) -> candle_core::Result<Vec<(String, Var)>> {
    check_shapes()
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let t = Tensor::from_vec(check_values(s.iter().product(), i as u32), &s[..], device)?;
            Ok((format!("p{i}"), Var::from_tensor(&t)?))
        })
        .collect()
}

/// The gradients of the SGD checks' loss at `step` for `params`: the sum of `p * c`, so that
/// each gradient is its `c` (deterministic values, other at each step).
fn check_grads(params: &[(String, Var)], step: u32) -> candle_core::Result<GradStore> {
    let Some((_, first)) = params.first() else { candle_core::bail!("SGD check: no parameters") };
    let mut loss = Tensor::new(0f32, first.device())?;
    for (i, (_, v)) in params.iter().enumerate() {
        let c = check_values(v.elem_count(), 100 + 10 * step + i as u32);
        let c = Tensor::from_vec(c, v.dims(), v.device())?;
        loss = (loss + (v.as_tensor() * c)?.sum_all()?)?;
    }
    loss.backward()
}

/// Runs four SGD steps on `device` for several momentum, Nesterov and weight-decay settings
/// (100 parameters of 1 to 196,625 values, so that the CUDA kernel runs two launches), once with
/// the in-place passes and once with the tensor ops, and counts the values whose bits differ (for
/// `lt selftest` on a GPU; the CPU's test runs it too). An error when a step fails or the first
/// step leaves the parameter as it was.
pub fn check_in_place_passes(device: &candle_core::Device) -> candle_core::Result<PassCheck> {
    let shapes = check_shapes();
    let (mut differing, mut compared) = (0usize, 0usize);
    for (momentum, nesterov, wd) in CHECK_SETTINGS {
        let (fused, plain) = (check_params(device)?, check_params(device)?);
        let (mut a, mut b) = (Sgd::new(momentum, nesterov, wd), Sgd::new(momentum, nesterov, wd));
        for step in 0..4u32 {
            // The same loss on both copies.
            let lr = 0.1 / (1 + step) as f64;
            a.step_with(&fused, &check_grads(&fused, step)?, lr, true)?;
            b.step_with(&plain, &check_grads(&plain, step)?, lr, false)?;
            if step == 0 {
                let start = Tensor::from_vec(check_values(shapes[0][0], 0), shapes[0][0], device)?;
                if bits(plain[0].1.as_tensor())? == bits(&start)? {
                    candle_core::bail!("SGD check: the first step left the parameter unchanged");
                }
            }
            let params = fused.iter().zip(&plain).map(|((_, x), (_, y))| (x.as_tensor(), y.as_tensor()));
            let buffers = a.buffers().iter().map(|(name, x)| (x, &b.buffers()[name]));
            for (x, y) in params.chain(buffers) {
                let (x, y) = (bits(x)?, bits(y)?);
                compared += x.len();
                differing += x.iter().zip(&y).filter(|(x, y)| x != y).count();
            }
        }
    }
    Ok(PassCheck { differing, compared, in_place: passes_run_on(device) })
}

/// Values per task of the in-place passes.
const PASS_CHUNK: usize = 1 << 16;

/// Where a contiguous tensor's values lie in its storage.
fn span(l: &Layout) -> candle_core::Result<std::ops::Range<usize>> {
    let (start, end) = l
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg("SGD pass: a non-contiguous tensor".into()))?;
    Ok(start..end)
}

/// The contiguous `f32` values of a CPU storage under `layout`.
fn values<'a>(s: &'a CpuStorage, l: &Layout) -> candle_core::Result<&'a [f32]> {
    Ok(&s.as_slice::<f32>()?[span(l)?])
}

/// The mutable contiguous `f32` values of a CPU storage under `layout`.
fn values_mut<'a>(s: &'a mut CpuStorage, l: &Layout) -> candle_core::Result<&'a mut [f32]> {
    let span = span(l)?;
    match s {
        CpuStorage::F32(v) => Ok(&mut v[span]),
        _ => Err(candle_core::Error::Msg("SGD pass: a tensor that is not f32".into())),
    }
}

/// `f(a, b, c)` for every position's values, `a` written in place: in parallel tasks of
/// [`PASS_CHUNK`] values (the three slices have one length).
fn each_in_place(a: &mut [f32], b: &[f32], c: &[f32], f: impl Fn(&mut f32, f32, f32) + Sync) {
    a.par_chunks_mut(PASS_CHUNK).zip(b.par_chunks(PASS_CHUNK)).zip(c.par_chunks(PASS_CHUNK)).for_each(
        |((a, b), c)| {
            for ((a, &b), &c) in a.iter_mut().zip(b).zip(c) {
                f(a, b, c);
            }
        },
    );
}

/// The gradient with weight decay, `g + (p * wd + 0)` (the tensor ops' `affine`), or `g` when
/// `wd` is 0.
#[inline(always)]
fn decayed(g: f32, p: f32, wd: f32) -> f32 {
    if wd != 0.0 {
        g + (p * wd + 0.0)
    } else {
        g
    }
}

/// First pass, in place on the momentum buffer `buf` with the gradient `g` and the parameter
/// `p`: `buf <- (buf * mu + 0) + (g + (p * wd + 0))` (without the weight-decay term when `wd`
/// is 0), the tensor ops' order.
struct MomentumPass {
    mu: f32,
    wd: f32,
}

impl candle_core::InplaceOp3 for MomentumPass {
    fn name(&self) -> &'static str {
        "sgd-momentum"
    }

    fn cpu_fwd(
        &self,
        buf: &mut CpuStorage,
        bl: &Layout,
        g: &CpuStorage,
        gl: &Layout,
        p: &CpuStorage,
        pl: &Layout,
    ) -> candle_core::Result<()> {
        let (buf, g, p) = (values_mut(buf, bl)?, values(g, gl)?, values(p, pl)?);
        let Self { mu, wd } = *self;
        each_in_place(buf, g, p, |b, g, p| *b = (*b * mu + 0.0) + decayed(g, p, wd));
        Ok(())
    }
}

/// Second pass, in place on the parameter `p` with the gradient `g` and the updated buffer
/// `buf`: `d = g' + (buf * mu + 0)` with Nesterov momentum `mu`, else `buf`, where
/// `g' = g + (p * wd + 0)`; `p <- p - (d * lr + 0)`, the tensor ops' order.
struct ParameterPass {
    lr: f32,
    wd: f32,
    nesterov: Option<f32>,
}

impl candle_core::InplaceOp3 for ParameterPass {
    fn name(&self) -> &'static str {
        "sgd-parameter"
    }

    fn cpu_fwd(
        &self,
        p: &mut CpuStorage,
        pl: &Layout,
        g: &CpuStorage,
        gl: &Layout,
        buf: &CpuStorage,
        bl: &Layout,
    ) -> candle_core::Result<()> {
        let (p, g, buf) = (values_mut(p, pl)?, values(g, gl)?, values(buf, bl)?);
        let Self { lr, wd, nesterov } = *self;
        each_in_place(p, g, buf, |p, g, b| {
            let d = match nesterov {
                Some(mu) => decayed(g, *p, wd) + (b * mu + 0.0),
                None => b,
            };
            *p -= d * lr + 0.0;
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn the_cosine_curve_runs_from_its_start_through_the_midpoint_to_its_end() {
        use std::f64::consts::PI;
        assert_eq!(cosine(0.1, 0.02, 0.0), 0.1);
        assert!((cosine(0.1, 0.02, PI / 2.0) - 0.06).abs() < 1e-15);
        assert!((cosine(0.1, 0.02, PI) - 0.02).abs() < 1e-15);
        // A quarter of the way: to + (from - to) * (1 + cos(pi / 4)) / 2.
        let want = 0.02 + 0.08 * (1.0 + 0.5f64.sqrt()) / 2.0;
        assert!((cosine(0.1, 0.02, PI / 4.0) - want).abs() < 1e-15);
        // To 0 it gives stage 2's earlier inline rate bit for bit: no recorded run moves.
        for (lr, total) in [(0.1, 7usize), (0.05, 390), (0.3, 1)] {
            for step in 0..total {
                let a = PI * step as f64 / total as f64;
                assert_eq!(
                    cosine(lr, 0.0, a).to_bits(),
                    (0.5 * lr * (1.0 + a.cos())).to_bits(),
                    "{lr} {step}"
                );
            }
        }
    }

    #[test]
    fn the_in_place_passes_give_the_tensor_ops_bits() {
        let c = check_in_place_passes(&Device::Cpu).unwrap();
        assert!(c.in_place, "the CPU runs the in-place passes");
        assert_eq!(c.differing, 0, "{c:?}");
        // 4 settings x 4 steps x (100 parameters + 100 buffers).
        let values: usize = check_shapes().iter().map(|s| s.iter().product::<usize>()).sum();
        assert_eq!(check_shapes().len(), 100);
        assert_eq!(c.compared, 4 * 4 * 2 * values, "{c:?}");
    }

    #[test]
    fn a_parameter_without_a_gradient_is_an_error_and_nothing_moves() {
        let a = Var::new(&[1f32, 2.0], &Device::Cpu).unwrap();
        let b = Var::new(&[3f32], &Device::Cpu).unwrap();
        let grads = a.as_tensor().sum_all().unwrap().backward().unwrap();
        let mut opt = Sgd::new(0.0, false, 0.0);
        let both = [("a".to_string(), a.clone()), ("b".to_string(), b.clone())];
        let err = opt.step(&both, &grads, 0.5).unwrap_err();
        assert!(err.to_string().contains("`b` has no gradient"), "{err}");
        assert_eq!(a.as_tensor().to_vec1::<f32>().unwrap(), [1.0, 2.0]);
        opt.step(&both[..1], &grads, 0.5).unwrap();
        // p - lr * 1
        assert_eq!(a.as_tensor().to_vec1::<f32>().unwrap(), [0.5, 1.5]);
    }

    #[test]
    fn a_parameter_or_a_name_listed_twice_is_an_error_and_nothing_moves() {
        let a = Var::new(&[1f32, 2.0], &Device::Cpu).unwrap();
        let grads = a.as_tensor().sum_all().unwrap().backward().unwrap();
        let twice = [("a".to_string(), a.clone()), ("also a".to_string(), a.clone())];
        let err = Sgd::new(0.9, false, 0.0).step(&twice, &grads, 0.5).unwrap_err();
        assert!(err.to_string().contains("`also a` is listed twice"), "{err}");
        assert_eq!(a.as_tensor().to_vec1::<f32>().unwrap(), [1.0, 2.0]);
        let b = Var::new(&[3f32], &Device::Cpu).unwrap();
        let loss = (a.as_tensor().sum_all().unwrap() + b.as_tensor().sum_all().unwrap()).unwrap();
        let one_name = [("a".to_string(), a.clone()), ("a".to_string(), b.clone())];
        let err = Sgd::new(0.9, false, 0.0).step(&one_name, &loss.backward().unwrap(), 0.5).unwrap_err();
        assert!(err.to_string().contains("two parameters are named `a`"), "{err}");
        assert_eq!(b.as_tensor().to_vec1::<f32>().unwrap(), [3.0]);
    }
}
