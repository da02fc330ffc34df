//! Project automation behind `cargo xtask`: the reproduction pipeline, benchmarks and the CUDA
//! build. The pipeline drives the `lt` binary's subcommands through the run directory's
//! artifacts, exactly as a user could by hand.

#![warn(missing_docs)]

pub mod bench;
pub mod cuda;
pub mod estimate;
pub mod pretrained;
pub mod reproduce;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// The workspace root (the parent of `xtask/`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_path_buf()
}

/// Builds the `lt` binary in release mode (with `features`) and returns its path.
pub fn build_lt(root: &Path, features: &[&str]) -> Result<PathBuf> {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(root).args(["build", "--release", "-p", "lt-cli"]);
    if !features.is_empty() {
        cmd.arg("--features").arg(features.join(","));
    }
    eprintln!(
        "building the `lt` binary (release{})",
        if features.is_empty() { String::new() } else { format!(", features {}", features.join(",")) }
    );
    let status = cmd.status().context("running cargo build")?;
    if !status.success() {
        bail!("building the `lt` binary failed");
    }
    Ok(target_dir(root).join("release").join(format!("lt{}", std::env::consts::EXE_SUFFIX)))
}

/// Cargo's target directory: `$CARGO_TARGET_DIR` (relative to the workspace root) or `target/`.
pub fn target_dir(root: &Path) -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) => root.join(d),
        None => root.join("target"),
    }
}
