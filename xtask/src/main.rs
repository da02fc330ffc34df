//! `cargo xtask`: project automation (see `cargo xtask --help`).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Reproduce the paper's tables, benchmark, build CUDA binaries")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the pipeline on a preset (default: the embedded synthetic long-tailed set, on CPU).
    Reproduce {
        /// Directory holding the run directories.
        #[arg(long, default_value = "runs")]
        runs_dir: PathBuf,
    },
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_path_buf()
}

fn build_lt(root: &Path) -> Result<PathBuf> {
    let status = Command::new(env!("CARGO"))
        .current_dir(root)
        .args(["build", "--release", "--quiet", "-p", "lt-cli"])
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("building the `lt` binary failed");
    }
    Ok(root.join("target/release/lt"))
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let root = workspace_root();
    match cli.command {
        Cmd::Reproduce { runs_dir } => {
            let lt = build_lt(&root)?;
            let run = root.join(runs_dir).join("synthetic");
            std::fs::create_dir_all(&run)?;
            let split = run.join("split.safetensors");
            let status = Command::new(&lt)
                .args(["data", "describe", "--dataset", "synthetic", "--write-split"])
                .arg(&split)
                .status()?;
            if !status.success() {
                bail!("lt data describe failed");
            }
        }
    }
    Ok(())
}
