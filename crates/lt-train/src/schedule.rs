//! Learning-rate schedules, exact functions of the global step.
//!
//! With `e = step / steps_per_epoch` (fractional epochs done before the step):
//! - warm-up: `lr * (step + 1) / warmup_steps` for the first `warmup` epochs;
//! - [`Phase::Sgd`] (no SWA): cosine from `lr` at the end of warm-up to 0 at the last epoch;
//! - [`Phase::Prefix`] (SWA runs, before `swa_start`): cosine from `lr` to `swa_lr`, ending at
//!   `swa_start`;
//! - [`Phase::Swa`]: constant `swa_lr`;
//! - [`Phase::SgdBranch`]: the SGD backbone of a SWA run continues from the state at `swa_start`
//!   with a cosine from `swa_lr` to 0 at the last epoch.

use serde::{Deserialize, Serialize};

use crate::config::TrainConfig;

/// The phases of a stage-1 run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Plain SGD over all epochs (runs without SWA).
    Sgd,
    /// The shared first part of a SWA run, epochs `0..swa_start`.
    Prefix,
    /// The SGD branch of a SWA run, epochs `swa_start..epochs`.
    SgdBranch,
    /// The SWA branch, epochs `swa_start..epochs`, collecting SWAG statistics.
    Swa,
}

impl Phase {
    /// The phase's name in logs and checkpoints.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Sgd => "sgd",
            Phase::Prefix => "prefix",
            Phase::SgdBranch => "sgd-branch",
            Phase::Swa => "swa",
        }
    }
}

/// The cosine from `from` to `to`, `t` of the way (clamped to 0..1).
fn cosine(from: f64, to: f64, t: f64) -> f64 {
    lt_core::optim::cosine(from, to, std::f64::consts::PI * t.clamp(0.0, 1.0))
}

/// The learning rate of `step` (global, 0-based) in `phase`.
pub fn learning_rate(cfg: &TrainConfig, phase: Phase, step: usize, steps_per_epoch: usize) -> f64 {
    let e = step as f64 / steps_per_epoch as f64;
    let warm = cfg.warmup_epochs as f64;
    let total = cfg.epochs as f64;
    let warmup_steps = cfg.warmup_epochs * steps_per_epoch;
    if matches!(phase, Phase::Sgd | Phase::Prefix) && step < warmup_steps {
        return cfg.lr * (step + 1) as f64 / warmup_steps as f64;
    }
    match (phase, &cfg.swa) {
        (Phase::Sgd, _) | (_, None) => cosine(cfg.lr, 0.0, (e - warm) / (total - warm)),
        (Phase::Prefix, Some(s)) => cosine(cfg.lr, s.lr, (e - warm) / (s.start as f64 - warm)),
        (Phase::Swa, Some(s)) => s.lr,
        (Phase::SgdBranch, Some(s)) => cosine(s.lr, 0.0, (e - s.start as f64) / (total - s.start as f64)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SwaConfig;

    /// The names logs print are the names checkpoints record (serde's), and stay as they are.
    #[test]
    fn phases_are_named_as_checkpoints_record_them() {
        for (phase, name) in [
            (Phase::Sgd, "sgd"),
            (Phase::Prefix, "prefix"),
            (Phase::SgdBranch, "sgd-branch"),
            (Phase::Swa, "swa"),
        ] {
            assert_eq!(phase.name(), name);
            assert_eq!(serde_json::to_value(phase).unwrap(), name);
        }
    }

    #[test]
    fn schedules_hit_their_landmarks() {
        let mut cfg = TrainConfig::cifar_lt();
        cfg.epochs = 20;
        cfg.warmup_epochs = 2;
        cfg.swa = Some(SwaConfig { start: 12, lr: 0.05, rank: 20, collect_every_steps: None });
        let spe = 10;
        let lr = |p, s| learning_rate(&cfg, p, s, spe);
        assert!((lr(Phase::Prefix, 0) - 0.1 / 20.0).abs() < 1e-12);
        assert!((lr(Phase::Prefix, 19) - 0.1).abs() < 1e-12);
        assert!((lr(Phase::Prefix, 20) - 0.1).abs() < 1e-12);
        // Halfway through the cosine (epoch 7 of 2..12) the rate is the midpoint.
        assert!((lr(Phase::Prefix, 70) - 0.075).abs() < 1e-12);
        assert!((lr(Phase::Prefix, 119) - 0.05).abs() < 1e-4);
        assert_eq!(lr(Phase::Swa, 150), 0.05);
        assert!((lr(Phase::SgdBranch, 120) - 0.05).abs() < 1e-12);
        assert!((lr(Phase::SgdBranch, 160) - 0.025).abs() < 1e-12);
        assert!(lr(Phase::SgdBranch, 199) < 1e-3);
        cfg.swa = None;
        let lr = |s| learning_rate(&cfg, Phase::Sgd, s, spe);
        assert!((lr(110) - 0.05).abs() < 1e-12);
        assert!(lr(199) < 1e-4 && lr(199) > 0.0);
        // Monotone after warm-up.
        assert!((20..199).all(|s| lr(s + 1) <= lr(s)));
    }
}
