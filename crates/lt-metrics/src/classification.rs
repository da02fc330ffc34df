//! Accuracy (overall, per class, per shot group, top-k), negative log-likelihood and expected
//! calibration error, from logits or probabilities.

use lt_core::split::ShotGroup;
use serde::{Deserialize, Serialize};

use crate::error::{MetricsError, Result};

/// Row-major `N x C` scores with their labels, validated.
#[derive(Clone, Debug)]
pub struct Scores<'a> {
    values: &'a [f32],
    labels: &'a [u32],
    classes: usize,
    are_probs: bool,
}

/// How far probabilities may stray from a distribution by rounding: a row's sum from 1, a
/// confidence above 1 (an ensemble's mean of `f32` softmaxes can be 1.0000001).
pub const PROB_TOLERANCE: f64 = 1e-3;

impl<'a> Scores<'a> {
    fn new(values: &'a [f32], labels: &'a [u32], classes: usize, are_probs: bool) -> Result<Self> {
        if classes == 0 {
            return Err(MetricsError::Invalid("zero classes".into()));
        }
        if labels.is_empty() {
            return Err(MetricsError::Invalid("the prediction set is empty".into()));
        }
        if values.len() != labels.len() * classes {
            return Err(MetricsError::Invalid(format!(
                "{} scores for {} labels x {classes} classes",
                values.len(),
                labels.len()
            )));
        }
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(MetricsError::Invalid(format!(
                "score of sample {} class {} is {}",
                i / classes,
                i % classes,
                values[i]
            )));
        }
        if let Some((i, &y)) = labels.iter().enumerate().find(|(_, &y)| y as usize >= classes) {
            return Err(MetricsError::Invalid(format!("label {y} of sample {i} is outside 0..{classes}")));
        }
        Ok(Self { values, labels, classes, are_probs })
    }

    /// Logits `N x C` (row-major) and labels.
    pub fn logits(values: &'a [f32], labels: &'a [u32], classes: usize) -> Result<Self> {
        Self::new(values, labels, classes, false)
    }

    /// Probabilities `N x C` (rows summing to one within [`PROB_TOLERANCE`], none negative,
    /// e.g. an ensemble's averaged probabilities).
    pub fn probs(values: &'a [f32], labels: &'a [u32], classes: usize) -> Result<Self> {
        let s = Self::new(values, labels, classes, true)?;
        for (i, row) in values.chunks_exact(classes).enumerate() {
            let sum: f64 = row.iter().map(|&p| p as f64).sum();
            if row.iter().any(|&p| p < 0.0) || (sum - 1.0).abs() > PROB_TOLERANCE {
                return Err(MetricsError::Invalid(format!(
                    "probabilities of sample {i} sum to {sum}, not 1"
                )));
            }
        }
        Ok(s)
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no samples (never: construction refuses it).
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Number of classes.
    pub fn classes(&self) -> usize {
        self.classes
    }

    /// Labels.
    pub fn labels(&self) -> &[u32] {
        self.labels
    }

    /// Probabilities of sample `i` (softmax of the logits, in f64).
    pub fn probabilities(&self, i: usize) -> Vec<f64> {
        let row = &self.values[i * self.classes..(i + 1) * self.classes];
        if self.are_probs {
            return row.iter().map(|&p| p as f64).collect();
        }
        softmax(row)
    }

    /// Predicted class of sample `i` (first maximum).
    pub fn predicted(&self, i: usize) -> usize {
        lt_core::formats::predictions::predicted_class(&self.values[i * self.classes..(i + 1) * self.classes])
    }

    /// Whether the label is among the `k` highest scores of sample `i`.
    pub fn in_top_k(&self, i: usize, k: usize) -> bool {
        let row = &self.values[i * self.classes..(i + 1) * self.classes];
        let y = self.labels[i] as usize;
        let higher = row.iter().enumerate().filter(|&(c, &v)| v > row[y] || (v == row[y] && c < y)).count();
        higher < k
    }
}

