//! Project automation behind `cargo xtask`: the reproduction pipeline, benchmarks and the CUDA
//! build. The pipeline drives the `lt` binary's subcommands through the run directory's
//! artifacts, exactly as a user could by hand.

#![warn(missing_docs)]

pub mod bench;
pub mod cli;
pub mod cuda;
pub mod estimate;
pub mod pretrained;
pub mod reproduce;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

/// Runs `lt ARGS` and returns what it printed on standard output. Where it fails, the error names
/// the command and holds `lt`'s message (its standard error); with `show_messages`, `lt`'s
/// messages go to the terminal as they come instead (a download's progress).
pub fn lt_output<S: AsRef<OsStr>>(lt: &Path, args: &[S], show_messages: bool) -> Result<String> {
    let mut cmd = Command::new(lt);
    cmd.args(args);
    if show_messages {
        cmd.stderr(Stdio::inherit());
    }
    let out = cmd.output().with_context(|| format!("running {}", lt.display()))?;
    if !out.status.success() {
        let shown: Vec<_> = args.iter().map(|a| a.as_ref().to_string_lossy()).collect();
        let message = if show_messages {
            String::new()
        } else {
            format!(": {}", String::from_utf8_lossy(&out.stderr).trim())
        };
        bail!("`lt {}` failed ({}){message}", shown.join(" "), out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `lt ARGS` for a reproduction, its messages and output to the terminal. A run stopped by
/// a signal (killed, out of memory) is an error that says running the reproduction again resumes
/// it (the reproduction adds `--resume` where a stage has begun).
pub fn lt_run(lt: &Path, args: &[String]) -> Result<()> {
    let status = Command::new(lt).args(args).status().with_context(|| format!("running {}", lt.display()))?;
    if status.code().is_none() {
        // Every stage writes under final names only what it has finished.
        bail!(
            "`lt {}` was stopped ({status}); `cargo xtask reproduce` with the same options again \
             resumes where it stopped (finished stages, epochs and samples are kept)",
            args.join(" ")
        );
    }
    if !status.success() {
        bail!("`lt {}` failed ({status})", args.join(" "));
    }
    Ok(())
}

/// [`lt_output`] read as JSON.
pub fn lt_json<S: AsRef<OsStr>>(lt: &Path, args: &[S], show_messages: bool) -> Result<serde_json::Value> {
    let text = lt_output(lt, args, show_messages)?;
    serde_json::from_str(text.trim()).with_context(|| {
        let shown: Vec<_> = args.iter().map(|a| a.as_ref().to_string_lossy()).collect();
        format!("reading what `lt {}` printed", shown.join(" "))
    })
}

/// Writes `contents` to `path` whole or not at all: a temporary file beside it (`<name>.tmp`),
/// then renamed, so that an interrupted write never leaves a half-written file under the name.
pub fn write_atomic(path: &Path, contents: impl AsRef<[u8]>) -> Result<()> {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    let tmp = path.with_file_name(name);
    std::fs::write(&tmp, contents).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

/// The workspace root (the parent of `xtask/`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_path_buf()
}

/// `lt`'s Cargo features for a GPU: candle's CUDA kernels and cuDNN, which the fast backend's
/// CUDA ops (convolution, batch norm, pooling) need; without `cudnn` they fall back to stock
/// candle's far slower ones.
pub const CUDA_FEATURES: &[&str] = &["cuda", "cudnn"];

/// The features `lt` is built with to run on `device` (`cpu`, `cuda`, `cuda:N`).
pub fn lt_features(device: &str) -> &'static [&'static str] {
    if device.starts_with("cuda") {
        CUDA_FEATURES
    } else {
        &[]
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gpu_build_has_cudnn_and_every_feature_named_is_lts() {
        // `reproduce --device cuda` once built with `cuda` alone: stock candle ops on the GPU.
        assert_eq!(lt_features("cuda:1"), CUDA_FEATURES);
        assert!(lt_features("cuda").contains(&"cudnn"));
        assert!(lt_features("cpu").is_empty());
        let manifest = std::fs::read_to_string(workspace_root().join("crates/lt-cli/Cargo.toml")).unwrap();
        let features = manifest.split("[features]").nth(1).unwrap().split("\n[").next().unwrap();
        for f in CUDA_FEATURES {
            assert!(features.lines().any(|l| l.starts_with(&format!("{f} = "))), "lt-cli has no feature {f}");
        }
    }

    /// A stage stopped by a signal says that running again resumes it; one that fails says so.
    #[cfg(unix)]
    #[test]
    fn a_stopped_stage_says_the_same_command_resumes_it() {
        let dir = tempfile::tempdir().unwrap();
        let script = |name: &str, body: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
            std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
            p
        };
        let args = vec!["train".to_string(), "--out".to_string(), "d".to_string()];
        let killed = lt_run(&script("killed", "kill -9 $$"), &args).unwrap_err().to_string();
        assert!(killed.contains("`lt train --out d` was stopped"), "{killed}");
        assert!(killed.contains("`cargo xtask reproduce` with the same options again resumes"), "{killed}");
        let failed = lt_run(&script("failed", "exit 3"), &args).unwrap_err().to_string();
        assert!(failed.contains("`lt train --out d` failed") && !failed.contains("resumes"), "{failed}");
        lt_run(&script("ok", "exit 0"), &args).unwrap();
    }
}
