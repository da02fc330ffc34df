//! The identity of a preset's pretrained start (`[train] init`) for stage 1's key: the SHA-256 of
//! a local file, or for `hub:<org>/<name>[@revision][:file]` the commit the revision names in the
//! hub cache (`models--<org>--<name>/refs/<revision>`) and the cached file's SHA-256. The `lt`
//! binary records the same identity in the run's fingerprint; here it keeps `.stage-key`
//! honest, so that other weights under the same name re-run stage 1.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

/// The standard hub cache directory: `HF_HUB_CACHE`, `HF_HOME/hub`, `~/.cache/huggingface/hub`.
pub fn hub_cache_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("HF_HUB_CACHE") {
        return PathBuf::from(p);
    }
    if let Some(p) = std::env::var_os("HF_HOME") {
        return PathBuf::from(p).join("hub");
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("huggingface").join("hub")
}

fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// The cached file of a hub init, if it is in the cache (`None` otherwise: `lt train` fetches
/// it, or says why it cannot).
pub fn hub_file(spec: &str) -> Option<PathBuf> {
    let rest = spec.strip_prefix("hub:")?;
    let (repo_rev, file) = rest.split_once(':').unwrap_or((rest, "model.safetensors"));
    let (repo, rev) = repo_rev.split_once('@').unwrap_or((repo_rev, "main"));
    let dir = hub_cache_dir().join(format!("models--{}", repo.replace('/', "--")));
    let commit = match std::fs::read_to_string(dir.join("refs").join(rev)) {
        Ok(c) => c.trim().to_string(),
        Err(_) => rev.to_string(),
    };
    let path = dir.join("snapshots").join(commit).join(file);
    path.is_file().then_some(path)
}

/// The `lt backbone info` arguments that fetch a hub init into the cache (for `arch`), so that
/// the plan can name the file before stage 1 runs; `None` for a local file.
pub fn fetch_args(spec: &str, arch: &str) -> Option<Vec<String>> {
    let rest = spec.strip_prefix("hub:")?;
    let (repo_rev, file) = rest.split_once(':').unwrap_or((rest, "model.safetensors"));
    let mut args: Vec<String> = vec!["backbone".into(), "info".into(), "--arch".into(), arch.into()];
    let (repo, rev) = match repo_rev.split_once('@') {
        Some((r, v)) => (r, Some(v)),
        None => (repo_rev, None),
    };
    args.extend(["--hub".into(), repo.into(), "--file".into(), file.into()]);
    if let Some(v) = rev {
        args.extend(["--revision".into(), v.into()]);
    }
    Some(args)
}

/// The identity of `spec` (see the module docs); a hub init that is not cached yet is named by
/// its spec and marked so (the first run fetches it, and the next plan then names the file).
pub fn identity(spec: &str) -> Result<String> {
    if spec.starts_with("hub:") {
        return Ok(match hub_file(spec) {
            Some(p) => format!("{spec} {}", sha256_file(&p)?),
            None => format!("{spec} (not cached)"),
        });
    }
    Ok(format!("{spec} {}", sha256_file(Path::new(spec))?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_local_init_is_identified_by_its_content() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("w.safetensors");
        std::fs::write(&p, b"one").unwrap();
        let spec = p.display().to_string();
        let a = identity(&spec).unwrap();
        std::fs::write(&p, b"two").unwrap();
        assert_ne!(identity(&spec).unwrap(), a);
        assert!(identity("/nonexistent.safetensors").unwrap_err().to_string().contains("/nonexistent"));
    }
}
