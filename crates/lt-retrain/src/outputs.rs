//! The head and predictions artifacts of a stage-2 run (formats owned by
//! [`lt_core::formats::head`] and [`lt_core::formats::predictions`]).

use std::path::{Path, PathBuf};

use lt_core::formats::features::Features;
use lt_core::formats::predictions::Predictions;
use lt_core::formats::RunMeta;
use lt_core::Fingerprint;

use crate::config::RetrainConfig;
use crate::error::{Result, RetrainError};
use crate::rows::{self, Row};
use crate::Outcome;

/// File name of the head artifact in a run's output directory.
pub const HEAD_FILE: &str = "head.safetensors";
/// File name of the predictions artifact in a run's output directory.
pub use lt_core::layout::PREDICTIONS_FILE;

/// The fingerprint of a stage-2 run: the features it read and its configuration.
pub fn fingerprint(features_fingerprint: &str, cfg: &RetrainConfig) -> String {
    Fingerprint::new().part("features", features_fingerprint).json("retrain", cfg).finish()
}

/// The plan row a run of `cfg` records: `row` when given, else the row `cfg` is a run of
/// ([`Row::matches`](crate::rows::Row::matches)), else none (the run records its configuration's
/// id).
pub fn row_of<'a>(cfg: &RetrainConfig, row: Option<&'a Row>) -> Option<&'a Row> {
    row.or_else(|| rows::ROWS.iter().find(|r| r.matches(cfg)))
}

/// The row of the report a stage-2 run records itself as (its predictions' `row` and `label`).
#[derive(Clone, Copy, Debug, Default)]
pub enum Recorded<'a> {
    /// The plan row its configuration is a run of ([`Row::matches`]), else its configuration's
    /// id ([`RetrainConfig::id`]).
    #[default]
    Inferred,
    /// A row of the plan (`lt retrain --row`).
    Row(&'a Row),
    /// A row of the user's own name (`lt retrain --name`, checked by [`rows::check_name`]),
    /// whatever its settings: a fixed-knob SRepr beside the validated one, say. Reports list it
    /// among the other runs.
    Named(&'a str),
}

impl Recorded<'_> {
    /// The row id and report label a run of `cfg` records.
    pub fn id_and_label(&self, cfg: &RetrainConfig) -> (String, String) {
        let row = match self {
            Recorded::Named(name) => return (name.to_string(), name.to_string()),
            Recorded::Row(r) => Some(*r),
            Recorded::Inferred => row_of(cfg, None),
        };
        match row {
            Some(r) => (r.id.to_string(), r.label.to_string()),
            None => (cfg.id(), cfg.id()),
        }
    }
}

/// The metadata of a run of `outcome` on `features`, recorded as `recorded`.
pub fn run_meta(outcome: &Outcome, features: &Features, recorded: Recorded<'_>) -> RunMeta {
    let cfg = &outcome.config;
    let (row, label) = recorded.id_and_label(cfg);
    let fp = features.meta().fingerprint.clone();
    RunMeta {
        method: cfg.method.to_string(),
        row,
        label,
        backbone: cfg.backbone.to_string(),
        seed: Some(cfg.seed),
        config: serde_json::to_value(cfg).unwrap_or_default(),
        facts: serde_json::Value::Object(outcome.facts.clone()),
        dataset: features.meta().dataset.clone(),
        fingerprint: fingerprint(&fp, cfg),
        features_fingerprint: fp,
    }
}

