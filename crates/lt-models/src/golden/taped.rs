//! The taped-executor check: training steps of a model on the taped executor
//! ([`Model::set_taped`]) against the same model through candle's autograd, on one device. Both
//! run the same ops, so the logits, every parameter's gradient and the running statistics agree
//! to rounding (on the CPU, bit for bit); a gradient that is missing, misrouted or summed twice
//! is far off. No fixture: the reference is the autograd path, which the golden checks hold to
//! PyTorch.

use candle_core::{Device, Tensor};

use super::{check_batch, is_statistic, relative, worst, worst_buffer, Check};
use crate::error::{ModelError, Result};
use crate::{Arch, Model, Precision};

/// Every compared quantity: at most this far from the autograd path (relative, Euclidean).
pub const TOLERANCE: f32 = 1e-5;

fn check(what: String, relative_error: f32) -> Check {
    Check::measured(what, relative_error, TOLERANCE)
}

/// Runs the taped-executor checks for `arch` (`classes` classes) on images of `shape` on
/// `device` in `precision`: a training step's logits, its worst parameter gradient and running
/// statistic, a frozen-batch-norm step's worst gradient (the eval-mode backward pass), and that
/// the taped executor did run. An `Err` only when a step cannot run.
pub fn check_taped(
    arch: &str,
    classes: usize,
    shape: [usize; 4],
    device: &Device,
    precision: Precision,
) -> Result<Vec<Check>> {
    let tag = format!("{arch} {precision} taped vs autograd");
    let build = |taped: bool| -> Result<Model> {
        let mut m = Model::new(Arch::new(arch, classes, shape[1])?, 11, device)?;
        m.set_precision(precision);
        m.set_fused(false);
        m.set_taped(taped);
        Ok(m)
    };
    let (reference, taped) = (build(false)?, build(true)?);
    let (x, y) = check_batch(shape, classes, 3, device)?;
    let ce = |logits: &Tensor| candle_nn::loss::cross_entropy(logits, &y);
    let mut out = Vec::new();
    for batch_statistics in [true, false] {
        let step = if batch_statistics { "training step" } else { "frozen-BN step" };
        let a = reference.train_step_bn(&x, batch_statistics, ce)?;
        let b = taped.train_step_bn(&x, batch_statistics, ce)?;
        if batch_statistics {
            out.push(check(format!("{tag} {step} logits"), relative(&b.logits, &a.logits)?));
        }
        let grads = taped.store().named_params().into_iter().map(|(name, var)| {
            let pair = reference
                .store()
                .var(&name)
                .ok_or_else(|| ModelError::Invalid(format!("no parameter {name}")))
                .and_then(|rv| {
                    let gb = b.grads.get(var.as_tensor());
                    let ga = a.grads.get(rv.as_tensor());
                    gb.zip(ga).ok_or_else(|| ModelError::MissingGradient(name.clone()))
                });
            (name, pair)
        });
        let (e, name) = worst(grads)?;
        out.push(check(format!("{tag} {step} gradient of {name} (the worst)"), e));
    }
    let (e, name) = worst_buffer(&taped, &reference, is_statistic)?;
    out.push(check(format!("{tag} {name} after the steps (the worst)"), e));
    out.push(Check::verdict(
        format!("{tag} ran on the taped executor"),
        (!taped.taped_active())
            .then(|| format!("the taped executor does not apply on {device:?} in {precision}")),
    ));
    Ok(out)
}
