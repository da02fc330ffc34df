//! `cargo xtask`: reproduce the paper's tables, benchmark, build the CUDA binaries.

use anyhow::Result;
use clap::Parser;
use xtask::cli::{Cli, Cmd};

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
