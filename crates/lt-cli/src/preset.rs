//! Presets: a whole pipeline recipe as a TOML file under `presets/` (embedded in the binary;
//! `--preset-file` reads a user's copy).

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use serde::{Deserialize, Serialize};

/// Where the data comes from.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    /// Data set name.
    pub dataset: String,
    /// Imbalance ratio.
    #[serde(default)]
    pub imbalance: Option<f64>,
    /// Validation images per class (0: none; default per data set).
    #[serde(default)]
    pub val_per_class: Option<usize>,
    /// Data root.
    #[serde(default)]
    pub data_root: Option<PathBuf>,
    /// Download what is missing.
    #[serde(default)]
    pub download: bool,
    /// Seed of generated data and seeded splits.
    #[serde(default)]
    pub data_seed: u64,
    /// Synthetic: classes.
    #[serde(default)]
    pub synthetic_classes: Option<usize>,
    /// Synthetic: images of the largest class.
    #[serde(default)]
    pub synthetic_n_max: Option<usize>,
    /// Synthetic: image side.
    #[serde(default)]
    pub synthetic_size: Option<usize>,
    /// Folder: held-out fraction.
    #[serde(default)]
    pub test_fraction: Option<f64>,
    /// Image-file data sets: crop side.
    #[serde(default)]
    pub image_size: Option<u32>,
}

/// Extraction settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtractSection {
    /// SWAG samples.
    pub samples: usize,
    /// SWAG scale.
    pub scale: f64,
    /// Store features as f16.
    #[serde(default)]
    pub half: bool,
}

/// Stage-2 settings shared by the methods (each method's own recipe lives in lt-retrain).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrainSection {
    /// Epochs (`floor(N / batch)` steps each).
    pub epochs: usize,
    /// Batch size.
    pub batch_size: usize,
    /// Learning rate.
    pub lr: f64,
    /// Weight decay.
    pub weight_decay: f64,
}

/// Report settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportSection {
    /// Which paper table stands beside ours (`imagenet-lt`).
    #[serde(default)]
    pub paper: Option<String>,
}

/// A pipeline recipe.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preset {
    /// Name.
    pub name: String,
    /// One line about it.
    pub description: String,
    /// Seeds of the full pipeline (mean ± std in the report).
    pub seeds: usize,
    /// Data.
    pub data: DataSection,
    /// Stage 1.
    pub train: lt_train::TrainConfig,
    /// Stochastic representations.
    pub extract: ExtractSection,
    /// Stage 2.
    pub retrain: RetrainSection,
    /// Report.
    #[serde(default)]
    pub report: ReportSection,
}

/// The presets shipped with the project (`presets/*.toml`).
pub const EMBEDDED: [(&str, &str); 7] = [
    ("synthetic", include_str!("../../../presets/synthetic.toml")),
    ("tiny", include_str!("../../../presets/tiny.toml")),
    ("fmnist-lt", include_str!("../../../presets/fmnist-lt.toml")),
    ("cifar10-lt", include_str!("../../../presets/cifar10-lt.toml")),
    ("cifar100-lt", include_str!("../../../presets/cifar100-lt.toml")),
    ("imagenet-lt", include_str!("../../../presets/imagenet-lt.toml")),
    ("inat2018", include_str!("../../../presets/inat2018.toml")),
];

/// Parses a preset from TOML text (`origin` names it in errors).
pub fn parse(text: &str, origin: &str) -> Result<Preset> {
    let p: Preset = toml::from_str(text).with_context(|| format!("preset {origin}"))?;
    p.train.validate().with_context(|| format!("preset {origin}: [train]"))?;
    Ok(p)
}

/// An embedded preset by name.
pub fn embedded(name: &str) -> Result<Preset> {
    let (_, text) = EMBEDDED.iter().find(|(n, _)| *n == name).ok_or_else(|| {
        anyhow!(
            "unknown preset {name:?}; expected one of {}",
            EMBEDDED.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
        )
    })?;
    parse(text, name)
}

/// A preset from a file.
pub fn from_file(path: &Path) -> Result<Preset> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    parse(&text, &path.display().to_string())
}

/// Resolves `--preset` / `--preset-file`.
pub fn resolve(name: Option<&str>, file: Option<&Path>) -> Result<Option<Preset>> {
    match (name, file) {
        (_, Some(f)) => from_file(f).map(Some),
        (Some(n), None) => embedded(n).map(Some),
        (None, None) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_embedded_preset_parses() {
        for (name, _) in EMBEDDED {
            let p = embedded(name).unwrap();
            assert_eq!(p.name, name);
            assert!(p.seeds >= 1);
        }
        assert!(embedded("nope").unwrap_err().to_string().contains("synthetic"));
        let err = parse("name = 1", "x").unwrap_err();
        assert!(format!("{err:#}").contains("preset x"));
    }
}
