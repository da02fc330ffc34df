//! An exclusive lock per run directory, held for a command's life, and the cleanup of
//! temporaries that dead writers left behind.
//!
//! [`RunLock::acquire`] takes an advisory `flock` on `<dir>/.lt-lock` and records the holder's
//! pid, command line and start time in it. A second writer (in another process, or a second
//! acquisition in the same one) gets [`LockError::Held`] naming the holder. The lock is released
//! when the [`RunLock`] is dropped and, by the kernel, when the process dies however it dies, so
//! a killed command never leaves a stale lock. The lock file itself stays (emptied): deleting it
//! would let two processes lock two different files of the same name.
//!
//! [`clean_stale_partials`] removes the temporary files and directories of [`crate::atomic`]
//! (`.<name>.partial-<pid>-<n>`) whose writer process no longer exists; call it while holding the
//! lock, at the start of a command.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use fs2::FileExt;
use serde::{Deserialize, Serialize};

/// Name of the lock file inside a run directory.
pub const LOCK_FILE: &str = ".lt-lock";

/// Who holds a run directory, as recorded in its lock file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// Process id.
    pub pid: u32,
    /// The command line it was started with.
    pub command: String,
    /// When it took the lock, in seconds since the Unix epoch.
    pub started_unix_s: u64,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "pid {} (`{}`, since {})", self.pid, self.command, utc(self.started_unix_s))
    }
}

/// Why a run directory could not be locked or cleaned.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another command holds the directory.
    #[error("{dir} is in use by {}; wait for it to finish or stop it", holder_words(.holder))]
    Held {
        /// The run directory.
        dir: PathBuf,
        /// The holder, when its lock file could be read (it is written just after locking).
        holder: Option<Holder>,
    },
    /// A file operation failed.
    #[error("{path}: {error}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        error: io::Error,
    },
}

fn holder_words(h: &Option<Holder>) -> String {
    match h {
        Some(h) => h.to_string(),
        None => "another process (its lock file does not name it yet)".into(),
    }
}

/// Result alias of this module.
pub type Result<T, E = LockError> = std::result::Result<T, E>;

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> LockError + '_ {
    move |error| LockError::Io { path: path.to_path_buf(), error }
}

/// An exclusive lock on a run directory; released on drop (and when the process dies).
#[derive(Debug)]
pub struct RunLock {
    dir: PathBuf,
    file: File,
    holder: Holder,
    /// Whether `acquire` created the directory (removed again on drop if nothing else was put
    /// in it, so a refused command leaves no trace).
    created: bool,
}

