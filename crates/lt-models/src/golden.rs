//! Agreement with PyTorch on the golden fixtures of `tests/golden/` (written by
//! `scripts/make_golden.py`): used by the test suite and by `lt selftest`, which runs the same
//! checks on any device (e.g. a GPU machine without a Rust toolchain).
//!
//! Fixtures hold no weights: parameters are filled by a closed-form hash of their name and
//! index ([`fill`]), mirrored by the Python script. Reference values are float64 results; each
//! carries a tolerance of `max(1e-4, 3 x PyTorch's own float32 error)` relative to the tensor's
//! largest magnitude.

use std::path::Path;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, ModuleT, Tensor};
use lt_core::Artifact;

use crate::error::{ModelError, Result};
use crate::{Arch, Backend, Model};

pub mod frozen;
pub mod mixed;
pub mod repeat;
pub mod taped;

/// A batch for the device checks: images of `shape` drawn from `N(0, 1)` with `seed` and the
/// labels `0, 1, ..` modulo `classes`.
fn check_batch(shape: [usize; 4], classes: usize, seed: u64, device: &Device) -> Result<(Tensor, Tensor)> {
    let mut v = vec![0f32; shape.iter().product()];
    lt_core::Rng::new(seed).fill_normal(&mut v, 0.0, 1.0);
    let x = Tensor::from_vec(v, &shape[..], device)?;
    let labels: Vec<u32> = (0..shape[0] as u32).map(|i| i % classes as u32).collect();
    Ok((x, Tensor::new(labels.as_slice(), device)?))
}

/// `|a - b| / |b|` over all values (Euclidean norms); infinite where a value is not finite.
fn relative(a: &Tensor, b: &Tensor) -> Result<f32> {
    let a = a.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let b = b.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    if a.len() != b.len() {
        return Err(ModelError::Invalid(format!("comparing {} values with {}", a.len(), b.len())));
    }
    let diff: f64 = a.iter().zip(&b).map(|(x, y)| ((x - y) as f64).powi(2)).sum::<f64>().sqrt();
    let norm: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum::<f64>().sqrt();
    let e = (diff / norm.max(1e-12)) as f32;
    Ok(if e.is_finite() { e } else { f32::INFINITY })
}

/// The largest [`relative`] distance between `b`'s and `a`'s tensors of the same names, with
/// that name.
fn worst<'a>(
    pairs: impl Iterator<Item = (String, Result<(&'a Tensor, &'a Tensor)>)>,
) -> Result<(f32, String)> {
    let (mut worst, mut worst_name) = (0f32, String::new());
    for (name, pair) in pairs {
        let (b, a) = pair?;
        let e = relative(b, a)?;
        if worst_name.is_empty() || e > worst {
            (worst, worst_name) = (e, name);
        }
    }
    Ok((worst, worst_name))
}

/// Whether buffer `name` is a running statistic (a mean or a variance), not a batch norm's batch
/// counter.
fn is_statistic(name: &str) -> bool {
    !name.ends_with("num_batches_tracked")
}

/// The largest [`relative`] distance between model `b`'s buffers (running statistics) that
/// `keep` keeps and model `a`'s of the same names, with that name; a buffer `a` lacks is an
/// error.
fn worst_buffer(b: &Model, a: &Model, keep: impl Fn(&str) -> bool) -> Result<(f32, String)> {
    let pairs: Vec<(String, Tensor, Tensor)> = b
        .store()
        .named_buffers()
        .into_iter()
        .filter(|(name, _)| keep(name))
        .map(|(name, t)| {
            let r = a.store().buffer(&name).ok_or_else(|| ModelError::MissingBuffer(name.clone()))?;
            Ok((name, t, r))
        })
        .collect::<Result<_>>()?;
    worst(pairs.iter().map(|(n, t, r)| (n.clone(), Ok((t, r)))))
}

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
    /// Largest absolute error over the tensor's largest magnitude (infinite when a value is not
    /// finite).
    pub relative_error: f32,
    /// The allowed relative error.
    pub tolerance: f32,
    /// Why the quantity could not be computed (the check then fails).
    pub error: Option<String>,
}

impl Check {
    /// A measured quantity: `relative_error` against `tolerance`.
    pub fn measured(what: String, relative_error: f32, tolerance: f32) -> Self {
        Self { what, relative_error, tolerance, error: None }
    }

    /// A check that passes or fails outright: failed, with the reason, when `error` is given.
    pub fn verdict(what: String, error: Option<String>) -> Self {
        let relative_error = if error.is_some() { f32::INFINITY } else { 0.0 };
        Self { what, relative_error, tolerance: 0.0, error }
    }

    /// Whether the check passed.
    pub fn ok(&self) -> bool {
        self.error.is_none() && self.relative_error <= self.tolerance
    }
}

/// The largest absolute difference over the largest reference magnitude; infinite when a value
/// is not finite (so that NaN never passes).
fn relative_error(got: &[f32], want: &[f32]) -> f32 {
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
    let mut worst = 0f32;
    for (a, b) in got.iter().zip(want) {
        let d = (a - b).abs();
        if !d.is_finite() {
            return f32::INFINITY;
        }
        worst = worst.max(d);
    }
    worst / scale
}

/// The fixture file and its tolerances.
struct Fixture {
    file: Artifact,
    tolerances: std::collections::HashMap<String, f64>,
    tag: String,
}

