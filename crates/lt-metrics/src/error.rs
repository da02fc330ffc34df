//! Errors of the metrics crate.

/// Everything that can go wrong computing metrics or writing reports.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// Invalid input (NaN logits, labels out of range, mismatched lengths, empty sets).
    #[error("{0}")]
    Invalid(String),
    /// Reading or writing an artifact failed.
    #[error(transparent)]
    Artifact(#[from] lt_core::ArtifactError),
    /// Writing a file failed.
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The underlying error.
        error: std::io::Error,
    },
    /// Drawing a plot failed.
    #[error("plot {path}: {detail}")]
    Plot {
        /// The file.
        path: std::path::PathBuf,
        /// What the drawing backend said.
        detail: String,
    },
}

/// Result alias of the metrics crate.
pub type Result<T, E = MetricsError> = std::result::Result<T, E>;
