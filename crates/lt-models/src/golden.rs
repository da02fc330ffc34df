//! Agreement with PyTorch on the golden fixtures of `tests/golden/` (written by
//! `scripts/make_golden.py`): used by the test suite and by `lt selftest`, which runs the same
//! checks on any device (e.g. a GPU machine without a Rust toolchain).
//!
//! Fixtures hold no weights: parameters are filled by a closed-form hash of their name and
//! index ([`fill`]), mirrored by the Python script. Reference values are float64 results; each
//! carries a tolerance of `max(1e-4, 3 x PyTorch's own float32 error)` relative to the tensor's
//! largest magnitude.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use lt_core::Artifact;

use crate::error::{ModelError, Result};
use crate::{Arch, Backend, Model};

const C: u64 = 0x9E37_79B9_7F4A_7C15;

fn fnv1a(name: &str) -> u64 {
    let mut h: u64 = 0xCBF2_9CE4_8422_2325;
    for b in name.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100_0000_01B3);
    }
    h
}

/// `u` in `[-1, 1)`: `((h + i * 0x9E3779B97F4A7C15) mod 2^64 >> 40) / 2^23 - 1`.
pub fn unit(name: &str, n: usize) -> Vec<f32> {
    let h = fnv1a(name);
    (0..n as u64)
        .map(|i| ((h.wrapping_add(i.wrapping_mul(C)) >> 40) as f64 / (1u64 << 23) as f64 - 1.0) as f32)
        .collect()
}

/// Fills a model's parameters and buffers as the fixture generator does.
pub fn fill(m: &Model) -> Result<()> {
    let last = if m.head_names().0 == "linear.weight" { "bn2.weight" } else { "bn3.weight" };
    let dev = m.device().clone();
    for (name, var) in m.store().named_params() {
        let dims = var.dims().to_vec();
        let u = unit(&name, var.elem_count());
        let v: Vec<f32> = if dims.len() >= 2 {
            let s = (3.0 / (var.elem_count() / dims[0]) as f64).sqrt() as f32;
            u.iter().map(|x| x * s).collect()
        } else if name.ends_with(".bias") {
            u.iter().map(|x| 0.1 * x).collect()
        } else if name.starts_with("layer") && name.ends_with(last) {
            u.iter().map(|x| 0.2 + 0.05 * x).collect()
        } else {
            u.iter().map(|x| 1.0 + 0.1 * x).collect()
        };
        var.set(&Tensor::from_vec(v, dims, &dev)?)?;
    }
    for (name, t) in m.store().named_buffers() {
        let u = unit(&name, t.elem_count());
        let v: Vec<f32> = if name.ends_with("running_var") {
            u.iter().map(|x| 1.0 + 0.25 * (x + 1.0)).collect()
        } else if name.ends_with("running_mean") {
            u.iter().map(|x| 0.1 * x).collect()
        } else {
            continue;
        };
        m.store().set_buffer(&name, Tensor::from_vec(v, t.dims(), &dev)?)?;
    }
    Ok(())
}

/// One compared quantity.
#[derive(Clone, Debug)]
pub struct Check {
    /// What was compared.
    pub what: String,
    /// Largest absolute error over the tensor's largest magnitude.
    pub relative_error: f32,
    /// The allowed relative error.
    pub tolerance: f32,
}

impl Check {
    /// Whether the check passed.
    pub fn ok(&self) -> bool {
        self.relative_error <= self.tolerance
    }
}

fn compare(got: &Tensor, want: &[f32], want_shape: &[usize], tol: f32, what: String) -> Result<Check> {
    let rows = want_shape.first().copied().unwrap_or(1);
    let got = if got.dims().len() == want_shape.len() && got.dims() != want_shape {
        got.narrow(0, 0, rows)?
    } else {
        got.clone()
    };
    if got.dims() != want_shape {
        return Err(ModelError::Invalid(format!(
            "{what}: shape {:?}, the fixture has {want_shape:?}",
            got.dims()
        )));
    }
    let got = got.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
    let worst = got.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    Ok(Check { what, relative_error: worst / scale, tolerance: tol })
}

/// Runs every check of a fixture for `arch` with `classes` on `device` and `backend`: eval
/// features and logits, eval-mode gradients, one training-mode forward (logits, loss, running
/// statistics) and its gradients.
pub fn check_fixture(
    fixture: &Path,
    arch: &str,
    classes: usize,
    backend: Backend,
    device: &Device,
) -> Result<Vec<Check>> {
    let g = Artifact::open_any(fixture)?;
    let tolerances: std::collections::HashMap<String, f64> = g.meta_json("tolerances")?;
    let want = |name: &str| -> Result<(Vec<f32>, Vec<usize>, f32)> {
        let tol = tolerances.get(name).copied().unwrap_or(1e-4) as f32;
        Ok((g.f32(name)?, g.info(name)?.shape.clone(), tol))
    };
    let x = g.tensor("input", device)?;
    let labels: Vec<u32> = g.i64("labels")?.iter().map(|&y| y as u32).collect();
    let labels = Tensor::new(labels.as_slice(), device)?;
    let mut m = Model::new(Arch::new(arch, classes, 3)?, 0, device)?;
    m.set_backend(backend);
    fill(&m)?;
    let tag = |s: &str| format!("{arch} {backend:?} {s}");
    let mut out = Vec::new();
    let (f, l) = m.infer(&x)?;
    let (v, s, t) = want("eval.features")?;
    out.push(compare(&f, &v, &s, t, tag("eval features"))?);
    let (v, s, t) = want("eval.logits")?;
    out.push(compare(&l, &v, &s, t, tag("eval logits"))?);
    let grads_of = |prefix: &str,
                    grads: &candle_core::backprop::GradStore,
                    out: &mut Vec<Check>|
     -> Result<()> {
        for name in g.names().filter(|n| n.starts_with(prefix)) {
            let pname = &name[prefix.len()..];
            let var =
                m.store().var(pname).ok_or_else(|| ModelError::Invalid(format!("no parameter {pname}")))?;
            let grad = grads
                .get(var.as_tensor())
                .ok_or_else(|| ModelError::Invalid(format!("no gradient for {pname}")))?;
            let (v, s, t) = want(name)?;
            out.push(compare(grad, &v, &s, t, tag(&format!("{prefix}{pname}")))?);
        }
        Ok(())
    };
    let logits = m.forward_t(&x, false)?;
    let grads = candle_nn::loss::cross_entropy(&logits, &labels)?.backward()?;
    grads_of("eval_grad.", &grads, &mut out)?;
    let logits = m.forward_t(&x, true)?;
    let (v, s, t) = want("train.logits")?;
    out.push(compare(&logits, &v, &s, t, tag("train logits"))?);
    let loss = candle_nn::loss::cross_entropy(&logits, &labels)?;
    let (v, _, t) = want("train.loss")?;
    out.push(compare(&loss.reshape(1)?, &v, &[1], t, tag("loss"))?);
    let grads = loss.backward()?;
    grads_of("grad.", &grads, &mut out)?;
    for name in g.names().filter(|n| n.starts_with("train.") && n.contains(".running_")) {
        let bname = &name["train.".len()..];
        let buf = m.store().buffer(bname).ok_or_else(|| ModelError::Invalid(format!("no buffer {bname}")))?;
        let (v, s, t) = want(name)?;
        out.push(compare(&buf, &v, &s, t, tag(&format!("{bname} after one training step")))?);
    }
    Ok(out)
}
