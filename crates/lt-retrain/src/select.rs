//! Choosing knobs on the validation split: every candidate is fitted on the training split and
//! scored on the validation split by the configured [`Criterion`]; the first best wins. The test
//! split is never read here.

use candle_core::{DType, Tensor, D};
use lt_core::formats::facts;
use lt_core::formats::features::Split;
use lt_core::formats::predictions::predicted_class;
use serde::Serialize;

use crate::config::{Criterion, Predict, RetrainConfig};
use crate::error::{Result, RetrainError};
use crate::head::Head;
use crate::methods::Fitted;
use crate::problem::{host, Problem};

/// The scores of `head` on `split`: logits of the backbone in use ([`Predict::Single`]), or the
/// mean of the head's softmax over `members` ([`Predict::Ensemble`], probabilities). Returns the
/// row-major scores and whether they are probabilities.
pub fn scores(
    p: &Problem,
    head: &Head,
    predict: Predict,
    members: &[usize],
    split: Split,
) -> Result<(Vec<f32>, bool)> {
    match predict {
        Predict::Single => Ok((host(&head.logits(&p.all(split, p.index)?)?)?, false)),
        Predict::Ensemble => {
            if members.is_empty() {
                return Err(RetrainError::Invalid(format!(
                    "{}: ensemble predictions need SWAG samples",
                    p.source.describe()
                )));
            }
            let mut sum: Option<Tensor> = None;
            for &m in members {
                let prob = candle_nn::ops::softmax(&head.logits(&p.all(split, m)?)?, D::Minus1)?;
                sum = Some(match sum {
                    Some(s) => (s + prob)?,
                    None => prob,
                });
            }
            let mean = (sum.expect("at least one member") / members.len() as f64)?;
            Ok((host(&mean.to_dtype(DType::F32)?)?, true))
        }
    }
}

/// The criterion's value (lower is better) of row-major `scores` (logits, or probabilities when
/// `probabilities`) against `labels`: per class, the mean NLL or error of its samples; then the
/// mean over the classes present.
pub fn criterion_value(
    criterion: Criterion,
    scores: &[f32],
    probabilities: bool,
    labels: &[u32],
    classes: usize,
) -> f64 {
    let mut sum = vec![0f64; classes];
    let mut count = vec![0usize; classes];
    for (row, &y) in scores.chunks_exact(classes).zip(labels) {
        let y = y as usize;
        let value = match criterion {
            Criterion::BalancedNll => {
                if probabilities {
                    -(row[y] as f64).max(1e-12).ln()
                } else {
                    let max = row.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
                    let lse = max + row.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln();
                    lse - row[y] as f64
                }
            }
            Criterion::BalancedError => f64::from(u8::from(predicted_class(row) != y)),
        };
        sum[y] += value;
        count[y] += 1;
    }
    let per_class: Vec<f64> =
        sum.iter().zip(&count).filter(|(_, &n)| n > 0).map(|(s, &n)| s / n as f64).collect();
    per_class.iter().sum::<f64>() / per_class.len().max(1) as f64
}

/// One candidate's knobs and validation score.
#[derive(Clone, Debug, Serialize)]
struct Trial {
    knobs: serde_json::Value,
    score: f64,
}

/// Fits each of `candidates` with `run` and keeps the one with the lowest validation criterion.
///
/// With a single candidate nothing is scored; without a validation split `fallback` is fitted
/// and the facts say so; a validation split without rows is an error. Returns the chosen fit
/// (its facts extended with the search under `"selection"` and the chosen knobs merged into
/// `"chosen"`) and the chosen knobs.
pub(crate) fn choose<K: Serialize + Clone>(
    p: &Problem,
    cfg: &RetrainConfig,
    candidates: &[K],
    fallback: K,
    mut run: impl FnMut(&K) -> Result<Fitted>,
) -> Result<(Fitted, K)> {
    let record = |fitted: &mut Fitted, knobs: &K, how: &str, search: serde_json::Value| -> Result<()> {
        let knobs = serde_json::to_value(knobs).map_err(|e| RetrainError::Invalid(e.to_string()))?;
        merge_knobs(&mut fitted.facts, how, &knobs);
        let sel = fitted.facts.entry(facts::SELECTION).or_insert_with(|| serde_json::json!([]));
        if let Some(list) = sel.as_array_mut() {
            list.push(search);
        }
        Ok(())
    };
    if candidates.len() == 1 {
        let mut f = run(&candidates[0])?;
        record(&mut f, &candidates[0], facts::FIXED, serde_json::json!({"fixed": true}))?;
        return Ok((f, candidates[0].clone()));
    }
    if !p.source.has_split(Split::Val) {
        let mut f = run(&fallback)?;
        let why = serde_json::json!({"default": "the source has no validation split"});
        record(&mut f, &fallback, facts::DEFAULTS, why)?;
        return Ok((f, fallback));
    }
    let labels = p.source.labels(Split::Val)?;
    if labels.is_empty() {
        return Err(RetrainError::Invalid(format!(
            "{}: the validation split has no rows, so no knob can be chosen on it (give it rows, or leave it out to fit the defaults)",
            p.source.describe()
        )));
    }
    let criterion = cfg.select.criterion;
    let members = p.predicting_members(cfg)?;
    let mut best: Option<(f64, Fitted, K)> = None;
    let mut trials = Vec::with_capacity(candidates.len());
    for k in candidates {
        let f = run(k)?;
        let (s, probs) = scores(p, &f.head, cfg.predict, &members, Split::Val)?;
        let score = criterion_value(criterion, &s, probs, &labels, p.classes);
        if !score.is_finite() {
            return Err(RetrainError::Invalid(format!(
                "validation {criterion} is {score} for {}",
                serde_json::to_string(k).unwrap_or_default()
            )));
        }
        trials.push(Trial { knobs: serde_json::to_value(k).unwrap_or_default(), score });
        if best.as_ref().is_none_or(|(b, _, _)| score < *b) {
            best = Some((score, f, k.clone()));
        }
    }
    let (_, mut f, k) = best.expect("at least two candidates");
    let search = serde_json::json!({"split": "val", "criterion": criterion.name(), "trials": trials});
    record(&mut f, &k, facts::CHOSEN, search)?;
    Ok((f, k))
}

