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
    /// A network larger than the memory this process may use, found by listing it before a value
    /// is drawn ([`crate::Model::shapes`]): a mistyped class count, width or depth, or a file that
    /// records one.
    #[error("{}`{name}` of shape {shape:?} {}", in_file(.path), too_large(.values, .memory))]
    TooLarge {
        /// The weight file whose tensors or metadata describe the network, if one does.
        path: Option<PathBuf>,
        /// The parameter or buffer at which the network outgrows the limit.
        name: String,
        /// Its shape.
        shape: Vec<usize>,
        /// The network's values up to and including it; `None` past what `usize` counts.
        values: Option<usize>,
        /// The memory this process may use in bytes (the limit), when `values` is known.
        memory: Option<usize>,
    },
    /// Invalid configuration or input.
    #[error("{0}")]
    Invalid(String),
    /// Reading or writing a file failed.
    #[error(transparent)]
    Artifact(#[from] lt_core::ArtifactError),
    /// A candle error.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// `"<path>: "` for an error about a file, else nothing.
fn in_file(path: &Option<PathBuf>) -> String {
    path.as_ref().map(|p| format!("{}: ", p.display())).unwrap_or_default()
}

/// How far past the limit a network of `values` f32 values goes.
fn too_large(values: &Option<usize>, memory: &Option<usize>) -> String {
    let gib = |b: usize| b as f64 / (1u64 << 30) as f64;
    match (values, memory) {
        (Some(v), Some(m)) => format!(
            "takes the network to {v} values, {:.1} GiB in f32: more than the {:.1} GiB of memory this process may use",
            gib(v.saturating_mul(std::mem::size_of::<f32>())),
            gib(*m)
        ),
        _ => "takes the network past the elements memory can address".into(),
    }
}

/// Result alias of the models crate.
pub type Result<T, E = ModelError> = std::result::Result<T, E>;
