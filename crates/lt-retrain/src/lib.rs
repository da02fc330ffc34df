//! Stage 2 of decoupled long-tailed training: classifier re-training on cached features.
//!
//! Every method reads only the features artifact written by `lt extract` (per split, labels and
//! the `[S, N, D]` representations of the SGD and SWA backbones and of `M` SWAG samples, plus the
//! stage-1 heads and the class counts) and needs no image or backbone code:
//!
//! | method | trainable | loss | sampler |
//! |---|---|---|---|
//! | `none` | - | the stage-1 head | - |
//! | `crt` | re-initialised `W, b` | CE | class-balanced |
//! | `lws` | per-class scales on the frozen head | CE | class-balanced |
//! | `tau-norm` | - | `w_c / ‖w_c‖^tau`, tau swept on validation data | - |
//! | `la` | re-initialised `W, b` | `CE(eta + tau log pi)` | instance |
//! | `la-posthoc` | - | `eta - tau log pi` | - |
//! | `balanced-softmax` | re-initialised `W, b` | `CE(eta + log n)` | instance |
//! | `disalign` | `alpha, beta, v, c` on the frozen head | re-weighted CE, `(1/pi)^rho` | instance |
//! | `srepr` | re-initialised `W, b` | balancing loss on SWAG members + `lambda T^2 KL` | instance |
//!
//! One training loop ([`fit`]) serves every trainable method: SGD with momentum 0.9, a cosine
//! from `lr` to 0 over the run, epochs of `floor(N / batch)` steps.

#![warn(missing_docs)]

mod error;
pub mod features;
pub mod losses;
pub mod method;
pub mod outputs;

use candle_core::{DType, Device, Tensor, Var};
use lt_core::optim::Sgd;
use lt_core::sampler::{Sampler, SamplerKind};
use lt_core::Rng;

pub use error::{Result, RetrainError};
pub use features::FeatureSet;
pub use method::{Balance, Method, RetrainConfig, SreprConfig};

/// The outcome of one stage-2 run.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// The configuration.
    pub config: RetrainConfig,
    /// Test logits `[N, C]`, row-major.
    pub test_logits: Vec<f32>,
    /// Test labels.
    pub test_labels: Vec<u32>,
    /// Effective linear head `[C, D]` (for DisAlign: the frozen stage-1 head).
    pub weight: Vec<f32>,
    /// Effective bias `[C]`.
    pub bias: Vec<f32>,
    /// Method-specific tensors (LWS scales, DisAlign's calibration) as `(name, values, shape)`.
    pub extra: Vec<(String, Vec<f32>, Vec<usize>)>,
    /// Method-specific facts (the tau chosen by tau-norm, ...).
    pub facts: serde_json::Map<String, serde_json::Value>,
    /// Mean training loss of each epoch.
    pub epoch_losses: Vec<f64>,
}

struct Ctx<'a> {
    fs: &'a FeatureSet,
    device: Device,
    dim: usize,
    backbone: usize,
    labels: Vec<u32>,
    log_prior: Tensor,
    log_counts: Tensor,
}

impl Ctx<'_> {
    fn rows(&self, sample: usize, idx: &[usize]) -> Result<Tensor> {
        let v = self.fs.rows("train", sample, idx)?;
        Ok(Tensor::from_vec(v, (idx.len(), self.dim), &self.device)?)
    }
    fn batch_labels(&self, idx: &[usize]) -> Result<Tensor> {
        let y: Vec<u32> = idx.iter().map(|&i| self.labels[i]).collect();
        Ok(Tensor::from_vec(y, idx.len(), &self.device)?)
    }
    fn all(&self, split: &str, sample: usize) -> Result<Tensor> {
        let n = self.fs.len(split)?;
        Ok(Tensor::from_vec(self.fs.all(split, sample)?, (n, self.dim), &self.device)?)
    }
}

fn host(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
}

fn linear(z: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    Ok(z.matmul(&w.t()?)?.broadcast_add(b)?)
}

/// A freshly initialised linear head `(W [C, D], b [C])`, PyTorch's default `U(±1/sqrt(D))`.
fn init_head(classes: usize, dim: usize, seed: u64, device: &Device) -> Result<(Var, Var)> {
    let mut rng = Rng::stream(seed, &[0x4EAD]);
    let bound = 1.0 / (dim as f64).sqrt();
    let mut draw =
        |n: usize| -> Vec<f32> { (0..n).map(|_| rng.uniform_range(-bound, bound) as f32).collect() };
    let w = Var::from_tensor(&Tensor::from_vec(draw(classes * dim), (classes, dim), device)?)?;
    let b = Var::from_tensor(&Tensor::from_vec(draw(classes), classes, device)?)?;
    Ok((w, b))
}

