//! `lt bench loader`: the batch loader's throughput on any data set (a preset's, the flags', or a
//! generated CIFAR-size one), including an image folder of JPEGs it can generate at ImageNet's
//! typical size (500 x 375), so that the measurement needs no download and
//! `scripts/bench_torch_loader.py` can read the same files.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use lt_core::Rng;
use lt_data::DataSpec;
use serde_json::json;

use crate::commands::data::PresetData;

/// Classes of a generated JPEG folder.
const GENERATED_CLASSES: usize = 4;

/// `lt bench loader ...`
#[derive(Args)]
pub struct LoaderBench {
    /// The data set to load (each flag overrides a preset's `[data]` table; e.g. `--preset
    /// imagenet-lt --data-root DIR` times a machine's copy of ImageNet-LT); without a preset or
    /// `--dataset`, a generated CIFAR-size set (5,000 images per class, balanced) with the CIFAR
    /// augmentation.
    #[command(flatten)]
    source: PresetData,
    /// Batch size.
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..))]
    batch: u32,
    /// Worker threads.
    #[arg(long, default_value_t = lt_train::config::DEFAULT_WORKERS as u32, value_parser = clap::value_parser!(u32).range(1..))]
    workers: u32,
    /// Batches to load.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u32).range(1..))]
    batches: u32,
    /// An image folder (`--dataset folder`, implied) at `--data-root`: when that directory does not
    /// exist yet, first write this many generated 500 x 375 JPEGs (quality 90, a few classes)
    /// there.
    #[arg(long, requires = "data_root", value_parser = clap::value_parser!(u32).range(1..))]
    generate_jpegs: Option<u32>,
    /// The evaluation transform instead of training augmentation (for image files: resize to a
    /// shorter side of 256/224 of the crop, centre crop), as extraction and evaluation load.
    #[arg(long)]
    eval: bool,
    #[command(flatten)]
    device: crate::device::DeviceArg,
}

impl LoaderBench {
    /// The data to load: the preset's or the generated CIFAR-size set, then the flags.
    fn spec(&self) -> Result<DataSpec> {
        let preset = self.source.preset_spec()?;
        let mut flags = self.source.data.spec.clone();
        if self.generate_jpegs.is_some() {
            match flags.dataset.as_deref() {
                None | Some("folder") => flags.dataset = Some("folder".into()),
                Some(other) => {
                    anyhow::bail!("--generate-jpegs writes an image folder; --dataset {other} is not one")
                }
            }
        }
        let base = match preset {
            Some(data) => data,
            None if flags.dataset.is_none() => DataSpec {
                dataset: Some("synthetic".into()),
                synthetic_n_max: Some(5000),
                imbalance: Some(1.0),
                ..Default::default()
            },
            None => DataSpec::default(),
        };
        let flags = crate::commands::data::DataFlags { spec: flags, mirror: None };
        Ok(flags.resolve(Some(&base)))
    }
}

/// Runs `lt bench loader`.
pub fn run(b: LoaderBench) -> Result<()> {
    let dev = b.device.open()?;
    let spec = b.spec()?;
    if let (Some(root), Some(n)) = (&spec.data_root, b.generate_jpegs) {
        if !root.exists() {
            eprintln!("writing {n} generated JPEGs to {}", root.display());
            lt_core::atomic::create_dir_atomic(root, |tmp| write_jpegs(tmp, n as usize))
                .with_context(|| format!("writing generated JPEGs to {}", root.display()))?;
        }
    }
    // Times a sample of the images, and fails on a bad one anyway.
    let bundle = crate::commands::data::load(&spec, b.source.data.mirror.clone(), false)?;
    let ds = bundle.train;
    anyhow::ensure!(!ds.is_empty(), "the data set to load has no training images");
    let (batch, wanted) = (b.batch as usize, b.batches as usize * b.batch as usize);
    let cfg = lt_data::LoaderConfig {
        batch_size: batch,
        workers: b.workers as usize,
        prefetch: 4,
        train: !b.eval,
        seed: 0,
    };
    // Timed from the first batch on, as the PyTorch reference is (its workers take a while to
    // start): `images` counts the batches after it.
    let mut start = None;
    let (mut images, mut epoch) = (0usize, 0u64);
    while images < wanted {
        let order: Vec<usize> = (0..ds.len()).collect();
        for bt in lt_data::EpochBatches::new(ds.clone(), order, epoch, cfg.clone(), dev.clone()) {
            let n = bt?.label_vec.len();
            if start.is_none() {
                dev.synchronize()?;
                start = Some(Instant::now());
                continue;
            }
            images += n;
            if images >= wanted {
                break;
            }
        }
        epoch += 1;
    }
    dev.synchronize()?;
    let secs = start.map_or(0.0, |t| t.elapsed().as_secs_f64());
    let [c, h, w] = ds.sample_shape();
    let transform = if b.eval { "evaluation" } else { "training" };
    super::bench::print(json!({
        "bench": "loader", "dataset": bundle.name.to_string(), "data_root": spec.data_root,
        "sample": format!("{c}x{h}x{w}"), "transform": transform, "eval": b.eval,
        "augmentation": format!("{} ({transform} transform, {c}x{h}x{w})", bundle.name),
        "batch": batch, "workers": b.workers, "images": images, "images_per_sec": images as f64 / secs,
        "device": b.device.device,
    }));
    Ok(())
}

/// Writes `n` generated JPEGs to `dir/class<k>/<i>.jpg`, on all cores: smooth colour patterns
/// with noise, so that they compress about as well as ImageNet's photographs (about 100 KB
/// each); every third is portrait. Image `i` is the same whatever the number of threads.
fn write_jpegs(dir: &Path, n: usize) -> std::io::Result<()> {
    for k in 0..GENERATED_CLASSES.min(n) {
        std::fs::create_dir_all(dir.join(format!("class{k}")))?;
    }
    let threads = std::thread::available_parallelism().map_or(1, |t| t.get());
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| s.spawn(move || (t..n).step_by(threads).try_for_each(|i| write_jpeg(dir, i))))
            .collect();
        handles
            .into_iter()
            .try_for_each(|h| h.join().unwrap_or_else(|_| Err(std::io::Error::other("a writer panicked"))))
    })
}

/// Writes generated JPEG `i` (see [`write_jpegs`]).
fn write_jpeg(dir: &Path, i: usize) -> std::io::Result<()> {
    let mut rng = Rng::stream(0, &[i as u64]);
    let (w, h) = if i % 3 == 2 { (375u32, 500u32) } else { (500, 375) };
    let (fx, fy) = (17.0 + (i % 23) as f64, 23.0 + (i % 7) as f64);
    let mut bytes = Vec::with_capacity((w * h * 3) as usize);
    for y in 0..h {
        for x in 0..w {
            let base = [
                (x as f64 / fx).sin() * 80.0 + 128.0,
                (y as f64 / fy).cos() * 80.0 + 128.0,
                ((x + y) % 256) as f64,
            ];
            bytes.extend(base.map(|v| (v + 8.0 * rng.normal()).clamp(0.0, 255.0) as u8));
        }
    }
    let path = dir.join(format!("class{}", i % GENERATED_CLASSES)).join(format!("{i}.jpg"));
    let file = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut enc = image::codecs::jpeg::JpegEncoder::new_with_quality(file, 90);
    enc.encode(&bytes, w, h, image::ExtendedColorType::Rgb8).map_err(std::io::Error::other)
}
