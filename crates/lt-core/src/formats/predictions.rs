//! `lt.predictions` v1: the test scores of one method (logits or probabilities) with the labels,
//! the training class counts and the run's metadata ([`RunMeta`]). Written by `lt retrain`; anyone
//! may write one (every metadata key is optional for readers).

use std::path::Path;

use crate::artifact::{Artifact, ArtifactError, ArtifactWriter, Format, Result};
use crate::formats::RunMeta;

/// Artifact kind of a prediction set.
pub const FORMAT: Format = Format { name: "lt.predictions", version: 1 };

const LOGITS: &str = "logits";
const PROBS: &str = "probs";
const LABELS: &str = "labels";
const CLASS_COUNTS: &str = "class_counts";
const KEY_CLASS_NAMES: &str = "class_names";

/// The predicted class of one row of scores (logits or probabilities): the first maximum, so a
/// tie goes to the lower class index. The report's accuracies and stage 2's balanced-error
/// selection both predict with it.
pub fn predicted_class(row: &[f32]) -> usize {
    row.iter().enumerate().fold(0, |best, (c, &v)| if v > row[best] { c } else { best })
}

/// A prediction set: `N x C` scores, labels and what the run recorded about itself.
#[derive(Clone, Debug, PartialEq)]
pub struct Predictions {
    /// Row-major scores `[N, C]`.
    pub scores: Vec<f32>,
    /// Whether `scores` are probabilities (tensor `probs`) rather than logits (`logits`).
    pub probabilities: bool,
    /// Labels `[N]`.
    pub labels: Vec<u32>,
    /// Number of classes `C`.
    pub classes: usize,
    /// Training samples per class, if recorded.
    pub class_counts: Option<Vec<usize>>,
    /// Class names, if recorded.
    pub class_names: Option<Vec<String>>,
    /// The run's metadata.
    pub meta: RunMeta,
}

impl Predictions {
    /// Writes the artifact atomically.
    pub fn write(&self, path: &Path) -> Result<()> {
        let n = self.labels.len();
        let bad = |reason: String| ArtifactError::BadValue {
            path: path.to_path_buf(),
            name: if self.probabilities { PROBS } else { LOGITS }.into(),
            reason,
        };
        if self.scores.len() != n * self.classes {
            return Err(bad(format!(
                "{} scores for {n} labels and {} classes",
                self.scores.len(),
                self.classes
            )));
        }
        if let Some(i) = self.scores.iter().position(|v| !v.is_finite()) {
            return Err(bad(format!("score {i} (row {}) is {}", i / self.classes.max(1), self.scores[i])));
        }
        let mut w = ArtifactWriter::new(FORMAT);
        self.meta.write_to(&mut w);
        if let Some(names) = &self.class_names {
            w.meta_json(KEY_CLASS_NAMES, names);
        }
        let name = if self.probabilities { PROBS } else { LOGITS };
        w.push_f32(name, &[n, self.classes], self.scores.as_slice()).push_u32(
            LABELS,
            &[n],
            self.labels.as_slice(),
        );
        if let Some(c) = &self.class_counts {
            let c: Vec<i64> = c.iter().map(|&x| x as i64).collect();
            w.push_i64(CLASS_COUNTS, &[c.len()], c);
        }
        w.write(path)
    }

    /// Reads and validates a predictions artifact: `logits` or `probs` `[N, C]`, `labels` `[N]` in
    /// range, optional `class_counts` `[C]`.
    pub fn read(path: &Path) -> Result<Self> {
        let a = Artifact::open(path, FORMAT)?;
        let (name, probabilities) = if a.contains(PROBS) { (PROBS, true) } else { (LOGITS, false) };
        let info = a.expect_shape(name, &[None, None])?.clone();
        let (n, classes) = (info.shape[0], info.shape[1]);
        let labels: Vec<u32> = a.indices(LABELS, classes)?.into_iter().map(|y| y as u32).collect();
        if labels.len() != n {
            return Err(a.bad_value(LABELS, format!("{} labels for {n} rows of `{name}`", labels.len())));
        }
        let class_counts = if a.contains(CLASS_COUNTS) {
            let c = a.indices(CLASS_COUNTS, usize::MAX)?;
            if c.len() != classes {
                return Err(a.bad_value(CLASS_COUNTS, format!("{} counts for {classes} classes", c.len())));
            }
            Some(c)
        } else {
            None
        };
        let class_names =
            if a.meta_opt(KEY_CLASS_NAMES).is_some() { Some(a.meta_json(KEY_CLASS_NAMES)?) } else { None };
        Ok(Self {
            scores: a.f32(name)?,
            probabilities,
            labels,
            classes,
            class_counts,
            class_names,
            meta: RunMeta::read_from(&a)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_predicted_class_is_the_first_maximum() {
        assert_eq!(predicted_class(&[0.1, 0.7, 0.2]), 1);
        assert_eq!(predicted_class(&[0.3, 0.7, 0.7]), 1, "a tie goes to the lower index");
        assert_eq!(predicted_class(&[-1.0, -3.0]), 0);
        assert_eq!(predicted_class(&[2.0]), 0);
    }

    #[test]
    fn roundtrip_and_refusals() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("p.safetensors");
        let meta = RunMeta {
            method: "srepr".into(),
            row: "swa-srepr".into(),
            label: "SRepr".into(),
            backbone: "swa".into(),
            seed: Some(3),
            config: serde_json::json!({"lambda": 0.3}),
            facts: serde_json::json!({"members": 8}),
            dataset: "toy".into(),
            fingerprint: "f".into(),
            features_fingerprint: "g".into(),
        };
        let pr = Predictions {
            scores: vec![0.5, -1.0, 2.0, 0.0],
            probabilities: false,
            labels: vec![1, 0],
            classes: 2,
            class_counts: Some(vec![10, 3]),
            class_names: Some(vec!["a".into(), "b".into()]),
            meta,
        };
        pr.write(&p).unwrap();
        assert_eq!(Predictions::read(&p).unwrap(), pr);

        let nan = Predictions { scores: vec![0.5, f32::NAN, 2.0, 0.0], ..pr.clone() };
        let err = nan.write(&dir.path().join("nan.safetensors")).unwrap_err().to_string();
        assert!(err.contains("logits") && err.contains("score 1 (row 0) is NaN"), "{err}");
        assert!(!dir.path().join("nan.safetensors").exists());

        // A file with no metadata beyond the format reads with empty run metadata.
        let mut w = ArtifactWriter::new(FORMAT);
        w.push_f32(PROBS, &[1, 2], vec![0.25, 0.75]).push_u32(LABELS, &[1], vec![1]);
        let bare = dir.path().join("bare.safetensors");
        w.write(&bare).unwrap();
        let b = Predictions::read(&bare).unwrap();
        assert!(b.probabilities && b.class_counts.is_none() && b.meta == RunMeta::default());
    }
}
