//! Post-hoc logit adjustment (Menon et al. 2021): the stage-1 head with its bias lowered by
//! `tau log pi`; tau chosen on validation data unless fixed.

use super::{taus, Fitted, DEFAULT_TAU};
use crate::config::RetrainConfig;
use crate::error::Result;
use crate::head::Head;
use crate::problem::Problem;
use crate::select::choose;

pub(super) fn fit(p: &Problem, cfg: &RetrainConfig) -> Result<Fitted> {
    let (w0, b0) = p.stage1_head()?;
    let (f, _) = choose(p, cfg, &taus(cfg.tau, &cfg.select.tau_grid), DEFAULT_TAU, |k| {
        Ok(Fitted::new(Head::linear(w0.clone(), (&b0 - (&p.log_prior * k.tau)?)?)))
    })?;
    Ok(f)
}
