//! Errors of the models crate: each names the tensor or file and what was expected.

use std::path::PathBuf;

/// Everything that can go wrong building, loading or running a backbone.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The architecture name is not one the crate knows.
    #[error("unknown architecture {name:?}; expected one of: {known}")]
    UnknownArch {
        /// The name given.
        name: String,
        /// The names accepted, in words.
        known: String,
    },
    /// A weight file lacks tensors the architecture needs.
    #[error("{path}: missing {count} tensor(s) for {arch}, e.g. {examples}")]
    MissingTensors {
        /// The weight file.
        path: PathBuf,
        /// The architecture.
        arch: String,
        /// How many are missing.
        count: usize,
        /// The first few missing names.
        examples: String,
    },
    /// A tensor has the wrong shape.
    #[error("{path}: tensor `{name}` has shape {found:?}, expected {expected:?}")]
    Shape {
        /// The weight file.
        path: PathBuf,
        /// The tensor name (as in the file).
        name: String,
        /// The shape the model needs.
        expected: Vec<usize>,
        /// The shape in the file.
        found: Vec<usize>,
    },
    /// The file's classifier is for a different number of classes.
    #[error("{path}: the classifier `{name}` has {found} classes, the model has {expected}")]
    ClassCount {
        /// The weight file.
        path: PathBuf,
        /// The classifier weight's name.
        name: String,
        /// Classes of the model.
        expected: usize,
        /// Classes in the file.
        found: usize,
    },
    /// A hub file is not available.
    #[error("hub: {0}")]
    Hub(String),
    /// The hub client failed.
    #[error("hub: {what}")]
    HubApi {
        /// The file (or the client) concerned.
        what: String,
        /// The client's error.
        #[source]
        source: hf_hub::api::sync::ApiError,
    },
    /// A batch-norm buffer (running statistics) is not in the parameter store.
    #[error("missing buffer `{0}`")]
    MissingBuffer(String),
    /// A training step produced no gradient for a trainable parameter.
    #[error("the training step produced no gradient for parameter `{0}`")]
    MissingGradient(String),
    /// Invalid configuration or input.
    #[error("{0}")]
    Invalid(String),
    /// Reading or writing a file failed.
    #[error(transparent)]
    Artifact(#[from] lt_core::ArtifactError),
    /// A candle error.
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
}

/// Result alias of the models crate.
pub type Result<T, E = ModelError> = std::result::Result<T, E>;
