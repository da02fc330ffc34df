//! Errors of the training stage.

use std::path::PathBuf;

/// Everything that can go wrong in stage 1.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The loss became NaN or infinite.
    #[error("the loss became {value} at step {step} (epoch {epoch}); {}", match .checkpoint { Some(p) => format!("the last good checkpoint is {}", p.display()), None => "no checkpoint was written yet".to_string() })]
    NonFinite {
        /// Global step.
        step: usize,
        /// Epoch (0-based).
        epoch: usize,
        /// The loss value.
        value: f32,
        /// The last checkpoint written.
        checkpoint: Option<PathBuf>,
    },
    /// A checkpoint or artifact belongs to another configuration or run.
    #[error("{0}")]
    Mismatch(String),
    /// Invalid configuration.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A data error.
    #[error(transparent)]
    Data(#[from] lt_data::DataError),
    /// A model error.
    #[error(transparent)]
    Model(#[from] lt_models::ModelError),
    /// A SWAG error.
    #[error(transparent)]
    Swag(#[from] lt_swag::SwagError),
    /// An evaluation's metrics could not be computed (scores and labels that disagree).
    #[error(transparent)]
    Metrics(#[from] lt_metrics::MetricsError),
    /// An artifact error.
    #[error(transparent)]
    Artifact(#[from] lt_core::ArtifactError),
    /// The run directory is held by another command, or its lock could not be taken.
    #[error(transparent)]
    Lock(#[from] lt_core::lock::LockError),
    /// A file error.
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        error: std::io::Error,
    },
    /// A candle error.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Result alias of the training stage.
pub type Result<T, E = TrainError> = std::result::Result<T, E>;

pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> TrainError {
    let path = path.into();
    move |error| TrainError::Io { path, error }
}
