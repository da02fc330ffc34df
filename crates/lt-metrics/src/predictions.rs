//! Reading prediction sets: the `lt.predictions` artifact (logits or probabilities and labels).

use std::path::Path;

use lt_core::split::{shot_groups, ShotGroup, SplitInfo};
use lt_core::{Artifact, Format};

use crate::error::{MetricsError, Result};

/// Artifact kind of a prediction set (written by `lt retrain`; anyone may write one).
pub const PREDICTIONS_FORMAT: Format = Format { name: "lt.predictions", version: 1 };

/// A prediction set: `N x C` scores (logits, or probabilities when `probabilities` is true),
/// labels, the training class counts when known, and descriptive metadata.
#[derive(Clone, Debug)]
pub struct Predictions {
    /// Row-major scores.
    pub scores: Vec<f32>,
    /// Whether `scores` are probabilities (tensor `probs`) rather than logits (`logits`).
    pub probabilities: bool,
    /// Labels.
    pub labels: Vec<u32>,
    /// Number of classes.
    pub classes: usize,
    /// Training samples per class (tensor `class_counts`), if recorded.
    pub class_counts: Option<Vec<usize>>,
    /// `method` metadata.
    pub method: String,
    /// `method_label` metadata (report label).
    pub method_label: String,
    /// `backbone` metadata.
    pub backbone: String,
    /// `seed` metadata.
    pub seed: Option<u64>,
}

impl Predictions {
    /// Reads a predictions artifact: `logits` or `probs` `[N, C]`, `labels` `[N]`, optional
    /// `class_counts` `[C]`.
    pub fn read(path: &Path) -> Result<Self> {
        let a = Artifact::open(path, PREDICTIONS_FORMAT)?;
        let (name, probabilities) = if a.contains("probs") { ("probs", true) } else { ("logits", false) };
        let info = a.expect_shape(name, &[None, None])?.clone();
        let (n, classes) = (info.shape[0], info.shape[1]);
        let labels: Vec<u32> = a.indices("labels", classes)?.into_iter().map(|y| y as u32).collect();
        if labels.len() != n {
            return Err(MetricsError::Invalid(format!(
                "{}: {} labels for {n} rows of `{name}`",
                path.display(),
                labels.len()
            )));
        }
        let class_counts = if a.contains("class_counts") {
            let c = a.indices("class_counts", usize::MAX)?;
            if c.len() != classes {
                return Err(MetricsError::Invalid(format!(
                    "{}: {} class counts for {classes} classes",
                    path.display(),
                    c.len()
                )));
            }
            Some(c)
        } else {
            None
        };
        let meta = |k: &str| a.meta_opt(k).unwrap_or("").to_string();
        Ok(Self {
            scores: a.f32(name)?,
            probabilities,
            labels,
            classes,
            class_counts,
            method: meta("method"),
            method_label: meta("method_label"),
            backbone: meta("backbone"),
            seed: a.meta_opt("seed").and_then(|s| s.parse().ok()),
        })
    }

    /// The shot groups: from a split artifact when given (its class count must match), else
    /// from the recorded class counts.
    pub fn groups(&self, split: Option<&Path>) -> Result<Vec<ShotGroup>> {
        match split {
            Some(p) => {
                let info = SplitInfo::read(p)?;
                if info.num_classes() != self.classes {
                    return Err(MetricsError::Invalid(format!(
                        "{} has {} classes, the predictions {}",
                        p.display(),
                        info.num_classes(),
                        self.classes
                    )));
                }
                Ok(info.groups())
            }
            None => self.class_counts.as_ref().map(|c| shot_groups(c)).ok_or_else(|| {
                MetricsError::Invalid("no class counts in the predictions: pass the split artifact".into())
            }),
        }
    }

    /// The scores, validated.
    pub fn scores(&self) -> Result<crate::Scores<'_>> {
        if self.probabilities {
            crate::Scores::probs(&self.scores, &self.labels, self.classes)
        } else {
            crate::Scores::logits(&self.scores, &self.labels, self.classes)
        }
    }
}
