//! Dispersion of stochastic representations (poster Figure 3).
//!
//! For an input with representations `z_1..z_M` (SWAG samples) and their mean `z̄`:
//! - representation space: `(1/M) sum_m ||z_m - z̄||^2 / ||z̄||^2`;
//! - probability space: `(1/M) sum_m KL(p_m || p̄)` with `p_m = softmax(W z_m + b)` and `p̄`
//!   their mean (the ensemble's mutual information).
//!
//! Reported per input and averaged per class.

use serde::{Deserialize, Serialize};

use lt_core::formats::features::{Features, SampleKind, Split};

use crate::classification::softmax;
use crate::error::{MetricsError, Result};

/// Dispersion of every input and of every class.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Dispersion {
    /// Per input, representation space.
    pub representation: Vec<f64>,
    /// Per input, probability space.
    pub probability: Vec<f64>,
    /// Per class mean, representation space (`None`: no input of the class).
    pub class_representation: Vec<Option<f64>>,
    /// Per class mean, probability space.
    pub class_probability: Vec<Option<f64>>,
}

/// Computes the dispersion of `members` (each `N x D`, row-major) under the head `weight`
/// (`C x D`) and `bias` (`C`); `labels` group the inputs by class.
pub fn dispersion(
    members: &[&[f32]],
    dim: usize,
    weight: &[f32],
    bias: &[f32],
    labels: &[u32],
) -> Result<Dispersion> {
    let classes = bias.len();
    if let Some(&y) = labels.iter().find(|&&y| y as usize >= classes) {
        return Err(MetricsError::Invalid(format!("label {y} outside 0..{classes}")));
    }
    let (representation, probability) = per_input(members, labels.len(), dim, weight, bias)?;
    Ok(Dispersion::from_inputs(representation, probability, labels, classes))
}

/// The per-input dispersion `(representation space, probability space)` of `n` inputs whose
/// representations under each member are `members[m]` (`n x D`, row-major).
pub fn per_input(
    members: &[&[f32]],
    n: usize,
    dim: usize,
    weight: &[f32],
    bias: &[f32],
) -> Result<(Vec<f64>, Vec<f64>)> {
    let m = members.len();
    if m < 2 {
        return Err(MetricsError::Invalid(format!(
            "dispersion needs at least two stochastic representations, got {m}"
        )));
    }
    let classes = bias.len();
    if weight.len() != classes * dim {
        return Err(MetricsError::Invalid(format!(
            "head of {} values for {classes} classes x {dim} dimensions",
            weight.len()
        )));
    }
    for (k, z) in members.iter().enumerate() {
        if z.len() != n * dim {
            return Err(MetricsError::Invalid(format!(
                "member {k} has {} values, expected {n} x {dim}",
                z.len()
            )));
        }
    }
    let mut rep = Vec::with_capacity(n);
    let mut prob = Vec::with_capacity(n);
    for i in 0..n {
        let rows: Vec<&[f32]> = members.iter().map(|z| &z[i * dim..(i + 1) * dim]).collect();
        let mean: Vec<f64> =
            (0..dim).map(|d| rows.iter().map(|r| r[d] as f64).sum::<f64>() / m as f64).collect();
        let norm2: f64 = mean.iter().map(|v| v * v).sum::<f64>().max(1e-30);
        let spread: f64 = rows
            .iter()
            .map(|r| r.iter().zip(&mean).map(|(&a, b)| (a as f64 - b).powi(2)).sum::<f64>())
            .sum::<f64>()
            / m as f64;
        rep.push(spread / norm2);
        let ps: Vec<Vec<f64>> = rows
            .iter()
            .map(|r| {
                let logits: Vec<f32> = (0..classes)
                    .map(|c| {
                        bias[c]
                            + weight[c * dim..(c + 1) * dim].iter().zip(*r).map(|(w, z)| w * z).sum::<f32>()
                    })
                    .collect();
                softmax(&logits)
            })
            .collect();
        let pbar: Vec<f64> = (0..classes).map(|c| ps.iter().map(|p| p[c]).sum::<f64>() / m as f64).collect();
        let kl: f64 = ps
            .iter()
            .map(|p| {
                p.iter()
                    .zip(&pbar)
                    .filter(|(&a, _)| a > 0.0)
                    .map(|(&a, &b)| a * (a / b.max(1e-300)).ln())
                    .sum::<f64>()
            })
            .sum::<f64>()
            / m as f64;
        prob.push(kl.max(0.0));
    }
    Ok((rep, prob))
}

