//! The checks of each [`Group`], run in this process: each check's line printed, the group's
//! counts returned.

use std::path::Path;

use lt_models::golden::check_fixture;
use lt_models::Backend;

use super::{Group, Tally};

/// Runs the checks of `g` on `device` (the golden fixtures from `fixtures`).
pub(super) fn run_group(g: Group, device: &candle_core::Device, fixtures: &Path) -> Tally {
    let golden = |file: &str, arch: &str, classes: usize, backend: Backend| {
        let checks = check_fixture(&fixtures.join(file), arch, classes, backend, device);
        tally(std::iter::once((format!("{arch} {backend:?} fixture {file}"), checks)))
    };
    match g {
        Group::GoldenResnet32Fast => golden("resnet32.safetensors", "resnet32", 10, Backend::Fast),
        Group::GoldenResnet32Candle => golden("resnet32.safetensors", "resnet32", 10, Backend::Candle),
        Group::GoldenResnet50Fast => golden("resnet50.safetensors", "resnet50", 1000, Backend::Fast),
        Group::GoldenResnet50Candle => golden("resnet50.safetensors", "resnet50", 1000, Backend::Candle),
        Group::Mixed => mixed_precision(device),
        Group::Taped => per_precision("taped", lt_models::golden::taped::check_taped, device),
        Group::Frozen => per_precision("frozen", lt_models::golden::frozen::check_frozen, device),
        Group::Repeatable => per_precision("repeated", lt_models::golden::repeat::check_repeatable, device),
        Group::Optimiser => one(&sgd_passes(device)),
        Group::Loader => one(&loader_batches(device)),
    }
}

/// The counts of one check, its line printed.
fn one(c: &lt_models::golden::Check) -> Tally {
    let ok = report(c);
    Tally { total: 1, failed: usize::from(!ok), broken: Vec::new() }
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

/// The loader's batches made on the device by its workers, read the moment they arrive, against
/// the same samples normalised on the host (`lt_data::loader::check_device_batches`): every
/// value's bits the same.
fn loader_batches(device: &candle_core::Device) -> lt_models::golden::Check {
    let what = "loader batches made on the device vs the host (values differing)".to_string();
    match lt_data::loader::check_device_batches(device) {
        Ok(c) => lt_models::golden::Check::measured(what, c.differing as f32 / c.compared.max(1) as f32, 0.0),
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
/// autograd), the frozen-snapshot checks (`lt_models::golden::frozen`, against the model's own
/// evaluation) and the repeatability checks (`lt_models::golden::repeat`, two runs from one
/// seed).
fn per_precision(what: &str, check: PerPrecision, device: &candle_core::Device) -> Tally {
    let runs = precisions(device).iter().flat_map(|&precision| {
        SHAPES.into_iter().map(move |(arch, shape)| {
            (format!("{arch} {precision} {what}"), check(arch, 5, shape, device, precision))
        })
    });
    tally(runs)
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

/// Reports every check of the named `runs` and counts them; a run that could not start is
/// reported and named among the broken ones.
fn tally(runs: impl Iterator<Item = (String, lt_models::Result<Vec<lt_models::golden::Check>>)>) -> Tally {
    let mut t = Tally::default();
    for (name, checks) in runs {
        match checks {
            Ok(checks) => {
                for c in checks {
                    t.total += 1;
                    t.failed += usize::from(!report(&c));
                }
            }
            Err(e) => {
                println!("FAIL {name}: could not run: {e:#}");
                t.broken.push(name);
            }
        }
    }
    t
}

/// The mixed-precision checks (`lt_models::golden::mixed`, bf16 against f32 on this device):
fn mixed_precision(device: &candle_core::Device) -> Tally {
    let runs = SHAPES.into_iter().map(|(arch, shape)| {
        (format!("{arch} bf16"), lt_models::golden::mixed::check_mixed_precision(arch, 5, shape, device))
    });
    tally(runs)
}
