//! The head and predictions artifacts of a stage-2 run.

use std::path::{Path, PathBuf};

use lt_core::{ArtifactWriter, Fingerprint, Format};

use crate::error::Result;
use crate::features::FeatureSet;
use crate::Outcome;

/// Artifact kind of a re-trained head.
pub const HEAD_FORMAT: Format = Format { name: "lt.head", version: 1 };
/// Artifact kind of test predictions.
pub const PREDICTIONS_FORMAT: Format = Format { name: "lt.predictions", version: 1 };

/// The fingerprint of a stage-2 run: features and configuration.
pub fn fingerprint(fs: &FeatureSet, outcome_config: &crate::RetrainConfig) -> String {
    Fingerprint::new()
        .part("features", fs.meta(lt_core::artifact::KEY_FINGERPRINT).unwrap_or(""))
        .json("retrain", outcome_config)
        .finish()
}

/// Writes `head.safetensors` and `predictions.safetensors` into `dir`; returns their paths.
pub fn write(outcome: &Outcome, fs: &FeatureSet, dir: &Path) -> Result<(PathBuf, PathBuf)> {
    let fp = fingerprint(fs, &outcome.config);
    let (c, d) = (fs.classes(), fs.dim());
    let config = serde_json::to_string(&outcome.config).expect("json");
    let facts = serde_json::to_string(&outcome.facts).expect("json");
    let common = |w: &mut ArtifactWriter| {
        w.meta(lt_core::artifact::KEY_FINGERPRINT, fp.clone())
            .meta("method", outcome.config.method.name())
            .meta("method_label", outcome.config.method.label())
            .meta("backbone", outcome.config.backbone.clone())
            .meta("seed", outcome.config.seed.to_string())
            .meta("config", config.clone())
            .meta("facts", facts.clone())
            .meta("dataset", fs.meta("dataset").unwrap_or("unknown"))
            .meta("features_fingerprint", fs.meta(lt_core::artifact::KEY_FINGERPRINT).unwrap_or(""));
    };
    let head = dir.join("head.safetensors");
    let mut w = ArtifactWriter::new(HEAD_FORMAT);
    common(&mut w);
    w.push_f32("weight", &[c, d], outcome.weight.as_slice()).push_f32("bias", &[c], outcome.bias.as_slice());
    for (name, v, shape) in &outcome.extra {
        w.push_f32(name, shape, v.as_slice());
    }
    w.write(&head)?;
    let preds = dir.join("predictions.safetensors");
    let mut w = ArtifactWriter::new(PREDICTIONS_FORMAT);
    common(&mut w);
    if let Some(names) = fs.meta("class_names") {
        w.meta("class_names", names);
    }
    let counts: Vec<i64> = fs.class_counts().iter().map(|&x| x as i64).collect();
    w.push_f32("logits", &[outcome.test_labels.len(), c], outcome.test_logits.as_slice())
        .push_u32("labels", &[outcome.test_labels.len()], outcome.test_labels.as_slice())
        .push_i64("class_counts", &[c], counts);
    w.write(&preds)?;
    Ok((head, preds))
}
