//! The frozen-snapshot check: a [`crate::Frozen`] snapshot infers what its model did, on its
//! first call and on a later one (which takes what the first prepared: packed weights on the
//! CPU, channels-last filters on CUDA), and later changes to the model do not reach it. No
//! fixture: the reference is the model's own evaluation, which the golden checks hold to PyTorch.

use candle_core::Device;

use super::{check_batch, relative, Check};
use crate::error::{ModelError, Result};
use crate::{Arch, Model, Precision};

/// Every compared quantity: at most this far from the model's evaluation (relative,
/// Euclidean); the same ops on the same values, so in practice 0.
pub const TOLERANCE: f32 = 1e-6;

fn check(what: String, relative_error: f32) -> Check {
    Check::measured(what, relative_error, TOLERANCE)
}

/// Runs the frozen-snapshot checks for `arch` (`classes` classes) on images of `shape` on
/// `device` in `precision` (see the module docs). An `Err` only when a pass cannot run.
pub fn check_frozen(
    arch: &str,
    classes: usize,
    shape: [usize; 4],
    device: &Device,
    precision: Precision,
) -> Result<Vec<Check>> {
    let tag = format!("{arch} {precision} frozen snapshot");
    let mut m = Model::new(Arch::new(arch, classes, shape[1])?, 13, device)?;
    m.set_precision(precision);
    let (x, _) = check_batch(shape, classes, 5, device)?;
    let (z0, l0) = m.infer(&x)?;
    let frozen = m.freeze()?;
    let (z1, l1) = frozen.infer(&x)?;
    let mut out = vec![
        check(format!("{tag} features, first call"), relative(&z1, &z0)?),
        check(format!("{tag} logits, first call"), relative(&l1, &l0)?),
    ];
    let (_, l2) = frozen.infer(&x)?;
    out.push(check(format!("{tag} logits, second call"), relative(&l2, &l0)?));
    // Change every weight and running statistic of the model: the snapshot must not see it.
    for (_, v) in m.store().named_params() {
        v.set(&(v.as_tensor() * 1.5)?)?;
    }
    for (name, b) in m.store().named_buffers() {
        m.store().set_buffer(&name, (b * 2.0)?)?;
    }
    let (_, changed) = m.infer(&x)?;
    if relative(&changed, &l0)? == 0.0 {
        return Err(ModelError::Invalid(format!(
            "{tag}: changing every weight left the model's logits as they were"
        )));
    }
    let (_, l3) = frozen.infer(&x)?;
    out.push(check(format!("{tag} logits after the model changed"), relative(&l3, &l0)?));
    Ok(out)
}
