//! The artifact error type: every variant names the file and the tensor or key at fault.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong reading or writing an artifact.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    /// The file could not be read or written.
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        error: io::Error,
    },
    /// The file is not a valid safetensors file (truncated, bad header, overlapping data).
    #[error("{path}: not a valid safetensors file: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What the parser found.
        reason: String,
    },
    /// The file is a safetensors file but not the artifact kind or version expected.
    #[error("{path}: expected a `{expected}` artifact, found {found}")]
    WrongFormat {
        /// The file.
        path: PathBuf,
        /// The expected kind and version.
        expected: String,
        /// What the metadata says.
        found: String,
    },
    /// A tensor the reader needs is absent.
    #[error("{path}: missing tensor `{name}`")]
    MissingTensor {
        /// The file.
        path: PathBuf,
        /// The tensor name.
        name: String,
    },
    /// A tensor has another shape than expected.
    #[error("{path}: tensor `{name}` has shape {found:?}, expected {expected}")]
    Shape {
        /// The file.
        path: PathBuf,
        /// The tensor name.
        name: String,
        /// The expected shape, in words.
        expected: String,
        /// The shape in the file.
        found: Vec<usize>,
    },
    /// A tensor has a dtype the reader cannot use.
    #[error("{path}: tensor `{name}` has dtype {found}, expected {expected}")]
    DType {
        /// The file.
        path: PathBuf,
        /// The tensor name.
        name: String,
        /// The accepted dtypes, in words.
        expected: String,
        /// The dtype in the file.
        found: String,
    },
    /// A metadata key the reader needs is absent.
    #[error("{path}: metadata key `{key}` is missing")]
    MissingMeta {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
    },
    /// A metadata value cannot be parsed or is out of range.
    #[error("{path}: metadata `{key}` = {value:?}: {reason}")]
    BadMeta {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// The value found (shortened to about 200 bytes when longer).
        value: String,
        /// What was expected.
        reason: String,
    },
    /// Tensor values are invalid (NaN, out of range, inconsistent with another tensor).
    #[error("{path}: tensor `{name}`: {reason}")]
    BadValue {
        /// The file.
        path: PathBuf,
        /// The tensor name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// The writer was given the same tensor name twice.
    #[error("{path}: tensor `{name}` was added twice to the artifact")]
    DuplicateTensor {
        /// The file being written.
        path: PathBuf,
        /// The tensor name.
        name: String,
    },
    /// The writer was given a tensor whose data does not fill its shape, or whose size in bytes
    /// does not fit in memory.
    #[error("{path}: tensor `{name}` has shape {shape:?} but {reason}")]
    DataLength {
        /// The file being written.
        path: PathBuf,
        /// The tensor name.
        name: String,
        /// The declared shape.
        shape: Vec<usize>,
        /// What does not match.
        reason: String,
    },
    /// The writer was given a metadata value that cannot be serialised to JSON.
    #[error("{path}: metadata `{key}` cannot be serialised to JSON: {reason}")]
    MetaSerialize {
        /// The file being written.
        path: PathBuf,
        /// The key.
        key: String,
        /// The serialiser's message.
        reason: String,
    },
    /// A candle error while converting a tensor.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Result alias for artifact operations.
pub type Result<T, E = ArtifactError> = std::result::Result<T, E>;

/// Longest metadata value quoted in full in an error message, in bytes.
pub(crate) const QUOTE_LIMIT: usize = 200;

/// `value` for an error message: at most [`QUOTE_LIMIT`] bytes, cut on a character boundary and
/// followed by `...` when cut.
pub(crate) fn shorten(value: &str) -> String {
    if value.len() <= QUOTE_LIMIT {
        return value.to_string();
    }
    let cut = value.char_indices().map(|(i, _)| i).take_while(|&i| i <= QUOTE_LIMIT).last().unwrap_or(0);
    format!("{}...", &value[..cut])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shorten_cuts_long_values_on_a_character_boundary() {
        assert_eq!(shorten("short"), "short");
        let exact = "a".repeat(QUOTE_LIMIT);
        assert_eq!(shorten(&exact), exact);
        // 199 ASCII bytes then a 2-byte character straddling byte 200: a byte cut would panic.
        let straddle = format!("{}é{}", "a".repeat(QUOTE_LIMIT - 1), "b".repeat(50));
        let s = shorten(&straddle);
        assert_eq!(s, format!("{}...", "a".repeat(QUOTE_LIMIT - 1)));
        // Only multi-byte characters (3 bytes each): the cut lands on a boundary at or below 200.
        let cjk = "漢".repeat(100);
        let s = shorten(&cjk);
        assert!(s.ends_with("...") && s.len() <= QUOTE_LIMIT + 3, "{s}");
        assert_eq!(s.trim_end_matches("...").chars().count(), QUOTE_LIMIT / 3);
    }
}
