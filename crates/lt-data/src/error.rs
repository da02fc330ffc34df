//! Errors of the data stage: each names the file (and record or line) and what was expected.

use std::path::PathBuf;

/// Everything that can go wrong reading, downloading or preparing data.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A file could not be read or written.
    #[error("{path}: {error}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        error: std::io::Error,
    },
    /// A file has the wrong size for its format (truncated or padded).
    #[error("{path}: {found} bytes, expected {expected}")]
    Size {
        /// The file.
        path: PathBuf,
        /// What the format requires, in words.
        expected: String,
        /// The size found.
        found: u64,
    },
    /// A file's content does not follow its format (bad magic number, bad header).
    #[error("{path}: {detail}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// A label is outside the class range.
    #[error("{path}: record {record} has label {label}, outside 0..{classes}")]
    Label {
        /// The file.
        path: PathBuf,
        /// Record (0-based) holding the label.
        record: usize,
        /// The label found.
        label: i64,
        /// Number of classes.
        classes: usize,
    },
    /// A line of a split list file is malformed.
    #[error("{path}:{line}: {detail}")]
    ListLine {
        /// The list file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        detail: String,
    },
    /// An image is missing or cannot be decoded.
    #[error("{path}: cannot decode image: {detail}")]
    Image {
        /// The image file.
        path: PathBuf,
        /// The decoder's message.
        detail: String,
    },
    /// An image decodes but cannot be transformed: it has no pixels, or its aspect ratio is so
    /// extreme that resizing it would allocate more than [`crate::files::MAX_RESIZED_PIXELS`].
    #[error("{path}: cannot transform image: {detail}")]
    ImageShape {
        /// The image file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// A downloaded file does not have the published checksum.
    #[error("{path}: checksum mismatch: expected {algorithm} {expected}, found {found}")]
    Checksum {
        /// The downloaded file (or its URL).
        path: String,
        /// `md5` or `sha256`.
        algorithm: &'static str,
        /// Published digest.
        expected: String,
        /// Digest of what arrived.
        found: String,
    },
    /// A download failed.
    #[error("download of {url} failed: {detail}")]
    Download {
        /// The URL.
        url: String,
        /// What happened.
        detail: String,
    },
    /// A data set is not present and cannot be fetched.
    #[error("{what} not found; looked in: {}{hint}", .searched.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))]
    NotFound {
        /// What was looked for.
        what: String,
        /// Where it was looked for.
        searched: Vec<PathBuf>,
        /// How to get it (starts with a separator, may be empty).
        hint: String,
    },
    /// The data root given (`--data-root`) is not a directory.
    #[error("--data-root {}: {found} ({advice})", .path.display())]
    NoRoot {
        /// The data root.
        path: PathBuf,
        /// What is there instead: "no such directory", or "a file, not a directory".
        found: &'static str,
        /// What to give instead (the download flag where the data set can be downloaded).
        advice: &'static str,
    },
    /// A caller passed an invalid argument (unknown data set, bad ratio, empty class).
    #[error("{0}")]
    Invalid(String),
    /// A numeric setting outside its rule (names the field).
    #[error(transparent)]
    Check(#[from] lt_core::check::CheckError),
    /// An invalid sampler.
    #[error(transparent)]
    Sampler(#[from] lt_core::sampler::SamplerError),
    /// Reading or writing an artifact failed.
    #[error(transparent)]
    Artifact(#[from] lt_core::ArtifactError),
    /// A candle error while building tensors.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl DataError {
    /// Whether the data are not there (not found where they were looked for, or the data root
    /// given is missing), as opposed to there and wrong.
    pub fn is_absent(&self) -> bool {
        matches!(self, DataError::NotFound { .. } | DataError::NoRoot { .. })
    }
}

/// Result alias for the data stage.
pub type Result<T, E = DataError> = std::result::Result<T, E>;

/// Attaches a path to an I/O error.
pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> DataError {
    let path = path.into();
    move |error| DataError::Io { path, error }
}
