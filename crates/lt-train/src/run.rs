//! The files of a run directory.

use std::path::{Path, PathBuf};

use lt_data::DataSpec;

use crate::error::{io_err, Result, TrainError};

/// Paths inside a run directory (see `docs/artifacts.md`).
#[derive(Clone, Debug)]
pub struct RunDir {
    root: PathBuf,
}

impl RunDir {
    /// A run directory at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }
    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }
    /// The split artifact.
    pub fn split(&self) -> PathBuf {
        self.root.join(lt_core::layout::SPLIT_FILE)
    }
    /// The stage-1 configuration (JSON).
    pub fn config(&self) -> PathBuf {
        self.root.join("train_config.json")
    }
    /// The rolling checkpoint.
    pub fn checkpoint(&self) -> PathBuf {
        self.root.join(lt_core::layout::CHECKPOINT_FILE)
    }
    /// The state at `swa_start`, from which both branches continue.
    pub fn branch(&self) -> PathBuf {
        self.root.join("branch.safetensors")
    }
    /// The SGD backbone.
    pub fn sgd(&self) -> PathBuf {
        self.root.join("sgd.safetensors")
    }
    /// The SWA backbone (batch norm recalibrated).
    pub fn swa(&self) -> PathBuf {
        self.root.join("swa.safetensors")
    }
    /// The SWAG statistics.
    pub fn swag(&self) -> PathBuf {
        self.root.join("swag.safetensors")
    }
    /// Per-epoch log, one JSON object per line.
    pub fn log(&self) -> PathBuf {
        self.root.join("train_log.jsonl")
    }
    /// Final accuracies of the stage-1 backbones (JSON).
    pub fn summary(&self) -> PathBuf {
        self.root.join("train_summary.json")
    }
    /// The features artifact of `lt extract`.
    pub fn features(&self) -> PathBuf {
        self.root.join(lt_core::layout::FEATURES_FILE)
    }
    /// The description of the data the run was trained on (JSON).
    pub fn data_spec(&self) -> PathBuf {
        self.root.join("data_spec.json")
    }

    /// Records the run's data (atomically), a relative data root made absolute: the later
    /// stages read the data from where this run found them, from whatever directory they run in.
    pub fn write_data_spec(&self, spec: &DataSpec) -> Result<()> {
        let path = self.data_spec();
        let mut spec = spec.clone();
        if let Some(root) = &spec.data_root {
            spec.data_root = Some(std::path::absolute(root).map_err(io_err(root))?);
        }
        let text = serde_json::to_string_pretty(&spec).map_err(|e| TrainError::Config(e.to_string()))?;
        lt_core::atomic::write_bytes_atomic(&path, text.as_bytes()).map_err(io_err(&path))
    }

    /// The run's data, as recorded by [`RunDir::write_data_spec`] (settings the data set does not
    /// read, which older runs may record, left out with a warning).
    pub fn read_data_spec(&self) -> Result<DataSpec> {
        let path = self.data_spec();
        if !path.exists() {
            return Err(TrainError::Mismatch(format!(
                "{} is missing: {} is not a run directory of `lt train`",
                path.display(),
                self.root.display()
            )));
        }
        let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
        let spec: DataSpec = serde_json::from_str(&text)
            .map_err(|e| TrainError::Mismatch(format!("{}: not a data description: {e}", path.display())))?;
        // A record from before such settings were refused: they changed nothing then either.
        let (spec, dropped) = spec.dropping_unread()?;
        if !dropped.is_empty() {
            tracing::warn!(
                "{}: leaving out {}, which the data set does not read",
                path.display(),
                dropped.join(", ")
            );
        }
        Ok(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_relative_data_root_is_recorded_absolute() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = RunDir::new(tmp.path());
        let folder = DataSpec { dataset: Some("folder".into()), ..Default::default() };
        let spec = DataSpec { data_root: Some("data/mine".into()), ..folder.clone() };
        dir.write_data_spec(&spec).unwrap();
        let read = dir.read_data_spec().unwrap();
        let want = std::env::current_dir().unwrap().join("data/mine");
        assert_eq!(read.data_root.as_deref(), Some(want.as_path()));
        assert_eq!(DataSpec { data_root: None, ..read }, folder, "only the root changes");
    }

    /// A record made before unread settings were refused (`lt train --preset tiny --dataset
    /// fmnist-lt` kept the preset's generator settings) reads without them.
    #[test]
    fn a_recorded_setting_the_data_set_does_not_read_is_left_out() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = RunDir::new(tmp.path());
        let text = r#"{"dataset": "fmnist-lt", "imbalance": 10.0, "synthetic_classes": 4, "data_seed": 0}"#;
        std::fs::write(dir.data_spec(), text).unwrap();
        let read = dir.read_data_spec().unwrap();
        let want =
            DataSpec { dataset: Some("fmnist-lt".into()), imbalance: Some(10.0), ..Default::default() };
        assert_eq!(read, want);
        read.validate().unwrap();
    }
}
