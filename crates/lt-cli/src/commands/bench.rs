//! `lt bench`: the measurements behind `cargo xtask bench` (one configuration per process, so
//! that peak memory is the configuration's own). Each prints one JSON object.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use clap::{Args, Subcommand};
use lt_core::optim::Sgd;
use lt_models::{Arch, Backend, Model};
use serde_json::json;

/// `lt bench ...`
#[derive(Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    command: BenchCommand,
}

#[derive(Subcommand)]
enum BenchCommand {
    /// A backbone's training step (forward, backward, SGD update) or eval forward.
    Backbone {
        /// Architecture.
        #[arg(long, default_value = "resnet32")]
        arch: String,
        /// Classes.
        #[arg(long, default_value_t = 10)]
        classes: usize,
        /// Batch size.
        #[arg(long, default_value_t = 128)]
        batch: usize,
        /// Image side.
        #[arg(long, default_value_t = 32)]
        size: usize,
        /// `train` or `eval`.
        #[arg(long, default_value = "train")]
        mode: String,
        /// `fast` (the project's ops) or `candle` (stock candle ops).
        #[arg(long, default_value = "fast")]
        backend: String,
        /// Timed steps.
        #[arg(long, default_value_t = 5)]
        steps: usize,
        /// Untimed warm-up steps.
        #[arg(long, default_value_t = 2)]
        warmup: usize,
        /// Device.
        #[arg(long, default_value = "cpu")]
        device: String,
        /// Let cuDNN use TF32 tensor-core math in f32 convolutions (PyTorch's default on CUDA).
        #[arg(long)]
        tf32: bool,
    },
    /// The batch loader on CIFAR-size images with the CIFAR augmentation.
    Loader {
        /// Batch size.
        #[arg(long, default_value_t = 128)]
        batch: usize,
        /// Worker threads.
        #[arg(long, default_value_t = 2)]
        workers: usize,
        /// Batches to load.
        #[arg(long, default_value_t = 300)]
        batches: usize,
    },
    /// Stage 2 on a generated features artifact: CIFAR size (12,406 x 64, M = 8, f32) or
    /// ImageNet-LT size (115,846 x 2,048, M = 4, f16, memory-mapped).
    Retrain {
        /// `cifar` or `imagenet`.
        #[arg(long, default_value = "cifar")]
        size: String,
        /// Method.
        #[arg(long, default_value = "srepr")]
        method: String,
        /// Epochs.
        #[arg(long, default_value_t = 1)]
        epochs: usize,
        /// Directory for the generated artifact (reused when present).
        #[arg(long)]
        dir: PathBuf,
        /// Device.
        #[arg(long, default_value = "cpu")]
        device: String,
    },
}

fn print(mut v: serde_json::Value) {
    v["peak_rss_mib"] = json!(lt_core::memory::peak_rss_mib());
    v["rss_anon_mib"] = json!(lt_core::memory::rss_anon_mib());
    println!("{v}");
}

