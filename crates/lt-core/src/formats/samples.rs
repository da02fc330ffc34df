//! The `S` axis of a features artifact ([`super::features`]): which backbone each slice of
//! representations comes from.

use serde::{Deserialize, Serialize};

/// Which backbone produced a slice of the `S` axis.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SampleKind {
    /// The SGD backbone.
    Sgd,
    /// The SWA backbone.
    Swa,
    /// A backbone sampled from the SWAG posterior.
    Swag,
}

impl SampleKind {
    /// The kind's name (`sgd`, `swa`, `swag`).
    pub fn as_str(self) -> &'static str {
        match self {
            SampleKind::Sgd => "sgd",
            SampleKind::Swa => "swa",
            SampleKind::Swag => "swag",
        }
    }
}

/// One backbone of the `S` axis.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SampleInfo {
    /// Which backbone.
    pub kind: SampleKind,
    /// For SWAG samples: the seed of the draw.
    pub seed: Option<u64>,
    /// For SWAG samples: the draw's index (the draw uses `Rng::stream(seed, [SWAG_SAMPLE, index])`).
    pub index: Option<usize>,
}

impl SampleInfo {
    /// The `S` axis `lt extract` writes: the SGD backbone, the SWA backbone, then `swag` SWAG
    /// draws of `seed` (indices `0..swag`).
    pub fn standard(swag: usize, seed: u64) -> Vec<SampleInfo> {
        let mut infos = vec![
            SampleInfo { kind: SampleKind::Sgd, seed: None, index: None },
            SampleInfo { kind: SampleKind::Swa, seed: None, index: None },
        ];
        infos.extend((0..swag).map(|m| SampleInfo {
            kind: SampleKind::Swag,
            seed: Some(seed),
            index: Some(m),
        }));
        infos
    }
}