/// The shared training loop: `epochs x floor(N / batch)` steps of SGD (momentum, weight decay)
/// with a cosine from `lr` to 0, batches drawn by `sampler`; `loss(indices)` builds the batch
/// loss. Returns the mean loss of each epoch.
pub fn fit(
    params: &[(String, Var)],
    cfg: &RetrainConfig,
    labels: &[u32],
    classes: usize,
    sampler: SamplerKind,
    mut loss: impl FnMut(&[usize]) -> Result<Tensor>,
) -> Result<Vec<f64>> {
    let n = labels.len();
    let batch = cfg.batch_size.min(n).max(1);
    let steps = (n / batch).max(1);
    let total = cfg.epochs * steps;
    let sampler =
        Sampler::new(sampler, labels, classes, cfg.seed).map_err(|e| RetrainError::Invalid(e.to_string()))?;
    let mut opt = Sgd::new(cfg.momentum, false, cfg.weight_decay);
    let mut losses = Vec::with_capacity(cfg.epochs);
    let mut step = 0;
    for epoch in 0..cfg.epochs {
        let order = sampler.epoch(epoch, steps * batch);
        let mut sum = 0.0;
        for idx in order.chunks(batch) {
            let lr = 0.5 * cfg.lr * (1.0 + (std::f64::consts::PI * step as f64 / total as f64).cos());
            let l = loss(idx)?;
            let v = l.to_dtype(DType::F32)?.to_vec0::<f32>()?;
            if !v.is_finite() {
                return Err(RetrainError::NonFinite { method: cfg.method.name().into(), step, value: v });
            }
            sum += v as f64;
            let grads = l.backward()?;
            opt.step(params, &grads, lr)?;
            step += 1;
        }
        losses.push(sum / steps as f64);
    }
    Ok(losses)
}

/// Accuracy of `logits` `[N, C]` against labels: plain, or the mean of per-class accuracies.
fn accuracy(logits: &[f32], labels: &[u32], classes: usize, balanced: bool) -> f64 {
    let mut correct = vec![0usize; classes];
    let mut total = vec![0usize; classes];
    for (row, &y) in logits.chunks_exact(classes).zip(labels) {
        let pred = row.iter().enumerate().fold(0, |b, (c, &v)| if v > row[b] { c } else { b });
        total[y as usize] += 1;
        if pred == y as usize {
            correct[y as usize] += 1;
        }
    }
    if balanced {
        let accs: Vec<f64> =
            correct.iter().zip(&total).filter(|(_, &t)| t > 0).map(|(&c, &t)| c as f64 / t as f64).collect();
        accs.iter().sum::<f64>() / accs.len().max(1) as f64
    } else {
        correct.iter().sum::<usize>() as f64 / labels.len().max(1) as f64
    }
}

