//! The files of a run directory.

use std::path::{Path, PathBuf};

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
        self.root.join("split.safetensors")
    }
    /// The stage-1 configuration (JSON).
    pub fn config(&self) -> PathBuf {
        self.root.join("train_config.json")
    }
    /// The rolling checkpoint.
    pub fn checkpoint(&self) -> PathBuf {
        self.root.join("checkpoint.safetensors")
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
        self.root.join("features.safetensors")
    }
}