impl RunLock {
    /// Locks `dir` (created when missing) for this process, recording `command_line`.
    ///
    /// # Errors
    /// [`LockError::Held`] naming the holder's pid, command and start time when another
    /// [`RunLock`] (in this or another process) holds `dir`; [`LockError::Io`] when the directory
    /// or its lock file cannot be created or written.
    pub fn acquire(dir: &Path, command_line: impl Into<String>) -> Result<Self> {
        let created = !dir.exists();
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let path = dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_err(&path))?;
        if let Err(e) = FileExt::try_lock_exclusive(&file) {
            if e.kind() != fs2::lock_contended_error().kind() {
                return Err(io_err(&path)(e));
            }
            return Err(LockError::Held { dir: dir.to_path_buf(), holder: read_holder(&mut file) });
        }
        let holder =
            Holder { pid: std::process::id(), command: command_line.into(), started_unix_s: now_s() };
        let record = (|| {
            file.set_len(0)?;
            file.rewind()?;
            file.write_all(&serde_json::to_vec(&holder).map_err(io::Error::other)?)?;
            file.sync_data()
        })();
        record.map_err(io_err(&path))?;
        Ok(Self { dir: dir.to_path_buf(), file, holder, created })
    }

    /// Locks `dir` (created when missing) for this process's command line, then removes the
    /// temporaries dead writers left under it (each logged): the start of every command that
    /// writes into a run directory.
    ///
    /// # Errors
    /// As [`RunLock::acquire`] and [`clean_stale_partials`].
    pub fn acquire_and_clean(dir: &Path) -> Result<Self> {
        let lock = Self::acquire(dir, command_line())?;
        for path in clean_stale_partials(dir)? {
            tracing::info!("removed {}, left by a writer that no longer runs", path.display());
        }
        Ok(lock)
    }

    /// The holder of `dir`'s lock, or `None` when nobody holds it.
    ///
    /// # Errors
    /// [`LockError::Io`] when the lock file exists but cannot be opened.
    pub fn holder_of(dir: &Path) -> Result<Option<Holder>> {
        let path = dir.join(LOCK_FILE);
        let mut file = match OpenOptions::new().read(true).write(true).open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(&path)(e)),
        };
        match FileExt::try_lock_shared(&file) {
            // Nobody holds it (the shared lock is dropped with the file).
            Ok(()) => Ok(None),
            Err(_) => Ok(Some(read_holder(&mut file).unwrap_or(Holder {
                pid: 0,
                command: "(not recorded yet)".into(),
                started_unix_s: 0,
            }))),
        }
    }

    /// The locked directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What this lock recorded about its holder.
    pub fn holder(&self) -> &Holder {
        &self.holder
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        // Empty the record while still holding the lock; closing the file releases it.
        let _ = self.file.set_len(0);
        // A directory this lock created and nothing else filled (the command failed before
        // writing) is removed: the lock file first, then the directory if it is empty.
        let only_lock = || {
            fs::read_dir(&self.dir)
                .map(|entries| entries.flatten().all(|e| e.file_name() == LOCK_FILE))
                .unwrap_or(false)
        };
        if self.created && only_lock() {
            let _ = fs::remove_file(self.dir.join(LOCK_FILE));
            let _ = fs::remove_dir(&self.dir);
        }
    }
}

/// This process's command line, as recorded in lock files.
pub fn command_line() -> String {
    std::env::args().collect::<Vec<_>>().join(" ")
}

/// The holder recorded in an open lock file; retried briefly, since a new holder writes its
/// record just after taking the lock.
fn read_holder(file: &mut File) -> Option<Holder> {
    for attempt in 0..5 {
        let mut text = String::new();
        if file.rewind().is_ok() && file.read_to_string(&mut text).is_ok() {
            if let Ok(h) = serde_json::from_str(&text) {
                return Some(h);
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(10 << attempt));
    }
    None
}

fn now_s() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// `YYYY-MM-DD hh:mm:ss UTC` of a Unix time (the proleptic Gregorian calendar).
fn utc(unix_s: u64) -> String {
    let (days, secs) = (unix_s / 86_400, unix_s % 86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm, shifted to start in March).
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC", secs / 3600, secs / 60 % 60, secs % 60)
}

/// Whether a process with this id exists and has not ended: on Linux a zombie (a process that
/// has ended, killed say, and that its parent has not yet reaped) counts as gone, since it writes
/// nothing more. Elsewhere on Unix any process with the id counts; on other systems every
/// process counts as alive, so nothing is removed.
pub fn pid_alive(pid: u32) -> bool {
    exists(pid) && !ended(pid)
}

/// Whether `/proc` says process `pid` has ended but is not yet reaped (state `Z` or `X`).
fn ended(pid: u32) -> bool {
    if !cfg!(target_os = "linux") {
        return false;
    }
    // `pid (comm) S ...`: the state follows the last `)` (a command name may hold either).
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| stat.rsplit_once(')').map(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])))
        .unwrap_or(false)
}

/// Whether a process with this id exists (on Unix; elsewhere: true).
fn exists(pid: u32) -> bool {
    #[cfg(unix)]
    {
        // 0 and ids beyond `pid_t` would address process groups in kill(2): not a writer's pid.
        let Ok(pid) = libc::pid_t::try_from(pid) else { return true };
        if pid <= 0 {
            return true;
        }
        // SAFETY: kill(2) with signal 0 sends nothing; it only checks that `pid` exists and may
        // be signalled. It takes two integers and touches no memory of ours.
        let r = unsafe { libc::kill(pid, 0) };
        // EPERM: the process exists but belongs to another user.
        r == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
    }
    #[cfg(not(unix))]
    {
        let _ = pid;
        true
    }
}

