//! Errors of the SWAG crate.

/// Everything that can go wrong with SWAG statistics.
#[derive(Debug, thiserror::Error)]
pub enum SwagError {
    /// Parameters do not match the statistics (another model, another architecture).
    #[error("{0}")]
    Mismatch(String),
    /// A request that describes no statistics or sample: sampling before any model was
    /// collected, a negative or non-finite scale, a parameter vector with NaN or infinite values.
    #[error("{0}")]
    Invalid(String),
    /// The model failed during batch-norm recalibration (its own error, kept as the source).
    #[error("the model failed during batch-norm recalibration")]
    Model(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// Reading or writing the artifact failed.
    #[error(transparent)]
    Artifact(#[from] lt_core::ArtifactError),
    /// A candle error.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Result alias of the SWAG crate.
pub type Result<T, E = SwagError> = std::result::Result<T, E>;
