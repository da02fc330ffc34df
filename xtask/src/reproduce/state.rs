//! What a stage's directory says about it: whether it is up to date (`.stage-key`), and
//! whether an unfinished run of it continues or starts afresh (`.stage-key.pending`); and the
//! lock that makes one reproduction at a time of a run root (`.reproduce-lock`).

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::Stage;

/// The checkpoint a resumable stage (`lt train`) continues from.
const CHECKPOINT: &str = super::CHECKPOINT_FILE;

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
    s.resumable && !outdated(s) && s.dir.join(CHECKPOINT).exists()
}

/// Writes a key file whole or not at all (a temporary file renamed), so that an interrupted write
/// never leaves a key that matches nothing.
pub(super) fn write_key(path: &Path, key: &str) -> Result<()> {
    crate::write_atomic(path, key)
}

/// Removes an outdated stage's directory, its checkpoint first: a removal interrupted after the
/// keys went must not leave a checkpoint that [`resumes`] would take for this stage's.
pub(super) fn clear(dir: &Path) -> Result<()> {
    // `lt` holds its run folder's `.lt-lock` (lt_core::lock::LOCK_FILE) while it writes there;
    // taken here too, so that a folder an `lt` still writes in (its reproduction killed, not it)
    // is not removed under it.
    let lt_lock = dir.join(".lt-lock");
    let _held = match OpenOptions::new().read(true).write(true).open(&lt_lock) {
        Ok(file) => Some(try_lock(file, &lt_lock, dir, "`lt`")?),
        Err(_) => None,
    };
    let checkpoint = dir.join(CHECKPOINT);
    if checkpoint.exists() {
        std::fs::remove_file(&checkpoint).with_context(|| format!("removing {}", checkpoint.display()))?;
    }
    std::fs::remove_dir_all(dir).with_context(|| format!("clearing the outdated {}", dir.display()))
}

/// `file` (the lock file `path` of `dir`) locked exclusively, or an error naming who holds it:
/// `holder`, and what the lock file records of it.
fn try_lock(file: File, path: &Path, dir: &Path, holder: &str) -> Result<File> {
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => {
            let mut recorded = String::new();
            let _ = (&file).read_to_string(&mut recorded);
            bail!(
                "{} is in use by {holder} ({}): wait for it to finish or stop it",
                dir.display(),
                recorded.trim()
            )
        }
        Err(TryLockError::Error(e)) => Err(e).with_context(|| format!("locking {}", path.display())),
    }
}

/// The file a reproduction locks in its run root.
const LOCK: &str = ".reproduce-lock";

/// One reproduction at a time of a run root: an exclusive advisory lock on its
/// `.reproduce-lock`, held until dropped and released by the kernel when the process dies however
/// it dies. (Two at once would clear the stage directories the other's `lt` writes in.) The
/// file records its holder while held, and is emptied when the reproduction ends, so a finished
/// run root names no process (as `lt`'s run locks).
#[derive(Debug)]
pub struct RootLock {
    file: File,
}

impl Drop for RootLock {
    fn drop(&mut self) {
        // Emptied while still held; closing the file releases the lock.
        let _ = self.file.set_len(0);
    }
}

/// Locks `run_root` (created if needed) for this reproduction, or says who holds it.
pub fn lock_root(run_root: &Path) -> Result<RootLock> {
    std::fs::create_dir_all(run_root).with_context(|| format!("creating {}", run_root.display()))?;
    let path = run_root.join(LOCK);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    let mut file = try_lock(file, &path, run_root, "another reproduction")?;
    let holder = format!("pid {}, `{}`", std::process::id(), std::env::args().collect::<Vec<_>>().join(" "));
    file.set_len(0)
        .and_then(|_| file.write_all(holder.as_bytes()))
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(RootLock { file })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Stage 1 in `dir` under `key`, with a checkpoint and the given key files.
    fn stage(dir: &Path, key: &str, done: Option<&str>, pending: Option<&str>) -> Stage {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join(CHECKPOINT), "checkpoint").unwrap();
        let put = |path: PathBuf, k: Option<&str>| match k {
            Some(k) => write_key(&path, k).unwrap(),
            None => {
                let _ = std::fs::remove_file(path);
            }
        };
        put(key_file(dir), done);
        put(pending_file(dir), pending);
        Stage {
            name: "stage 1".into(),
            dir: dir.to_path_buf(),
            args: vec![],
            key: key.into(),
            resumable: true,
            reads_data: true,
        }
    }

    /// A second lock of a run root is refused naming the holder, and taken once the first is
    /// dropped.
    #[test]
    fn one_reproduction_at_a_time_per_run_root() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("synthetic");
        let first = lock_root(&root).unwrap();
        let err = lock_root(&root).unwrap_err().to_string();
        assert!(
            err.contains("in use by another reproduction")
                && err.contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
        drop(first);
        assert_eq!(std::fs::read_to_string(root.join(LOCK)).unwrap(), "", "a released lock names no holder");
        lock_root(&root).unwrap();
    }

    /// An interrupted stage resumes under the key it started with (or none, from before pending
    /// keys), and is cleared, its checkpoint first, under another or once it had finished; never
    /// while an `lt` command holds its folder.
    #[test]
    fn an_interrupted_stage_resumes_only_under_its_own_key() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("stage1");
        let s = stage(&dir, "a", None, Some("a"));
        assert!(resumes(&s) && !outdated(&s) && !is_done(&s));
        let s = stage(&dir, "a", None, None);
        assert!(resumes(&s) && !outdated(&s), "an interruption from before pending keys resumes");
        let s = stage(&dir, "a", None, Some("b"));
        assert!(!resumes(&s) && outdated(&s), "started under other inputs");
        let s = stage(&dir, "a", Some("b"), None);
        assert!(!resumes(&s) && outdated(&s), "finished under other inputs");
        let s = stage(&dir, "a", Some("a"), Some("a"));
        assert!(is_done(&s), "a pending key left by a crash after the key was written");
        let s = Stage { resumable: false, ..stage(&dir, "a", None, Some("a")) };
        assert!(!resumes(&s) && !outdated(&s));
        let names: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 2, "the checkpoint and the pending key, no temporary file: {names:?}");
        let lt = File::create(dir.join(".lt-lock")).unwrap();
        lt.lock().unwrap();
        let err = clear(&dir).unwrap_err().to_string();
        assert!(err.contains("in use by `lt`") && dir.join(CHECKPOINT).exists(), "{err}");
        drop(lt);
        clear(&dir).unwrap();
        assert!(!dir.exists());
    }
}
