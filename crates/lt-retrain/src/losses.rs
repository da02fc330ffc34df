//! The losses of the re-training methods, on candle tensors (differentiable).
//!
//! Notation: `eta = W z + b` the logits, `pi_c = n_c / N` the training class prior.

use candle_core::{Tensor, D};
use candle_nn::ops::log_softmax;

use crate::config::{KlDirection, Weighting};
use crate::error::{Result, RetrainError};

/// Mean cross-entropy of `logits` `[B, C]` against `labels` `[B]` (u32).
pub fn cross_entropy(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    Ok(candle_nn::loss::cross_entropy(logits, labels)?)
}

/// Per-sample cross-entropy `[B]`.
pub fn cross_entropy_per_sample(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let lp = log_softmax(logits, D::Minus1)?;
    Ok(lp.gather(&labels.unsqueeze(1)?, 1)?.squeeze(1)?.neg()?)
}

/// Logit adjustment (Menon et al. 2021), loss form: `CE(eta + tau * log pi, y)`.
pub fn logit_adjusted(logits: &Tensor, labels: &Tensor, log_prior: &Tensor, tau: f64) -> Result<Tensor> {
    cross_entropy(&logits.broadcast_add(&(log_prior * tau)?)?, labels)
}

/// Balanced Softmax (Ren et al. 2020): `CE(eta + log n, y)`.
pub fn balanced_softmax(logits: &Tensor, labels: &Tensor, log_counts: &Tensor) -> Result<Tensor> {
    cross_entropy(&logits.broadcast_add(log_counts)?, labels)
}

/// DisAlign's generalised re-weighting: `w_c ∝ (1 / pi_c)^rho`, normalised to sum to `C`.
pub fn disalign_weights(counts: &[usize], rho: f64) -> Vec<f32> {
    let n: f64 = counts.iter().sum::<usize>() as f64;
    let raw: Vec<f64> = counts.iter().map(|&c| if c == 0 { 0.0 } else { (n / c as f64).powf(rho) }).collect();
    let s: f64 = raw.iter().sum();
    raw.iter().map(|w| (w / s * counts.len() as f64) as f32).collect()
}

/// Re-weighted cross-entropy `sum_i w_{y_i} l_i / sum_i w_{y_i}`.
pub fn weighted_cross_entropy(logits: &Tensor, labels: &Tensor, class_weights: &Tensor) -> Result<Tensor> {
    let l = cross_entropy_per_sample(logits, labels)?;
    let w = class_weights.gather(labels, 0)?;
    Ok((l * &w)?.sum_all()?.div(&w.sum_all()?)?)
}

/// DisAlign's adjusted logits: `s = (1 + sigma * alpha) ⊙ eta + sigma * beta` with
/// `sigma = sigmoid(z v + c)` per sample.
pub fn disalign_logits(
    eta: &Tensor,
    z: &Tensor,
    alpha: &Tensor,
    beta: &Tensor,
    v: &Tensor,
    c: &Tensor,
) -> Result<Tensor> {
    let g = z.matmul(&v.unsqueeze(1)?)?.broadcast_add(c)?; // [B, 1]
    let sigma = candle_nn::ops::sigmoid(&g)?;
    let scale = (sigma.broadcast_mul(&alpha.unsqueeze(0)?)? + 1.0)?;
    Ok((scale * eta)?.broadcast_add(&sigma.broadcast_mul(&beta.unsqueeze(0)?)?)?)
}

/// The self-distillation term `T^2 * mean_i w_i KL(stopgrad(p_T,i) || p_S,i)` (or the reverse
/// KL) with `p_T = mean_m softmax(teacher_m / T)` and `p_S = softmax(student / T)`.
///
/// The weights `w_i` are 1 ([`Weighting::None`]) or proportional to the teacher's uncertainty on
/// sample `i`, normalised to mean 1 over the batch: the entropy `H(p_T)` ([`Weighting::Entropy`])
/// or the members' disagreement, the mutual information `H(p_T) - mean_m H(p_m)`
/// ([`Weighting::Disagreement`]).
///
/// (The mean over members of `CE(p_m, p_S)` equals `CE(p_T, p_S) = KL(p_T || p_S) + H(p_T)`, whose
/// gradient is that of the KL: averaging the loss over the members cannot change a result, so
/// there is no separate option for it.)
pub fn distillation(
    teacher_logits: &[Tensor],
    student: &Tensor,
    temperature: f64,
    direction: KlDirection,
    weighting: Weighting,
) -> Result<Tensor> {
    if teacher_logits.is_empty() {
        return Err(RetrainError::Invalid("the distillation needs at least one teacher member".into()));
    }
    distillation_stacked(&Tensor::stack(teacher_logits, 0)?, student, temperature, direction, weighting)
}

