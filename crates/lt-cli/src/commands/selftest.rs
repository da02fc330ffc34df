//! `lt selftest`: the backbones' golden checks against PyTorch on any device (the fixtures of
//! `crates/lt-models/tests/golden/`, read from the working tree). Every check runs, whatever
//! fails before it; the summary counts them all.

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
    let (mut total, mut failed, mut broken) = (0usize, 0usize, Vec::new());
    for (file, arch, classes) in
        [("resnet32.safetensors", "resnet32", 10), ("resnet50.safetensors", "resnet50", 1000)]
    {
        for backend in [Backend::Fast, Backend::Candle] {
            let checks = match check_fixture(&a.fixtures.join(file), arch, classes, backend, &device) {
                Ok(c) => c,
                Err(e) => {
                    println!("FAIL {arch} {backend:?}: could not run the fixture: {e:#}");
                    broken.push(format!("{arch} {backend:?}"));
                    continue;
                }
            };
            for c in checks {
                total += 1;
                failed += usize::from(!c.ok());
                match &c.error {
                    Some(e) => println!("FAIL {:<70} error: {e}", c.what),
                    None => {
                        let mark = if c.ok() { "ok  " } else { "FAIL" };
                        println!(
                            "{mark} {:<70} {:.2e} (tolerance {:.1e})",
                            c.what, c.relative_error, c.tolerance
                        );
                    }
                }
            }
        }
    }
    println!("{}/{total} checks passed on {}", total - failed, a.device);
    if !broken.is_empty() {
        println!("fixtures that could not run: {}", broken.join(", "));
    }
    if failed > 0 || !broken.is_empty() {
        bail!("{failed} golden check(s) failed, {} fixture run(s) broken", broken.len());
    }
    Ok(())
}
