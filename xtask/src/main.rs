//! `cargo xtask`: reproduce the paper's tables, benchmark, build the CUDA binaries.

use std::path::PathBuf;

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
    Reproduce {
        /// Preset: synthetic, tiny, fmnist-lt, cifar10-lt, cifar100-lt, imagenet-lt, inat2018.
        #[arg(long, default_value = "synthetic")]
        preset: String,
        /// A preset file (a copy of one under presets/, edited).
        #[arg(long)]
        preset_file: Option<PathBuf>,
        /// Device: cpu, cuda, cuda:N (cuda builds `lt` with --features cuda).
        #[arg(long, default_value = "cpu")]
        device: String,
        /// Number of seeds (default: the preset's).
        #[arg(long)]
        seeds: Option<usize>,
        /// Where the data sets live.
        #[arg(long)]
        data_root: Option<PathBuf>,
        /// Download what is missing and can be downloaded.
        #[arg(long)]
        download: bool,
        /// Directory of the run directories.
        #[arg(long, default_value = "runs")]
        runs_dir: PathBuf,
        /// Print the plan (every stage, its command line, whether it is cached) and stop.
        #[arg(long)]
        dry_run: bool,
        /// Use this `lt` binary instead of building one.
        #[arg(long)]
        lt: Option<PathBuf>,
    },
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
        Cmd::Reproduce { preset, preset_file, device, seeds, data_root, download, runs_dir, dry_run, lt } => {
            let runs_dir = if runs_dir.is_absolute() { runs_dir } else { root.join(runs_dir) };
            let opts = xtask::reproduce::Options {
                preset,
                preset_file,
                seeds,
                data_root,
                download,
                runs_dir,
                device,
                dry_run,
                lt,
            };
            xtask::reproduce::run(&root, &opts)?;
        }
        Cmd::Bench(a) => xtask::bench::run(&root, &a)?,
        Cmd::CudaBuild(a) => xtask::cuda::run(&root, &a)?,
    }
    Ok(())
}