/// Removes the knob `name` from whichever kind of [`facts`] holds it.
pub(crate) fn forget_knob(facts: &mut serde_json::Map<String, serde_json::Value>, name: &str) {
    for kind in facts::KINDS {
        if let Some(o) = facts.get_mut(kind).and_then(|v| v.as_object_mut()) {
            o.remove(name);
            if o.is_empty() {
                facts.remove(kind);
            }
        }
    }
}

/// Adds `knobs` (a JSON object) to the object under `how` (a [`facts`] key) of `facts`, taking
/// each knob out of the other two kinds: a knob is chosen, fixed or a default, once.
pub(crate) fn merge_knobs(
    facts: &mut serde_json::Map<String, serde_json::Value>,
    how: &str,
    knobs: &serde_json::Value,
) {
    let Some(knobs) = knobs.as_object() else { return };
    for name in knobs.keys() {
        forget_knob(facts, name);
    }
    let into = facts.entry(how).or_insert_with(|| serde_json::json!({}));
    if let Some(o) = into.as_object_mut() {
        o.extend(knobs.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A knob is recorded once, under the kind that last took it.
    #[test]
    fn a_knob_is_chosen_fixed_or_a_default_once() {
        let mut f = serde_json::Map::new();
        merge_knobs(&mut f, facts::CHOSEN, &serde_json::json!({"tau": 1.0, "lambda": 0.3}));
        merge_knobs(&mut f, facts::FIXED, &serde_json::json!({"tau": 1.5}));
        assert_eq!(
            serde_json::Value::Object(f.clone()),
            serde_json::json!({"chosen": {"lambda": 0.3}, "fixed": {"tau": 1.5}})
        );
        merge_knobs(&mut f, facts::DEFAULTS, &serde_json::json!({"lambda": 1.0}));
        assert_eq!(
            serde_json::Value::Object(f),
            serde_json::json!({"fixed": {"tau": 1.5}, "defaults": {"lambda": 1.0}})
        );
    }

    #[test]
    fn criteria_by_hand() {
        // Two classes; class 0 has two samples, class 1 one.
        let logits = [2.0f32, 0.0, 0.0, 1.0, 1.0, 3.0];
        let labels = [0u32, 0, 1];
        let nll = |row: [f64; 2], y: usize| (row[0].exp() + row[1].exp()).ln() - row[y];
        let want = ((nll([2.0, 0.0], 0) + nll([0.0, 1.0], 0)) / 2.0 + nll([1.0, 3.0], 1)) / 2.0;
        let got = criterion_value(Criterion::BalancedNll, &logits, false, &labels, 2);
        assert!((got - want).abs() < 1e-9, "{got} vs {want}");
        // Errors: class 0 half wrong, class 1 right.
        assert_eq!(criterion_value(Criterion::BalancedError, &logits, false, &labels, 2), 0.25);
        // Probabilities.
        let probs = [0.5f32, 0.5, 0.25, 0.75];
        let got = criterion_value(Criterion::BalancedNll, &probs, true, &[0, 1], 2);
        assert!((got - (-(0.5f64.ln()) - 0.75f64.ln()) / 2.0).abs() < 1e-6);
        // A class without validation rows (an image folder's one-image class) is left out of the
        // mean, not counted as 0: three classes, class 2 absent.
        let three = [2.0f32, 0.0, 0.0, 0.0, 1.0, 0.0, 1.0, 3.0, 0.0];
        assert_eq!(criterion_value(Criterion::BalancedError, &three, false, &labels, 3), 0.25);
    }
}
