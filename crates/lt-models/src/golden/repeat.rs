//! The repeatability check: a few training steps of a model (SGD with momentum and weight decay,
//! on the device's default training path: the taped executor on CUDA, the fused pass on the CPU)
//! run twice from the same seed on the same batches give the same bits: every step's logits,
//! and every parameter and running statistic after the steps. On the CPU that holds by
//! construction; on CUDA it says whether the convolution algorithms cuDNN ran (chosen
//! deterministic-first), its batch norm and candle's reductions are bit-reproducible for these
//! shapes, and where not, which parameter differs most. Small shapes may miss a nondeterminism
//! that shows only at larger ones.

use candle_core::{Device, Tensor};

use super::{check_batch, relative, worst, worst_buffer, Check};
use crate::error::{ModelError, Result};
use crate::{Arch, Model, Precision};

/// Training steps per run.
pub const STEPS: u64 = 3;

/// One run: the logits of each step and the model after the steps.
type Run = (Vec<Tensor>, Model);

/// A run of [`STEPS`] training steps of a model initialised with `seed`.
fn train(
    arch: &str,
    classes: usize,
    shape: [usize; 4],
    device: &Device,
    precision: Precision,
    seed: u64,
) -> Result<Run> {
    let mut m = Model::new(Arch::new(arch, classes, shape[1])?, seed, device)?;
    m.set_precision(precision);
    let mut sgd = lt_core::optim::Sgd::new(0.9, true, 5e-4);
    let mut logits = Vec::new();
    for step in 0..STEPS {
        let (x, y) = check_batch(shape, classes, 100 + step, device)?;
        let s = m.train_step(&x, |l| candle_nn::loss::cross_entropy(l, &y))?;
        sgd.step(&m.store().named_params(), &s.grads, 0.05)?;
        logits.push(s.logits);
    }
    Ok((logits, m))
}

/// Runs the repeatability checks for `arch` (`classes` classes) on images of `shape` on `device`
/// in `precision`: each step's logits, the worst parameter and the worst running statistic of
/// two runs, which must be equal (tolerance 0). An `Err` only when a step cannot run.
pub fn check_repeatable(
    arch: &str,
    classes: usize,
    shape: [usize; 4],
    device: &Device,
    precision: Precision,
) -> Result<Vec<Check>> {
    let tag = format!("{arch} {precision} training repeated");
    let run = || train(arch, classes, shape, device, precision, 17);
    compare(&tag, run()?, run()?)
}

/// The checks that run `b` gave the bits of run `a`.
fn compare(tag: &str, (la, a): Run, (lb, b): Run) -> Result<Vec<Check>> {
    let mut out = Vec::new();
    for (step, (lb, la)) in lb.iter().zip(&la).enumerate() {
        out.push(Check::measured(format!("{tag}: step {} logits", step + 1), relative(lb, la)?, 0.0));
    }
    let params: Vec<(String, Tensor, Tensor)> = b
        .store()
        .named_params()
        .into_iter()
        .map(|(name, v)| {
            let r =
                a.store().var(&name).ok_or_else(|| ModelError::Invalid(format!("no parameter {name}")))?;
            Ok((name, v.as_tensor().clone(), r.as_tensor().clone()))
        })
        .collect::<Result<_>>()?;
    let parameters = worst(params.iter().map(|(n, t, r)| (n.clone(), Ok((t, r)))))?;
    for (what, (e, name)) in
        [("parameter", parameters), ("running statistic", worst_buffer(&b, &a, |_| true)?)]
    {
        let which = if e == 0.0 { format!("every {what}") } else { format!("{what} {name} (the worst)") };
        out.push(Check::measured(format!("{tag}: {which} after {STEPS} steps"), e, 0.0));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_from_one_seed_agree_and_from_two_seeds_do_not() {
        let shape = [4, 3, 16, 16];
        let run = |seed| train("resnet20", 5, shape, &Device::Cpu, Precision::F32, seed).unwrap();
        let same = compare("same", run(17), run(17)).unwrap();
        assert_eq!(same.len(), STEPS as usize + 2);
        assert!(same.iter().all(Check::ok), "{same:?}");
        // Another initialisation: every compared quantity differs, so each check can fail.
        let other = compare("other", run(17), run(18)).unwrap();
        assert!(other.iter().all(|c| !c.ok() && c.relative_error > 1e-3), "{other:?}");
    }
}
