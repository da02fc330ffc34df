//! What every method sees ([`Problem`]: the training rows of a source on a device, the class
//! prior) and the one training loop they share ([`fit`]).

use candle_core::{DType, Device, Tensor, Var};
use lt_core::formats::features::Split;
use lt_core::optim::{cosine, Sgd};
use lt_core::readback::{Read, ReadBack, READ_EVERY};
use lt_core::rng::streams;
use lt_core::sampler::{Sampler, SamplerKind};
use lt_core::Rng;

use crate::bank::FeatureSource;
use crate::config::{Backbone, Predict, RetrainConfig};
use crate::error::{Result, RetrainError};

/// The class-aware sampler of cRT and LWS.
pub const CLASS_BALANCED: SamplerKind =
    SamplerKind::ClassBalanced { per_class: lt_core::sampler::CLASS_AWARE_RUN };

/// A stage-2 problem: a feature source, the backbone in use, the device, the training labels and
/// the class prior.
pub struct Problem<'a> {
    /// Where the representations come from.
    pub source: &'a dyn FeatureSource,
    /// Where tensors live.
    pub device: Device,
    /// Number of classes `C`.
    pub classes: usize,
    /// Representation dimension `D`.
    pub dim: usize,
    /// The backbone in use.
    pub backbone: Backbone,
    /// Its index on the `S` axis.
    pub index: usize,
    /// Training labels.
    pub labels: Vec<u32>,
    /// `log pi_c = log(n_c / N)` (empty classes count as 1), `[C]`.
    pub log_prior: Tensor,
    /// `log n_c` (empty classes count as 1), `[C]`.
    pub log_counts: Tensor,
}

impl<'a> Problem<'a> {
    /// The problem of `backbone`'s representations in `source`.
    pub fn new(source: &'a dyn FeatureSource, backbone: Backbone, device: &Device) -> Result<Self> {
        let classes = source.classes();
        let counts = source.class_counts();
        let n: usize = counts.iter().sum();
        if n == 0 {
            return Err(RetrainError::Invalid(format!(
                "{}: the training split has no rows (every class count is 0); stage 2 needs training representations",
                source.describe()
            )));
        }
        let lp: Vec<f32> = counts.iter().map(|&c| (c.max(1) as f64 / n as f64).ln() as f32).collect();
        let lc: Vec<f32> = counts.iter().map(|&c| (c.max(1) as f64).ln() as f32).collect();
        let kind = backbone.sample_kind();
        Ok(Self {
            source,
            device: device.clone(),
            classes,
            dim: source.dim(),
            backbone,
            index: source.index_of(kind)?,
            labels: source.labels(Split::Train)?,
            log_prior: Tensor::from_vec(lp, classes, device)?,
            log_counts: Tensor::from_vec(lc, classes, device)?,
        })
    }

    /// The SWAG members (indices on the `S` axis) that `who` (SRepr, or ensemble predictions)
    /// uses: every SWAG sample of the source, or the first `srepr.members`.
    pub fn members(&self, cfg: &RetrainConfig, who: &str) -> Result<Vec<usize>> {
        let mut m = self.source.swag_indices();
        if m.is_empty() {
            return Err(RetrainError::Invalid(format!(
                "{}: no SWAG samples for {who} (extract with --samples M > 0)",
                self.source.describe()
            )));
        }
        if let Some(k) = cfg.srepr.members {
            if k > m.len() {
                return Err(RetrainError::Invalid(format!(
                    "{who}: retrain.srepr.members = {k}, the source has {} SWAG samples (fewer members, or extract \
                     more: `lt extract --samples {k} --replace` with the run's other extraction settings)",
                    m.len()
                )));
            }
            m.truncate(k);
        }
        Ok(m)
    }

    /// The members a prediction averages: [`Problem::members`] for [`Predict::Ensemble`], none
    /// for a single backbone's.
    pub fn predicting_members(&self, cfg: &RetrainConfig) -> Result<Vec<usize>> {
        match cfg.predict {
            Predict::Ensemble => self.members(cfg, "ensemble predictions"),
            Predict::Single => Ok(Vec::new()),
        }
    }

    /// Training representations of backbone `sample` for rows `idx`.
    pub fn rows(&self, sample: usize, idx: &[usize]) -> Result<Tensor> {
        self.source.rows(Split::Train, sample, idx, &self.device)
    }

    /// The labels of training rows `idx`.
    pub fn batch_labels(&self, idx: &[usize]) -> Result<Tensor> {
        let y: Vec<u32> = idx.iter().map(|&i| self.labels[i]).collect();
        Ok(Tensor::from_vec(y, idx.len(), &self.device)?)
    }

    /// The stage-1 head of the backbone in use, `(W [C, D], b [C])`.
    pub fn stage1_head(&self) -> Result<(Tensor, Tensor)> {
        let (w, b) = self.source.stage1_head(self.backbone)?.ok_or_else(|| {
            RetrainError::Invalid(format!(
                "{}: this method starts from the stage-1 {} head, which the source does not have",
                self.source.describe(),
                self.backbone
            ))
        })?;
        Ok((
            Tensor::from_vec(w, (self.classes, self.dim), &self.device)?,
            Tensor::from_vec(b, self.classes, &self.device)?,
        ))
    }

