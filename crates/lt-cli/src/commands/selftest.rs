//! `lt selftest`: the backbones' golden checks against PyTorch on any device (the fixtures of
//! `crates/lt-models/tests/golden/`, read from the working tree), then the mixed-precision
//! checks (bf16 against f32 on the device). Every check runs, whatever fails before it; the
//! summary counts them all, golden and mixed-precision on separate lines.

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
                failed += usize::from(!report(&c));
            }
        }
    }
    println!("{}/{total} checks passed on {}", total - failed, a.device);
    if !broken.is_empty() {
        println!("fixtures that could not run: {}", broken.join(", "));
    }
    let (mixed_total, mixed_failed) = mixed_precision(&device, &mut broken);
    println!("{}/{mixed_total} mixed-precision checks passed on {}", mixed_total - mixed_failed, a.device);
    if failed > 0 || mixed_failed > 0 || !broken.is_empty() {
        bail!(
            "{failed} golden check(s) and {mixed_failed} mixed-precision check(s) failed, {} run(s) broken",
            broken.len()
        );
    }
    Ok(())
}

/// Prints one check's line; returns whether it passed.
fn report(c: &lt_models::golden::Check) -> bool {
    match &c.error {
        Some(e) => println!("FAIL {:<70} error: {e}", c.what),
        None => {
            let mark = if c.ok() { "ok  " } else { "FAIL" };
            println!("{mark} {:<70} {:.2e} (tolerance {:.1e})", c.what, c.relative_error, c.tolerance);
        }
    }
    c.ok()
}

/// The mixed-precision checks (`lt_models::golden::mixed`, bf16 against f32 on this device):
/// `(checks, failed)`; a run that cannot start is added to `broken`.
fn mixed_precision(device: &candle_core::Device, broken: &mut Vec<String>) -> (usize, usize) {
    let (mut total, mut failed) = (0, 0);
    for (arch, shape) in [("resnet20", [4, 3, 16, 16]), ("resnet18", [4, 3, 64, 64])] {
        match lt_models::golden::mixed::check_mixed_precision(arch, 5, shape, device) {
            Ok(checks) => {
                for c in checks {
                    total += 1;
                    failed += usize::from(!report(&c));
                }
            }
            Err(e) => {
                println!("FAIL {arch} bf16: could not run: {e:#}");
                broken.push(format!("{arch} bf16"));
            }
        }
    }
    (total, failed)
}
