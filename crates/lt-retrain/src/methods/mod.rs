//! One module per method; each returns a [`Fitted`] head with what it chose.

mod disalign;
mod lws;
mod plain;
mod posthoc;
pub mod srepr;
mod tau_norm;

use crate::config::{MethodKind, RetrainConfig};
use crate::error::Result;
use crate::head::Head;
use crate::problem::Problem;

/// A method's result: the head, what it chose or measured, and its training curve.
#[derive(Clone, Debug)]
pub struct Fitted {
    /// The classifier.
    pub head: Head,
    /// Chosen knobs and their validation search, members used, ...
    pub facts: serde_json::Map<String, serde_json::Value>,
    /// Mean training loss of each epoch (empty for methods that do not train).
    pub epoch_losses: Vec<f64>,
}

impl Fitted {
    fn new(head: Head) -> Self {
        Self { head, facts: serde_json::Map::new(), epoch_losses: Vec::new() }
    }
}

/// Runs `cfg.method` on `p`.
pub(crate) fn run(p: &Problem, cfg: &RetrainConfig) -> Result<Fitted> {
    match cfg.method {
        MethodKind::None => plain::none(p),
        MethodKind::Crt => plain::crt(p, cfg),
        MethodKind::La => plain::la(p, cfg),
        MethodKind::BalancedSoftmax => plain::balanced_softmax(p, cfg),
        MethodKind::Lws => lws::fit(p, cfg),
        MethodKind::TauNorm => tau_norm::fit(p, cfg),
        MethodKind::LaPosthoc => posthoc::fit(p, cfg),
        MethodKind::Disalign => disalign::fit(p, cfg),
        MethodKind::Srepr => srepr::fit(p, cfg),
    }
}

/// A temperature (LA) or exponent (tau-norm) knob.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub(crate) struct Tau {
    pub tau: f64,
}

/// The candidates of a tau knob: the fixed value when given, else the grid.
pub(crate) fn taus(fixed: Option<f64>, grid: &[f64]) -> Vec<Tau> {
    fixed.map(|v| vec![v]).unwrap_or_else(|| grid.to_vec()).into_iter().map(|tau| Tau { tau }).collect()
}

/// The LA temperature when there is no validation split to choose it on.
pub(crate) const DEFAULT_TAU: Tau = Tau { tau: 1.0 };