/// Runs `lt bench`.
pub fn run(a: BenchArgs) -> Result<()> {
    match a.command {
        BenchCommand::Backbone { arch, classes, batch, size, mode, backend, steps, warmup, device, tf32 } => {
            let dev = crate::device::parse(&device)?;
            lt_models::ops::set_cudnn_tf32(tf32);
            lt_models::ops::reset_device_memory_peak(&dev);
            let mut m = Model::new(Arch::new(&arch, classes, 3)?, 0, &dev)?;
            m.set_backend(match backend.as_str() {
                "fast" => Backend::Fast,
                "candle" => Backend::Candle,
                other => anyhow::bail!("unknown backend {other:?}"),
            });
            let x = Tensor::randn(0f32, 1.0, (batch, 3, size, size), &dev)?;
            let y = Tensor::from_vec(
                (0..batch as u32).map(|i| i % classes as u32).collect::<Vec<_>>(),
                batch,
                &dev,
            )?;
            let params = m.store().named_params();
            let mut opt = Sgd::new(0.9, true, 5e-4);
            let mut step = || -> Result<()> {
                if mode == "train" {
                    let step = m.train_step(&x, |logits| candle_nn::loss::cross_entropy(logits, &y))?;
                    opt.step(&params, &step.grads, 0.01)?;
                } else {
                    let (_, l) = m.infer(&x)?;
                    l.to_dtype(DType::F32)?.sum_all()?.to_vec0::<f32>()?;
                }
                dev.synchronize()?;
                Ok(())
            };
            for _ in 0..warmup {
                step()?;
            }
            let mut times = Vec::with_capacity(steps);
            for _ in 0..steps {
                let t = Instant::now();
                step()?;
                times.push(t.elapsed().as_secs_f64());
            }
            times.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
            let median = times[times.len() / 2];
            print(json!({
                "bench": "backbone", "arch": arch, "mode": mode, "backend": backend, "batch": batch, "size": size, "device": device,
                "median_step_seconds": median, "images_per_sec": batch as f64 / median, "steps": steps,
                "kernels": lt_models::ops::kernel_name(), "tf32": tf32,
                "device_pool_peak_mib": lt_models::ops::device_memory_peak(&dev).map(|b| b as f64 / 1048576.0),
            }));
        }
        BenchCommand::Loader { batch, workers, batches } => {
            let opts = lt_data::DataOptions {
                synthetic: lt_data::SyntheticConfig { n_max: 5000, ..Default::default() },
                imbalance: Some(1.0),
                ..Default::default()
            };
            let b = lt_data::load_bundle(lt_data::DatasetName::Synthetic, &opts)?;
            let ds: Arc<dyn lt_data::Dataset> = b.train.clone();
            let n = ds.len();
            let cfg = lt_data::LoaderConfig { batch_size: batch, workers, prefetch: 4, train: true, seed: 0 };
            let t = Instant::now();
            let mut images = 0usize;
            let mut epoch = 0u64;
            while images < batches * batch {
                let order: Vec<usize> = (0..n).collect();
                for bt in lt_data::EpochBatches::new(ds.clone(), order, epoch, cfg.clone(), Device::Cpu) {
                    images += bt?.label_vec.len();
                    if images >= batches * batch {
                        break;
                    }
                }
                epoch += 1;
            }
            let secs = t.elapsed().as_secs_f64();
            print(
                json!({"bench": "loader", "batch": batch, "workers": workers, "images": images, "images_per_sec": images as f64 / secs, "augmentation": "pad 4 + random crop 32 + flip + normalise"}),
            );
        }
        BenchCommand::Retrain { size, method, epochs, dir, device } => {
            let dev = crate::device::parse(&device)?;
            let (n, d, c, m, half) = match size.as_str() {
                "cifar" => (12_406usize, 64usize, 100usize, 8usize, false),
                "imagenet" => (115_846, 2048, 1000, 4, true),
                other => anyhow::bail!("--size must be cifar or imagenet, got {other:?}"),
            };
            let path = dir.join(format!("bench-features-{size}.safetensors"));
            if !path.exists() {
                std::fs::create_dir_all(&dir)?;
                let t = Instant::now();
                crate::commands::bench_features::write(&path, n, d, c, m, half)?;
                eprintln!("generated {} in {:.1} s", path.display(), t.elapsed().as_secs_f64());
            }
            let fs = lt_core::formats::features::Features::open(&path)?;
            let mut cfg = lt_retrain::RetrainConfig::new(method.parse()?);
            cfg.epochs = epochs;
            cfg.batch_size = 512;
            // One fit with fixed knobs: the time of a run, not of a validation search.
            cfg.tau = Some(1.0);
            (cfg.srepr.lambda, cfg.srepr.temperature) = (Some(1.0), Some(1.0));
            let t = Instant::now();
            let out = lt_retrain::retrain(&fs, &cfg, &dev)?;
            let secs = t.elapsed().as_secs_f64();
            print(json!({
                "bench": "retrain", "size": size, "method": method, "epochs": epochs, "samples": n, "dim": d, "classes": c, "members": m,
                "dtype": if half { "f16" } else { "f32" }, "seconds": secs, "seconds_per_epoch": secs / epochs as f64,
                "file_mib": std::fs::metadata(&path)?.len() as f64 / (1024.0 * 1024.0), "final_loss": out.epoch_losses.last(),
            }));
        }
    }
    Ok(())
}