impl Dispersion {
    /// Per-class means of per-input dispersions (`labels` `< classes`).
    pub fn from_inputs(
        representation: Vec<f64>,
        probability: Vec<f64>,
        labels: &[u32],
        classes: usize,
    ) -> Self {
        let per_class = |v: &[f64]| -> Vec<Option<f64>> {
            let mut sum = vec![0f64; classes];
            let mut cnt = vec![0usize; classes];
            for (&x, &y) in v.iter().zip(labels) {
                sum[y as usize] += x;
                cnt[y as usize] += 1;
            }
            sum.iter().zip(&cnt).map(|(&s, &c)| (c > 0).then(|| s / c as f64)).collect()
        };
        Self {
            class_representation: per_class(&representation),
            class_probability: per_class(&probability),
            representation,
            probability,
        }
    }
}

/// Rows per chunk when streaming a features artifact.
const CHUNK_ROWS: usize = 1024;

/// The dispersion of the SWAG samples of a features artifact on `split` under the SWA head,
/// reading `CHUNK_ROWS` rows at a time (never the whole `[S, N, D]` block). `None` when the
/// artifact has fewer than two SWAG samples.
pub fn of_features(features: &Features, split: Split) -> Result<Option<Dispersion>> {
    let swag = features.swag_indices();
    if swag.len() < 2 {
        return Ok(None);
    }
    let labels = features.labels(split)?;
    let (w, b) = features.head(SampleKind::Swa)?;
    let (n, d) = (labels.len(), features.dim());
    let (mut rep, mut prob) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for start in (0..n).step_by(CHUNK_ROWS) {
        let idx: Vec<usize> = (start..(start + CHUNK_ROWS).min(n)).collect();
        let rows: Vec<Vec<f32>> =
            swag.iter().map(|&s| features.rows(split, s, &idx)).collect::<std::result::Result<_, _>>()?;
        let members: Vec<&[f32]> = rows.iter().map(|r| r.as_slice()).collect();
        let (r, p) = per_input(&members, idx.len(), d, &w, &b)?;
        rep.extend(r);
        prob.extend(p);
    }
    Ok(Some(Dispersion::from_inputs(rep, prob, &labels, features.classes())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_members_have_zero_dispersion_and_spread_grows_it() {
        let z = [1.0f32, 2.0, -1.0, 0.5];
        let w = [1.0f32, 0.0, 0.0, 1.0];
        let b = [0.0f32, 0.0];
        let d = dispersion(&[&z, &z, &z], 2, &w, &b, &[0, 1]).unwrap();
        assert!(d.representation.iter().chain(&d.probability).all(|&v| v.abs() < 1e-12));
        // Two members symmetric around the mean: ||z_m - z̄||^2 = ||delta||^2 for both.
        let a = [1.0f32, 2.0];
        let c = [3.0f32, 2.0];
        let d = dispersion(&[&a, &c], 2, &w, &b, &[1]).unwrap();
        // mean (2, 2): spread 1, ||mean||^2 = 8.
        assert!((d.representation[0] - 1.0 / 8.0).abs() < 1e-12);
        // Probability space: mean KL of each member to the average is the mutual information.
        let p = |x: f64, y: f64| {
            let (ex, ey) = (x.exp(), y.exp());
            [ex / (ex + ey), ey / (ex + ey)]
        };
        let (p1, p2) = (p(1.0, 2.0), p(3.0, 2.0));
        let pb = [(p1[0] + p2[0]) / 2.0, (p1[1] + p2[1]) / 2.0];
        let kl = |q: [f64; 2]| q[0] * (q[0] / pb[0]).ln() + q[1] * (q[1] / pb[1]).ln();
        assert!((d.probability[0] - (kl(p1) + kl(p2)) / 2.0).abs() < 1e-9);
        assert_eq!(d.class_representation[0], None);
        assert!(dispersion(&[&a], 2, &w, &b, &[1]).is_err());
    }
}
