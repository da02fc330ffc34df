//! Stage-1 configuration.

use std::ops::Bound;

use lt_core::check::{self, CheckError};
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
    /// Maximum rank `K` of the SWAG deviation matrix (0: diagonal only; otherwise at least 2, as
    /// the low-rank term divides by `K - 1`).
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

/// Everything that determines a stage-1 run besides the data. With the `clap` feature its fields
/// are `lt train`'s flags (all but the SWA settings, which `lt train` completes from the run's
/// length when only some are given); a flag's default there is never read, since only the flags
/// given replace a preset's values.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
pub struct TrainConfig {
    /// Backbone architecture: resnet32, cifar-resnet8x16, resnet50, ...
    #[cfg_attr(feature = "clap", arg(long, default_value_t = TrainConfig::cifar_lt().arch, hide_default_value = true))]
    pub arch: String,
    /// Epochs.
    #[cfg_attr(feature = "clap", arg(long, default_value_t = TrainConfig::cifar_lt().epochs, hide_default_value = true))]
    pub epochs: usize,
    /// Batch size.
    #[cfg_attr(feature = "clap", arg(long, default_value_t = TrainConfig::cifar_lt().batch_size, hide_default_value = true))]
    pub batch_size: usize,
    /// Peak learning rate.
    #[cfg_attr(feature = "clap", arg(long, default_value_t = TrainConfig::cifar_lt().lr, hide_default_value = true))]
    pub lr: f64,
    /// SGD momentum.
    #[serde(default = "default_momentum")]
    #[cfg_attr(feature = "clap", arg(long, default_value_t = default_momentum(), hide_default_value = true))]
    pub momentum: f64,
    /// Nesterov momentum.
    #[serde(default = "default_true")]
    #[cfg_attr(feature = "clap", arg(skip = default_true()))]
    pub nesterov: bool,
    /// Weight decay (added to the gradient, PyTorch semantics).
    #[cfg_attr(feature = "clap", arg(long, default_value_t = TrainConfig::cifar_lt().weight_decay, hide_default_value = true))]
    pub weight_decay: f64,
    /// Linear warm-up epochs.
    #[serde(default = "default_warmup")]
    #[cfg_attr(feature = "clap", arg(long, default_value_t = default_warmup(), hide_default_value = true))]
    pub warmup_epochs: usize,
    /// SWA/SWAG; `None` trains plain SGD (cosine to zero) only.
    #[serde(default)]
    #[cfg_attr(feature = "clap", arg(skip))]
    pub swa: Option<SwaConfig>,
    /// Seed of initialisation, data order and augmentation.
    #[serde(default)]
    #[cfg_attr(feature = "clap", arg(long, default_value_t = 0, hide_default_value = true))]
    pub seed: u64,
    /// Background loader threads. It does not change the batches, so it is not part of the
    /// run's fingerprint.
    #[serde(default = "default_workers")]
    #[cfg_attr(feature = "clap", arg(long, default_value_t = DEFAULT_WORKERS, hide_default_value = true))]
    pub workers: usize,
    /// Pretrained weights to start from: `hub:<org>/<name>[@revision][:file]` (the Hugging Face
    /// hub, offline with HF_HUB_OFFLINE=1) or a local safetensors file; a classifier for another
    /// class count is re-initialised. Without it, initialised from the seed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "clap", arg(long))]
    pub init: Option<String>,
    /// The backbone's learning rate as a fraction of the peak rate (the classifier trains at it):
    /// below 1 when fine-tuning pretrained weights (e.g. 0.1); 0 freezes the backbone's weights.
    #[serde(default = "default_backbone_lr_scale", skip_serializing_if = "is_one")]
    #[cfg_attr(feature = "clap", arg(long, default_value_t = default_backbone_lr_scale(), hide_default_value = true))]
    pub backbone_lr_scale: f64,
    /// Freeze batch norm: normalise with the running (pretrained) statistics and never update
    /// them; the affine parameters still train. The SWA backbone and SWAG samples then keep these
    /// statistics instead of being recalibrated.
    #[serde(default, skip_serializing_if = "is_false")]
    #[cfg_attr(feature = "clap", arg(long))]
    pub freeze_bn: bool,
    /// The arithmetic of the backbone's passes: f32, or bf16 (mixed precision: bf16 activations
    /// and convolutions, f32 weights and batch-norm statistics; for CUDA). Weights, checkpoints and
    /// artifacts are f32 either way.
    #[serde(default, skip_serializing_if = "is_f32")]
    #[cfg_attr(feature = "clap", arg(long, default_value_t = lt_models::Precision::F32, hide_default_value = true))]
    pub precision: lt_models::Precision,
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
/// Background loader threads when a configuration does not say (`TrainConfig::workers`).
pub const DEFAULT_WORKERS: usize = 2;

fn default_workers() -> usize {
    DEFAULT_WORKERS
}
fn default_backbone_lr_scale() -> f64 {
    1.0
}
// Fields at their defaults are left out of the recorded configuration, so that runs from before
// a field existed keep their fingerprints.
fn is_one(v: &f64) -> bool {
    *v == default_backbone_lr_scale()
}
fn is_false(v: &bool) -> bool {
    !*v
}
fn is_f32(v: &lt_models::Precision) -> bool {
    *v == lt_models::Precision::F32
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
            workers: default_workers(),
            init: None,
            backbone_lr_scale: default_backbone_lr_scale(),
            freeze_bn: false,
            precision: lt_models::Precision::F32,
        }
    }

    /// Every setting as JSON, the ones the recorded configuration leaves out at their defaults
    /// (the `skip_serializing_if` fields above, so that old runs keep their fingerprints)
    /// included: what `lt preset` prints.
    pub fn settings(&self) -> serde_json::Result<serde_json::Value> {
        let mut v = serde_json::to_value(self)?;
        if let Some(o) = v.as_object_mut() {
            o.insert("init".into(), serde_json::to_value(&self.init)?);
            o.insert("backbone_lr_scale".into(), self.backbone_lr_scale.into());
            o.insert("freeze_bn".into(), self.freeze_bn.into());
            o.insert("precision".into(), serde_json::to_value(self.precision)?);
        }
        Ok(v)
    }

    /// Checks the configuration; each numeric field is named as in a preset's `[train]` section
    /// (`train.lr must be a finite number > 0, got NaN`).
    pub fn validate(&self) -> Result<()> {
        self.check_numbers().map_err(|e| TrainError::Config(e.to_string()))?;
        if let Some(s) = &self.swa {
            if s.start <= self.warmup_epochs || s.start >= self.epochs {
                return Err(TrainError::Config(format!(
                    "train.swa.start (--swa-start) {} must lie after the warm-up (train.warmup_epochs {}) and before the last epoch (train.epochs {})",
                    s.start, self.warmup_epochs, self.epochs
                )));
            }
        }
        lt_models::arch::parse_family(&self.arch)?;
        if let Some(spec) = &self.init {
            spec.parse::<crate::init::InitSource>()?;
        }
        Ok(())
    }

    /// The rules on single numeric fields and on the warm-up length.
    fn check_numbers(&self) -> check::Result {
        check::non_zero("train.epochs", self.epochs as u64)?;
        check::non_zero("train.batch_size", self.batch_size as u64)?;
        check::positive("train.lr", self.lr)?;
        check::in_range("train.momentum", self.momentum, 0.0..1.0)?;
        check::non_negative("train.weight_decay", self.weight_decay)?;
        check::in_range("train.backbone_lr_scale", self.backbone_lr_scale, 0.0..=1.0)?;
        if self.warmup_epochs >= self.epochs {
            let expected = format!("shorter than training (train.epochs = {})", self.epochs);
            return Err(CheckError::new("train.warmup_epochs", expected, self.warmup_epochs));
        }
        if let Some(s) = &self.swa {
            check::in_range("train.swa.lr", s.lr, (Bound::Excluded(0.0), Bound::Included(self.lr)))?;
            if let Some(n) = s.collect_every_steps {
                check::non_zero("train.swa.collect_every_steps", n as u64)?;
            }
            if s.rank == 1 {
                // The low-rank term is D^T z / sqrt(K - 1): it needs K >= 2.
                return Err(CheckError::new("train.swa.rank", "0 (diagonal only) or at least 2", s.rank));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(cfg: &TrainConfig) -> String {
        match cfg.validate() {
            Err(TrainError::Config(m)) => m,
            other => panic!("expected a configuration error, got {other:?}"),
        }
    }

    fn with(f: impl FnOnce(&mut TrainConfig)) -> TrainConfig {
        let mut cfg = TrainConfig::cifar_lt();
        f(&mut cfg);
        cfg
    }

    #[test]
    fn the_reference_recipe_is_valid() {
        TrainConfig::cifar_lt().validate().unwrap();
        with(|c| c.weight_decay = 0.0).validate().unwrap();
        with(|c| c.momentum = 0.0).validate().unwrap();
        with(|c| c.swa.as_mut().unwrap().lr = c.lr).validate().unwrap();
        with(|c| c.backbone_lr_scale = 0.0).validate().unwrap();
        with(|c| c.init = Some("hub:timm/resnet18.a1_in1k".into())).validate().unwrap();
        let err = with(|c| c.init = Some("hub:timm".into())).validate().unwrap_err().to_string();
        assert!(err.contains("train.init \"hub:timm\""), "{err}");
    }

    #[test]
    fn fields_at_their_defaults_leave_the_recorded_configuration_unchanged() {
        // Runs recorded before `init`, `backbone_lr_scale`, `freeze_bn` and `precision` existed
        // keep their fingerprints: the defaults are not serialised, and absent fields read as the
        // defaults.
        let json = serde_json::to_string(&TrainConfig::cifar_lt()).unwrap();
        for key in ["init", "backbone_lr_scale", "freeze_bn", "precision"] {
            assert!(!json.contains(key), "{json}");
        }
        let back: TrainConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(back, TrainConfig::cifar_lt());
        let tuned = with(|c| {
            c.backbone_lr_scale = 0.1;
            c.freeze_bn = true;
            c.precision = lt_models::Precision::Bf16;
        });
        let json = serde_json::to_string(&tuned).unwrap();
        assert!(json.contains("\"backbone_lr_scale\":0.1") && json.contains("\"freeze_bn\":true"), "{json}");
        assert!(json.contains("\"precision\":\"bf16\""), "{json}");
        assert_eq!(serde_json::from_str::<TrainConfig>(&json).unwrap(), tuned);
    }

    /// `settings` writes out every field, those the record leaves out too, and reads back as the
    /// same configuration.
    #[test]
    fn settings_hold_every_field() {
        let cfg = TrainConfig::cifar_lt();
        let v = cfg.settings().unwrap();
        for key in ["init", "backbone_lr_scale", "freeze_bn", "precision", "arch", "swa", "workers"] {
            assert!(v.get(key).is_some(), "{key}: {v}");
        }
        assert_eq!(serde_json::from_value::<TrainConfig>(v).unwrap(), cfg);
    }

    #[test]
    fn each_numeric_field_is_checked_and_named() {
        let cases: Vec<(TrainConfig, &str)> = vec![
            (with(|c| c.epochs = 0), "train.epochs must be an integer >= 1, got 0"),
            (with(|c| c.batch_size = 0), "train.batch_size must be an integer >= 1, got 0"),
            (with(|c| c.lr = f64::NAN), "train.lr must be a finite number > 0, got NaN"),
            (with(|c| c.lr = 0.0), "train.lr must be a finite number > 0, got 0"),
            (with(|c| c.lr = f64::INFINITY), "train.lr must be a finite number > 0, got inf"),
            (with(|c| c.momentum = 1.0), "train.momentum must be a finite number in [0, 1), got 1"),
            (with(|c| c.momentum = f64::NAN), "train.momentum must be a finite number in [0, 1), got NaN"),
            (with(|c| c.weight_decay = -1.0), "train.weight_decay must be a finite number >= 0, got -1"),
            // NaN passed the old `weight_decay < 0.0` test.
            (with(|c| c.weight_decay = f64::NAN), "train.weight_decay must be a finite number >= 0, got NaN"),
            (
                with(|c| c.backbone_lr_scale = 1.5),
                "train.backbone_lr_scale must be a finite number in [0, 1], got 1.5",
            ),
            (
                with(|c| c.backbone_lr_scale = f64::NAN),
                "train.backbone_lr_scale must be a finite number in [0, 1], got NaN",
            ),
            (
                with(|c| c.warmup_epochs = 200),
                "train.warmup_epochs must be shorter than training (train.epochs = 200), got 200",
            ),
            (
                with(|c| c.swa.as_mut().unwrap().lr = 0.2),
                "train.swa.lr must be a finite number in (0, 0.1], got 0.2",
            ),
            (
                with(|c| c.swa.as_mut().unwrap().lr = 0.0),
                "train.swa.lr must be a finite number in (0, 0.1], got 0",
            ),
            (
                with(|c| c.swa.as_mut().unwrap().lr = f64::NAN),
                "train.swa.lr must be a finite number in (0, 0.1], got NaN",
            ),
            (
                with(|c| c.swa.as_mut().unwrap().collect_every_steps = Some(0)),
                "train.swa.collect_every_steps must be an integer >= 1, got 0",
            ),
            (
                with(|c| c.swa.as_mut().unwrap().rank = 1),
                "train.swa.rank must be 0 (diagonal only) or at least 2, got 1",
            ),
            (
                with(|c| c.swa.as_mut().unwrap().start = 200),
                "train.swa.start (--swa-start) 200 must lie after the warm-up (train.warmup_epochs 5) and before the last epoch (train.epochs 200)",
            ),
        ];
        for (cfg, want) in cases {
            assert_eq!(refused(&cfg), want);
        }
    }
}
