//! LWS (Kang et al. 2020): per-class scales `s` (initialised to 1) on the frozen stage-1 head,
//! `logits = s ⊙ (W z + b)`, cross-entropy under class-balanced sampling.

use candle_core::{DType, Tensor, Var};

use super::Fitted;
use crate::config::RetrainConfig;
use crate::error::Result;
use crate::head::Head;
use crate::losses;
use crate::problem::{fit as train, linear, Problem, CLASS_BALANCED};

pub(super) fn fit(p: &Problem, cfg: &RetrainConfig) -> Result<Fitted> {
    let (w0, b0) = p.stage1_head()?;
    let s = Var::from_tensor(&Tensor::ones(p.classes, DType::F32, &p.device)?)?;
    let params = vec![("scales".to_string(), s.clone())];
    let epoch_losses = train(&params, cfg, &p.labels, p.classes, CLASS_BALANCED, |idx| {
        let logits = linear(&p.rows(p.index, idx)?, &w0, &b0)?.broadcast_mul(s.as_tensor())?;
        losses::cross_entropy(&logits, &p.batch_labels(idx)?)
    })?;
    let sv = s.as_detached_tensor();
    let head =
        Head::Linear { weight: w0.broadcast_mul(&sv.unsqueeze(1)?)?, bias: (&b0 * &sv)?, scales: Some(sv) };
    let mut f = Fitted::new(head);
    f.epoch_losses = epoch_losses;
    Ok(f)
}
