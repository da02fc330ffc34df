//! Pretrained backbones from the Hugging Face hub (e.g. `timm/resnet50.tv_in1k`).
//!
//! The cache is the standard one (`HF_HUB_CACHE`, else `HF_HOME/hub`, else
//! `~/.cache/huggingface/hub`), laid out as `models--<org>--<name>/refs/<revision>` (a commit id)
//! and `models--<org>--<name>/snapshots/<commit>/<file>`. In offline mode (`HF_HUB_OFFLINE=1` or
//! [`HubOptions::offline`]) only the cache is read and the network is never touched. Online, files
//! come from [`HubOptions::endpoint`], else `HF_ENDPOINT` (a mirror), else `https://huggingface.co`,
//! and a downloaded large (LFS) file is checked against the SHA-256 the hub names it by.

use std::path::{Path, PathBuf};

use hf_hub::{Repo, RepoType};

use crate::error::{ModelError, Result};

/// Where and how to fetch hub files.
#[derive(Clone, Debug, Default)]
pub struct HubOptions {
    /// Cache directory (default: the standard resolution).
    pub cache_dir: Option<PathBuf>,
    /// Never touch the network.
    pub offline: bool,
    /// Revision (branch, tag or commit; default `main`).
    pub revision: Option<String>,
    /// The hub's address (default: `HF_ENDPOINT`, else [`DEFAULT_ENDPOINT`]).
    pub endpoint: Option<String>,
}

/// The Hugging Face hub's address, where neither [`HubOptions::endpoint`] nor `HF_ENDPOINT` names
/// another.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// The hub address `opts` name: [`HubOptions::endpoint`], else `HF_ENDPOINT`, else
/// [`DEFAULT_ENDPOINT`]; without a trailing `/`.
pub fn endpoint(opts: &HubOptions) -> String {
    endpoint_from(opts, std::env::var("HF_ENDPOINT").ok())
}

/// [`endpoint`] with `HF_ENDPOINT`'s value given (an empty address counts as none).
fn endpoint_from(opts: &HubOptions, env: Option<String>) -> String {
    let given = |e: &Option<String>| e.clone().filter(|e| !e.trim().is_empty());
    let e = given(&opts.endpoint).or_else(|| given(&env));
    e.as_deref().unwrap_or(DEFAULT_ENDPOINT).trim().trim_end_matches('/').to_string()
}

/// The standard cache directory: `HF_HUB_CACHE`, `HF_HOME/hub`, `~/.cache/huggingface/hub`.
pub fn default_cache_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("HF_HUB_CACHE") {
        return PathBuf::from(p);
    }
    if let Some(p) = std::env::var_os("HF_HOME") {
        return PathBuf::from(p).join("hub");
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("huggingface").join("hub")
}

/// Whether `HF_HUB_OFFLINE` asks for offline mode.
pub fn offline_from_env() -> bool {
    matches!(std::env::var("HF_HUB_OFFLINE").as_deref(), Ok("1") | Ok("true") | Ok("TRUE") | Ok("True"))
}

/// The cache folder (`opts.cache_dir`, else the standard one) and the revision (`main` unless
/// given) that `opts` name.
fn cache_and_revision(opts: &HubOptions) -> (PathBuf, &str) {
    (opts.cache_dir.clone().unwrap_or_else(default_cache_dir), opts.revision.as_deref().unwrap_or("main"))
}

/// A model repository's folder in the cache: `models--<org>--<name>`.
fn repo_folder(repo_id: &str) -> String {
    format!("models--{}", repo_id.replace('/', "--"))
}

/// The local path of `filename` in model repository `repo_id` if the cache holds it, at the
/// commit `refs/<revision>` names (surrounding whitespace ignored) or, for a revision that is
/// itself a commit and has no ref (a pinned download), at that commit; never the network.
pub fn cached(repo_id: &str, filename: &str, opts: &HubOptions) -> Option<PathBuf> {
    let (cache_dir, revision) = cache_and_revision(opts);
    let repo_dir = cache_dir.join(repo_folder(repo_id));
    let is_commit = revision.len() == 40 && revision.bytes().all(|b| b.is_ascii_hexdigit());
    let commit = match std::fs::read_to_string(repo_dir.join("refs").join(revision)) {
        Ok(c) => c.trim().to_string(),
        Err(_) if is_commit => revision.to_string(),
        Err(_) => return None,
    };
    let path = repo_dir.join("snapshots").join(commit).join(filename);
    path.is_file().then_some(path)
}