    /// Every row of `split` for backbone `sample`.
    pub fn all(&self, split: Split, sample: usize) -> Result<Tensor> {
        self.source.all(split, sample, &self.device)
    }
}

/// Host copy of a tensor as `f32`.
pub(crate) fn host(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
}

/// `z W^T + b`.
pub(crate) fn linear(z: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    Ok(z.matmul(&w.t()?)?.broadcast_add(b)?)
}

/// A linear layer of `fan_in` inputs and `out` outputs as PyTorch's `nn.Linear` initialises it:
/// every weight, then every bias, drawn from `U(±1/sqrt(fan_in))` (the weight `[out, fan_in]`
/// row-major).
pub(crate) fn torch_linear_init(rng: &mut Rng, out: usize, fan_in: usize) -> (Vec<f32>, Vec<f32>) {
    let bound = 1.0 / (fan_in as f64).sqrt();
    let mut draw =
        |n: usize| -> Vec<f32> { (0..n).map(|_| rng.uniform_range(-bound, bound) as f32).collect() };
    let w = draw(out * fan_in);
    (w, draw(out))
}

/// A freshly initialised linear head `(W [C, D], b [C])` ([`torch_linear_init`]).
pub(crate) fn init_head(classes: usize, dim: usize, seed: u64, device: &Device) -> Result<(Var, Var)> {
    let (w, b) = torch_linear_init(&mut Rng::stream(seed, &[streams::HEAD_INIT]), classes, dim);
    let w = Var::from_tensor(&Tensor::from_vec(w, (classes, dim), device)?)?;
    let b = Var::from_tensor(&Tensor::from_vec(b, classes, device)?)?;
    Ok((w, b))
}

/// Below this many steps in all, [`crate::retrain`] warns that the head may not fit.
const FEW_STEPS: usize = 100;

/// The length of a run on `n` rows: `(batch, steps per epoch, epochs, steps in all)`, an epoch
/// being `floor(N / batch)` steps and the epochs `epochs`, or more where `min_steps` asks
/// ([`RetrainConfig::epochs_run`]).
fn schedule(cfg: &RetrainConfig, n: usize) -> Result<(usize, usize, usize, usize)> {
    let batch = cfg.batch_size.min(n).max(1);
    let steps = (n / batch).max(1);
    let epochs = cfg.epochs_run(steps);
    let total = epochs.checked_mul(steps).ok_or_else(|| {
        RetrainError::Invalid(format!(
            "retrain.min_steps {} asks for more steps than can be counted",
            cfg.min_steps
        ))
    })?;
    Ok((batch, steps, epochs, total))
}

/// Warns (through `tracing`, and returns the warning) when a run that trains on `n` rows takes
/// fewer than [`FEW_STEPS`] steps.
pub(crate) fn few_steps(cfg: &RetrainConfig, n: usize) -> Result<Option<String>> {
    let (batch, steps, epochs, total) = schedule(cfg, n)?;
    if total >= FEW_STEPS {
        return Ok(None);
    }
    let warning = format!(
        "{}: only {total} steps ({epochs} epochs of {steps} on {n} rows, batch {batch}); a head may not fit in \
         so few: raise retrain.min_steps (--min-steps) or retrain.epochs",
        cfg.method
    );
    tracing::warn!("{warning}");
    Ok(Some(warning))
}

