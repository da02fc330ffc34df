//! Errors of the re-training stage.

/// Everything that can go wrong in stage 2.
#[derive(Debug, thiserror::Error)]
pub enum RetrainError {
    /// Inconsistent or invalid input (lengths, class counts, NaN features, missing splits).
    #[error("{0}")]
    Invalid(String),
    /// A numeric setting outside its rule (names the field).
    #[error(transparent)]
    Check(#[from] lt_core::check::CheckError),
    /// A method name or option that does not exist.
    #[error("{0}")]
    UnknownMethod(String),
    /// The loss became NaN or infinite.
    #[error("{method}: the loss became {value} at step {step}")]
    NonFinite {
        /// The method.
        method: String,
        /// Global step.
        step: usize,
        /// The loss.
        value: f32,
    },
    /// An artifact error.
    #[error(transparent)]
    Artifact(#[from] lt_core::ArtifactError),
    /// A candle error.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Result alias of the re-training stage.
pub type Result<T, E = RetrainError> = std::result::Result<T, E>;
