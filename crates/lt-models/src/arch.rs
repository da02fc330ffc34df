//! Architecture names and their configurations.

use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};

/// The network family and its size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Family {
    /// CIFAR ResNet (He et al. 2016): 3 stages of `(depth - 2) / 6` basic blocks, option-A
    /// shortcuts, stage widths `w, 2w, 4w`.
    Cifar {
        /// Depth `6n + 2` (20, 32, 44, 56, 110, ... ; 8 and 14 for quick runs).
        depth: usize,
        /// Width of the first stage (16 in the paper).
        width: usize,
    },
    /// torchvision ResNet-18/34 (basic blocks) or ResNet-50 (bottlenecks), v1.5.
    Torchvision {
        /// 18, 34 or 50.
        depth: usize,
    },
}

/// A backbone architecture: family, number of classes and input channels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Arch {
    /// Family and size.
    pub family: Family,
    /// Classes of the classifier head.
    pub num_classes: usize,
    /// Channels of the input images (3 for RGB, 1 for Fashion-MNIST).
    pub in_channels: usize,
}

/// The largest depth a CIFAR ResNet's name may give: eight times the deepest in the literature
/// (He et al.'s ResNet-1202), so that a mistyped depth is refused by name, not by listing
/// millions of blocks until they outgrow memory.
pub const MAX_CIFAR_DEPTH: usize = 10_000;

/// The largest first-stage width a CIFAR ResNet's name may give (2^16; 16 in the paper).
pub const MAX_CIFAR_WIDTH: usize = 1 << 16;

/// Parses an architecture name: `resnet20|32|44|56|110` (CIFAR, width 16),
/// `cifar-resnet{depth}[x{width}]` (a CIFAR depth `6n + 2` up to [`MAX_CIFAR_DEPTH`] and an even
/// first-stage width up to [`MAX_CIFAR_WIDTH`]), or
/// `resnet18|34|50` (torchvision).
pub fn parse_family(name: &str) -> Result<Family> {
    let unknown = || {
        ModelError::UnknownArch {
        name: name.to_string(),
        known: "resnet20, resnet32, resnet44, resnet56, resnet110, cifar-resnet<6n+2>[x<width>], resnet18, resnet34, resnet50"
            .into(),
    }
    };
    let lower = name.trim().to_ascii_lowercase();
    let cifar = |depth: usize, width: usize| {
        if depth < 8 || !(depth - 2).is_multiple_of(6) || width == 0 {
            Err(unknown())
        } else if depth > MAX_CIFAR_DEPTH || width > MAX_CIFAR_WIDTH {
            Err(ModelError::Invalid(format!(
                "{name}: a CIFAR ResNet's depth is at most {MAX_CIFAR_DEPTH} and its width at most {MAX_CIFAR_WIDTH}"
            )))
        } else {
            Ok(Family::Cifar { depth, width })
        }
    };
    match lower.as_str() {
        "resnet18" => return Ok(Family::Torchvision { depth: 18 }),
        "resnet34" => return Ok(Family::Torchvision { depth: 34 }),
        "resnet50" => return Ok(Family::Torchvision { depth: 50 }),
        "resnet20" | "resnet32" | "resnet44" | "resnet56" | "resnet110" => {
            return cifar(lower[6..].parse().map_err(|_| unknown())?, 16)
        }
        _ => {}
    }
    let rest = lower.strip_prefix("cifar-resnet").ok_or_else(unknown)?;
    let (d, w) = match rest.split_once('x') {
        Some((d, w)) => (d, w),
        None => (rest, "16"),
    };
    cifar(d.parse().map_err(|_| unknown())?, w.parse().map_err(|_| unknown())?)
}

impl Family {
    /// The canonical name (parses back to the same family).
    pub fn name(&self) -> String {
        match *self {
            Family::Cifar { depth, width: 16 } if [20, 32, 44, 56, 110].contains(&depth) => {
                format!("resnet{depth}")
            }
            Family::Cifar { depth, width: 16 } => format!("cifar-resnet{depth}"),
            Family::Cifar { depth, width } => format!("cifar-resnet{depth}x{width}"),
            Family::Torchvision { depth } => format!("resnet{depth}"),
        }
    }

    /// Dimension of the pooled representation.
    pub fn feature_dim(&self) -> usize {
        match *self {
            Family::Cifar { width, .. } => 4 * width,
            Family::Torchvision { depth: 50 } => 2048,
            Family::Torchvision { .. } => 512,
        }
    }

    /// The stem convolution `conv1`: its output channels and kernel size (the first stage's
    /// width and 3 x 3 for CIFAR ResNets, 64 and 7 x 7 for torchvision's).
    pub fn stem(&self) -> (usize, usize) {
        match *self {
            Family::Cifar { width, .. } => (width, 3),
            Family::Torchvision { .. } => (64, 7),
        }
    }

    /// Names of the classifier's weight and bias.
    pub fn head_names(&self) -> (&'static str, &'static str) {
        match self {
            Family::Cifar { .. } => ("linear.weight", "linear.bias"),
            Family::Torchvision { .. } => ("fc.weight", "fc.bias"),
        }
    }
}

impl FromStr for Family {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self> {
        parse_family(s)
    }
}

impl Arch {
    /// An architecture from its name, class count and input channels.
    pub fn new(name: &str, num_classes: usize, in_channels: usize) -> Result<Self> {
        if num_classes == 0 || in_channels == 0 {
            return Err(ModelError::Invalid(format!(
                "an architecture needs at least one class and one input channel (got {num_classes} and {in_channels})"
            )));
        }
        Ok(Self { family: parse_family(name)?, num_classes, in_channels })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_roundtrip() {
        assert_eq!(parse_family("resnet32").unwrap(), Family::Cifar { depth: 32, width: 16 });
        assert_eq!(parse_family("ResNet50").unwrap(), Family::Torchvision { depth: 50 });
        assert_eq!(parse_family("cifar-resnet8x8").unwrap(), Family::Cifar { depth: 8, width: 8 });
        for n in ["resnet20", "resnet110", "cifar-resnet14", "cifar-resnet8x8", "resnet18", "resnet50"] {
            assert_eq!(parse_family(n).unwrap().name(), n);
        }
        let err = parse_family("resnet33").unwrap_err().to_string();
        assert!(err.contains("unknown architecture \"resnet33\"") && err.contains("resnet32"), "{err}");
        assert!(parse_family("cifar-resnet9").is_err());
        for name in ["cifar-resnet8x4611686018427387904", "cifar-resnet8x65538", "cifar-resnet10004"] {
            let err = parse_family(name).unwrap_err().to_string();
            assert!(
                err.contains(name) && err.contains("at most 10000") && err.contains("at most 65536"),
                "{err}"
            );
        }
        assert!(parse_family("cifar-resnet9998x65536").is_ok());
        assert!(Arch::new("resnet32", 0, 3).is_err());
    }
}
