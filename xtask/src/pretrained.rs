//! The identity of a preset's pretrained start (`[train] init`) for stage 1's key, as the `lt`
//! binary resolves it (`lt backbone init`, the same code as `lt train --init`): for
//! `hub:<org>/<name>[@revision][:file]` the cached file, for a path the file, each named by its
//! SHA-256. Here it keeps `.stage-key` honest, so that other weights under the same name re-run
//! stage 1.

use std::path::Path;

use anyhow::{bail, Result};

/// `lt backbone init SPEC [ARGS]`: the init's JSON (`null` for a hub file not in the cache with
/// `--cached-only`); with `show_messages`, `lt`'s messages (a download's progress) go to the
/// terminal.
fn resolve(lt: &Path, spec: &str, args: &[&str], show_messages: bool) -> Result<serde_json::Value> {
    crate::lt_json(lt, &[&["backbone", "init", spec][..], args].concat(), show_messages)
}

/// The identity of `spec` (see the module docs) from the cache alone; a hub init that is not
/// cached yet is named by its spec and marked so (the first run fetches it, and the next plan then
/// names the file).
pub fn identity(lt: &Path, spec: &str) -> Result<String> {
    let v = resolve(lt, spec, &["--cached-only"], false)?;
    if v.is_null() {
        return Ok(format!("{spec} (not cached)"));
    }
    match v["sha256"].as_str() {
        Some(sha) => Ok(format!("{spec} {sha}")),
        None => bail!("`lt backbone init {spec}` printed no sha256: {v}"),
    }
}

/// Whether the hub init `spec` is in the cache (`lt backbone init --cached-only` names a file).
fn cached(lt: &Path, spec: &str) -> Result<bool> {
    Ok(!resolve(lt, spec, &["--cached-only"], false)?.is_null())
}

/// Fetches a hub init into the cache unless it is there (offline: fails naming the cache), so
/// that the plan names the file it trains from.
pub fn fetch(lt: &Path, spec: &str) -> Result<()> {
    if !cached(lt, spec)? {
        println!("fetching {spec} into the hub cache");
        resolve(lt, spec, &[], true)?;
    }
    Ok(())
}

/// Says (for a dry run) when a hub init `spec` is not in the cache: the run fetches it first
/// (and stops there offline).
pub fn tell_if_not_cached(lt: &Path, spec: &str) -> Result<()> {
    if spec.starts_with("hub:") && !cached(lt, spec)? {
        println!(
            "the starting weights {spec} are not in the hub cache: the run fetches them first \
             (with HF_HUB_OFFLINE set it stops there; `lt backbone init {spec}` names the cache)"
        );
    }
    Ok(())
}
