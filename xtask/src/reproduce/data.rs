//! The identity of a preset's data for stage 1's key, as the `lt` binary loads it (`lt data
//! fingerprint`: the split fingerprint `lt train` records, of the split's indices and labels and,
//! for an image folder, its files). Here it keeps `.stage-key` honest: a folder whose images
//! changed, or a split drawn by other rules, re-runs stage 1, where a key of the preset's text
//! alone would hand the old backbone to `lt extract`, which refuses it.

use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

/// The identity of the data `preset_file` names (`lt data fingerprint`; its messages and any
/// download's progress go to the terminal). With `available_only` nothing is downloaded, and data
/// whose files are not there yet are named so (the plan of a dry run before the first download).
pub fn identity(lt: &Path, preset_file: &Path, available_only: bool) -> Result<String> {
    let mut cmd = Command::new(lt);
    cmd.args(["data", "fingerprint", "--preset-file"]).arg(preset_file);
    if available_only {
        cmd.arg("--available-only");
    }
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {} data fingerprint", lt.display()))?;
    if !out.status.success() {
        bail!("`lt data fingerprint --preset-file {}` failed ({})", preset_file.display(), out.status);
    }
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("reading `lt data fingerprint`'s output")?;
    if v.is_null() {
        return Ok("(data not at hand)".into());
    }
    match (v["dataset"].as_str(), v["fingerprint"].as_str()) {
        (Some(name), Some(fp)) => Ok(format!("{name} {fp}")),
        _ => bail!("`lt data fingerprint` printed {v}, expected a dataset and a fingerprint"),
    }
}
