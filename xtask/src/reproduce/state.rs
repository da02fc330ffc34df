//! What a stage's directory says about it: whether it is up to date (`.stage-key`), and
//! whether an unfinished run of it continues or starts afresh (`.stage-key.pending`).

use std::path::{Path, PathBuf};

use super::Stage;

/// The key of a stage that succeeded.
pub(super) fn key_file(dir: &Path) -> PathBuf {
    dir.join(".stage-key")
}

/// Whether a stage is up to date.
pub fn is_done(stage: &Stage) -> bool {
    std::fs::read_to_string(key_file(&stage.dir)).map(|k| k.trim() == stage.key).unwrap_or(false)
}

/// The key a stage was started under, written before it runs and removed when it succeeded.
pub(super) fn pending_file(dir: &Path) -> PathBuf {
    dir.join(".stage-key.pending")
}

/// Whether a stage's directory holds the work of other inputs: a finished stage (one of the same
/// inputs is skipped), or one interrupted under another key (a run interrupted before pending keys
/// were written is taken for one of the same inputs, and `lt` checks its fingerprint).
pub(super) fn outdated(s: &Stage) -> bool {
    key_file(&s.dir).exists()
        || std::fs::read_to_string(pending_file(&s.dir)).is_ok_and(|k| k.trim() != s.key)
}

/// Whether a stage that is not done continues where an interrupted run of it stopped (stage 1,
/// from its checkpoint).
pub(super) fn resumes(s: &Stage) -> bool {
    s.resumable && !outdated(s) && s.dir.join("checkpoint.safetensors").exists()
}