/// [`distillation`] with the teacher members stacked: `teacher` `[M, B, C]`, `student` `[B, C]`.
pub fn distillation_stacked(
    teacher: &Tensor,
    student: &Tensor,
    temperature: f64,
    direction: KlDirection,
    weighting: Weighting,
) -> Result<Tensor> {
    let t = temperature;
    let log_ps = log_softmax(&(student / t)?, D::Minus1)?;
    let members = candle_nn::ops::softmax(&(teacher / t)?, D::Minus1)?.detach(); // [M, B, C]
    let b = student.dim(0)? as f64;
    let pt = members.mean(0)?;
    let log_pt = pt.clamp(1e-12, 1.0)?.log()?;
    let pointwise = match direction {
        KlDirection::Forward => (&pt * (&log_pt - &log_ps)?)?,
        KlDirection::Reverse => (log_ps.exp()? * (&log_ps - &log_pt)?)?,
    };
    let loss = match weighting {
        Weighting::None => (pointwise.sum_all()? / b)?,
        Weighting::Entropy | Weighting::Disagreement => {
            let entropy = |p: &Tensor| -> Result<Tensor> {
                Ok((p * p.clamp(1e-12, 1.0)?.log()?)?.sum(D::Minus1)?.neg()?)
            };
            let mut u = entropy(&pt)?;
            if weighting == Weighting::Disagreement {
                u = (u - entropy(&members)?.mean(0)?)?.relu()?;
            }
            let eps = 1e-8;
            // (u + eps) / (mean u + eps), kept on the device: times the f32 reciprocal, which
            // is the reciprocal rounded once, as a host division in f64 rounded to f32 was.
            let scale = (u.mean_all()? + eps)?.recip()?;
            let w = (&u + eps)?.broadcast_mul(&scale)?.detach();
            ((pointwise.sum(D::Minus1)? * w)?.sum_all()? / b)?
        }
    };
    Ok((loss * (t * t))?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    fn t(v: &[f32], shape: &[usize]) -> Tensor {
        Tensor::from_slice(v, shape, &Device::Cpu).unwrap()
    }

    fn scalar(x: &Tensor) -> f64 {
        x.to_dtype(DType::F64).unwrap().to_vec0::<f64>().unwrap()
    }

    #[test]
    fn losses_by_hand() {
        let logits = t(&[1.0, 2.0, 0.5, -1.0, 0.0, 1.0], &[2, 3]);
        let y = Tensor::new(&[1u32, 2], &Device::Cpu).unwrap();
        let lse = |r: [f64; 3]| r.iter().map(|v| v.exp()).sum::<f64>().ln();
        let ce = ((lse([1.0, 2.0, 0.5]) - 2.0) + (lse([-1.0, 0.0, 1.0]) - 1.0)) / 2.0;
        assert!((scalar(&cross_entropy(&logits, &y).unwrap()) - ce).abs() < 1e-6);
        // LA with prior (0.5, 0.3, 0.2), tau 1: adds log prior to each logit.
        let prior = [0.5f64, 0.3, 0.2];
        let lp = t(&prior.map(|p| (p as f32).ln()), &[3]);
        let adj = |r: [f64; 3]| [r[0] + prior[0].ln(), r[1] + prior[1].ln(), r[2] + prior[2].ln()];
        let a0 = adj([1.0, 2.0, 0.5]);
        let a1 = adj([-1.0, 0.0, 1.0]);
        let la = ((lse(a0) - a0[1]) + (lse(a1) - a1[2])) / 2.0;
        assert!((scalar(&logit_adjusted(&logits, &y, &lp, 1.0).unwrap()) - la).abs() < 1e-5);
        // Balanced softmax with counts (50, 30, 20) is LA with tau 1 (log N cancels).
        let lc = t(&[50f32.ln(), 30f32.ln(), 20f32.ln()], &[3]);
        assert!((scalar(&balanced_softmax(&logits, &y, &lc).unwrap()) - la).abs() < 1e-5);
        // DisAlign weights: (1/pi)^rho normalised to sum C.
        let w = disalign_weights(&[50, 30, 20], 1.0);
        let raw = [100.0 / 50.0, 100.0 / 30.0, 100.0 / 20.0];
        let s: f64 = raw.iter().sum();
        for (a, r) in w.iter().zip(raw) {
            assert!((*a as f64 - r / s * 3.0).abs() < 1e-6);
        }
        // Weighted CE: per-sample losses weighted by their class weights.
        let cw = t(&w, &[3]);
        let l0 = lse([1.0, 2.0, 0.5]) - 2.0;
        let l1 = lse([-1.0, 0.0, 1.0]) - 1.0;
        let want = (w[1] as f64 * l0 + w[2] as f64 * l1) / (w[1] + w[2]) as f64;
        assert!((scalar(&weighted_cross_entropy(&logits, &y, &cw).unwrap()) - want).abs() < 1e-5);
    }

    #[test]
    fn disalign_logits_by_hand() {
        let eta = t(&[1.0, -2.0], &[1, 2]);
        let z = t(&[0.5, 1.0, -1.0], &[1, 3]);
        let v = t(&[1.0, 0.0, 1.0], &[3]);
        let c = t(&[0.25], &[1]);
        let alpha = t(&[2.0, 0.5], &[2]);
        let beta = t(&[0.1, -0.3], &[2]);
        let s = disalign_logits(&eta, &z, &alpha, &beta, &v, &c)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let sig = 1.0 / (1.0 + (-(0.5 - 1.0 + 0.25f64)).exp());
        let want = [(1.0 + sig * 2.0) * 1.0 + sig * 0.1, (1.0 + sig * 0.5) * -2.0 + sig * -0.3];
        for (a, b) in s.iter().zip(want) {
            assert!((*a as f64 - b).abs() < 1e-6);
        }
    }

    #[test]
    fn distillation_by_hand() {
        let m1 = t(&[1.0, 0.0], &[1, 2]);
        let m2 = t(&[0.0, 1.0], &[1, 2]);
        let st = t(&[2.0, 0.0], &[1, 2]);
        let sm = |a: f64, b: f64| {
            let (ea, eb) = (a.exp(), b.exp());
            [ea / (ea + eb), eb / (ea + eb)]
        };
        let (p1, p2, ps) = (sm(1.0, 0.0), sm(0.0, 1.0), sm(2.0, 0.0));
        let pt = [(p1[0] + p2[0]) / 2.0, (p1[1] + p2[1]) / 2.0];
        let kl = |p: [f64; 2], q: [f64; 2]| p[0] * (p[0] / q[0]).ln() + p[1] * (p[1] / q[1]).ln();
        let d = |members: &[Tensor], temp: f64, dir: KlDirection, w: Weighting| {
            scalar(&distillation(members, &st, temp, dir, w).unwrap())
        };
        let both = [m1.clone(), m2.clone()];
        let fwd = d(&both, 1.0, KlDirection::Forward, Weighting::None);
        assert!((fwd - kl(pt, ps)).abs() < 1e-6, "{fwd}");
        let rev = d(&both, 1.0, KlDirection::Reverse, Weighting::None);
        assert!((rev - kl(ps, pt)).abs() < 1e-6, "{rev}");
        // Temperature: T^2 * KL at softened distributions.
        let (q1, q2, qs) = (sm(0.5, 0.0), sm(0.0, 0.5), sm(1.0, 0.0));
        let qt = [(q1[0] + q2[0]) / 2.0, (q1[1] + q2[1]) / 2.0];
        let t2 = d(&both, 2.0, KlDirection::Forward, Weighting::None);
        assert!((t2 - 4.0 * kl(qt, qs)).abs() < 1e-6);
        // One sample: the weights normalise to 1 whatever the uncertainty.
        for w in [Weighting::Entropy, Weighting::Disagreement] {
            assert!((d(&both, 1.0, KlDirection::Forward, w) - fwd).abs() < 1e-5, "{w}");
        }
        assert!(distillation(&[], &st, 1.0, KlDirection::Forward, Weighting::None).is_err());
    }

    #[test]
    fn uncertainty_weights_favour_the_uncertain_sample() {
        // Sample 0: members agree and are confident; sample 1: members disagree.
        let m1 = t(&[4.0, 0.0, 3.0, 0.0], &[2, 2]);
        let m2 = t(&[4.0, 0.0, 0.0, 3.0], &[2, 2]);
        let st = t(&[0.0, 0.0, 0.0, 0.0], &[2, 2]);
        let sm = |a: f64, b: f64| {
            let (ea, eb) = (a.exp(), b.exp());
            [ea / (ea + eb), eb / (ea + eb)]
        };
        let h = |p: [f64; 2]| -(p[0] * p[0].ln() + p[1] * p[1].ln());
        let kl_u = |p: [f64; 2]| p[0] * (2.0 * p[0]).ln() + p[1] * (2.0 * p[1]).ln();
        let (a, b1, b2) = (sm(4.0, 0.0), sm(3.0, 0.0), sm(0.0, 3.0));
        let pt1 = [(b1[0] + b2[0]) / 2.0, (b1[1] + b2[1]) / 2.0];
        let (k0, k1) = (kl_u(a), kl_u(pt1));
        let members = [m1, m2];
        let d = |w| scalar(&distillation(&members, &st, 1.0, KlDirection::Forward, w).unwrap());
        assert!((d(Weighting::None) - (k0 + k1) / 2.0).abs() < 1e-6);
        let (u0, u1) = (h(a), h(pt1));
        let want = (u0 * k0 + u1 * k1) / (u0 + u1);
        assert!((d(Weighting::Entropy) - want).abs() < 1e-5, "{} vs {want}", d(Weighting::Entropy));
        let (v0, v1) = (0.0f64.max(h(a) - h(a)), h(pt1) - (h(b1) + h(b2)) / 2.0);
        let want = (v0 * k0 + v1 * k1) / (v0 + v1);
        assert!((d(Weighting::Disagreement) - want).abs() < 1e-5);
    }
}
