//! `lt retrain`: stage 2 on a features artifact.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{ArgMatches, Args};
use lt_core::formats::features::Features;
use lt_retrain::outputs::{self, Recorded};
use lt_retrain::rows;
use lt_retrain::{retrain, RetrainConfig};

use crate::device::DeviceArg;
use crate::preset::PresetArgs;

/// `lt retrain`
#[derive(Args)]
pub struct RetrainArgs {
    /// Features artifact of `lt extract`.
    #[arg(long, required_unless_present = "list_rows")]
    features: Option<PathBuf>,
    /// A row of the reproduction plan (sets the method, the backbone and the row's own knobs;
    /// `--list-rows` prints them).
    #[arg(long)]
    row: Option<String>,
    /// Record the run as a row of this name, whatever its settings (lower-case letters, digits
    /// and `._-`; no plan row's id or label): to set a variant beside its plan row in one report,
    /// e.g. `--row swa-srepr --lambda 0.3 --name srepr-lambda0.3` beside the validated
    /// `swa-srepr`. With `--row`, the row's settings are where the flags start, and they may
    /// change any of them. `lt report` lists the run among the other runs.
    #[arg(long, value_parser = row_name)]
    name: Option<String>,
    /// Print the plan's rows (`id<TAB>label<TAB>settings as JSON`: the row's settings on the
    /// defaults, the preset's `[retrain]` table and the flags given) and stop.
    #[arg(long)]
    list_rows: bool,
    #[command(flatten)]
    preset: PresetArgs,
    #[command(flatten)]
    cfg: RetrainConfig,
    /// Output directory (head.safetensors, predictions.safetensors).
    #[arg(long, required_unless_present = "list_rows")]
    out: Option<PathBuf>,
    #[command(flatten)]
    device: DeviceArg,
    /// CPU threads of candle's ops (0: automatic — one thread when the head is small, every
    /// core otherwise; `RAYON_NUM_THREADS` set in the environment wins).
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

/// Heads smaller than this (`D x C` weights) train fastest on one thread: their matrices are too
/// small to pay for candle's thread synchronisation (measured on 2 cores: a synthetic SRepr fit,
/// D = 64, C = 10, takes 0.8 s on one thread and 3.6 s on two).
const SMALL_HEAD: usize = 1 << 16;

/// Sets candle's thread count for this process (before its first op).
fn set_threads(requested: usize, dim: usize, classes: usize) {
    if std::env::var_os("RAYON_NUM_THREADS").is_some() {
        return;
    }
    let n = match requested {
        0 if dim * classes < SMALL_HEAD => 1,
        0 => return,
        n => n,
    };
    // Nothing else runs yet: candle reads the variable when it starts its pools.
    std::env::set_var("RAYON_NUM_THREADS", n.to_string());
}

/// The configuration of a run: defaults, then the preset's `[retrain]` table, then the row's
/// settings, then the flags given on the command line; and the row of the report it records.
fn config<'a>(a: &'a RetrainArgs, matches: &ArgMatches) -> Result<(RetrainConfig, Recorded<'a>)> {
    let preset = a.preset.resolve()?;
    let mut base = preset.map(|p| p.retrain).unwrap_or_default();
    let row = match &a.row {
        Some(id) => {
            let Some(r) = rows::row(id) else {
                bail!(
                    "unknown row {id:?}; expected one of {}",
                    rows::ROWS.iter().map(|r| r.id).collect::<Vec<_>>().join(", ")
                )
            };
            base = r.config(&base);
            Some(r)
        }
        None => None,
    };
    let cfg = crate::overlay::overlay(&base, &a.cfg, matches)?;
    cfg.validate()?;
    // A preset's `[retrain]` table sets SRepr's knobs for every row; a flag is asked for.
    for (flag, setting) in crate::overlay::given_settings(&cfg, matches)? {
        if !cfg.reads(&setting) {
            bail!(
                "{flag} sets retrain.{setting}, which method {} does not read (drop it, or choose a method that \
                 reads it)",
                cfg.method
            );
        }
    }
    // A run given a name of its own is that name's, whatever its settings.
    if let (Some(r), None) = (row, &a.name) {
        let differ = r.differences(&cfg);
        if !differ.is_empty() {
            let instead = match outputs::row_of(&cfg, None) {
                Some(other) => format!("--row {} is the row these settings make", other.id),
                None => format!("without --row the run records itself as {}", cfg.id()),
            };
            bail!(
                "--row {}: the flags make another row or none ({}); {instead}; or drop the flags",
                r.id,
                lt_core::diff::summary(&differ)
            );
        }
    }
    let recorded = match (&a.name, row) {
        (Some(name), _) => Recorded::Named(name),
        (None, Some(r)) => Recorded::Row(r),
        (None, None) => Recorded::Inferred,
    };
    Ok((cfg, recorded))
}

