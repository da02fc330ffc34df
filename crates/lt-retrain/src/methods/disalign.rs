//! DisAlign (Zhang et al. 2021), classification form: the frozen stage-1 head with a per-sample
//! calibration `s = (1 + sigma alpha) ⊙ eta + sigma beta`, `sigma = sigmoid(z v + c)`; only
//! `alpha` (init 1), `beta` (init 0), `v`, `c` train, with the generalised re-weighted CE
//! (`w_c ∝ (1/pi_c)^rho`).

use candle_core::{DType, Tensor, Var};
use lt_core::rng::streams;
use lt_core::sampler::SamplerKind;
use lt_core::Rng;

use super::Fitted;
use crate::config::RetrainConfig;
use crate::error::Result;
use crate::head::Head;
use crate::losses;
use crate::problem::{fit as train, linear, torch_linear_init, Problem};

pub(super) fn fit(p: &Problem, cfg: &RetrainConfig) -> Result<Fitted> {
    let (w0, b0) = p.stage1_head()?;
    let dev = &p.device;
    let cw = Tensor::from_vec(losses::disalign_weights(p.source.class_counts(), cfg.rho), p.classes, dev)?;
    let alpha = Var::from_tensor(&Tensor::ones(p.classes, DType::F32, dev)?)?;
    let beta = Var::from_tensor(&Tensor::zeros(p.classes, DType::F32, dev)?)?;
    // The confidence function `sigmoid(z v + c)` is a linear layer of D inputs and one output.
    let (v, c) = {
        let (vv, cv) = torch_linear_init(&mut Rng::stream(cfg.seed, &[streams::DISALIGN_INIT]), 1, p.dim);
        (
            Var::from_tensor(&Tensor::from_vec(vv, p.dim, dev)?)?,
            Var::from_tensor(&Tensor::from_vec(cv, 1, dev)?)?,
        )
    };
    let params = vec![
        ("alpha".into(), alpha.clone()),
        ("beta".into(), beta.clone()),
        ("c".into(), c.clone()),
        ("v".into(), v.clone()),
    ];
    let epoch_losses = train(&params, cfg, &p.labels, p.classes, SamplerKind::Instance, |idx| {
        let z = p.rows(p.index, idx)?;
        let eta = linear(&z, &w0, &b0)?;
        let s = losses::disalign_logits(
            &eta,
            &z,
            alpha.as_tensor(),
            beta.as_tensor(),
            v.as_tensor(),
            c.as_tensor(),
        )?;
        losses::weighted_cross_entropy(&s, &p.batch_labels(idx)?, &cw)
    })?;
    let head = Head::DisAlign {
        weight: w0,
        bias: b0,
        alpha: alpha.as_detached_tensor(),
        beta: beta.as_detached_tensor(),
        v: v.as_detached_tensor(),
        c: c.as_detached_tensor(),
    };
    let mut f = Fitted::new(head);
    f.epoch_losses = epoch_losses;
    f.facts.insert("linear".into(), false.into());
    Ok(f)
}
