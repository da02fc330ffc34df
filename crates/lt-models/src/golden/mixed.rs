//! The mixed-precision check: a training step and an evaluation of a model in
//! [`Precision::Bf16`] against the same model in `f32` on one device, within bounds taken from
//! PyTorch's own `bf16` autocast. No fixture: the reference is the `f32` path, which the golden
//! checks hold to PyTorch.
//!
//! At initialisation the gradients of the early layers are differences of much larger terms at
//! every batch norm, so `bf16`'s rounding (2^-9) grows layer by layer on the way back. PyTorch's
//! `autocast(dtype=torch.bfloat16)` on a torchvision ResNet-18 (batch 4, 64x64, CPU;
//! `scripts/bf16_spread.py`) gives parameter gradients 35% (median) to 46% (worst) off its `f32`
//! ones, the whole gradient 0.074 from cosine 1, and logits 3.8% off. The bounds are of that order;
//! a gradient that is missing, zero or of the wrong sign fails.

use candle_core::{DType, Device, Tensor};

use super::{check_batch, is_statistic, relative, worst_buffer, Check};
use crate::error::{ModelError, Result};
use crate::{Arch, Model, Precision, TrainStep};

/// Logits, features and running statistics: at most this far from `f32` (relative, Euclidean).
pub const VALUE_TOLERANCE: f32 = 0.05;
/// Each parameter's gradient: at most this far from `f32` (relative, Euclidean).
pub const GRADIENT_TOLERANCE: f32 = 0.6;
/// The whole gradient: `1 - cosine` with the `f32` one at most this.
pub const DIRECTION_TOLERANCE: f32 = 0.1;

fn dot(a: &Tensor, b: &Tensor) -> Result<f64> {
    Ok((a.to_dtype(DType::F64)? * b.to_dtype(DType::F64)?)?.sum_all()?.to_vec0::<f64>()?)
}

/// The gradients of the `bf16` step `b` of `mixed` against the `f32` step `a` of `reference`:
/// the worst parameter's relative error and name, and the whole gradient's `1 - cosine`; the
/// names of parameters or gradients that are not `f32` go to `not_f32`.
fn compare_gradients(
    (reference, mixed): (&Model, &Model),
    (a, b): (&TrainStep, &TrainStep),
    not_f32: &mut Vec<String>,
) -> Result<(f32, String, f32)> {
    let (mut worst, mut worst_name) = (0f32, String::new());
    let (mut ab, mut aa, mut bb) = (0f64, 0f64, 0f64);
    for (name, var) in mixed.store().named_params() {
        let rv = reference
            .store()
            .var(&name)
            .ok_or_else(|| ModelError::Invalid(format!("no parameter {name}")))?;
        let gb = b.grads.get(var.as_tensor()).ok_or_else(|| ModelError::MissingGradient(name.clone()))?;
        let ga = a.grads.get(rv.as_tensor()).ok_or_else(|| ModelError::MissingGradient(name.clone()))?;
        if var.dtype() != DType::F32 || gb.dtype() != DType::F32 {
            not_f32.push(name.clone());
        }
        let e = relative(gb, ga)?;
        if worst_name.is_empty() || e > worst {
            (worst, worst_name) = (e, name.clone());
        }
        (ab, aa, bb) = (ab + dot(ga, gb)?, aa + dot(ga, ga)?, bb + dot(gb, gb)?);
    }
    let cosine = ab / (aa * bb).sqrt();
    let turn = if cosine.is_finite() { (1.0 - cosine) as f32 } else { f32::INFINITY };
    Ok((worst, worst_name, turn))
}

/// Runs the mixed-precision checks for `arch` (`classes` classes) on images of `shape` on
/// `device` (see the module docs): the training step's logits, every parameter's gradient (the
/// worst one reported), the whole gradient's direction, the running statistics, the evaluation's
/// features and logits, and that parameters, gradients, statistics, features and logits are all
/// `f32`. An `Err` only when a pass cannot run.
pub fn check_mixed_precision(
    arch: &str,
    classes: usize,
    shape: [usize; 4],
    device: &Device,
) -> Result<Vec<Check>> {
    let tag = format!("{arch} bf16 vs f32");
    let build = |p: Precision| -> Result<Model> {
        let mut m = Model::new(Arch::new(arch, classes, shape[1])?, 7, device)?;
        m.set_precision(p);
        Ok(m)
    };
    let (reference, mixed) = (build(Precision::F32)?, build(Precision::Bf16)?);
    let (x, y) = check_batch(shape, classes, 2, device)?;
    let ce = |logits: &Tensor| candle_nn::loss::cross_entropy(logits, &y);
    let a = reference.train_step(&x, ce)?;
    let b = mixed.train_step(&x, ce)?;
    let mut out = vec![Check::measured(
        format!("{tag} training logits"),
        relative(&b.logits, &a.logits)?,
        VALUE_TOLERANCE,
    )];
    let mut not_f32: Vec<String> = [("logits", &b.logits), ("loss", &b.loss)]
        .into_iter()
        .filter(|(_, t)| t.dtype() != DType::F32)
        .map(|(n, _)| n.to_string())
        .collect();
    let (worst, worst_name, turn) = compare_gradients((&reference, &mixed), (&a, &b), &mut not_f32)?;
    out.push(Check::measured(
        format!("{tag} gradient of {worst_name} (the worst)"),
        worst,
        GRADIENT_TOLERANCE,
    ));
    out.push(Check::measured(format!("{tag} whole gradient, 1 - cosine"), turn, DIRECTION_TOLERANCE));
    not_f32.extend(
        mixed
            .store()
            .named_buffers()
            .into_iter()
            .filter(|(n, t)| is_statistic(n) && t.dtype() != DType::F32)
            .map(|(n, _)| n),
    );
    let (worst, worst_name) = worst_buffer(&mixed, &reference, is_statistic)?;
    out.push(Check::measured(
        format!("{tag} {worst_name} after the step (the worst)"),
        worst,
        VALUE_TOLERANCE,
    ));
    let (fa, la) = reference.infer(&x)?;
    let (fb, lb) = mixed.infer(&x)?;
    out.push(Check::measured(format!("{tag} eval features"), relative(&fb, &fa)?, VALUE_TOLERANCE));
    out.push(Check::measured(format!("{tag} eval logits"), relative(&lb, &la)?, VALUE_TOLERANCE));
    not_f32.extend(
        [("features", &fb), ("eval logits", &lb)]
            .into_iter()
            .filter(|(_, t)| t.dtype() != DType::F32)
            .map(|(n, _)| n.to_string()),
    );
    // Close to f32, and not f32 itself: the activations did go through bf16.
    let same = relative(&b.logits, &a.logits)? == 0.0;
    let error = match (not_f32.is_empty(), same) {
        (false, _) => Some(format!("not f32: {}", not_f32.join(", "))),
        (true, true) => Some("the bf16 logits equal the f32 ones: no bf16 arithmetic ran".into()),
        (true, false) => None,
    };
    out.push(Check::verdict(format!("{tag} f32 values and bf16 arithmetic"), error));
    Ok(out)
}
