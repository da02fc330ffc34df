//! `lt preset`: a preset resolved, every setting of every stage with the defaults filled in, as
//! JSON: what `lt train`, `lt extract` and `lt retrain` start from (`cargo xtask reproduce` reads
//! its estimates' inputs from it, so that it holds no defaults of its own).

use anyhow::{Context, Result};
use clap::Args;

use crate::preset::{Preset, PresetArgs};

/// `lt preset`
#[derive(Args)]
pub struct PresetCmd {
    #[command(flatten)]
    preset: PresetArgs,
}

/// The resolved preset as JSON, every field present (stage 1's with
/// [`lt_train::TrainConfig::settings`], which writes out those its record leaves out at their
/// defaults).
pub fn resolved(p: &Preset) -> Result<serde_json::Value> {
    let mut v = serde_json::to_value(p)?;
    v["train"] = p.train.settings()?;
    Ok(v)
}

/// Runs `lt preset`: prints the preset given, resolved.
pub fn run(a: PresetCmd) -> Result<()> {
    let p = a.preset.resolve()?.context("give the preset: --preset NAME or --preset-file FILE")?;
    println!("{}", serde_json::to_string_pretty(&resolved(&p)?)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every field of every stage is there, the ones a preset leaves out at their defaults too.
    #[test]
    fn a_resolved_preset_has_every_setting() {
        let v = resolved(&crate::preset::embedded("synthetic").unwrap()).unwrap();
        for path in [
            "/train/arch",
            "/train/epochs",
            "/train/batch_size",
            "/train/workers",
            "/train/precision",
            "/train/freeze_bn",
            "/train/backbone_lr_scale",
            "/train/swa/start",
            "/train/swa/rank",
            "/extract/samples",
            "/extract/half",
            "/extract/workers",
            "/retrain/epochs",
        ] {
            assert!(v.pointer(path).is_some(), "{path} missing: {v}");
        }
        assert_eq!(v.pointer("/train/precision").and_then(|p| p.as_str()), Some("f32"));
    }
}
