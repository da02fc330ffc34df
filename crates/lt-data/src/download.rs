//! Verified downloads and atomic extraction.
//!
//! A download streams into a temporary file beside its destination while computing the MD5 (and
//! SHA-256) digest; only a complete file whose digest matches the published one is renamed into
//! place. An archive is extracted into a temporary directory that is renamed to its final name
//! only when every member was written, so an interrupted download or extraction never leaves a
//! data set that looks complete.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use md5::{Digest as _, Md5};

use crate::error::{io_err, DataError, Result};

/// A file published at a URL with its MD5 digest.
#[derive(Clone, Debug)]
pub struct RemoteFile {
    /// Full URL.
    pub url: String,
    /// Published MD5 digest (lower-case hex).
    pub md5: String,
}

/// MD5 of a file, lower-case hex.
pub fn md5_file(path: &Path) -> Result<String> {
    lt_core::fingerprint::file_digest::<Md5>(path).map_err(io_err(path))
}

/// Downloads `remote` to `dest` unless `dest` already exists with the right digest.
///
/// The body streams into a temporary sibling; a short body (connection cut), an HTTP error or a
/// digest mismatch removes the temporary file and returns an error, leaving `dest` absent.
pub fn download_verified(remote: &RemoteFile, dest: &Path) -> Result<()> {
    if dest.exists() {
        let found = md5_file(dest)?;
        if found == remote.md5 {
            return Ok(());
        }
        tracing::warn!(
            "{} exists but its MD5 is {found}, expected {}; downloading again",
            dest.display(),
            remote.md5
        );
    }
    if let Some(parent) = dest.parent() {
        fs::create_dir_all(parent).map_err(io_err(parent))?;
    }
    let tmp = lt_core::atomic::temp_sibling(dest);
    let result = fetch_into(remote, &tmp);
    match result {
        Ok(()) => fs::rename(&tmp, dest).map_err(io_err(dest)),
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
}

fn fetch_into(remote: &RemoteFile, tmp: &Path) -> Result<()> {
    let dl_err = |detail: String| DataError::Download { url: remote.url.clone(), detail };
    tracing::info!("downloading {}", remote.url);
    let resp = ureq::get(&remote.url).call().map_err(|e| dl_err(e.to_string()))?;
    let expected_len: Option<u64> = resp.header("Content-Length").and_then(|v| v.parse().ok());
    let mut reader = resp.into_reader();
    let mut file = File::create(tmp).map_err(io_err(tmp))?;
    let mut hasher = Md5::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total: u64 = 0;
    let mut progress = lt_core::progress::Progress::new(
        format!("download {}", remote.url.rsplit('/').next().unwrap_or("")),
        expected_len.unwrap_or(0),
    );
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(dl_err(format!("connection failed after {total} bytes: {e}"))),
        };
        hasher.update(&buf[..n]);
        file.write_all(&buf[..n]).map_err(io_err(tmp))?;
        total += n as u64;
        progress.inc(n as u64);
    }
    if let Some(len) = expected_len {
        if total != len {
            return Err(dl_err(format!("connection closed after {total} of {len} bytes")));
        }
    }
    file.sync_all().map_err(io_err(tmp))?;
    let found = hex::encode(hasher.finalize());
    if found != remote.md5 {
        return Err(DataError::Checksum {
            path: remote.url.clone(),
            algorithm: "md5",
            expected: remote.md5.clone(),
            found,
        });
    }
    Ok(())
}

/// Extracts the `.tar.gz` `archive` so that `dest` appears atomically with its content.
///
/// Members are written into a temporary directory beside `dest` (paths outside it are refused)
/// which is renamed to `dest` when extraction completes. `strip` leading path components are
/// removed from member names (1 turns `cifar-10-batches-bin/x.bin` into `x.bin`).
pub fn extract_tar_gz_atomic(archive: &Path, dest: &Path, strip: usize) -> Result<()> {
    let file = File::open(archive).map_err(io_err(archive))?;
    let fmt_err = |e: io::Error| DataError::Format {
        path: archive.to_path_buf(),
        detail: format!("bad tar.gz archive: {e}"),
    };
    lt_core::atomic::create_dir_atomic(dest, |tmp| {
        let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(file));
        for entry in ar.entries()? {
            let mut entry = entry?;
            if !entry.header().entry_type().is_file() {
                continue;
            }
            let path: PathBuf = entry.path()?.components().skip(strip).collect();
            if path.as_os_str().is_empty() {
                continue;
            }
            if path.components().any(|c| !matches!(c, std::path::Component::Normal(_))) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("unsafe member path {}", path.display()),
                ));
            }
            let out = tmp.join(&path);
            if let Some(parent) = out.parent() {
                fs::create_dir_all(parent)?;
            }
            let mut f = File::create(&out)?;
            io::copy(&mut entry, &mut f)?;
        }
        Ok(())
    })
    .map_err(|e| if dest.exists() { io_err(dest)(e) } else { fmt_err(e) })
}

/// Reads every regular member of a `.tar.gz` archive that `want` accepts, returning `(file name,
/// bytes)` pairs (used to read CIFAR straight from the official archive).
///
/// `want(file name)` returns `None` to skip a member, or `Some(max)`: the largest size in bytes
/// the caller accepts for it. A member whose header announces more, or whose data ends before
/// the size its header announces, is an error naming the archive and the member; memory is
/// reserved only for sizes within `max`, never for what an unchecked header says.
pub fn read_tar_gz_members(
    archive: &Path,
    want: impl Fn(&str) -> Option<u64>,
) -> Result<Vec<(String, Vec<u8>)>> {
    let fmt_err = |e: io::Error| DataError::Format {
        path: archive.to_path_buf(),
        detail: format!("bad tar.gz archive: {e}"),
    };
    let member_err = |name: &str, detail: String| DataError::Format {
        path: archive.to_path_buf(),
        detail: format!("member {name}: {detail}"),
    };
    let file = File::open(archive).map_err(io_err(archive))?;
    let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(file));
    let mut out = Vec::new();
    for entry in ar.entries().map_err(fmt_err)? {
        let mut entry = entry.map_err(fmt_err)?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = entry
            .path()
            .map_err(fmt_err)?
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let Some(max) = want(&name) else { continue };
        let size = entry.size();
        if size > max {
            return Err(member_err(&name, format!("{size} bytes, more than the {max} expected")));
        }
        let len = usize::try_from(size).map_err(|_| member_err(&name, format!("{size} bytes")))?;
        let mut buf = Vec::with_capacity(len);
        entry.read_to_end(&mut buf).map_err(fmt_err)?;
        if buf.len() != len {
            return Err(member_err(&name, format!("truncated: {} of {size} bytes", buf.len())));
        }
        out.push((name, buf));
    }
    Ok(out)
}
