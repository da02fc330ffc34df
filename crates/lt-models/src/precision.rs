//! [`Precision`]: the arithmetic of a backbone's forward and backward passes.

use candle_core::DType;

/// The arithmetic of a backbone's passes ([`crate::Model::set_precision`]).
///
/// The parameters, their gradients and the optimiser stay `f32` in both: `Bf16` is mixed
/// precision, PyTorch's `autocast(dtype=torch.bfloat16)` for a ResNet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// `f32` throughout (the default, and what the golden checks hold to).
    #[default]
    F32,
    /// `bf16` activations and convolutions (filters cast from the `f32` weights at every pass,
    /// products accumulated in `f32`); batch norm normalises in `f32` with `f32` parameters and
    /// statistics, and the pooled features, the classifier head and the loss are `f32`. On CUDA
    /// it runs through cuDNN; elsewhere on candle's stock ops (correct, not fast).
    Bf16,
}

impl Precision {
    /// Every precision, in the order of [`Precision::name`]'s list.
    pub const ALL: [Precision; 2] = [Precision::F32, Precision::Bf16];

    /// The name on the command line and in reports (`f32`, `bf16`).
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        }
    }

    /// The element type of the activations and of the convolution filters.
    pub fn activation_dtype(self) -> DType {
        match self {
            Precision::F32 => DType::F32,
            Precision::Bf16 => DType::BF16,
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Precision {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL.into_iter().find(|p| p.name() == s).ok_or_else(|| {
            let names: Vec<&str> = Self::ALL.iter().map(|p| p.name()).collect();
            format!("unknown precision {s:?}; expected one of {}", names.join(", "))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_back_and_unknown_ones_are_refused() {
        for p in Precision::ALL {
            assert_eq!(p.name().parse::<Precision>(), Ok(p));
            assert_eq!(serde_json::to_value(p).unwrap(), serde_json::json!(p.name()));
        }
        let err = "fp16".parse::<Precision>().unwrap_err();
        assert!(err.contains("fp16") && err.contains("f32, bf16"), "{err}");
        assert_eq!(Precision::default(), Precision::F32);
    }
}
