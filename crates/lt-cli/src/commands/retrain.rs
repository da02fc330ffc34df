//! `lt retrain`: stage 2 on a features artifact.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use lt_retrain::losses::KlDirection;
use lt_retrain::{outputs, retrain, FeatureSet, Method, RetrainConfig, SreprConfig};

/// `lt retrain`
#[derive(Args)]
pub struct RetrainArgs {
    /// Features artifact of `lt extract`.
    #[arg(long)]
    features: PathBuf,
    /// Method: none, crt, lws, tau-norm, la, la-posthoc, balanced-softmax, disalign, srepr.
    #[arg(long)]
    method: String,
    /// Backbone whose representations are used: sgd or swa.
    #[arg(long, default_value = "swa")]
    backbone: String,
    /// Logit-adjustment temperature (la, la-posthoc, srepr's LA), or tau-norm's fixed tau
    /// (tau-norm sweeps 0..2 on validation data when not given).
    #[arg(long)]
    tau: Option<f64>,
    /// DisAlign re-weighting exponent rho.
    #[arg(long, default_value_t = 1.2)]
    rho: f64,
    /// SRepr: balancing loss on the stochastic representations (la, balanced-softmax, ce, crt).
    #[arg(long, default_value = "la")]
    balance: String,
    /// SRepr: distillation weight lambda (0: re-training on stochastic representations only).
    #[arg(long, default_value_t = 1.0)]
    lambda: f64,
    /// SRepr: distillation temperature T.
    #[arg(long, default_value_t = 1.0)]
    temperature: f64,
    /// SRepr: SWAG members used (default: all in the artifact).
    #[arg(long)]
    members: Option<usize>,
    /// SRepr: KL direction, forward (KL(teacher || student)) or reverse.
    #[arg(long, default_value = "forward")]
    kl: String,
    /// SRepr: average the cross-entropy over teacher members instead of the KL to their mean.
    #[arg(long)]
    per_member_ce: bool,
    /// SRepr: also apply the balancing loss to the student (SWA) representation.
    #[arg(long)]
    la_on_student: bool,
    /// Epochs (floor(N / batch) steps each).
    #[arg(long, default_value_t = 30)]
    epochs: usize,
    /// Batch size.
    #[arg(long, default_value_t = 128)]
    batch_size: usize,
    /// Learning rate (cosine to 0).
    #[arg(long, default_value_t = 0.1)]
    lr: f64,
    /// Weight decay.
    #[arg(long, default_value_t = 5e-4)]
    weight_decay: f64,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output directory (head.safetensors, predictions.safetensors).
    #[arg(long)]
    out: PathBuf,
    /// Device: cpu, cuda, cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
}

impl RetrainArgs {
    /// The stage-2 configuration these arguments describe.
    pub fn config(&self) -> Result<RetrainConfig> {
        let mut method = Method::parse(&self.method)?;
        match &mut method {
            Method::La { tau } | Method::LaPosthoc { tau } => *tau = self.tau.unwrap_or(1.0),
            Method::TauNorm { tau } => *tau = self.tau,
            Method::Disalign { rho } => *rho = self.rho,
            Method::Srepr(c) => {
                *c = SreprConfig {
                    balance: self.balance.parse()?,
                    tau: self.tau.unwrap_or(1.0),
                    members: self.members,
                    lambda: self.lambda,
                    temperature: self.temperature,
                    kl: match self.kl.as_str() {
                        "forward" => KlDirection::Forward,
                        "reverse" => KlDirection::Reverse,
                        other => anyhow::bail!("--kl must be forward or reverse, got {other:?}"),
                    },
                    per_member_ce: self.per_member_ce,
                    la_on_student: self.la_on_student,
                }
            }
            _ => {}
        }
        Ok(RetrainConfig {
            backbone: self.backbone.clone(),
            method,
            epochs: self.epochs,
            batch_size: self.batch_size,
            lr: self.lr,
            momentum: 0.9,
            weight_decay: self.weight_decay,
            seed: self.seed,
        })
    }
}

/// Runs `lt retrain`.
pub fn run(a: RetrainArgs) -> Result<()> {
    let cfg = a.config()?;
    let fs = FeatureSet::open(&a.features).with_context(|| format!("reading {}", a.features.display()))?;
    let device = crate::device::parse(&a.device)?;
    let started = std::time::Instant::now();
    let outcome = retrain(&fs, &cfg, &device)?;
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let (head, preds) = outputs::write(&outcome, &fs, &a.out)?;
    let c = fs.classes();
    let correct = outcome.test_logits.chunks_exact(c).zip(&outcome.test_labels).filter(|(row, &y)| {
        let pred = row.iter().enumerate().fold(0, |b, (k, &v)| if v > row[b] { k } else { b });
        pred == y as usize
    });
    let acc = correct.count() as f64 / outcome.test_labels.len() as f64;
    println!(
        "{} on {}: test accuracy {:.2}% ({:.1} s); wrote {} and {}",
        cfg.id(),
        a.features.display(),
        100.0 * acc,
        started.elapsed().as_secs_f64(),
        head.display(),
        preds.display()
    );
    Ok(())
}