/// Runs one stage-2 method on a features artifact (see the crate docs).
pub fn retrain(fs: &FeatureSet, cfg: &RetrainConfig, device: &Device) -> Result<Outcome> {
    cfg.validate()?;
    let classes = fs.classes();
    let counts = fs.class_counts();
    let n: usize = counts.iter().sum();
    let lp: Vec<f32> = counts.iter().map(|&c| ((c.max(1)) as f64 / n as f64).ln() as f32).collect();
    let lc: Vec<f32> = counts.iter().map(|&c| (c.max(1) as f64).ln() as f32).collect();
    let ctx = Ctx {
        fs,
        device: device.clone(),
        dim: fs.dim(),
        backbone: fs.index_of(&cfg.backbone)?,
        labels: fs.labels("train")?,
        log_prior: Tensor::from_vec(lp.clone(), classes, device)?,
        log_counts: Tensor::from_vec(lc, classes, device)?,
    };
    let (w0v, b0v) = fs.head(&cfg.backbone)?;
    let w0 = Tensor::from_vec(w0v.clone(), (classes, ctx.dim), device)?;
    let b0 = Tensor::from_vec(b0v.clone(), classes, device)?;
    let test_z = ctx.all("test", ctx.backbone)?;
    let mut facts = serde_json::Map::new();
    let mut extra = Vec::new();
    let mut epoch_losses = Vec::new();
    let (weight, bias): (Tensor, Tensor) = match &cfg.method {
        Method::None => (w0.clone(), b0.clone()),
        Method::LaPosthoc { tau } => (w0.clone(), (&b0 - (&ctx.log_prior * *tau)?)?),
        Method::TauNorm { tau } => {
            let norms = w0.sqr()?.sum(1)?.sqrt()?.clamp(1e-12, f64::MAX)?; // [C]
            let normed = |t: f64| -> Result<Tensor> { Ok(w0.broadcast_div(&norms.powf(t)?.unsqueeze(1)?)?) };
            let zero = Tensor::zeros(classes, DType::F32, device)?;
            let chosen = match tau {
                Some(t) => *t,
                None => {
                    let (split, balanced) =
                        if fs.has_split("val") { ("val", false) } else { ("train", true) };
                    let z = ctx.all(split, ctx.backbone)?;
                    let y = fs.labels(split)?;
                    let mut best = (f64::NEG_INFINITY, 0.0);
                    let mut sweep = serde_json::Map::new();
                    for k in 0..=20 {
                        let t = k as f64 / 10.0;
                        let acc = accuracy(&host(&linear(&z, &normed(t)?, &zero)?)?, &y, classes, balanced);
                        sweep.insert(format!("{t:.1}"), acc.into());
                        if acc > best.0 {
                            best = (acc, t);
                        }
                    }
                    facts.insert("tau_sweep_split".into(), split.into());
                    facts.insert("tau_sweep_balanced_accuracy".into(), balanced.into());
                    facts.insert("tau_sweep".into(), sweep.into());
                    best.1
                }
            };
            facts.insert("tau".into(), chosen.into());
            (normed(chosen)?, zero)
        }
        Method::Crt | Method::La { .. } | Method::BalancedSoftmax => {
            let (w, b) = init_head(classes, ctx.dim, cfg.seed, device)?;
            let params = vec![("bias".to_string(), b.clone()), ("weight".to_string(), w.clone())];
            let sampler = if cfg.method == Method::Crt {
                SamplerKind::ClassBalanced { per_class: 4 }
            } else {
                SamplerKind::Instance
            };
            epoch_losses = fit(&params, cfg, &ctx.labels, classes, sampler, |idx| {
                let logits = linear(&ctx.rows(ctx.backbone, idx)?, w.as_tensor(), b.as_tensor())?;
                let y = ctx.batch_labels(idx)?;
                match &cfg.method {
                    Method::La { tau } => losses::logit_adjusted(&logits, &y, &ctx.log_prior, *tau),
                    Method::BalancedSoftmax => losses::balanced_softmax(&logits, &y, &ctx.log_counts),
                    _ => losses::cross_entropy(&logits, &y),
                }
            })?;
            (w.as_detached_tensor(), b.as_detached_tensor())
        }
        Method::Lws => {
            let s = Var::from_tensor(&Tensor::ones(classes, DType::F32, device)?)?;
            let params = vec![("scales".to_string(), s.clone())];
            epoch_losses = fit(
                &params,
                cfg,
                &ctx.labels,
                classes,
                SamplerKind::ClassBalanced { per_class: 4 },
                |idx| {
                    let logits =
                        linear(&ctx.rows(ctx.backbone, idx)?, &w0, &b0)?.broadcast_mul(s.as_tensor())?;
                    losses::cross_entropy(&logits, &ctx.batch_labels(idx)?)
                },
            )?;
            let sv = s.as_detached_tensor();
            extra.push(("scales".to_string(), host(&sv)?, vec![classes]));
            (w0.broadcast_mul(&sv.unsqueeze(1)?)?, (&b0 * &sv)?)
        }
        Method::Disalign { rho } => {
            let cw = Tensor::from_vec(losses::disalign_weights(counts, *rho), classes, device)?;
            let alpha = Var::from_tensor(&Tensor::ones(classes, DType::F32, device)?)?;
            let beta = Var::from_tensor(&Tensor::zeros(classes, DType::F32, device)?)?;
            let (v, c) = {
                let mut rng = Rng::stream(cfg.seed, &[0xD15A]);
                let bound = 1.0 / (ctx.dim as f64).sqrt();
                let vv: Vec<f32> = (0..ctx.dim).map(|_| rng.uniform_range(-bound, bound) as f32).collect();
                let cv = vec![rng.uniform_range(-bound, bound) as f32];
                (
                    Var::from_tensor(&Tensor::from_vec(vv, ctx.dim, device)?)?,
                    Var::from_tensor(&Tensor::from_vec(cv, 1, device)?)?,
                )
            };
            let params = vec![
                ("alpha".into(), alpha.clone()),
                ("beta".into(), beta.clone()),
                ("c".into(), c.clone()),
                ("v".into(), v.clone()),
            ];
            epoch_losses = fit(&params, cfg, &ctx.labels, classes, SamplerKind::Instance, |idx| {
                let z = ctx.rows(ctx.backbone, idx)?;
                let eta = linear(&z, &w0, &b0)?;
                let s = losses::disalign_logits(
                    &eta,
                    &z,
                    alpha.as_tensor(),
                    beta.as_tensor(),
                    v.as_tensor(),
                    c.as_tensor(),
                )?;
                losses::weighted_cross_entropy(&s, &ctx.batch_labels(idx)?, &cw)
            })?;
            for (name, var) in &params {
                extra.push((name.clone(), host(&var.as_detached_tensor())?, var.dims().to_vec()));
            }
            facts.insert("linear".into(), false.into());
            (w0.clone(), b0.clone())
        }
        Method::Srepr(sc) => {
            let mut members = fs.swag_indices();
            if let Some(m) = sc.members {
                if m == 0 || m > members.len() {
                    return Err(RetrainError::Invalid(format!(
                        "SRepr asks for {m} members, the artifact has {} SWAG samples",
                        members.len()
                    )));
                }
                members.truncate(m);
            }
            if members.is_empty() {
                return Err(RetrainError::Invalid(format!(
                    "{}: SRepr needs SWAG samples (extract with --samples M > 0)",
                    fs.path().display()
                )));
            }
            facts.insert("members".into(), members.len().into());
            let (w, b) = init_head(classes, ctx.dim, cfg.seed, device)?;
            let params = vec![("bias".to_string(), b.clone()), ("weight".to_string(), w.clone())];
            let sampler = if sc.balance == Balance::Crt {
                SamplerKind::ClassBalanced { per_class: 4 }
            } else {
                SamplerKind::Instance
            };
            let balance = |logits: &Tensor, y: &Tensor| -> Result<Tensor> {
                match sc.balance {
                    Balance::La => losses::logit_adjusted(logits, y, &ctx.log_prior, sc.tau),
                    Balance::BalancedSoftmax => losses::balanced_softmax(logits, y, &ctx.log_counts),
                    Balance::Ce | Balance::Crt => losses::cross_entropy(logits, y),
                }
            };
            epoch_losses = fit(&params, cfg, &ctx.labels, classes, sampler, |idx| {
                let y = ctx.batch_labels(idx)?;
                let mut teacher = Vec::with_capacity(members.len());
                let mut loss = Tensor::zeros((), DType::F32, device)?;
                for &m in &members {
                    let logits = linear(&ctx.rows(m, idx)?, w.as_tensor(), b.as_tensor())?;
                    loss = (loss + balance(&logits, &y)?)?;
                    teacher.push(logits);
                }
                loss = (loss / members.len() as f64)?;
                let needs_student = sc.lambda > 0.0 || sc.la_on_student;
                if needs_student {
                    let student = linear(&ctx.rows(ctx.backbone, idx)?, w.as_tensor(), b.as_tensor())?;
                    if sc.la_on_student {
                        loss = (loss + balance(&student, &y)?)?;
                    }
                    if sc.lambda > 0.0 {
                        let kd = losses::distillation(
                            &teacher,
                            &student,
                            sc.temperature,
                            sc.kl,
                            sc.per_member_ce,
                        )?;
                        loss = (loss + (kd * sc.lambda)?)?;
                    }
                }
                Ok(loss)
            })?;
            (w.as_detached_tensor(), b.as_detached_tensor())
        }
    };
    let test_logits = match &cfg.method {
        Method::Disalign { .. } => {
            let get = |k: &str| -> Result<Tensor> {
                let (_, v, s) = extra.iter().find(|(n, _, _)| n == k).expect("DisAlign parameters saved");
                Ok(Tensor::from_vec(v.clone(), s.as_slice(), device)?)
            };
            let eta = linear(&test_z, &w0, &b0)?;
            host(&losses::disalign_logits(
                &eta,
                &test_z,
                &get("alpha")?,
                &get("beta")?,
                &get("v")?,
                &get("c")?,
            )?)?
        }
        _ => host(&linear(&test_z, &weight, &bias)?)?,
    };
    Ok(Outcome {
        config: cfg.clone(),
        test_logits,
        test_labels: fs.labels("test")?,
        weight: host(&weight)?,
        bias: host(&bias)?,
        extra,
        facts,
        epoch_losses,
    })
}
