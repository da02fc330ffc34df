//! The stage-1 head as it is, and the methods that train a fresh linear head on one backbone:
//! cRT (cross-entropy, class-balanced sampling), LA (loss form, `CE(eta + tau log pi)`) and
//! Balanced Softmax (`CE(eta + log n)`), both instance-balanced.

use candle_core::Tensor;
use lt_core::sampler::SamplerKind;

use super::{taus, Fitted, DEFAULT_TAU};
use crate::config::RetrainConfig;
use crate::error::Result;
use crate::head::Head;
use crate::losses;
use crate::problem::{fit, init_head, linear, Problem, CLASS_BALANCED};
use crate::select::choose;

/// The stage-1 head.
pub(super) fn none(p: &Problem) -> Result<Fitted> {
    let (w, b) = p.stage1_head()?;
    Ok(Fitted::new(Head::linear(w, b)))
}

/// A fresh head trained with `loss(logits, labels)` under `sampler`.
fn fresh(
    p: &Problem,
    cfg: &RetrainConfig,
    sampler: SamplerKind,
    loss: impl Fn(&Tensor, &Tensor) -> Result<Tensor>,
) -> Result<Fitted> {
    let (w, b) = init_head(p.classes, p.dim, cfg.seed, &p.device)?;
    let params = vec![("bias".to_string(), b.clone()), ("weight".to_string(), w.clone())];
    let epoch_losses = fit(&params, cfg, &p.labels, p.classes, sampler, |idx| {
        let logits = linear(&p.rows(p.index, idx)?, w.as_tensor(), b.as_tensor())?;
        loss(&logits, &p.batch_labels(idx)?)
    })?;
    let mut f = Fitted::new(Head::linear(w.as_detached_tensor(), b.as_detached_tensor()));
    f.epoch_losses = epoch_losses;
    Ok(f)
}

/// cRT.
pub(super) fn crt(p: &Problem, cfg: &RetrainConfig) -> Result<Fitted> {
    fresh(p, cfg, CLASS_BALANCED, losses::cross_entropy)
}

/// LA, loss form, with tau chosen on validation data unless fixed.
pub(super) fn la(p: &Problem, cfg: &RetrainConfig) -> Result<Fitted> {
    let (f, _) = choose(p, cfg, &taus(cfg.tau, &cfg.select.tau_grid), DEFAULT_TAU, |k| {
        let tau = k.tau;
        fresh(p, cfg, SamplerKind::Instance, |l, y| losses::logit_adjusted(l, y, &p.log_prior, tau))
    })?;
    Ok(f)
}

/// Balanced Softmax.
pub(super) fn balanced_softmax(p: &Problem, cfg: &RetrainConfig) -> Result<Fitted> {
    fresh(p, cfg, SamplerKind::Instance, |l, y| losses::balanced_softmax(l, y, &p.log_counts))
}