/// The local path of `filename` in model repository `repo_id`, downloading it unless offline.
pub fn fetch(repo_id: &str, filename: &str, opts: &HubOptions) -> Result<PathBuf> {
    if let Some(p) = cached(repo_id, filename, opts) {
        return Ok(p);
    }
    let (cache_dir, revision) = cache_and_revision(opts);
    if opts.offline || offline_from_env() {
        return Err(ModelError::Hub(format!(
            "{repo_id}/{filename} (revision {revision}) is not in the offline cache {}; run once online or copy it there \
             ({}/snapshots/<commit>/{filename} with refs/{revision} naming the commit)",
            cache_dir.display(),
            repo_folder(repo_id),
        )));
    }
    let endpoint = endpoint(opts);
    let what = format!("{repo_id}/{filename} (revision {revision}) from {endpoint}");
    let repo_dir = cache_dir.join(repo_folder(repo_id));
    let repo = Repo::with_revision(repo_id.to_string(), RepoType::Model, revision.to_string());
    // The token: `HF_TOKEN`, else the `token` file beside the cache folder (as `huggingface-cli
    // login` writes it). `ApiBuilder::new` would read the home folder's instead, and panic
    // without a home folder.
    let token = std::env::var("HF_TOKEN").ok().filter(|t| !t.trim().is_empty());
    let mut builder = hf_hub::api::sync::ApiBuilder::from_cache(hf_hub::Cache::new(cache_dir));
    if let Some(t) = token {
        builder = builder.with_token(Some(t.trim().to_string()));
    }
    let api = builder
        .with_endpoint(endpoint)
        .with_progress(false)
        .build()
        .map_err(|e| ModelError::HubApi { what: "the hub client".into(), source: e })?;
    let path =
        api.repo(repo).get(filename).map_err(|e| ModelError::HubApi { what: what.clone(), source: e })?;
    verify_download(&path, &repo_dir.join("blobs"), &what)?;
    Ok(path)
}

/// Checks a downloaded file against the hub's name for it. The snapshot entry links to
/// `blobs/<etag>`, and a large (LFS) file's etag is the SHA-256 of its bytes: a file whose bytes
/// do not hash to it (a proxy's error page, a corrupted transfer) is removed, link and blob, and
/// refused, so that the next run downloads it again instead of finding it in the cache. Not
/// checked: a small file (its etag is a git object id), an entry that is no link (where the hub
/// client copies instead of linking), and a link out of the repository's `blobs` folder (made by
/// hand; never removed).
fn verify_download(path: &Path, blobs: &Path, what: &str) -> Result<()> {
    let Ok(target) = std::fs::read_link(path) else { return Ok(()) };
    let Some(etag) = target.file_name().and_then(|n| n.to_str()) else { return Ok(()) };
    if etag.len() != 64 || !etag.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(());
    }
    let blob = path.parent().map(|p| p.join(&target)).unwrap_or_else(|| target.clone());
    let folder = blob.parent().and_then(|d| d.canonicalize().ok());
    if folder.is_none() || folder != blobs.canonicalize().ok() {
        return Ok(());
    }
    let got = lt_core::fingerprint::file_digest::<sha2::Sha256>(&blob)
        .map_err(|e| ModelError::Hub(format!("{what}: reading the download {}: {e}", blob.display())))?;
    if got.eq_ignore_ascii_case(etag) {
        return Ok(());
    }
    let _ = std::fs::remove_file(path);
    let _ = std::fs::remove_file(&blob);
    Err(ModelError::Hub(format!(
        "{what}: the downloaded bytes have SHA-256 {got}, the hub names the file {etag}; the download \
         was removed from the cache (run again to download it afresh)"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_address_is_the_options_then_hf_endpoint_then_the_hub() {
        let none = HubOptions::default();
        let given = HubOptions { endpoint: Some("http://mirror.example/".into()), ..Default::default() };
        let env = |e: &str| Some(e.to_string());
        assert_eq!(endpoint_from(&none, None), DEFAULT_ENDPOINT);
        assert_eq!(endpoint_from(&none, env("https://hf-mirror.example/ ")), "https://hf-mirror.example");
        assert_eq!(endpoint_from(&given, env("https://hf-mirror.example")), "http://mirror.example");
        // An empty address, given or in the environment, is none.
        let empty = HubOptions { endpoint: Some(" ".into()), ..Default::default() };
        assert_eq!(endpoint_from(&empty, env("")), DEFAULT_ENDPOINT);
        assert_eq!(endpoint_from(&empty, env("https://hf-mirror.example")), "https://hf-mirror.example");
    }
}
