//! tau-norm (Kang et al. 2020): `w_c / ||w_c||^tau` of the stage-1 head, no bias; tau chosen on
//! validation data from `tau_norm_grid` (0, 0.1, ..., 2 by default) unless fixed.

use candle_core::{DType, Tensor};

use super::{taus, Fitted, Tau};
use crate::config::RetrainConfig;
use crate::error::Result;
use crate::head::Head;
use crate::problem::Problem;
use crate::select::choose;

/// The exponent used when there is no validation split.
const DEFAULT_TAU_NORM: Tau = Tau { tau: 1.0 };

pub(super) fn fit(p: &Problem, cfg: &RetrainConfig) -> Result<Fitted> {
    let (w0, _) = p.stage1_head()?;
    let norms = w0.sqr()?.sum(1)?.sqrt()?.clamp(1e-12, f64::MAX)?; // [C]
    let zero = Tensor::zeros(p.classes, DType::F32, &p.device)?;
    let (f, _) = choose(p, cfg, &taus(cfg.tau, &cfg.select.tau_norm_grid), DEFAULT_TAU_NORM, |k| {
        let w = w0.broadcast_div(&norms.powf(k.tau)?.unsqueeze(1)?)?;
        Ok(Fitted::new(Head::linear(w, zero.clone())))
    })?;
    Ok(f)
}