/// Removes, under `dir` and its sub-directories, the temporaries of [`crate::atomic`]
/// (`.<name>.partial-<pid>-<n>`, files or directories) whose writer process is gone, and returns
/// what it removed. Temporaries of live processes (this one included) are kept. Symbolic links
/// are neither followed nor removed.
///
/// # Errors
/// [`LockError::Io`] when a directory cannot be listed or a stale temporary cannot be removed.
pub fn clean_stale_partials(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    clean_into(dir, &mut removed)?;
    removed.sort();
    Ok(removed)
}

fn clean_into(dir: &Path, removed: &mut Vec<PathBuf>) -> Result<()> {
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let path = entry.path();
        let kind = entry.file_type().map_err(io_err(&path))?;
        if kind.is_symlink() {
            continue;
        }
        let stale = entry
            .file_name()
            .to_str()
            .and_then(crate::atomic::parse_temp_name)
            .is_some_and(|(pid, _)| !pid_alive(pid));
        if stale {
            if kind.is_dir() { fs::remove_dir_all(&path) } else { fs::remove_file(&path) }
                .map_err(io_err(&path))?;
            removed.push(path);
        } else if kind.is_dir() {
            clean_into(&path, removed)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::BufRead;
    use std::process::{Command, Stdio};

    use super::*;

    /// Environment variable telling [`child_holds_the_lock`] which directory to lock.
    const CHILD_DIR: &str = "LT_LOCK_TEST_CHILD_DIR";
    /// What the child prints once it holds the lock (the test harness may prefix the line).
    const LOCKED: &str = "lt-lock-test: child holds the lock";

    #[test]
    fn a_second_acquisition_fails_naming_the_holder_and_drop_releases() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        let first = RunLock::acquire(&run, "lt train --out run").unwrap();
        assert_eq!(first.holder().pid, std::process::id());
        let err = RunLock::acquire(&run, "lt extract --run run").unwrap_err();
        let LockError::Held { holder: Some(h), .. } = &err else { panic!("{err:?}") };
        assert_eq!((h.pid, h.command.as_str()), (std::process::id(), "lt train --out run"));
        let msg = err.to_string();
        assert!(msg.contains(&format!("pid {}", std::process::id())), "{msg}");
        assert!(msg.contains("`lt train --out run`") && msg.contains("run is in use"), "{msg}");
        assert_eq!(RunLock::holder_of(&run).unwrap().unwrap().command, "lt train --out run");
        drop(first);
        assert_eq!(RunLock::holder_of(&run).unwrap(), None);
        let second = RunLock::acquire(&run, "lt extract --run run").unwrap();
        assert_eq!(second.holder().command, "lt extract --run run");
    }

    #[test]
    fn a_directory_the_lock_created_goes_if_left_empty_and_stays_otherwise() {
        let dir = tempfile::tempdir().unwrap();
        let (empty, used, existing) = (dir.path().join("a"), dir.path().join("b"), dir.path().join("c"));
        drop(RunLock::acquire(&empty, "refused").unwrap());
        assert!(!empty.exists());
        let lock = RunLock::acquire(&used, "wrote").unwrap();
        fs::write(used.join("out.txt"), "x").unwrap();
        drop(lock);
        assert!(used.join("out.txt").exists() && used.join(LOCK_FILE).exists());
        fs::create_dir(&existing).unwrap();
        drop(RunLock::acquire(&existing, "refused").unwrap());
        assert!(existing.join(LOCK_FILE).exists(), "a directory found is left as found, lock file aside");
    }

    /// Run by [`a_lock_held_by_another_process_is_refused_and_freed_when_it_dies`] in a child
    /// process: locks the directory, says so, and waits for its stdin to close.
    #[test]
    #[ignore = "helper: runs only as the child of another test"]
    fn child_holds_the_lock() {
        let Some(dir) = std::env::var_os(CHILD_DIR) else { return };
        let _lock = RunLock::acquire(Path::new(&dir), "child --holds").unwrap();
        println!("{LOCKED}");
        let _ = io::stdin().read_line(&mut String::new());
    }

    #[test]
    fn a_lock_held_by_another_process_is_refused_and_freed_when_it_dies() {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--ignored",
                "--exact",
                "lock::tests::child_holds_the_lock",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_DIR, dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        while !line.contains(LOCKED) {
            line.clear();
            assert!(out.read_line(&mut line).unwrap() > 0, "the child exited without locking");
        }
        let err = RunLock::acquire(dir.path(), "parent").unwrap_err();
        let LockError::Held { holder: Some(h), .. } = &err else { panic!("{err:?}") };
        assert_eq!((h.pid, h.command.as_str()), (child.id(), "child --holds"));
        // Killed, not dropped: the kernel releases the lock.
        child.kill().unwrap();
        child.wait().unwrap();
        let lock = RunLock::acquire(dir.path(), "parent").unwrap();
        assert_eq!(lock.holder().pid, std::process::id());
    }

    /// A pid that no process has: past Linux's pid_max limit (2^22).
    const DEAD_PID: u32 = 4_194_305;

    /// A child that has exited but is not yet reaped is gone, as a writer (a killed `lt` whose
    /// parent has not waited for it yet left its temporary behind when a resume came at once).
    #[cfg(target_os = "linux")]
    #[test]
    fn an_ended_process_not_yet_reaped_is_not_alive() {
        let mut running = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        assert!(pid_alive(running.id()));
        running.kill().unwrap();
        running.wait().unwrap();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let stat = format!("/proc/{}/stat", child.id());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !fs::read_to_string(&stat).unwrap().contains(") Z") {
            assert!(std::time::Instant::now() < deadline, "the child did not end");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(!pid_alive(child.id()), "a zombie counted as a live writer");
        child.wait().unwrap();
    }

    #[test]
    fn stale_partials_of_dead_writers_are_removed_and_live_ones_kept() {
        assert!(pid_alive(std::process::id()));
        assert!(!pid_alive(DEAD_PID));
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let me = std::process::id();
        fs::create_dir_all(d.join("seed-0/stage2")).unwrap();
        let dead_file = d.join(format!(".features.safetensors.partial-{DEAD_PID}-0"));
        let dead_deep = d.join(format!("seed-0/stage2/.head.safetensors.partial-{DEAD_PID}-7"));
        let dead_dir = d.join(format!(".cifar-10-batches-bin.partial-{DEAD_PID}-1"));
        let live_file = d.join(format!(".split.safetensors.partial-{me}-3"));
        let keep = [d.join("split.safetensors"), d.join("seed-0/.hidden"), d.join(".x.partial-abc-1")];
        for f in [&dead_file, &dead_deep, &live_file].into_iter().chain(&keep) {
            fs::write(f, b"x").unwrap();
        }
        fs::create_dir_all(dead_dir.join("inner")).unwrap();
        fs::write(dead_dir.join("inner/data_batch_1.bin"), b"x").unwrap();

        let removed = clean_stale_partials(d).unwrap();
        let mut want = vec![dead_dir.clone(), dead_file.clone(), dead_deep.clone()];
        want.sort();
        assert_eq!(removed, want);
        for p in &want {
            assert!(!p.exists(), "{}", p.display());
        }
        assert!(live_file.exists(), "a live writer's temporary was removed");
        for p in &keep {
            assert!(p.exists(), "{}", p.display());
        }
        assert_eq!(clean_stale_partials(d).unwrap(), Vec::<PathBuf>::new());
    }

    #[test]
    fn start_times_print_as_utc_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(1_795_000_000 + 3_723), "2026-11-18 12:08:43 UTC");
    }
}
