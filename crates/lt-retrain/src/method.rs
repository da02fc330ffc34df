//! The re-training methods and their settings.

use serde::{Deserialize, Serialize};

use crate::error::{Result, RetrainError};
use crate::losses::KlDirection;

/// The balancing loss of SRepr's members (and of its student when asked).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Balance {
    /// Logit adjustment, loss form (the paper's choice).
    La,
    /// Balanced Softmax.
    BalancedSoftmax,
    /// Plain cross-entropy with instance-balanced sampling.
    Ce,
    /// Cross-entropy with class-balanced sampling (cRT-style).
    Crt,
}

impl std::str::FromStr for Balance {
    type Err = RetrainError;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "la" => Balance::La,
            "balanced-softmax" | "bs" => Balance::BalancedSoftmax,
            "ce" => Balance::Ce,
            "crt" => Balance::Crt,
            other => {
                return Err(RetrainError::UnknownMethod(format!(
                    "unknown balancing loss {other:?}; expected la, balanced-softmax, ce or crt"
                )))
            }
        })
    }
}

/// SRepr's knobs (reference sheet section 3).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SreprConfig {
    /// Balancing loss on each stochastic representation.
    pub balance: Balance,
    /// LA temperature `tau` of the balancing loss.
    pub tau: f64,
    /// SWAG members used (`None`: every sample in the features artifact).
    pub members: Option<usize>,
    /// Weight `lambda` of the self-distillation term (0: ablation (b), no distillation).
    pub lambda: f64,
    /// Distillation temperature `T`.
    pub temperature: f64,
    /// Direction of the KL divergence.
    pub kl: KlDirection,
    /// Average the cross-entropy over teacher members instead of the KL to their mean.
    pub per_member_ce: bool,
    /// Add the balancing loss on the student (SWA) representation too.
    pub la_on_student: bool,
}

impl Default for SreprConfig {
    fn default() -> Self {
        Self {
            balance: Balance::La,
            tau: 1.0,
            members: None,
            lambda: 1.0,
            temperature: 1.0,
            kl: KlDirection::Forward,
            per_member_ce: false,
            la_on_student: false,
        }
    }
}

/// A stage-2 method.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "kebab-case")]
pub enum Method {
    /// The stage-1 classifier as trained.
    None,
    /// Classifier re-training: re-initialised head, cross-entropy, class-balanced sampling.
    Crt,
    /// Learnable weight scaling: per-class scales on the frozen head, class-balanced sampling.
    Lws,
    /// `w_c / ||w_c||^tau`, no bias; `tau: None` sweeps 0, 0.1, ..., 2 on validation data.
    TauNorm {
        /// Fixed tau, or `None` to sweep.
        tau: Option<f64>,
    },
    /// Logit adjustment, loss form: re-initialised head trained with `CE(eta + tau log pi)`.
    La {
        /// Temperature.
        tau: f64,
    },
    /// Logit adjustment, post-hoc: the stage-1 head's `eta - tau log pi`.
    LaPosthoc {
        /// Temperature.
        tau: f64,
    },
    /// Balanced Softmax: re-initialised head trained with `CE(eta + log n)`.
    BalancedSoftmax,
    /// DisAlign: adaptive calibration of the frozen head, generalised re-weighting with `rho`.
    Disalign {
        /// Re-weighting exponent.
        rho: f64,
    },
    /// SRepr: re-training on stochastic representations with self-distillation.
    Srepr(SreprConfig),
}

impl Method {
    /// Parses a method name with default settings: none, crt, lws, tau-norm, la, la-posthoc,
    /// balanced-softmax, disalign, srepr.
    pub fn parse(name: &str) -> Result<Self> {
        Ok(match name {
            "none" | "baseline" => Method::None,
            "crt" => Method::Crt,
            "lws" => Method::Lws,
            "tau-norm" => Method::TauNorm { tau: None },
            "la" => Method::La { tau: 1.0 },
            "la-posthoc" => Method::LaPosthoc { tau: 1.0 },
            "balanced-softmax" | "bs" => Method::BalancedSoftmax,
            "disalign" => Method::Disalign { rho: 1.2 },
            "srepr" => Method::Srepr(SreprConfig::default()),
            other => {
                return Err(RetrainError::UnknownMethod(format!(
                    "unknown method {other:?}; expected none, crt, lws, tau-norm, la, la-posthoc, balanced-softmax, disalign or srepr"
                )))
            }
        })
    }

