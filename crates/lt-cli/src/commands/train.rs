//! `lt train`: stage 1 (SGD and SWA/SWAG backbones) and `lt extract`: stochastic representations.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::parser::ValueSource;
use clap::{ArgMatches, Args};
use lt_train::extract::{extract_replacing, ExtractConfig};
use lt_train::{train, RunDir, RunOptions, SwaConfig};

use crate::commands::data::{load, DataFlags};
use crate::device::DeviceArg;
use crate::preset::PresetArgs;

/// `lt train`
#[derive(Args)]
pub struct TrainArgs {
    #[command(flatten)]
    preset: PresetArgs,
    #[command(flatten)]
    data: DataFlags,
    #[command(flatten)]
    cfg: lt_train::TrainConfig,
    /// First epoch of the SWA phase.
    #[arg(long)]
    swa_start: Option<usize>,
    /// SWA learning rate.
    #[arg(long)]
    swa_lr: Option<f64>,
    /// SWAG rank K (0: the diagonal alone; otherwise at least 2).
    #[arg(long)]
    swag_rank: Option<usize>,
    /// Collect a SWAG model every N steps instead of every epoch.
    #[arg(long)]
    swag_every_steps: Option<usize>,
    /// Training steps through candle's autograd instead of the taped executor, CUDA's default
    /// (the backward pass walked by hand: the same gradients, fewer kernels and less memory). No
    /// effect on the CPU, where the fused pass runs.
    #[arg(long)]
    autograd: bool,
    /// Train plain SGD only (no SWA/SWAG).
    #[arg(long)]
    no_swa: bool,
    /// Run directory.
    #[arg(long)]
    out: PathBuf,
    /// Continue the run in `--out` from its last checkpoint.
    #[arg(long)]
    resume: bool,
    #[command(flatten)]
    device: DeviceArg,
}

/// Runs `lt train`: the preset's `[train]` table (or, without a preset, the `cifar10-lt` preset's
/// recipe; the `synthetic` preset's for the synthetic data set without `--arch`), then the flags
/// given.
pub fn run_train(a: TrainArgs, matches: &ArgMatches) -> Result<()> {
    let preset = a.preset.resolve()?;
    let base = match &preset {
        Some(p) => p.train.clone(),
        None if matches.value_source("arch") != Some(ValueSource::CommandLine)
            && a.data.spec.dataset.as_deref().unwrap_or("synthetic") == "synthetic" =>
        {
            crate::preset::embedded("synthetic")?.train
        }
        None => crate::preset::embedded("cifar10-lt")?.train,
    };
    let mut cfg = crate::overlay::overlay(&base, &a.cfg, matches)?;
    if a.no_swa {
        cfg.swa = None;
    } else if a.swa_start.is_some()
        || a.swa_lr.is_some()
        || a.swag_rank.is_some()
        || a.swag_every_steps.is_some()
    {
        let s = cfg.swa.get_or_insert(SwaConfig::for_run(cfg.epochs, cfg.lr));
        if let Some(v) = a.swa_start {
            s.start = v;
        }
        if let Some(v) = a.swa_lr {
            s.lr = v;
        }
        if let Some(v) = a.swag_rank {
            s.rank = v;
        }
        if a.swag_every_steps.is_some() {
            s.collect_every_steps = a.swag_every_steps;
        }
    }
    let spec = a.data.resolve(preset.as_ref().map(|p| &p.data));
    let data = load(&spec, a.data.mirror.clone(), true)?;
    let device = a.device.open()?;
    crate::device::warn_precision(&device, cfg.precision);
    tracing::info!(
        "training {} on {} ({} images, {} classes) into {}",
        cfg.arch,
        data.name,
        data.train.len(),
        data.num_classes(),
        a.out.display()
    );
    let opts = RunOptions { resume: a.resume, device, data_spec: Some(spec), autograd: a.autograd };
    let summary = train(&cfg, &data, &a.out, &opts)?;
    print_summary(&summary, &a.out);
    Ok(())
}

/// The test metrics of the stage-1 backbones, one row each.
fn print_summary(summary: &lt_train::TrainSummary, out: &std::path::Path) {
    let row = |name: &str, e: &lt_metrics::Evaluation| {
        let pct = |v: Option<f64>| v.map(|x| format!("{:6.2}", 100.0 * x)).unwrap_or_else(|| "     -".into());
        println!(
            "{name:<4} {} {} {} {:6.2}  {:.3}  {:.3}",
            pct(e.many),
            pct(e.medium),
            pct(e.few),
            100.0 * e.accuracy,
            e.nll,
            e.ece
        );
    };
    println!("test   Many Medium    Few    All    NLL    ECE");
    row("SGD", &summary.sgd);
    if let Some(s) = &summary.swa {
        row("SWA", s);
    }
    println!("run directory: {} ({:.0} s)", out.display(), summary.seconds);
}

/// `lt extract`
#[derive(Args)]
pub struct ExtractArgs {
    /// Run directory of `lt train`.
    #[arg(long)]
    run: PathBuf,
    #[command(flatten)]
    preset: PresetArgs,
    #[command(flatten)]
    cfg: ExtractConfig,
    /// Where the run's data are now, when they have moved since `lt train` recorded them (the
    /// data found there must be the same: their split fingerprint is checked).
    #[arg(long)]
    data_root: Option<PathBuf>,
    /// Replace the run's features when they come from another extraction (other settings); the
    /// same extraction is always written again.
    #[arg(long)]
    replace: bool,
    #[command(flatten)]
    device: DeviceArg,
}

/// Runs `lt extract`: the preset's `[extract]` table (or the defaults), then the flags given, on
/// the data the run recorded (from `--data-root` when given).
pub fn run_extract(a: ExtractArgs, matches: &ArgMatches) -> Result<()> {
    let preset = a.preset.resolve()?;
    let base = preset.map(|p| p.extract).unwrap_or_default();
    let cfg = crate::overlay::overlay(&base, &a.cfg, matches)?;
    let dir = RunDir::new(&a.run);
    let mut spec = dir.read_data_spec()?;
    let moved = a.data_root.is_some();
    if let Some(root) = a.data_root {
        spec.data_root = Some(root);
    }
    let data = load(&spec, None, true).with_context(|| match (moved, &spec.data_root) {
        (false, Some(root)) => format!(
            "reading the data {} was trained on from {}, where `lt train` found them (if they have moved, \
             give --data-root NEW)",
            a.run.display(),
            root.display()
        ),
        _ => format!("reading the data {} was trained on", a.run.display()),
    })?;
    let device = a.device.open()?;
    let path = extract_replacing(&dir, &data, &cfg, &device, a.replace)?;
    println!("features of {} backbones written to {}", 2 + cfg.samples, path.display());
    Ok(())
}