/// Numerically stable softmax in f64.
pub fn softmax(row: &[f32]) -> Vec<f64> {
    let m = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
    let e: Vec<f64> = row.iter().map(|&v| (v as f64 - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.into_iter().map(|v| v / s).collect()
}

/// Accuracy of each class (`None` for a class without samples).
pub fn per_class_accuracy(s: &Scores) -> Vec<Option<f64>> {
    let mut correct = vec![0usize; s.classes()];
    let mut total = vec![0usize; s.classes()];
    for i in 0..s.len() {
        let y = s.labels()[i] as usize;
        total[y] += 1;
        if s.predicted(i) == y {
            correct[y] += 1;
        }
    }
    correct.iter().zip(&total).map(|(&c, &t)| (t > 0).then(|| c as f64 / t as f64)).collect()
}

/// Mean of the class accuracies of each shot group (`None` for a group without classes that
/// have test samples). `groups` gives each class's group (from the training counts).
pub fn group_accuracy(per_class: &[Option<f64>], groups: &[ShotGroup]) -> Result<[Option<f64>; 3]> {
    if per_class.len() != groups.len() {
        return Err(MetricsError::Invalid(format!(
            "{} shot groups for {} classes",
            groups.len(),
            per_class.len()
        )));
    }
    let mut out = [None; 3];
    for (k, g) in ShotGroup::ALL.iter().enumerate() {
        let accs: Vec<f64> =
            per_class.iter().zip(groups).filter(|(_, gg)| *gg == g).filter_map(|(a, _)| *a).collect();
        if !accs.is_empty() {
            out[k] = Some(accs.iter().sum::<f64>() / accs.len() as f64);
        }
    }
    Ok(out)
}

/// Top-1 accuracy over samples.
pub fn accuracy(s: &Scores) -> f64 {
    (0..s.len()).filter(|&i| s.predicted(i) == s.labels()[i] as usize).count() as f64 / s.len() as f64
}

/// Top-k accuracy over samples.
pub fn top_k_accuracy(s: &Scores, k: usize) -> f64 {
    (0..s.len()).filter(|&i| s.in_top_k(i, k)).count() as f64 / s.len() as f64
}

/// Mean negative log-likelihood of the labels (probabilities floored at `1e-12`); `0`, not `-0`,
/// when every label has probability 1.
pub fn nll(s: &Scores) -> f64 {
    let total: f64 =
        (0..s.len()).map(|i| -(s.probabilities(i)[s.labels()[i] as usize].max(1e-12)).ln()).sum();
    // Adding +0 turns the sum of -0s into +0 and changes no other value.
    total / s.len() as f64 + 0.0
}

/// The number of ECE bins of the reports and of the stages' own evaluations (`lt eval`'s
/// default), with [`BinEdges::Guo`].
pub const ECE_BINS: usize = 15;

/// Which side of a bin edge is closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum BinEdges {
    /// Guo et al. (2017): bins `((m-1)/M, m/M]`; a confidence of 0 falls in the first bin.
    #[default]
    Guo,
    /// torchmetrics >= 1.0: bins `[(m-1)/M, m/M)`; a confidence of 1 falls in the last bin.
    #[cfg_attr(feature = "clap", value(alias = "torchmetrics"))]
    LowerClosed,
}

/// Confidence (max probability) and correctness of every sample.
pub fn confidences(s: &Scores) -> (Vec<f64>, Vec<bool>) {
    (0..s.len())
        .map(|i| {
            let p = s.probabilities(i);
            let pred = s.predicted(i);
            (p[pred], pred == s.labels()[i] as usize)
        })
        .unzip()
}

/// Bin index of a confidence. With [`BinEdges::LowerClosed`] a confidence of exactly 1 falls
/// in an extra bin `[1, 1]` (index `bins`), as torchmetrics does. `bins` of 0 counts as 1 (the
/// functions that take confidences from a caller refuse it: [`reliability`]).
pub fn bin_of(conf: f64, bins: usize, edges: BinEdges) -> usize {
    let bins = bins.max(1);
    match edges {
        BinEdges::Guo => ((conf * bins as f64).ceil() as isize - 1).clamp(0, bins as isize - 1) as usize,
        BinEdges::LowerClosed => ((conf * bins as f64).floor() as isize).clamp(0, bins as isize) as usize,
    }
}

/// One bin of a reliability diagram.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Bin {
    /// Lower edge.
    pub lo: f64,
    /// Upper edge.
    pub hi: f64,
    /// Samples in the bin.
    pub count: usize,
    /// Accuracy in the bin (0 when empty).
    pub accuracy: f64,
    /// Mean confidence in the bin (0 when empty).
    pub confidence: f64,
}

