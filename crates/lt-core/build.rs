//! With the `cuda` feature: compiles the SGD passes' CUDA kernels (`src/optim/passes.cu`) to PTX
//! with nvcc (from `CUDA_ROOT` or `CUDA_PATH`, else the `PATH`), for the virtual architecture of
//! `CUDA_COMPUTE_CAP`, else of the first GPU `nvidia-smi` lists (as candle's kernels), else 75
//! (the oldest CUDA 13 compiles for; the PTX runs on any newer GPU). Without it, nothing.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo::rerun-if-changed=src/optim/passes.cu");
    for var in ["CUDA_COMPUTE_CAP", "CUDA_ROOT", "CUDA_PATH"] {
        println!("cargo::rerun-if-env-changed={var}");
    }
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let nvcc = ["CUDA_ROOT", "CUDA_PATH"]
        .iter()
        .filter_map(std::env::var_os)
        .map(|root| PathBuf::from(root).join("bin/nvcc"))
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("nvcc"));
    let cap = std::env::var("CUDA_COMPUTE_CAP").ok().or_else(gpu_compute_cap).unwrap_or_else(|| "75".into());
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR")).join("sgd_passes.ptx");
    let status = Command::new(&nvcc)
        .args(["--ptx", "-O3", &format!("--gpu-architecture=compute_{cap}"), "src/optim/passes.cu", "-o"])
        .arg(&out)
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => panic!("{} failed ({s}) compiling src/optim/passes.cu", nvcc.display()),
        Err(e) => panic!("cannot run {} ({e}); set CUDA_ROOT to a CUDA toolkit", nvcc.display()),
    }
}

/// The compute capability of the first GPU `nvidia-smi` lists, as nvcc spells it (`9.0` → `90`).
fn gpu_compute_cap() -> Option<String> {
    let out = Command::new("nvidia-smi")
        .args(["--query-gpu=compute_cap", "--format=csv,noheader"])
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let cap = text.lines().next()?.trim().replace('.', "");
    (out.status.success() && !cap.is_empty() && cap.bytes().all(|b| b.is_ascii_digit())).then_some(cap)
}
