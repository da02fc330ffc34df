//! The closed vocabularies of stage 2 (methods, backbones, SRepr's options, criteria): each a
//! `Copy` enum with its names declared once, `ALL`, `Display`, `FromStr`, serde and (feature
//! `clap`) `clap::ValueEnum`.

use serde::{Deserialize, Serialize};

use crate::error::{Result, RetrainError};

/// Declares a closed vocabulary: a `Copy` enum with kebab-case names, `ALL`, `name()`,
/// `Display`, `FromStr` (the error lists the names), serde and, with the `clap` feature,
/// `clap::ValueEnum`.
macro_rules! vocabulary {
    ($(#[$m:meta])* pub enum $name:ident { $($(#[$vm:meta])* $variant:ident => $text:literal,)+ }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
        pub enum $name {
            $($(#[$vm])* #[serde(rename = $text)] #[cfg_attr(feature = "clap", value(name = $text))] $variant,)+
        }
        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];
            /// The value's name.
            pub fn name(self) -> &'static str {
                match self { $($name::$variant => $text,)+ }
            }
        }
        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.name())
            }
        }
        impl std::str::FromStr for $name {
            type Err = RetrainError;
            fn from_str(s: &str) -> Result<Self> {
                Self::ALL.iter().copied().find(|v| v.name() == s).ok_or_else(|| {
                    RetrainError::UnknownMethod(format!(
                        "unknown {} {s:?}; expected one of {}",
                        stringify!($name),
                        Self::ALL.iter().map(|v| v.name()).collect::<Vec<_>>().join(", ")
                    ))
                })
            }
        }
    };
}

vocabulary! {
    /// A stage-2 method.
    pub enum MethodKind {
        /// The stage-1 classifier as trained.
        None => "none",
        /// Classifier re-training: re-initialised head, cross-entropy, class-balanced sampling.
        Crt => "crt",
        /// Learnable weight scaling: per-class scales on the frozen head, class-balanced sampling.
        Lws => "lws",
        /// `w_c / ||w_c||^tau`, no bias.
        TauNorm => "tau-norm",
        /// Logit adjustment, loss form: a re-initialised head trained with `CE(eta + tau log pi)`.
        La => "la",
        /// Logit adjustment, post-hoc: the stage-1 head's `eta - tau log pi`.
        LaPosthoc => "la-posthoc",
        /// Balanced Softmax: a re-initialised head trained with `CE(eta + log n)` (LA at tau = 1).
        BalancedSoftmax => "balanced-softmax",
        /// DisAlign: adaptive calibration of the frozen head, generalised re-weighting.
        Disalign => "disalign",
        /// SRepr: re-training on stochastic representations with self-distillation.
        Srepr => "srepr",
    }
}

vocabulary! {
    /// The backbone whose representations (and stage-1 head) a method uses.
    pub enum Backbone {
        /// The SGD backbone.
        Sgd => "sgd",
        /// The SWA backbone.
        Swa => "swa",
    }
}

impl Backbone {
    /// The backbone's entry on a features artifact's `S` axis.
    pub fn sample_kind(self) -> lt_core::formats::features::SampleKind {
        match self {
            Backbone::Sgd => lt_core::formats::features::SampleKind::Sgd,
            Backbone::Swa => lt_core::formats::features::SampleKind::Swa,
        }
    }
}

vocabulary! {
    /// The balancing loss of SRepr's members (and of its student when asked).
    pub enum Balance {
        /// Logit adjustment, loss form (the paper's choice).
        La => "la",
        /// Balanced Softmax.
        BalancedSoftmax => "balanced-softmax",
        /// Plain cross-entropy with instance-balanced sampling.
        Ce => "ce",
        /// Cross-entropy with class-balanced sampling (cRT-style).
        Crt => "crt",
    }
}

vocabulary! {
    /// Direction of the distillation divergence.
    pub enum KlDirection {
        /// `KL(p_T || p_S)`.
        Forward => "forward",
        /// `KL(p_S || p_T)`.
        Reverse => "reverse",
    }
}

vocabulary! {
    /// Where SRepr's teacher comes from.
    pub enum Teacher {
        /// The head being trained, on the SWAG representations, with a stop-gradient (one run).
        Online => "online",
        /// A separately trained stochastic-representation head (ablation (b)), frozen; the student
        /// head is trained afterwards against its SWAG ensemble.
        Frozen => "frozen",
    }
}

vocabulary! {
    /// How SRepr combines the balancing loss and the distillation term.
    pub enum Objective {
        /// `balance + lambda T^2 KL`.
        Additive => "additive",
        /// `(1 - lambda) balance + lambda T^2 KL`, `lambda` in `[0, 1]`.
        Convex => "convex",
    }
}

vocabulary! {
    /// Per-sample weighting of the distillation term by the teacher's uncertainty (weights
    /// normalised to mean 1 over the batch).
    pub enum Weighting {
        /// Every sample weighs 1.
        None => "none",
        /// Weight ∝ the entropy of the teacher's mean prediction (total uncertainty).
        Entropy => "entropy",
        /// Weight ∝ the members' disagreement: the mutual information between prediction and
        /// member (the ensemble's epistemic uncertainty).
        Disagreement => "disagreement",
    }
}

vocabulary! {
    /// Which logits the distillation compares.
    pub enum KdLogits {
        /// The test-time (unadjusted) logits `eta`.
        Balanced => "balanced",
        /// The prior-adjusted logits `eta + tau log pi` that the balancing loss trains.
        Adjusted => "adjusted",
    }
}

vocabulary! {
    /// What the predictions artifact holds.
    pub enum Predict {
        /// The head on the chosen backbone's representation (one backbone pass at test time).
        Single => "single",
        /// The average of the head's softmax over the SWAG members (Bayesian model averaging,
        /// `M` backbone passes at test time).
        Ensemble => "ensemble",
    }
}

vocabulary! {
    /// The validation criterion that chooses knobs (lower is better).
    pub enum Criterion {
        /// Balanced NLL: the mean over classes of each class's mean negative log-likelihood. A
        /// proper scoring rule, so it rewards accuracy and calibration together, and on a
        /// validation set of a few thousand images it is far less noisy than accuracy.
        BalancedNll => "balanced-nll",
        /// One minus balanced accuracy (the mean of per-class accuracies).
        BalancedError => "balanced-error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vocabularies_round_trip_and_list_their_names() {
        for m in MethodKind::ALL {
            assert_eq!(m.name().parse::<MethodKind>().unwrap(), *m);
            assert_eq!(serde_json::to_value(m).unwrap(), m.name());
        }
        let err = "focal".parse::<MethodKind>().unwrap_err().to_string();
        assert!(err.contains("unknown MethodKind \"focal\"") && err.contains("tau-norm"), "{err}");
    }
}