/// Reliability bins of confidences and correctness (one more, `[1, 1]`, with
/// [`BinEdges::LowerClosed`]).
///
/// # Errors
/// [`MetricsError::Invalid`] for no bins, confidences and correctness of unequal lengths, or a
/// confidence outside `[0, 1]` by more than [`PROB_TOLERANCE`] (NaN included); one within it
/// falls in the first or last bin.
pub fn reliability(conf: &[f64], correct: &[bool], bins: usize, edges: BinEdges) -> Result<Vec<Bin>> {
    if bins == 0 {
        return Err(MetricsError::Invalid("calibration bins: at least 1 is needed, got 0".into()));
    }
    if conf.len() != correct.len() {
        return Err(MetricsError::Invalid(format!(
            "calibration: {} confidences and {} correctness flags (one of each per sample)",
            conf.len(),
            correct.len()
        )));
    }
    let tolerated = -PROB_TOLERANCE..=1.0 + PROB_TOLERANCE;
    if let Some((i, c)) = conf.iter().enumerate().find(|(_, c)| !tolerated.contains(*c)) {
        return Err(MetricsError::Invalid(format!(
            "calibration: confidence {c} of sample {i} is outside [0, 1] by more than {PROB_TOLERANCE}"
        )));
    }
    let slots = if edges == BinEdges::LowerClosed { bins + 1 } else { bins };
    let mut count = vec![0usize; slots];
    let mut acc = vec![0f64; slots];
    let mut cs = vec![0f64; slots];
    for (&c, &ok) in conf.iter().zip(correct) {
        let b = bin_of(c, bins, edges);
        count[b] += 1;
        cs[b] += c;
        if ok {
            acc[b] += 1.0;
        }
    }
    Ok((0..slots)
        .map(|b| Bin {
            lo: (b as f64 / bins as f64).min(1.0),
            hi: ((b + 1) as f64 / bins as f64).min(1.0),
            count: count[b],
            accuracy: if count[b] > 0 { acc[b] / count[b] as f64 } else { 0.0 },
            confidence: if count[b] > 0 { cs[b] / count[b] as f64 } else { 0.0 },
        })
        .collect())
}

/// Expected calibration error `sum_m |B_m|/N |acc(B_m) - conf(B_m)|` (empty bins skipped).
///
/// # Errors
/// As [`reliability`].
pub fn ece_from(conf: &[f64], correct: &[bool], bins: usize, edges: BinEdges) -> Result<f64> {
    let n = conf.len() as f64;
    Ok(reliability(conf, correct, bins, edges)?
        .iter()
        .filter(|b| b.count > 0)
        .map(|b| b.count as f64 / n * (b.accuracy - b.confidence).abs())
        .sum())
}

/// ECE with `bins` equal-width bins over the max-softmax confidence.
///
/// # Errors
/// [`MetricsError::Invalid`] for no bins.
pub fn ece(s: &Scores, bins: usize, edges: BinEdges) -> Result<f64> {
    let (c, ok) = confidences(s);
    ece_from(&c, &ok, bins, edges)
}

/// Every metric of one prediction set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    /// Top-1 accuracy over samples (the "All" column).
    pub accuracy: f64,
    /// Mean class accuracy of the Many-shot classes.
    pub many: Option<f64>,
    /// Mean class accuracy of the Medium-shot classes.
    pub medium: Option<f64>,
    /// Mean class accuracy of the Few-shot classes.
    pub few: Option<f64>,
    /// Mean negative log-likelihood.
    pub nll: f64,
    /// Expected calibration error (15 bins, Guo's convention unless configured).
    pub ece: f64,
    /// Top-5 accuracy (data sets with more than 10 classes).
    pub top5: Option<f64>,
    /// Accuracy of every class (`None` for classes without test samples).
    pub per_class: Vec<Option<f64>>,
    /// Number of samples.
    pub samples: usize,
}

