//! `lt selftest`: the backbones' golden checks against PyTorch on any device (the fixtures of
//! `crates/lt-models/tests/golden/`, read from the working tree), then the mixed-precision
//! checks (bf16 against f32 on the device), the taped-executor checks (its training steps
//! against candle's autograd on the device), the frozen-snapshot checks (a snapshot against its
//! model's evaluation) and the optimiser check (SGD's in-place passes against its tensor ops on
//! the device). Every check runs, whatever fails before it; the
//! summary counts them all, each kind on its own line.

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
    let (taped_total, taped_failed) =
        per_precision("taped", lt_models::golden::taped::check_taped, &device, &mut broken);
    println!("{}/{taped_total} taped-executor checks passed on {}", taped_total - taped_failed, a.device);
    let (frozen_total, frozen_failed) =
        per_precision("frozen", lt_models::golden::frozen::check_frozen, &device, &mut broken);
    println!("{}/{frozen_total} frozen-snapshot checks passed on {}", frozen_total - frozen_failed, a.device);
    let sgd_failed = usize::from(!report(&sgd_passes(&device)));
    println!("{}/1 optimiser checks passed on {}", 1 - sgd_failed, a.device);
    let device_failed = mixed_failed + taped_failed + frozen_failed + sgd_failed;
    if failed > 0 || device_failed > 0 || !broken.is_empty() {
        bail!(
            "{failed} golden check(s) and {device_failed} device check(s) (mixed precision {mixed_failed}, taped executor {taped_failed}, frozen snapshot {frozen_failed}, optimiser {sgd_failed}) failed, {} run(s) broken",
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

/// The SGD step's in-place passes against its tensor ops on this device
/// (`lt_core::optim::check_in_place_passes`): every value's bits the same, and the passes did run
/// (on CUDA, their kernels loaded).
fn sgd_passes(device: &candle_core::Device) -> lt_models::golden::Check {
    let what = "SGD in-place passes vs tensor ops, 4 steps x 4 settings (values differing)".to_string();
    match lt_core::optim::check_in_place_passes(device) {
        Ok(c) => lt_models::golden::Check {
            error: (!c.in_place)
                .then(|| "the in-place passes did not run on this device (tensor ops ran)".into()),
            ..lt_models::golden::Check::measured(what, c.differing as f32 / c.compared.max(1) as f32, 0.0)
        },
        Err(e) => lt_models::golden::Check::verdict(what, Some(format!("{e:#}"))),
    }
}

/// A device check run per architecture and precision: `(arch, classes, shape, device,
/// precision)` to its checks.
type PerPrecision = fn(
    &str,
    usize,
    [usize; 4],
    &candle_core::Device,
    lt_models::Precision,
) -> lt_models::Result<Vec<lt_models::golden::Check>>;

/// The checks of `check` (named `what`) for every architecture of [`SHAPES`] in every precision
/// of [`precisions`]: the taped-executor checks (`lt_models::golden::taped`, against candle's
/// autograd) and the frozen-snapshot checks (`lt_models::golden::frozen`, against the model's
/// own evaluation). `(checks, failed)`; a run that cannot start is added to `broken`.
fn per_precision(
    what: &str,
    check: PerPrecision,
    device: &candle_core::Device,
    broken: &mut Vec<String>,
) -> (usize, usize) {
    let runs = precisions(device).iter().flat_map(|&precision| {
        SHAPES.into_iter().map(move |(arch, shape)| {
            (format!("{arch} {precision} {what}"), check(arch, 5, shape, device, precision))
        })
    });
    tally(runs, broken)
}

/// The precisions the device checks run in: `f32`, and on CUDA `bf16` too (on the CPU `bf16`
/// runs candle's stock ops, which the taped executor does not take and the frozen snapshot
/// prepares nothing for).
fn precisions(device: &candle_core::Device) -> &'static [lt_models::Precision] {
    use lt_models::Precision;
    if device.is_cuda() {
        &[Precision::F32, Precision::Bf16]
    } else {
        &[Precision::F32]
    }
}

/// The architectures and input shapes of the device checks.
const SHAPES: [(&str, [usize; 4]); 2] = [("resnet20", [4, 3, 16, 16]), ("resnet18", [4, 3, 64, 64])];

/// Reports every check of the named `runs`: `(checks, failed)`; a run that could not start is
/// reported and added to `broken`.
fn tally(
    runs: impl Iterator<Item = (String, lt_models::Result<Vec<lt_models::golden::Check>>)>,
    broken: &mut Vec<String>,
) -> (usize, usize) {
    let (mut total, mut failed) = (0, 0);
    for (name, checks) in runs {
        match checks {
            Ok(checks) => {
                for c in checks {
                    total += 1;
                    failed += usize::from(!report(&c));
                }
            }
            Err(e) => {
                println!("FAIL {name}: could not run: {e:#}");
                broken.push(name);
            }
        }
    }
    (total, failed)
}

/// The mixed-precision checks (`lt_models::golden::mixed`, bf16 against f32 on this device):
/// `(checks, failed)`; a run that cannot start is added to `broken`.
fn mixed_precision(device: &candle_core::Device, broken: &mut Vec<String>) -> (usize, usize) {
    let runs = SHAPES.into_iter().map(|(arch, shape)| {
        (format!("{arch} bf16"), lt_models::golden::mixed::check_mixed_precision(arch, 5, shape, device))
    });
    tally(runs, broken)
}
