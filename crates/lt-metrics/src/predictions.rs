//! Evaluating prediction sets: the `lt.predictions` artifact (format owned by
//! [`lt_core::formats::predictions`]) seen as [`Scores`] with shot groups.

use std::path::Path;

use lt_core::split::{shot_groups, ShotGroup, SplitInfo};

pub use lt_core::formats::predictions::{Predictions, FORMAT as PREDICTIONS_FORMAT};

use crate::classification::Scores;
use crate::error::{MetricsError, Result};

/// What the metrics need of a prediction set.
pub trait PredictionsExt {
    /// The shot groups: from a split artifact when given (its class count must match), else from
    /// the recorded class counts.
    fn groups(&self, split: Option<&Path>) -> Result<Vec<ShotGroup>>;
    /// The scores, validated.
    fn scores(&self) -> Result<Scores<'_>>;
}

impl PredictionsExt for Predictions {
    fn groups(&self, split: Option<&Path>) -> Result<Vec<ShotGroup>> {
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

    fn scores(&self) -> Result<Scores<'_>> {
        if self.probabilities {
            Scores::probs(&self.scores, &self.labels, self.classes)
        } else {
            Scores::logits(&self.scores, &self.labels, self.classes)
        }
    }
}
