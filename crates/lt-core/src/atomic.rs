//! Atomic file and directory writes.
//!
//! A file is written to a temporary sibling, flushed to disk and renamed over its destination, so
//! that a reader (or a resumed run) sees either the previous complete file or the new complete
//! file, never a half-written one. A failed write (full disk, an error in the writer callback)
//! removes the temporary file and leaves the destination untouched.

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A temporary path next to `path`, unique within this process.
pub fn temp_sibling(path: &Path) -> PathBuf {
    let name =
        path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "file".to_string());
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let tmp = format!(".{name}.partial-{}-{n}", std::process::id());
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.join(tmp),
        _ => PathBuf::from(tmp),
    }
}

/// The writer's process id and counter of a temporary name made by [`temp_sibling`]
/// (`.<name>.partial-<pid>-<n>`), or `None` for any other file name.
pub fn parse_temp_name(file_name: &str) -> Option<(u32, u64)> {
    let (head, tail) = file_name.strip_prefix('.')?.rsplit_once(".partial-")?;
    if head.is_empty() {
        return None;
    }
    let (pid, n) = tail.split_once('-')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(pid) || !digits(n) {
        return None;
    }
    Some((pid.parse().ok()?, n.parse().ok()?))
}

/// Writes `path` atomically: `write` fills a buffered writer on a temporary sibling, which is
/// synced and renamed over `path` only when `write` succeeds.
pub fn write_atomic<F>(path: &Path, write: F) -> io::Result<()>
where
    F: FnOnce(&mut BufWriter<File>) -> io::Result<()>,
{
    if let Some(parent) = path.parent() {
        if !parent.as_os_str().is_empty() {
            fs::create_dir_all(parent)?;
        }
    }
    let tmp = temp_sibling(path);
    let result = (|| {
        let file = File::create(&tmp)?;
        let mut w = BufWriter::with_capacity(1 << 20, file);
        write(&mut w)?;
        w.flush()?;
        let file = w.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, path)?;
        sync_parent(path);
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Writes `bytes` to `path` atomically.
pub fn write_bytes_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomic(path, |w| w.write_all(bytes))
}

/// Fills a fresh temporary directory next to `dest` with `fill` and renames it to `dest` when
/// `fill` succeeds. `dest` must not exist yet; on failure the temporary directory is removed.
pub fn create_dir_atomic<F>(dest: &Path, fill: F) -> io::Result<()>
where
    F: FnOnce(&Path) -> io::Result<()>,
{
    if dest.exists() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} already exists", dest.display()),
        ));
    }
    if let Some(parent) = dest.parent() {
        if !parent.as_os_str().is_empty() {
            fs::create_dir_all(parent)?;
        }
    }
    let tmp = temp_sibling(dest);
    fs::create_dir_all(&tmp)?;
    let result = fill(&tmp).and_then(|()| fs::rename(&tmp, dest));
    if result.is_err() {
        let _ = fs::remove_dir_all(&tmp);
    } else {
        sync_parent(dest);
    }
    result
}

fn sync_parent(path: &Path) {
    if let Some(parent) = path.parent() {
        let parent = if parent.as_os_str().is_empty() { Path::new(".") } else { parent };
        if let Ok(dir) = File::open(parent) {
            let _ = dir.sync_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_write_keeps_previous_file_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.bin");
        write_bytes_atomic(&path, b"first").unwrap();
        let err = write_atomic(&path, |w| {
            w.write_all(b"half")?;
            Err(io::Error::other("disk full"))
        })
        .unwrap_err();
        assert_eq!(err.to_string(), "disk full");
        assert_eq!(fs::read(&path).unwrap(), b"first");
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 1, "temporary left behind: {names:?}");
    }

    #[test]
    fn temporary_names_parse_back_and_nothing_else_does() {
        let tmp = temp_sibling(Path::new("run/split.safetensors"));
        let name = tmp.file_name().unwrap().to_str().unwrap();
        let (pid, _) = parse_temp_name(name).unwrap();
        assert_eq!(pid, std::process::id());
        assert_eq!(parse_temp_name(".a.partial-12-3"), Some((12, 3)));
        // A name that itself contains `.partial-`: the last one counts.
        assert_eq!(parse_temp_name(".x.partial-1-2.partial-34-5"), Some((34, 5)));
        for other in [
            "a.partial-12-3",
            "..partial-12-3",
            ".a.partial-12",
            ".a.partial--3",
            ".a.partial-12-",
            ".a.partial-1x-3",
            ".a.partial-12-3-4",
            ".a.partial-99999999999-3",
            "split.safetensors",
        ] {
            assert_eq!(parse_temp_name(other), None, "{other}");
        }
    }

    #[test]
    fn failed_directory_fill_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("extracted");
        let err = create_dir_atomic(&dest, |tmp| {
            fs::write(tmp.join("x"), b"1")?;
            Err(io::Error::other("cut"))
        });
        assert!(err.is_err());
        assert!(!dest.exists());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
        create_dir_atomic(&dest, |tmp| fs::write(tmp.join("x"), b"1")).unwrap();
        assert_eq!(fs::read(dest.join("x")).unwrap(), b"1");
    }
}