/// Writes `head.safetensors` and `predictions.safetensors` into `dir` as one unit: both are
/// written completely to temporary files first, then renamed (predictions last). Returns their
/// paths.
pub fn write(
    outcome: &Outcome,
    features: &Features,
    recorded: Recorded<'_>,
    dir: &Path,
) -> Result<(PathBuf, PathBuf)> {
    let meta = run_meta(outcome, features, recorded);
    let head = outcome.head.to_artifact(meta.clone())?;
    let preds = Predictions {
        scores: outcome.test_scores.clone(),
        probabilities: outcome.probabilities,
        labels: outcome.test_labels.clone(),
        classes: features.classes(),
        class_counts: Some(features.class_counts().to_vec()),
        class_names: Some(features.meta().class_names.clone()).filter(|n| !n.is_empty()),
        meta,
    };
    std::fs::create_dir_all(dir)
        .map_err(|e| RetrainError::Invalid(format!("creating {}: {e}", dir.display())))?;
    let (head_path, preds_path) = (dir.join(HEAD_FILE), dir.join(PREDICTIONS_FILE));
    let (head_tmp, preds_tmp) =
        (lt_core::atomic::temp_sibling(&head_path), lt_core::atomic::temp_sibling(&preds_path));
    let staged = head.write(&head_tmp).and_then(|_| preds.write(&preds_tmp));
    let renamed = staged.map_err(RetrainError::from).and_then(|_| {
        for (from, to) in [(&head_tmp, &head_path), (&preds_tmp, &preds_path)] {
            std::fs::rename(from, to).map_err(|e| {
                RetrainError::Invalid(format!("renaming {} to {}: {e}", from.display(), to.display()))
            })?;
        }
        Ok(())
    });
    if renamed.is_err() {
        let _ = std::fs::remove_file(&head_tmp);
        let _ = std::fs::remove_file(&preds_tmp);
    }
    renamed.map(|_| (head_path, preds_path))
}

/// Refuses to write into `dir` when it holds the outputs of another stage-2 run (other features,
/// another configuration than `cfg`, or another row than `recorded` makes it): replacing them
/// would lose that run. The outputs of this same run (the same fingerprint and row) are
/// replaced, as a run is deterministic; an output directory with a head but no predictions holds
/// an interrupted write and is replaced too.
pub fn check_dir(dir: &Path, features: &Features, cfg: &RetrainConfig, recorded: Recorded<'_>) -> Result<()> {
    let preds = dir.join(PREDICTIONS_FILE);
    if !preds.exists() {
        return Ok(());
    }
    let held = RunMeta::read_from(&lt_core::Artifact::open(&preds, lt_core::formats::predictions::FORMAT)?)?;
    let features_fp = &features.meta().fingerprint;
    let (row, _) = recorded.id_and_label(cfg);
    if held.row == row && held.fingerprint == fingerprint(features_fp, cfg) {
        return Ok(());
    }
    let mut differ = Vec::new();
    if held.row != row {
        differ.push(format!("the row: {} recorded, {row} now", held.row));
    }
    differ.extend(
        lt_core::diff::of_configs("retrain", &held.config, cfg, RetrainConfig::settings)
            .map_err(|e| RetrainError::Invalid(e.to_string()))?,
    );
    if held.features_fingerprint != *features_fp {
        differ.push(format!(
            "the features: {}… recorded, {}… now",
            lt_core::fingerprint::short(&held.features_fingerprint),
            lt_core::fingerprint::short(features_fp)
        ));
    }
    // The row is named once: as the first difference, or else before them.
    let which = if held.row == row { format!("row {}; ", held.row) } else { String::new() };
    Err(RetrainError::Invalid(format!(
        "{} holds the outputs of another stage-2 run ({which}{}); choose another --out, or remove its {HEAD_FILE} \
         and {PREDICTIONS_FILE} to replace them",
        dir.display(),
        if differ.is_empty() { "another fingerprint".to_string() } else { lt_core::diff::summary(&differ) }
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MethodKind;

    /// The fingerprint of a stage-2 run is pinned: a new setting written into the recorded
    /// configuration at its default would change every stored run's, and `lt retrain`,
    /// `lt report` and `cargo xtask reproduce` would take them for other runs. Leave a new
    /// setting out of the record at its default (`min_steps`'s `skip_serializing_if`).
    #[test]
    fn the_fingerprint_of_a_configuration_is_pinned() {
        let pinned = |cfg: &RetrainConfig| fingerprint("features", cfg);
        let default = RetrainConfig::default();
        assert_eq!(
            pinned(&default),
            "8634a5fa95e22062095db2e43c83ee6a5423ddd20e6d19dc9cb9794644acdd65",
            "the recorded configuration changed"
        );
        let la = RetrainConfig { min_steps: 50, tau: Some(1.25), ..RetrainConfig::new(MethodKind::La) };
        assert_eq!(
            pinned(&la),
            "72c098e3f126a2a13b66b3dd741693d9c0a69a529e1b717303c73624130c102d",
            "the recorded configuration changed"
        );
    }
}
