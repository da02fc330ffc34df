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

/// The resolved preset as JSON, every field present: the data set's defaults filled in
/// ([`lt_data::DataSpec::settings`]; `null` where the data set fixes a setting itself), and stage
/// 1's and stage 2's settings with those their records leave out at their defaults
/// ([`lt_train::TrainConfig::settings`], [`lt_retrain::RetrainConfig::settings`]).
pub fn resolved(p: &Preset) -> Result<serde_json::Value> {
    let mut v = serde_json::to_value(p)?;
    v["train"] = p.train.settings()?;
    v["retrain"] = p.retrain.settings()?;
    v["data"] = p.data.settings()?;
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
            "/retrain/min_steps",
            "/data/val_per_class",
        ] {
            assert!(v.pointer(path).is_some(), "{path} missing: {v}");
        }
        assert_eq!(v.pointer("/train/precision").and_then(|p| p.as_str()), Some("f32"));
        // The data set's defaults, filled in where the preset leaves them out.
        let folder = resolved(&crate::preset::embedded("folder").unwrap()).unwrap();
        assert_eq!(folder["data"]["val_per_class"], 20, "{folder}");
        assert_eq!(folder["data"]["test_fraction"], 0.2);
        assert_eq!(folder["data"]["data_seed"], 0);
        let fmnist = resolved(&crate::preset::embedded("fmnist-lt").unwrap()).unwrap();
        assert_eq!(fmnist["data"]["imbalance"], 100.0, "{fmnist}");
        assert_eq!(fmnist["data"]["val_per_class"], 100);
        assert!(fmnist["data"]["test_fraction"].is_null() && fmnist["data"]["image_size"].is_null());
    }
}