    /// The method's name.
    pub fn name(&self) -> &'static str {
        match self {
            Method::None => "none",
            Method::Crt => "crt",
            Method::Lws => "lws",
            Method::TauNorm { .. } => "tau-norm",
            Method::La { .. } => "la",
            Method::LaPosthoc { .. } => "la-posthoc",
            Method::BalancedSoftmax => "balanced-softmax",
            Method::Disalign { .. } => "disalign",
            Method::Srepr(_) => "srepr",
        }
    }

    /// A label for reports (`SRepr`, `+ LA`, ...).
    pub fn label(&self) -> String {
        match self {
            Method::None => "-".into(),
            Method::Crt => "cRT".into(),
            Method::Lws => "LWS".into(),
            Method::TauNorm { .. } => "tau-norm".into(),
            Method::La { .. } => "LA".into(),
            Method::LaPosthoc { .. } => "LA (post-hoc)".into(),
            Method::BalancedSoftmax => "Balanced Softmax".into(),
            Method::Disalign { .. } => "DisAlign".into(),
            Method::Srepr(c) if c.lambda == 0.0 => "+ stochastic repr. (b)".into(),
            Method::Srepr(_) => "SRepr".into(),
        }
    }
}

/// Everything that determines one stage-2 run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RetrainConfig {
    /// Backbone whose representations (and stage-1 head) are used: `sgd` or `swa`.
    pub backbone: String,
    /// The method.
    pub method: Method,
    /// Epochs of `floor(N / batch)` steps.
    pub epochs: usize,
    /// Batch size.
    pub batch_size: usize,
    /// Learning rate (cosine to 0 over the run).
    pub lr: f64,
    /// Momentum.
    pub momentum: f64,
    /// Weight decay.
    pub weight_decay: f64,
    /// Seed (initialisation, sampling).
    pub seed: u64,
}

impl RetrainConfig {
    /// Defaults: the SWA backbone, 30 epochs, batch 128, lr 0.1, momentum 0.9, wd 5e-4.
    pub fn new(method: Method) -> Self {
        Self {
            backbone: "swa".into(),
            method,
            epochs: 30,
            batch_size: 128,
            lr: 0.1,
            momentum: 0.9,
            weight_decay: 5e-4,
            seed: 0,
        }
    }

    /// Checks the settings.
    pub fn validate(&self) -> Result<()> {
        if !matches!(self.backbone.as_str(), "sgd" | "swa") {
            return Err(RetrainError::Invalid(format!(
                "backbone must be sgd or swa, got {:?}",
                self.backbone
            )));
        }
        if self.epochs == 0 || self.batch_size == 0 || self.lr.is_nan() || self.lr <= 0.0 {
            return Err(RetrainError::Invalid("epochs, batch size and lr must be positive".into()));
        }
        if let Method::Srepr(c) = &self.method {
            if self.backbone != "swa" {
                return Err(RetrainError::Invalid("SRepr distils SWAG into SWA: use --backbone swa".into()));
            }
            if c.temperature <= 0.0 || c.lambda < 0.0 {
                return Err(RetrainError::Invalid("SRepr needs temperature > 0 and lambda >= 0".into()));
            }
        }
        Ok(())
    }

    /// A short identifier (directory name): backbone, method and non-default knobs.
    pub fn id(&self) -> String {
        let mut id = format!("{}-{}", self.backbone, self.method.name());
        if let Method::Srepr(c) = &self.method {
            let d = SreprConfig::default();
            if c.lambda != d.lambda {
                id.push_str(&format!("-lambda{}", c.lambda));
            }
            if c.balance != d.balance {
                id.push_str(&format!(
                    "-{}",
                    serde_json::to_value(c.balance).expect("json").as_str().unwrap_or("balance")
                ));
            }
            if c.per_member_ce {
                id.push_str("-permember");
            }
            if c.kl != d.kl {
                id.push_str("-reverse");
            }
            if c.la_on_student {
                id.push_str("-lastudent");
            }
            if c.temperature != d.temperature {
                id.push_str(&format!("-t{}", c.temperature));
            }
            if let Some(m) = c.members {
                id.push_str(&format!("-m{m}"));
            }
        }
        id
    }
}
