//! With the `cuda` feature: compiles the SGD passes' CUDA kernels (`src/optim/passes.cu`) to PTX
//! with nvcc (from `CUDA_ROOT` or `CUDA_PATH`, else the `PATH`), for the virtual architecture of
//! `CUDA_COMPUTE_CAP` (as candle's kernels; default 70). Without it, nothing.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo::rerun-if-changed=src/optim/passes.cu");
    println!("cargo::rerun-if-env-changed=CUDA_COMPUTE_CAP");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let nvcc = ["CUDA_ROOT", "CUDA_PATH"]
        .iter()
        .filter_map(std::env::var_os)
        .map(|root| PathBuf::from(root).join("bin/nvcc"))
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("nvcc"));
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "70".into());
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