impl Fixture {
    /// Compares `got` with the fixture's tensor `name`.
    fn compare(&self, got: &Tensor, name: &str, what: &str) -> Result<Check> {
        let tolerance = self.tolerances.get(name).copied().unwrap_or(1e-4) as f32;
        let (want, want_shape) = (self.file.f32(name)?, self.file.info(name)?.shape.clone());
        let what = format!("{} {what}", self.tag);
        // The fixture may hold fewer rows than the batch (the leading dim is narrowed).
        let got = match want_shape.first() {
            Some(&rows) if got.dims().len() == want_shape.len() && got.dims() != want_shape => {
                got.narrow(0, 0, rows)?
            }
            _ => got.clone(),
        };
        if got.dims() != want_shape {
            return Err(ModelError::Invalid(format!(
                "{what}: shape {:?}, the fixture has {want_shape:?}",
                got.dims()
            )));
        }
        let got = got.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        Ok(Check::measured(what, relative_error(&got, &want), tolerance))
    }

    /// The fixture's tensor names with `prefix`.
    fn names(&self, prefix: &str) -> Vec<String> {
        self.file.names().filter(|n| n.starts_with(prefix)).map(str::to_string).collect()
    }

    /// Runs one group of checks; if it fails, each of its `names` becomes a failed check that
    /// carries the error (with its sources), so that the count of checks stays the same.
    fn stage(&self, out: &mut Vec<Check>, names: &[String], f: impl FnOnce() -> Result<Vec<Check>>) {
        match f() {
            Ok(checks) => out.extend(checks),
            Err(e) => {
                let mut msg = e.to_string();
                let mut src = std::error::Error::source(&e);
                while let Some(s) = src {
                    msg.push_str(&format!(": {s}"));
                    src = s.source();
                }
                out.extend(
                    names.iter().map(|n| Check::verdict(format!("{} {n}", self.tag), Some(msg.clone()))),
                );
            }
        }
    }

    /// Checks the gradients in `grads` of every parameter named `{prefix}{parameter}` in the fixture.
    fn grads(&self, m: &Model, prefix: &str, grads: &GradStore) -> Result<Vec<Check>> {
        let mut out = Vec::new();
        for name in self.names(prefix) {
            let pname = &name[prefix.len()..];
            let var =
                m.store().var(pname).ok_or_else(|| ModelError::Invalid(format!("no parameter {pname}")))?;
            let grad =
                grads.get(var.as_tensor()).ok_or_else(|| ModelError::MissingGradient(pname.to_string()))?;
            out.push(self.compare(grad, &name, &name)?);
        }
        Ok(out)
    }
}

/// Runs every check of a fixture for `arch` with `classes` on `device` and `backend`: eval
/// features and logits, eval-mode gradients, one training-mode forward (logits, loss, running
/// statistics) and its gradients. A failure while computing a group of quantities fails that
/// group's checks (with the error) and the later groups still run; only an unreadable fixture or
/// a model that cannot be built is an `Err`.
pub fn check_fixture(
    fixture: &Path,
    arch: &str,
    classes: usize,
    backend: Backend,
    device: &Device,
) -> Result<Vec<Check>> {
    let file = Artifact::open_any(fixture)?;
    let tolerances = file.meta_json("tolerances")?;
    let fx = Fixture { file, tolerances, tag: format!("{arch} {backend:?}") };
    let x = fx.file.tensor("input", device)?;
    let labels: Vec<u32> = fx.file.i64("labels")?.iter().map(|&y| y as u32).collect();
    let labels = Tensor::new(labels.as_slice(), device)?;
    let mut m = Model::new(Arch::new(arch, classes, 3)?, 0, device)?;
    m.set_backend(backend);
    fill(&m)?;
    let ce = |logits: &Tensor| Ok::<_, ModelError>(candle_nn::loss::cross_entropy(logits, &labels)?);
    let mut out = Vec::new();
    let eval = ["eval.features".to_string(), "eval.logits".to_string()];
    fx.stage(&mut out, &eval, || {
        let (f, l) = m.infer(&x)?;
        Ok(vec![fx.compare(&f, &eval[0], "eval features")?, fx.compare(&l, &eval[1], "eval logits")?])
    });
    fx.stage(&mut out, &fx.names("eval_grad."), || {
        let grads = ce(&m.forward_t(&x, false)?)?.backward()?;
        fx.grads(&m, "eval_grad.", &grads)
    });
    let train = ["train.logits".to_string(), "train.loss".to_string()];
    let mut grads = None;
    fx.stage(&mut out, &train, || {
        let logits = m.forward_t(&x, true)?;
        let loss = ce(&logits)?;
        let checks = vec![
            fx.compare(&logits, &train[0], "train logits")?,
            fx.compare(&loss.reshape(1)?, &train[1], "loss")?,
        ];
        grads = Some(loss.backward()?);
        Ok(checks)
    });
    fx.stage(&mut out, &fx.names("grad."), || match &grads {
        Some(g) => fx.grads(&m, "grad.", g),
        None => Err(ModelError::Invalid("the training forward pass failed".into())),
    });
    let stats: Vec<String> = fx.names("train.").into_iter().filter(|n| n.contains(".running_")).collect();
    fx.stage(&mut out, &stats, || {
        if grads.is_none() {
            return Err(ModelError::Invalid("the training forward pass failed".into()));
        }
        let mut checks = Vec::new();
        for name in &stats {
            let bname = &name["train.".len()..];
            let buf = m.store().buffer(bname).ok_or_else(|| ModelError::MissingBuffer(bname.to_string()))?;
            checks.push(fx.compare(&buf, name, &format!("{bname} after one training step"))?);
        }
        Ok(checks)
    });
    Ok(out)
}
