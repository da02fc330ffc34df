//! `lt data`: describe data sets and write split artifacts.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use lt_data::{DataBundle, DataSpec, ShotGroup};

/// The data flags shared by every command that loads data: a [`DataSpec`] (each set flag
/// overrides a preset's `[data]` table) and a download mirror.
#[derive(Args, Clone, Debug, Default)]
pub struct DataFlags {
    #[command(flatten)]
    pub spec: DataSpec,
    /// Replacement download location (a mirror of the official files).
    #[arg(long)]
    pub mirror: Option<String>,
}

impl DataFlags {
    /// The data spec these flags give on top of `base` (a preset's, or the defaults). A
    /// `--dataset` naming another data set than the preset's starts from the defaults instead: the
    /// preset's `[data]` settings describe its own data set (the `tiny` preset's generator
    /// settings mean nothing to CIFAR-10-LT).
    pub fn resolve(&self, base: Option<&DataSpec>) -> DataSpec {
        let base = base.cloned().unwrap_or_default();
        match (self.spec.dataset.is_some(), self.spec.name(), base.name()) {
            (true, Ok(given), Ok(preset)) if given != preset => {
                tracing::info!(
                    "--dataset {given}: the preset's [data] settings (for {preset}) are not taken"
                );
                DataSpec::default().overlaid(&self.spec)
            }
            _ => base.overlaid(&self.spec),
        }
    }
}

/// A data set named by a preset's data section and the data flags on top (`lt data describe`,
/// `lt bench loader`).
#[derive(Args, Clone, Debug, Default)]
pub struct PresetData {
    #[command(flatten)]
    pub data: DataFlags,
    #[command(flatten)]
    pub preset: crate::preset::PresetArgs,
}

impl PresetData {
    /// The data section of the preset given, if any.
    pub fn preset_spec(&self) -> Result<Option<DataSpec>> {
        Ok(self.preset.resolve()?.map(|p| p.data))
    }
}

/// Loads the data set a spec describes.
pub fn load(spec: &DataSpec, mirror: Option<String>, check_images: bool) -> Result<DataBundle> {
    let name = spec.name()?;
    spec.load_checking(mirror, check_images).with_context(|| format!("loading data set {name}"))
}

/// `lt data ...`
#[derive(Args)]
pub struct DataArgs {
    #[command(subcommand)]
    command: DataCommand,
}

#[derive(Subcommand)]
enum DataCommand {
    /// Print class counts, shot groups and totals; optionally write the split artifact.
    Describe {
        #[command(flatten)]
        source: PresetData,
        /// Write the split artifact (training indices, labels, class counts, groups) here.
        #[arg(long)]
        write_split: Option<PathBuf>,
    },
    /// Print, as JSON, the data set and the fingerprint of the data a run trains on: the split's
    /// indices and labels and, for an image folder, its files (each image's path and size), for
    /// the synthetic set its generator's settings. A run's artifacts record it; `cargo xtask
    /// reproduce` keys stage 1 by it.
    Fingerprint {
        #[command(flatten)]
        source: PresetData,
        /// Never download: print `null` when the data set's files are not there (or, with
        /// `--run`, when the run has not recorded its split).
        #[arg(long)]
        available_only: bool,
        /// Print what the stage-1 run in this directory recorded (its split artifact) instead of
        /// loading the data.
        #[arg(long, conflicts_with_all = ["preset", "preset_file", "dataset"])]
        run: Option<PathBuf>,
    },
}

/// Runs `lt data`.
pub fn run(args: DataArgs) -> Result<()> {
    match args.command {
        DataCommand::Describe { source, write_split } => {
            let spec = source.data.resolve(source.preset_spec()?.as_ref());
            describe(&spec, source.data.mirror.clone(), write_split)
        }
        DataCommand::Fingerprint { source, available_only, run } => {
            let value = match run {
                Some(run) => recorded(&source, &run, available_only)?,
                None => {
                    let mut spec = source.data.resolve(source.preset_spec()?.as_ref());
                    spec.download &= !available_only;
                    // The fingerprint reads the lists and file names, no image.
                    match load(&spec, source.data.mirror.clone(), false) {
                        Ok(b) => identity(b.name.as_str(), &b.fingerprint()),
                        Err(e)
                            if available_only
                                && e.downcast_ref().is_some_and(lt_data::DataError::is_absent) =>
                        {
                            serde_json::Value::Null
                        }
                        Err(e) => return Err(e),
                    }
                }
            };
            println!("{value}");
            Ok(())
        }
    }
}

