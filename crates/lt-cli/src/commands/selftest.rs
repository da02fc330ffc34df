//! `lt selftest`: the backbones' golden checks against PyTorch on any device (the fixtures of
//! `crates/lt-models/tests/golden/`, read from the working tree).

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;
use lt_models::golden::check_fixture;
use lt_models::Backend;

/// `lt selftest`
#[derive(Args)]
pub struct SelftestArgs {
    /// Device: cpu, cuda, cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Directory of the golden fixtures.
    #[arg(long, default_value = "crates/lt-models/tests/golden")]
    fixtures: PathBuf,
}

/// Runs `lt selftest`.
pub fn run(a: SelftestArgs) -> Result<()> {
    let device = crate::device::parse(&a.device)?;
    let mut failed = 0;
    let mut total = 0;
    for (file, arch, classes) in
        [("resnet32.safetensors", "resnet32", 10), ("resnet50.safetensors", "resnet50", 1000)]
    {
        for backend in [Backend::Fast, Backend::Candle] {
            for c in check_fixture(&a.fixtures.join(file), arch, classes, backend, &device)? {
                total += 1;
                let mark = if c.ok() { "ok  " } else { "FAIL" };
                failed += usize::from(!c.ok());
                println!("{mark} {:<70} {:.2e} (tolerance {:.1e})", c.what, c.relative_error, c.tolerance);
            }
        }
    }
    println!("{} of {total} checks passed on {}", total - failed, a.device);
    if failed > 0 {
        bail!("{failed} golden check(s) failed");
    }
    Ok(())
}