/// Computes every metric; `groups` gives each class's shot group.
pub fn evaluate(s: &Scores, groups: &[ShotGroup], bins: usize, edges: BinEdges) -> Result<Evaluation> {
    let per_class = per_class_accuracy(s);
    let [many, medium, few] = group_accuracy(&per_class, groups)?;
    Ok(Evaluation {
        accuracy: accuracy(s),
        many,
        medium,
        few,
        nll: nll(s),
        ece: ece(s, bins, edges)?,
        top5: (s.classes() > 10).then(|| top_k_accuracy(s, 5)),
        per_class,
        samples: s.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Edges, empty bins and the extra `[1, 1]` bin of the reliability diagram.
    #[test]
    fn reliability_bins_have_their_edges_and_empty_bins_read_zero() {
        let bins = reliability(&[0.05, 0.35, 1.0], &[true, false, true], 4, BinEdges::LowerClosed).unwrap();
        let edges: Vec<(f64, f64)> = bins.iter().map(|b| (b.lo, b.hi)).collect();
        assert_eq!(edges, [(0.0, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 1.0), (1.0, 1.0)]);
        let counts: Vec<usize> = bins.iter().map(|b| b.count).collect();
        assert_eq!(counts, [1, 1, 0, 0, 1]);
        assert_eq!((bins[2].accuracy, bins[2].confidence), (0.0, 0.0), "an empty bin reads 0, not NaN");
        assert_eq!((bins[1].accuracy, bins[1].confidence), (0.0, 0.35));
        let guo = reliability(&[0.25, 1.0], &[true, true], 4, BinEdges::Guo).unwrap();
        assert_eq!(guo.len(), 4);
        assert_eq!((guo[0].count, guo[3].count), (1, 1), "(lo, hi] bins: 0.25 in the first, 1 in the last");
    }

    /// No bins, unequal lengths and confidences outside `[0, 1]` are refused, by name; `evaluate`
    /// refuses no bins (it panicked in `bin_of`'s clamp).
    #[test]
    fn calibration_refuses_what_describes_no_binning() {
        let err = |r: Result<Vec<Bin>>| r.unwrap_err().to_string();
        let edges = BinEdges::Guo;
        assert!(err(reliability(&[0.5], &[true], 0, edges)).contains("at least 1 is needed, got 0"));
        assert!(err(reliability(&[0.5], &[true, false], 4, edges))
            .contains("1 confidences and 2 correctness flags"));
        let nan = err(reliability(&[0.5, f64::NAN], &[true, true], 4, edges));
        assert!(nan.contains("confidence NaN of sample 1 is outside [0, 1]"), "{nan}");
        assert!(err(reliability(&[1.5], &[true], 4, edges)).contains("confidence 1.5 of sample 0"));
        // Rounding past 1 (an ensemble's mean of f32 softmaxes) falls in the last bin.
        let rounded = reliability(&[1.0000001, 0.9995, 0.0], &[true, false, false], 4, edges).unwrap();
        assert_eq!((rounded[0].count, rounded[3].count), (1, 2));
        let s = Scores::logits(&[1.0, 0.0], &[0], 2).unwrap();
        let e = evaluate(&s, &[ShotGroup::Many; 2], 0, edges).unwrap_err().to_string();
        assert!(e.contains("calibration bins: at least 1 is needed, got 0"), "{e}");
        assert_eq!(bin_of(0.5, 0, edges), 0);
    }

    /// Probabilities of exactly 0 are probabilities; the softmax is shifted by the row's maximum
    /// (large logits do not overflow); ties in the top k go to the lower class, as the
    /// prediction does; a class without samples has no accuracy.
    #[test]
    fn scores_accept_zero_probabilities_and_rank_ties_by_class() {
        let labels = [0u32, 1];
        let s = Scores::probs(&[1.0, 0.0, 0.0, 1.0], &labels, 2).unwrap();
        assert!(!s.is_empty() && s.len() == 2);
        let (a, b) = (1000f32, 1000.0 + 2f32.ln());
        let p = softmax(&[a, b]);
        let want = 1.0 / (1.0 + (f64::from(a) - f64::from(b)).exp());
        assert!((p[1] - want).abs() < 1e-12 && (p[0] + p[1] - 1.0).abs() < 1e-12, "{p:?}");
        // Sample 0: label 0 ties class 1 and wins the tie; sample 1: label 1 loses it to class 0.
        let ties = Scores::logits(&[0.5, 0.5, 0.5, 0.5], &labels, 2).unwrap();
        assert!(ties.in_top_k(0, 1) && !ties.in_top_k(1, 1) && ties.in_top_k(1, 2));
        let three = Scores::logits(&[2.0, 1.0, 0.0, 2.0, 1.0, 0.0], &labels, 3).unwrap();
        assert_eq!(per_class_accuracy(&three), [Some(1.0), Some(0.0), None]);
        // Top-5 accuracy is reported for more than 10 classes only (CIFAR-10 has none).
        for (classes, reported) in [(10usize, false), (11, true)] {
            let logits = vec![0f32; 2 * classes];
            let s = Scores::logits(&logits, &labels, classes).unwrap();
            let groups = vec![ShotGroup::Many; classes];
            assert_eq!(
                evaluate(&s, &groups, 15, BinEdges::Guo).unwrap().top5.is_some(),
                reported,
                "{classes}"
            );
        }
    }
}
