//! `lt data`: describe data sets and write split artifacts.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use lt_data::{load_bundle, DataBundle, DataOptions, DatasetName, ShotGroup};

use crate::preset::DataSection;

/// Data set options shared by every command that loads data (each overrides a preset's
/// `[data]` section).
#[derive(Args, Clone, Debug, Default)]
pub struct DataSetArgs {
    /// Data set: synthetic, fmnist-lt, mnist-lt, cifar10-lt, cifar100-lt, imagenet-lt, inat2018, folder.
    #[arg(long)]
    pub dataset: Option<String>,
    /// Imbalance ratio rho = n_max / n_min (default 100 where the data set is made long-tailed).
    #[arg(long)]
    pub imbalance: Option<f64>,
    /// Class-balanced validation images per class, drawn from the training images the long-tailed
    /// selection did not use (default: 100, or 20 for CIFAR-100-LT; 0: no validation set).
    #[arg(long)]
    pub val_per_class: Option<usize>,
    /// Where the data set lives (searched before the project's `data/`); for `folder`, the folder.
    #[arg(long)]
    pub data_root: Option<PathBuf>,
    /// Download what is missing (CIFAR, MNIST, Fashion-MNIST) into the data root.
    #[arg(long)]
    pub download: bool,
    /// Replacement download location (a mirror of the official files).
    #[arg(long)]
    pub mirror: Option<String>,
    /// Seed of generated data (synthetic) and seeded test splits (folder).
    #[arg(long)]
    pub data_seed: Option<u64>,
    /// Synthetic data set: number of classes.
    #[arg(long)]
    pub synthetic_classes: Option<usize>,
    /// Synthetic data set: images of the largest class.
    #[arg(long)]
    pub synthetic_n_max: Option<usize>,
    /// Synthetic data set: image side.
    #[arg(long)]
    pub synthetic_size: Option<usize>,
    /// Folder data set: fraction of each class held out for testing when there is no test folder.
    #[arg(long)]
    pub test_fraction: Option<f64>,
    /// Crop side for image-file data sets (ImageNet-LT, iNat, folder).
    #[arg(long)]
    pub image_size: Option<u32>,
}

impl DataSetArgs {
    /// The data section these arguments give on top of `base` (a preset's, or the defaults).
    pub fn resolve(&self, base: Option<&DataSection>) -> DataSection {
        let mut d = base
            .cloned()
            .unwrap_or_else(|| DataSection { dataset: "synthetic".into(), ..Default::default() });
        if let Some(v) = &self.dataset {
            d.dataset = v.clone();
        }
        macro_rules! over {
            ($($f:ident),*) => { $( if self.$f.is_some() { d.$f = self.$f.clone(); } )* };
        }
        over!(
            imbalance,
            val_per_class,
            data_root,
            synthetic_classes,
            synthetic_n_max,
            synthetic_size,
            test_fraction,
            image_size
        );
        if let Some(s) = self.data_seed {
            d.data_seed = s;
        }
        d.download |= self.download;
        d
    }

    /// The mirror, if any (not part of a data section: it does not change the data).
    pub fn mirror(&self) -> Option<String> {
        self.mirror.clone()
    }
}

/// Loads the data set a data section describes.
pub fn load(section: &DataSection, mirror: Option<String>) -> Result<DataBundle> {
    let name: DatasetName = section.dataset.parse()?;
    let mut o = DataOptions {
        data_root: section.data_root.clone(),
        imbalance: section.imbalance,
        val_per_class: section.val_per_class,
        download: section.download,
        mirror,
        seed: section.data_seed,
        ..Default::default()
    };
    if let Some(f) = section.test_fraction {
        o.test_fraction = f;
    }
    if let Some(s) = section.image_size {
        o.image_size = s;
    }
    if let Some(c) = section.synthetic_classes {
        o.synthetic.classes = c;
    }
    if let Some(n) = section.synthetic_n_max {
        o.synthetic.n_max = n;
    }
    if let Some(s) = section.synthetic_size {
        o.synthetic.size = s;
    }
    load_bundle(name, &o).with_context(|| format!("loading data set {name}"))
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
        data: DataSetArgs,
        /// Start from a preset's data section.
        #[arg(long)]
        preset: Option<String>,
        /// Write the split artifact (training indices, labels, class counts, groups) here.
        #[arg(long)]
        write_split: Option<PathBuf>,
    },
}

/// Runs `lt data`.
pub fn run(args: DataArgs) -> Result<()> {
    match args.command {
        DataCommand::Describe { data, preset, write_split } => {
            let preset = crate::preset::resolve(preset.as_deref(), None)?;
            describe(&data.resolve(preset.as_ref().map(|p| &p.data)), data.mirror(), write_split)
        }
    }
}

fn describe(section: &DataSection, mirror: Option<String>, write_split: Option<PathBuf>) -> Result<()> {
    let bundle = load(section, mirror)?;
    let name = bundle.name;
    let counts = bundle.class_counts();
    let groups = lt_data::longtail::shot_groups(&counts);
    println!("dataset   {name}{}", bundle.imbalance.map(|r| format!(" (imbalance {r})")).unwrap_or_default());
    println!("source    {}", bundle.source);
    println!("classes   {}", bundle.num_classes());
    println!(
        "images    train {} (of {}), val {}, test {}",
        bundle.train.len(),
        bundle.original_train_len,
        bundle.val.as_ref().map(|v| v.len().to_string()).unwrap_or_else(|| "-".into()),
        bundle.test.len()
    );
    let show = bundle.num_classes() <= 100;
    if show {
        println!("{:>6}  {:<20} {:>7}  group", "class", "name", "count");
        for (c, (&n, g)) in counts.iter().zip(&groups).enumerate() {
            println!("{c:>6}  {:<20} {n:>7}  {}", truncate(&bundle.class_names[c], 20), g.name());
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
