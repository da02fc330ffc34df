//! `cargo xtask`: reproduce the paper's tables, benchmark, build the CUDA binaries.

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Reproduce the paper's tables, benchmark, build the CUDA binaries")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the whole pipeline on a preset (default: the embedded synthetic set, on CPU) and
    /// print the report; resumable and incremental.
    Reproduce(xtask::reproduce::Options),
    /// Benchmarks: training and inference throughput and memory of the backbones (project ops,
    /// stock candle, PyTorch when importable), data loading, stage 2.
    Bench(xtask::bench::BenchArgs),
    /// Build the CUDA `lt` and benchmark binaries here (toolchain from PyPI) for a GPU machine.
    CudaBuild(xtask::cuda::CudaBuildArgs),
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let root = xtask::workspace_root();
    match cli.command {
        Cmd::Reproduce(mut opts) => {
            if opts.runs_dir.is_relative() {
                opts.runs_dir = root.join(&opts.runs_dir);
            }
            xtask::reproduce::run(&root, &opts)?;
        }
        Cmd::Bench(a) => xtask::bench::run(&root, &a)?,
        Cmd::CudaBuild(a) => xtask::cuda::run(&root, &a)?,
    }
    Ok(())
}
