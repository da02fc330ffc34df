//! The command line of `cargo xtask`, declared once: the binary parses it, and the docs test
//! checks the docs' `cargo xtask` lines against it.

use clap::{Parser, Subcommand};

/// `cargo xtask`.
#[derive(Parser)]
#[command(name = "cargo xtask", about = "Reproduce the paper's tables, benchmark, build the CUDA binaries")]
pub struct Cli {
    /// The task.
    #[command(subcommand)]
    pub command: Cmd,
}

/// The tasks.
#[derive(Subcommand)]
pub enum Cmd {
    /// Run the whole pipeline on a preset (default: the embedded synthetic set, on CPU) and
    /// print the report; resumable and incremental.
    Reproduce(crate::reproduce::Options),
    /// Benchmarks: training and inference throughput and memory of the backbones (project ops,
    /// stock candle, PyTorch when importable), data loading, stage 2.
    Bench(crate::bench::BenchArgs),
    /// Build the CUDA `lt` and benchmark binaries here (toolchain from PyPI) for a GPU machine.
    CudaBuild(crate::cuda::CudaBuildArgs),
}
