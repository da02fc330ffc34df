//! The identity of a preset's data for stage 1's key, as the `lt` binary loads it (`lt data
//! fingerprint`: the split fingerprint `lt train` records, of the split's indices and labels and,
//! for an image folder, its files). Here it keeps `.stage-key` honest: a folder whose images
//! changed, or a split drawn by other rules, re-runs stage 1, where a key of the preset's text
//! alone would hand the old backbone to `lt extract`, which refuses it.

use std::path::Path;

use anyhow::{bail, Result};

/// The identity of the data `preset_file` names (`lt data fingerprint`; its messages and any
/// download's progress go to the terminal). With `available_only` nothing is downloaded, and
/// data whose files are not there yet are `None` (the plan of a dry run before the first
/// download).
pub fn identity(lt: &Path, preset_file: &Path, available_only: bool) -> Result<Option<String>> {
    let mut args =
        vec!["data".as_ref(), "fingerprint".as_ref(), "--preset-file".as_ref(), preset_file.as_os_str()];
    if available_only {
        args.push("--available-only".as_ref());
    }
    let v = crate::lt_json(lt, &args, true)?;
    if v.is_null() {
        return Ok(None);
    }
    match (v["dataset"].as_str(), v["fingerprint"].as_str()) {
        (Some(name), Some(fp)) => Ok(Some(format!("{name} {fp}"))),
        _ => bail!("`lt data fingerprint` printed {v}, expected a dataset and a fingerprint"),
    }
}