/// The shared training loop: epochs of `floor(N / batch)` steps of SGD (momentum, weight decay)
/// with a cosine from `lr` to 0, batches drawn by `sampler`; `loss(indices)` builds the batch
/// loss. The epochs are `epochs`, or more where `min_steps` asks
/// ([`RetrainConfig::epochs_run`]). Returns the mean loss of each epoch; a non-finite loss stops
/// the run.
pub fn fit(
    params: &[(String, Var)],
    cfg: &RetrainConfig,
    labels: &[u32],
    classes: usize,
    sampler: SamplerKind,
    mut loss: impl FnMut(&[usize]) -> Result<Tensor>,
) -> Result<Vec<f64>> {
    let (batch, steps, epochs, total) = schedule(cfg, labels.len())?;
    let sampler =
        Sampler::new(sampler, labels, classes, cfg.seed).map_err(|e| RetrainError::Invalid(e.to_string()))?;
    let mut opt = Sgd::new(cfg.momentum, false, cfg.weight_decay);
    let mut losses = Vec::with_capacity(epochs.min(1 << 16));
    let mut step = 0;
    // Losses are read several steps at a time (on a GPU one wait for the device per READ_EVERY
    // steps), each added in step order. A non-finite loss has by then updated the parameters,
    // which the error discards.
    let add = |sum: &mut f64, read: Read<usize>| -> Result<()> {
        for (v, &step) in read.iter() {
            if !v[0].is_finite() {
                return Err(RetrainError::NonFinite { method: cfg.method.to_string(), step, value: v[0] });
            }
            *sum += v[0] as f64;
        }
        Ok(())
    };
    let mut unread = ReadBack::new(READ_EVERY);
    for epoch in 0..epochs {
        let order = sampler.epoch(epoch, steps * batch);
        let mut sum = 0.0;
        for idx in order.chunks(batch) {
            let lr = cosine(cfg.lr, 0.0, std::f64::consts::PI * step as f64 / total as f64);
            let l = loss(idx)?;
            let grads = l.backward()?;
            opt.step(params, &grads, lr)?;
            add(&mut sum, unread.push(&l, step)?)?;
            step += 1;
        }
        add(&mut sum, unread.read()?)?;
        losses.push(sum / steps as f64);
    }
    Ok(losses)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The losses are read several steps at a time, yet every epoch's mean is of its own steps,
    /// and a non-finite loss stops the run naming its own step.
    #[test]
    fn fit_reads_every_loss_and_names_the_step_of_a_non_finite_one() {
        let w = Var::from_slice(&[1f32, -2.0], 2, &Device::Cpu).unwrap();
        let params = vec![("w".to_string(), w.clone())];
        let cfg = RetrainConfig { epochs: 2, batch_size: 2, lr: 0.1, ..RetrainConfig::default() };
        let labels = [0u32, 1, 0, 1, 0, 1];
        let mut calls = 0usize;
        let losses = fit(&params, &cfg, &labels, 2, SamplerKind::Instance, |_| {
            calls += 1;
            // Loss `calls` (`s - s` with one side detached: 0, with a gradient): the epochs'
            // means are 2 and 5.
            let s = w.as_tensor().sum_all()?;
            Ok(((&s - s.detach())? + calls as f64)?)
        })
        .unwrap();
        assert_eq!(calls, 6);
        assert_eq!(losses, [2.0, 5.0]);

        let mut calls = 0usize;
        let err = fit(&params, &cfg, &labels, 2, SamplerKind::Instance, |_| {
            calls += 1;
            let scale = if calls == 5 { f64::NAN } else { 1.0 };
            Ok((w.as_tensor().sqr()?.sum_all()? * scale)?)
        })
        .unwrap_err();
        assert!(matches!(err, RetrainError::NonFinite { step: 4, .. }), "{err}");
    }

    /// `min_steps` adds whole epochs until the run reaches it; at 0 (the default) it is not
    /// written, so configurations recorded before it keep their fingerprints.
    #[test]
    fn min_steps_adds_epochs_and_is_not_written_at_its_default() {
        let w = Var::from_slice(&[1f32], 1, &Device::Cpu).unwrap();
        let params = vec![("w".to_string(), w.clone())];
        let labels = [0u32, 1, 0, 1, 0, 1];
        let run = |epochs, min_steps| {
            let cfg = RetrainConfig { epochs, min_steps, batch_size: 2, ..RetrainConfig::default() };
            let mut calls = 0usize;
            let losses = fit(&params, &cfg, &labels, 2, SamplerKind::Instance, |_| {
                calls += 1;
                Ok(w.as_tensor().sqr()?.sum_all()?)
            })
            .unwrap();
            (calls, losses.len())
        };
        // 3 steps per epoch: 7 steps need 3 epochs; 6 need the 2 asked for; 0 asks nothing.
        assert_eq!(run(2, 7), (9, 3));
        assert_eq!(run(2, 6), (6, 2));
        assert_eq!(run(2, 0), (6, 2));
        assert_eq!(run(4, 7), (12, 4));
        // The cosine spans the whole run: without momentum or weight decay, a loss of slope 1
        // takes each step's rate off the parameter, the rates of 9 steps (7 asked, 3 epochs of 3).
        let cfg = RetrainConfig {
            epochs: 2,
            min_steps: 7,
            batch_size: 2,
            momentum: 0.0,
            weight_decay: 0.0,
            ..RetrainConfig::default()
        };
        let v = Var::from_slice(&[1f32], 1, &Device::Cpu).unwrap();
        let fresh = vec![("v".to_string(), v.clone())];
        fit(&fresh, &cfg, &labels, 2, SamplerKind::Instance, |_| Ok(v.as_tensor().sum_all()?)).unwrap();
        let rates: f64 = (0..9).map(|s| cosine(cfg.lr, 0.0, std::f64::consts::PI * s as f64 / 9.0)).sum();
        let moved = 1.0 - v.as_tensor().to_vec1::<f32>().unwrap()[0] as f64;
        assert!((moved - rates).abs() < 1e-5, "{moved} against {rates}");
        let json = |min_steps| {
            serde_json::to_value(RetrainConfig { min_steps, ..RetrainConfig::default() }).unwrap()
        };
        assert!(json(0).get("min_steps").is_none());
        assert_eq!(json(500)["min_steps"], 500);
    }
}