/// What the stage-1 run in `run` recorded (`lt data fingerprint --run`); `null` for a folder
/// without a run's split with `available_only`.
fn recorded(source: &PresetData, run: &Path, available_only: bool) -> Result<serde_json::Value> {
    if source.data.spec != DataSpec::default() || source.data.mirror.is_some() {
        bail!("--run prints what the run recorded: the data flags given do not apply to it");
    }
    let split = lt_train::RunDir::new(run).split();
    Ok(match split.is_file() {
        false if available_only => serde_json::Value::Null,
        false => bail!(
            "{}: no stage-1 run here (its split artifact {} is missing)",
            run.display(),
            split.display()
        ),
        true => {
            let (dataset, fingerprint) = lt_core::split::SplitInfo::recorded(&split)?;
            identity(&dataset, &fingerprint)
        }
    })
}

/// What `lt data fingerprint` prints for data found or recorded.
fn identity(dataset: &str, fingerprint: &str) -> serde_json::Value {
    serde_json::json!({ "dataset": dataset, "fingerprint": fingerprint })
}

fn describe(spec: &DataSpec, mirror: Option<String>, write_split: Option<PathBuf>) -> Result<()> {
    let bundle = load(spec, mirror, true)?;
    if let Some(w) = bundle.empty_classes_warning() {
        tracing::warn!("{w}");
    }
    let name = bundle.name;
    let counts = bundle.class_counts();
    let groups = lt_data::longtail::shot_groups(&counts);
    println!("dataset   {name}{}", bundle.imbalance.map(|r| format!(" (imbalance {r})")).unwrap_or_default());
    println!("source    {}", bundle.source);
    println!("classes   {}", bundle.num_classes());
    // The long-tailed selection's share of the original training set, where there is one.
    let of = match bundle.original_train_len {
        n if n == bundle.train.len() => String::new(),
        n => format!(" (of {n})"),
    };
    println!(
        "images    train {}{of}, val {}, test {}",
        bundle.train.len(),
        bundle.val.as_ref().map(|v| v.len().to_string()).unwrap_or_else(|| "-".into()),
        bundle.test.len()
    );
    let [c, h, w] = bundle.train.sample_shape();
    println!("sample    {c}x{h}x{w}");
    let show = bundle.num_classes() <= 100;
    if show {
        // Validation images per class: the same for every class where each can give them.
        let val = bundle.val.as_ref().map(|v| lt_data::longtail::class_counts(v.labels(), counts.len()));
        println!("{:>6}  {:<20} {:>7} {:>5}  group", "class", "name", "count", "val");
        for (c, (&n, g)) in counts.iter().zip(&groups).enumerate() {
            let v = val.as_ref().map_or("-".to_string(), |v| v[c].to_string());
            println!("{c:>6}  {:<20} {n:>7} {v:>5}  {}", truncate(&bundle.class_names[c], 20), g.name());
        }
    }
    for g in ShotGroup::ALL {
        let members: Vec<usize> = (0..counts.len()).filter(|&c| groups[c] == g).collect();
        let images: usize = members.iter().map(|&c| counts[c]).sum();
        println!("{:<7} {:>5} classes {:>9} images", g.name(), members.len(), images);
    }
    let (mx, mn) = (counts.iter().max().copied().unwrap_or(0), counts.iter().min().copied().unwrap_or(0));
    println!("total   {:>5} classes {:>9} images (max {mx}, min {mn})", counts.len(), bundle.train.len());
    if let Some(path) = write_split {
        bundle
            .split_info()
            .write(&path, &bundle.fingerprint())
            .with_context(|| format!("writing {}", path.display()))?;
        println!("split artifact written to {}", path.display());
    }
    Ok(())
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        s.chars().take(n - 1).collect::<String>() + "…"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The flags go on top of the preset's `[data]`, unless they name another data set.
    #[test]
    fn another_data_set_does_not_take_the_presets_data_settings() {
        let tiny = crate::preset::embedded("tiny").unwrap().data;
        let flags = |spec: DataSpec| DataFlags { spec, mirror: None };
        let same = flags(DataSpec { imbalance: Some(5.0), ..Default::default() }).resolve(Some(&tiny));
        assert_eq!(same, DataSpec { imbalance: Some(5.0), ..tiny.clone() });
        assert_eq!(same.synthetic_classes, Some(4));
        let cifar = DataSpec { dataset: Some("cifar10-lt".into()), ..Default::default() };
        assert_eq!(flags(cifar.clone()).resolve(Some(&tiny)), cifar);
        let named_again = DataSpec { dataset: Some("synthetic".into()), ..Default::default() };
        assert_eq!(flags(named_again).resolve(Some(&tiny)), tiny);
        assert_eq!(flags(cifar.clone()).resolve(None), cifar);
    }
}
