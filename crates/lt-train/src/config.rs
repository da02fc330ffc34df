//! Stage-1 configuration.

use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};

/// SWA / SWAG settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwaConfig {
    /// First epoch (0-based) of the constant-rate phase; models are collected at the end of
    /// every epoch from here on.
    pub start: usize,
    /// The constant learning rate of the SWA phase (the cosine of the first phase ends here).
    pub lr: f64,
    /// Maximum rank `K` of the SWAG deviation matrix (0: diagonal only).
    #[serde(default = "default_rank")]
    pub rank: usize,
    /// Collect a model every this many steps instead of once per epoch.
    #[serde(default)]
    pub collect_every_steps: Option<usize>,
}

fn default_rank() -> usize {
    20
}

impl SwaConfig {
    /// The SWA phase of a run of `epochs` at peak rate `lr` when only some SWA settings are
    /// given: the last fifth of the run at half the peak rate, rank 20.
    pub fn for_run(epochs: usize, lr: f64) -> Self {
        Self { start: epochs * 4 / 5, lr: lr / 2.0, rank: default_rank(), collect_every_steps: None }
    }
}

/// Everything that determines a stage-1 run besides the data.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Backbone architecture (see `lt_models::arch`).
    pub arch: String,
    /// Epochs.
    pub epochs: usize,
    /// Batch size.
    pub batch_size: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Momentum.
    #[serde(default = "default_momentum")]
    pub momentum: f64,
    /// Nesterov momentum.
    #[serde(default = "default_true")]
    pub nesterov: bool,
    /// Weight decay (added to the gradient, PyTorch semantics).
    pub weight_decay: f64,
    /// Linear warm-up epochs.
    #[serde(default = "default_warmup")]
    pub warmup_epochs: usize,
    /// SWA/SWAG; `None` trains plain SGD (cosine to zero) only.
    #[serde(default)]
    pub swa: Option<SwaConfig>,
    /// Seed of initialisation, data order and augmentation.
    #[serde(default)]
    pub seed: u64,
    /// Background loader threads.
    #[serde(default = "default_workers")]
    pub workers: usize,
}

fn default_momentum() -> f64 {
    0.9
}
fn default_true() -> bool {
    true
}
fn default_warmup() -> usize {
    5
}
fn default_workers() -> usize {
    2
}

impl TrainConfig {
    /// The CIFAR-LT recipe of the reference sheet (ResNet-32, 200 epochs, SWA from 160).
    pub fn cifar_lt() -> Self {
        Self {
            arch: "resnet32".into(),
            epochs: 200,
            batch_size: 128,
            lr: 0.1,
            momentum: 0.9,
            nesterov: true,
            weight_decay: 5e-4,
            warmup_epochs: 5,
            swa: Some(SwaConfig { start: 160, lr: 0.05, rank: 20, collect_every_steps: None }),
            seed: 0,
            workers: 2,
        }
    }

    /// Checks the configuration.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(TrainError::Config(m));
        if self.epochs == 0 || self.batch_size == 0 {
            return bad("epochs and batch size must be positive".into());
        }
        if !(self.lr > 0.0 && self.lr.is_finite())
            || self.weight_decay < 0.0
            || !(0.0..1.0).contains(&self.momentum)
        {
            return bad(format!(
                "lr {} / weight decay {} / momentum {} out of range",
                self.lr, self.weight_decay, self.momentum
            ));
        }
        if self.warmup_epochs >= self.epochs {
            return bad(format!(
                "warm-up ({}) must be shorter than training ({} epochs)",
                self.warmup_epochs, self.epochs
            ));
        }
        if let Some(s) = &self.swa {
            if s.start <= self.warmup_epochs || s.start >= self.epochs {
                return bad(format!(
                    "swa start {} must lie after the warm-up ({}) and before the last epoch ({})",
                    s.start, self.warmup_epochs, self.epochs
                ));
            }
            if !(s.lr > 0.0 && s.lr <= self.lr) {
                return bad(format!("swa lr {} must be in (0, lr = {}]", s.lr, self.lr));
            }
            if s.collect_every_steps == Some(0) {
                return bad("collect_every_steps must be positive".into());
            }
        }
        lt_models::arch::parse_family(&self.arch)?;
        Ok(())
    }
}
