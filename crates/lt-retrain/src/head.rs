//! A re-trained classifier that computes its own logits.

use std::collections::BTreeMap;

use candle_core::Tensor;
use lt_core::formats::head::HeadArtifact;
use lt_core::formats::RunMeta;

use crate::error::Result;
use crate::losses;
use crate::problem::{host, linear};

/// The classifier a stage-2 method produces.
#[derive(Clone, Debug)]
pub enum Head {
    /// `logits = z W^T + b` (every method but DisAlign). `scales` are LWS's learnt per-class
    /// scales, already folded into `weight` and `bias` (kept for the record).
    Linear {
        /// `[C, D]`.
        weight: Tensor,
        /// `[C]`.
        bias: Tensor,
        /// LWS's scales `[C]`.
        scales: Option<Tensor>,
    },
    /// DisAlign: the frozen stage-1 head `eta = W z + b` calibrated per sample,
    /// `s = (1 + sigma alpha) ⊙ eta + sigma beta` with `sigma = sigmoid(z v + c)`.
    DisAlign {
        /// Frozen `[C, D]`.
        weight: Tensor,
        /// Frozen `[C]`.
        bias: Tensor,
        /// `[C]`.
        alpha: Tensor,
        /// `[C]`.
        beta: Tensor,
        /// `[D]`.
        v: Tensor,
        /// `[1]`.
        c: Tensor,
    },
}

impl Head {
    /// A plain linear head.
    pub fn linear(weight: Tensor, bias: Tensor) -> Self {
        Head::Linear { weight, bias, scales: None }
    }

    /// Logits `[N, C]` of representations `z` `[N, D]`.
    pub fn logits(&self, z: &Tensor) -> Result<Tensor> {
        match self {
            Head::Linear { weight, bias, .. } => linear(z, weight, bias),
            Head::DisAlign { weight, bias, alpha, beta, v, c } => {
                losses::disalign_logits(&linear(z, weight, bias)?, z, alpha, beta, v, c)
            }
        }
    }

    /// The linear part `(W, b)` (for DisAlign, the frozen stage-1 head).
    pub fn linear_part(&self) -> (&Tensor, &Tensor) {
        match self {
            Head::Linear { weight, bias, .. } | Head::DisAlign { weight, bias, .. } => (weight, bias),
        }
    }

    /// Whether the logits are a linear function of the representation.
    pub fn is_linear(&self) -> bool {
        matches!(self, Head::Linear { .. })
    }

    /// The head as an `lt.head` artifact with `meta`.
    pub fn to_artifact(&self, meta: RunMeta) -> Result<HeadArtifact> {
        let (w, b) = self.linear_part();
        let (classes, dim) = w.dims2()?;
        let mut extras = BTreeMap::new();
        let mut extra = |name: &str, t: &Tensor| -> Result<()> {
            extras.insert(name.to_string(), (t.dims().to_vec(), host(t)?));
            Ok(())
        };
        match self {
            Head::Linear { scales: Some(s), .. } => extra("scales", s)?,
            Head::Linear { scales: None, .. } => {}
            Head::DisAlign { alpha, beta, v, c, .. } => {
                extra("alpha", alpha)?;
                extra("beta", beta)?;
                extra("v", v)?;
                extra("c", c)?;
            }
        }
        Ok(HeadArtifact { weight: host(w)?, bias: host(b)?, classes, dim, extras, meta })
    }
}
