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

/// The resolved preset as JSON, every field present: the stage-1 settings a preset file may
/// leave out at their defaults are recorded without them (so that old runs keep their
/// fingerprints), and are written out here.
pub fn resolved(p: &Preset) -> Result<serde_json::Value> {
    let mut v = serde_json::to_value(p)?;
    let t = &p.train;
    let train = v["train"].as_object_mut().context("a preset's [train] is a table")?;
    train.insert("init".into(), serde_json::to_value(&t.init)?);
    train.insert("backbone_lr_scale".into(), t.backbone_lr_scale.into());
    train.insert("freeze_bn".into(), t.freeze_bn.into());
    train.insert("precision".into(), serde_json::to_value(t.precision)?);
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
