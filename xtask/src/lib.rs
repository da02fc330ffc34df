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

/// Builds the `lt` binary in release mode (with `features`) and returns its path. Without
/// `avx512_gemm` (`lt`'s default feature of that name, the `gemm` crate's AVX-512 micro-kernels)
/// it builds in its own target directory (`<target>/no-avx512-gemm`), so that the usual build
/// stays as it is.
pub fn build_lt(root: &Path, features: &[&str], avx512_gemm: bool) -> Result<PathBuf> {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(root).args(["build", "--release", "-p", "lt-cli"]);
    if !features.is_empty() {
        cmd.arg("--features").arg(features.join(","));
    }
    let mut target = target_dir(root);
    if !avx512_gemm {
        target = target.join("no-avx512-gemm");
        cmd.arg("--no-default-features").arg("--target-dir").arg(&target);
    }
    eprintln!(
        "building the `lt` binary (release{}{})",
        if features.is_empty() { String::new() } else { format!(", features {}", features.join(",")) },
        if avx512_gemm { "" } else { ", without avx512-gemm" }
    );
    let status = cmd.status().context("running cargo build")?;
    if !status.success() {
        bail!("building the `lt` binary failed");
    }
    Ok(target.join("release").join(format!("lt{}", std::env::consts::EXE_SUFFIX)))
}

/// Cargo's target directory: `$CARGO_TARGET_DIR` (relative to the workspace root) or `target/`.
pub fn target_dir(root: &Path) -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) => root.join(d),
        None => root.join("target"),
    }
}
