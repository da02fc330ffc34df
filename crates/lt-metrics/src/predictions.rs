//! Evaluating prediction sets: the `lt.predictions` artifact (format owned by
//! [`lt_core::formats::predictions`]) seen as [`Scores`] with shot groups.

use std::path::Path;

use lt_core::split::{shot_groups, ShotGroup, SplitInfo};

pub use lt_core::formats::predictions::{Predictions, FORMAT as PREDICTIONS_FORMAT};

use crate::classification::Scores;
use crate::error::{MetricsError, Result};

/// What the metrics need of a prediction set.
pub trait PredictionsExt {
    /// The shot groups: from the split artifact at `split` when given (see
    /// [`PredictionsExt::groups_of`]), else from the recorded class counts.
    fn groups(&self, split: Option<&Path>) -> Result<Vec<ShotGroup>>;
    /// The shot groups of a split already read (`path` names it in errors): it must have the
    /// predictions' classes and, where the predictions record their training class counts, the
    /// same counts (a split of another run or data set would group the classes wrongly); without
    /// a split, the recorded counts.
    fn groups_of(&self, split: Option<(&Path, &SplitInfo)>) -> Result<Vec<ShotGroup>>;
    /// The scores, validated.
    fn scores(&self) -> Result<Scores<'_>>;
}

impl PredictionsExt for Predictions {
    fn groups(&self, split: Option<&Path>) -> Result<Vec<ShotGroup>> {
        match split {
            Some(p) => self.groups_of(Some((p, &SplitInfo::read(p)?))),
            None => self.groups_of(None),
        }
    }

    fn groups_of(&self, split: Option<(&Path, &SplitInfo)>) -> Result<Vec<ShotGroup>> {
        let Some((path, info)) = split else {
            return self.class_counts.as_ref().map(|c| shot_groups(c)).ok_or_else(|| {
                MetricsError::Invalid("no class counts in the predictions: pass the split artifact".into())
            });
        };
        if info.num_classes() != self.classes {
            return Err(MetricsError::Invalid(format!(
                "{} has {} classes, the predictions {}",
                path.display(),
                info.num_classes(),
                self.classes
            )));
        }
        let counts = info.class_counts();
        let differ = self.class_counts.as_ref().and_then(|c| c.iter().zip(&counts).position(|(a, b)| a != b));
        if let (Some(c), Some(recorded)) = (differ, &self.class_counts) {
            return Err(MetricsError::Invalid(format!(
                "{} has {} training images of class {c}, the predictions were made with {}: the split of \
                 another run or data set",
                path.display(),
                counts[c],
                recorded[c]
            )));
        }
        Ok(info.groups())
    }

    fn scores(&self) -> Result<Scores<'_>> {
        if self.probabilities {
            Scores::probs(&self.scores, &self.labels, self.classes)
        } else {
            Scores::logits(&self.scores, &self.labels, self.classes)
        }
    }
}