/// `--name`'s value, checked as clap reads it ([`rows::check_name`]).
fn row_name(name: &str) -> std::result::Result<String, String> {
    rows::check_name(name).map(|()| name.to_string())
}

/// Says when `--out`'s directory is named as another row than the run records (`row`): `lt
/// report` reads the row from the predictions, so a run written into another plan row's
/// directory (a warning), or a forgotten `--name` (a note), would otherwise show up only there.
fn warn_directory_name(out: &std::path::Path, row: &str) {
    let Some(dir) = out.file_name().and_then(|n| n.to_str()).filter(|d| *d != row) else { return };
    let said = format!("writing row {row} into a directory named {dir}: lt report lists the run as {row}");
    if rows::row(dir).is_some() {
        tracing::warn!("{said} ({dir} is the plan row {dir}'s directory)");
    } else if rows::check_name(dir).is_ok() {
        tracing::info!("{said} (give --name {dir} to record it under that name)");
    }
}

/// Runs `lt retrain`.
pub fn run(a: RetrainArgs, matches: &ArgMatches) -> Result<()> {
    if a.list_rows {
        let preset = a.preset.resolve()?.map(|p| p.retrain).unwrap_or_default();
        let base = crate::overlay::overlay(&preset, &a.cfg, matches)?;
        for r in rows::ROWS {
            println!("{}\t{}\t{}", r.id, r.label, serde_json::to_string(&r.config(&base))?);
        }
        return Ok(());
    }
    let (cfg, recorded) = config(&a, matches)?;
    let (Some(path), Some(out)) = (&a.features, &a.out) else { bail!("--features and --out are required") };
    let features = Features::open(path).with_context(|| format!("reading {}", path.display()))?;
    set_threads(a.threads, features.dim(), features.classes());
    let device = a.device.open()?;
    // Held from here (inputs checked) until the head and predictions are committed.
    let _lock = lt_core::lock::RunLock::acquire_and_clean(out)?;
    outputs::check_dir(out, &features, &cfg, recorded)?;
    let started = std::time::Instant::now();
    let kept = crate::device::stage2_features(&features, &device);
    let outcome = retrain(crate::device::stage2_source(&kept, &features), &cfg, &device)?;
    if let Some(kept) = &kept {
        tracing::info!("kept {:.0} MiB of features on the device", kept.kept_bytes() as f64 / 1048576.0);
    }
    let (row, _) = recorded.id_and_label(&cfg);
    warn_directory_name(out, &row);
    let (head, preds) = outputs::write(&outcome, &features, recorded, out)?;
    let chosen = super::knobs_said(&serde_json::Value::Object(outcome.facts.clone()));
    println!(
        "{} on {}: balanced test accuracy {:.2}%{chosen} ({:.1} s); wrote {} and {}",
        row,
        path.display(),
        100.0
            * (1.0
                - lt_retrain::select::criterion_value(
                    lt_retrain::Criterion::BalancedError,
                    &outcome.test_scores,
                    outcome.probabilities,
                    &outcome.test_labels,
                    features.classes()
                )),
        started.elapsed().as_secs_f64(),
        head.display(),
        preds.display()
    );
    Ok(())
}
