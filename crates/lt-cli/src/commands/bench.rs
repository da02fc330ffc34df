//! `lt bench`: the measurements behind `cargo xtask bench` (one configuration per process, so
//! that peak memory is the configuration's own). Each prints one JSON object.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use candle_core::{DType, Tensor};
use candle_nn::ModuleT;
use clap::{Args, Subcommand, ValueEnum};
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
    Backbone(BackboneBench),
    /// The batch loader on any data set (a preset's, the flags', or generated CIFAR-size images
    /// by default), or on generated ImageNet-size JPEGs (`--generate-jpegs`); the batches are
    /// made on `--device` (on a GPU this includes the copy of the bytes and their normalisation
    /// there, as in training).
    Loader(Box<crate::commands::bench_loader::LoaderBench>),
    /// Stage 2 on a generated features artifact: CIFAR size (12,406 x 64, M = 8, f32) or
    /// ImageNet-LT size (115,846 x 2,048, M = 4, f16, memory-mapped).
    Retrain(RetrainBench),
}

/// What a backbone benchmark times.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
enum Mode {
    /// Forward, backward and SGD update.
    Train,
    /// Training-mode forward and backward, no update (`train` minus `grad`: the SGD update).
    Grad,
    /// Training-mode forward with the autograd graph, no backward (`grad` minus `forward`: the
    /// backward pass).
    Forward,
    /// Eval-mode forward.
    Eval,
}

/// Which ops run the backbone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
enum BackendName {
    /// The project's ops.
    Fast,
    /// Stock candle ops.
    Candle,
}

#[derive(Args)]
struct BackboneBench {
    /// Architecture.
    #[arg(long, default_value = "resnet32")]
    arch: String,
    /// Classes.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    classes: u32,
    /// Batch size.
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..))]
    batch: u32,
    /// Image side (`--image-size` as in the other commands).
    #[arg(long, visible_alias = "image-size", default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..))]
    size: u32,
    /// What to time.
    #[arg(long, value_enum, default_value = "train")]
    mode: Mode,
    /// Which ops.
    #[arg(long, value_enum, default_value = "fast")]
    backend: BackendName,
    /// Timed steps.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    steps: u32,
    /// Untimed warm-up steps.
    #[arg(long, default_value_t = 2)]
    warmup: u32,
    #[command(flatten)]
    device: crate::device::DeviceArg,
    /// Let cuDNN use TF32 tensor-core math in f32 convolutions (PyTorch's default on CUDA).
    #[arg(long)]
    tf32: bool,
    /// Arithmetic of the backbone: f32, or bf16 (mixed precision, as PyTorch's autocast).
    #[arg(long, default_value = "f32")]
    precision: lt_models::Precision,
    /// Train and grad steps on the taped executor (`Model::set_taped`: the backward pass walked
    /// by hand, without candle's autograd; CUDA's default); on the CPU this turns the fused pass
    /// off. The JSON says whether it ran (`taped`).
    #[arg(long, conflicts_with = "autograd")]
    taped: bool,
    /// Train and grad steps through candle's autograd (turns CUDA's default taped executor off).
    #[arg(long)]
    autograd: bool,
    /// On the CPU, run op by op with candle's autograd instead of the fused pass (the reference
    /// the fused pass and `--taped` are measured against).
    #[arg(long)]
    no_fused: bool,
    /// Evaluate the model itself rather than a frozen snapshot of it (`Model::freeze`): on the
    /// CPU every call then checks, by a fingerprint of the weights, that its packed weights are
    /// current; on CUDA every call transposes the filters to cuDNN's layout.
    #[arg(long)]
    no_freeze: bool,
    /// After the timed steps, one more step with its ops timed between device synchronisations
    /// (`lt_models::profile`): every forward and backward op of the fused CPU pass or of the
    /// taped executor (CUDA's training steps, `--taped`), or every forward op of the eager
    /// executor (evaluation, `--autograd`, stock candle; its backward is candle's autograd).
    /// The JSON gains `profile`: the step's ms and per op kind its calls and ms.
    #[arg(long)]
    profile: bool,
}

/// The generated stage-2 problem sizes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
enum Size {
    /// CIFAR-100-LT: 12,406 x 64, 100 classes, M = 8, f32.
    Cifar,
    /// ImageNet-LT: 115,846 x 2,048, 1,000 classes, M = 4, f16.
    Imagenet,
}

#[derive(Args)]
struct RetrainBench {
    /// Problem size.
    #[arg(long, value_enum, default_value = "cifar")]
    size: Size,
    /// Method.
    #[arg(long, value_enum, default_value = "srepr")]
    method: lt_retrain::MethodKind,
    /// Epochs.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    epochs: u32,
    /// Directory for the generated artifact (reused when present).
    #[arg(long)]
    dir: PathBuf,
    #[command(flatten)]
    device: crate::device::DeviceArg,
}

/// Prints one benchmark's JSON object with the process's memory.
pub(crate) fn print(mut v: serde_json::Value) {
    v["peak_rss_mib"] = json!(lt_core::memory::peak_rss_mib());
    v["rss_anon_mib"] = json!(lt_core::memory::rss_anon_mib());
    println!("{v}");
}

/// Runs `lt bench`.
pub fn run(a: BenchArgs) -> Result<()> {
    match a.command {
        BenchCommand::Backbone(b) => backbone(b),
        BenchCommand::Loader(b) => crate::commands::bench_loader::run(*b),
        BenchCommand::Retrain(b) => retrain(b),
    }
}

/// The medians of a few timed calls of `step` after `warmup` untimed ones: of the whole call,
/// and of the time until the call had enqueued its work, which `step` returns (the host's share
/// of a step on a GPU; all of it where nothing runs asynchronously).
fn median_seconds(warmup: u32, steps: u32, mut step: impl FnMut() -> Result<Duration>) -> Result<(f64, f64)> {
    for _ in 0..warmup {
        step()?;
    }
    let (mut times, mut host) = (Vec::with_capacity(steps as usize), Vec::with_capacity(steps as usize));
    for _ in 0..steps {
        let t = Instant::now();
        host.push(step()?.as_secs_f64());
        times.push(t.elapsed().as_secs_f64());
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    Ok((median(times), median(host)))
}

fn backbone(b: BackboneBench) -> Result<()> {
    let dev = b.device.open()?;
    lt_models::ops::set_cudnn_tf32(b.tf32);
    lt_models::ops::reset_device_memory_peak(&dev);
    let (batch, classes, size) = (b.batch as usize, b.classes as usize, b.size as usize);
    crate::device::warn_precision(&dev, b.precision);
    let mut m = Model::new(Arch::new(&b.arch, classes, 3)?, 0, &dev)?;
    m.set_precision(b.precision);
    m.set_backend(match b.backend {
        BackendName::Fast => Backend::Fast,
        BackendName::Candle => Backend::Candle,
    });
    m.set_fused(!b.no_fused);
    if b.autograd {
        m.set_taped(false);
    }
    if b.taped {
        m.set_taped(true);
        m.set_fused(false);
        if !m.taped_active() {
            tracing::warn!("--taped: the taped executor does not apply here (it takes the fast backend on CUDA, or on the CPU in f32); running without it");
        }
    }
    let taped = m.taped_active() && matches!(b.mode, Mode::Train | Mode::Grad);
    let x = Tensor::randn(0f32, 1.0, (batch, 3, size, size), &dev)?;
    let y = Tensor::from_vec((0..batch as u32).map(|i| i % classes as u32).collect::<Vec<_>>(), batch, &dev)?;
    // Evaluation measures what serving a trained model does: a snapshot whose packed weights
    // (on the CPU) or channels-last filters (on CUDA) need no check that they are still the
    // model's (`Model::freeze`), which then serves alone.
    let (m, frozen) = match b.mode == Mode::Eval && !b.no_freeze {
        true => {
            let frozen = m.freeze()?;
            drop(m);
            (None, Some(frozen))
        }
        false => (Some(m), None),
    };
    let params = m.as_ref().map_or_else(Vec::new, |m| m.store().named_params());
    let model = || m.as_ref().context("no model beside its frozen snapshot");
    let mut opt = Sgd::new(0.9, true, 5e-4);
    // A step returns how long it took to enqueue its work, before the device synchronises.
    let mut step = || -> Result<Duration> {
        let t = Instant::now();
        match b.mode {
            Mode::Train => {
                let step = model()?.train_step(&x, |logits| candle_nn::loss::cross_entropy(logits, &y))?;
                lt_models::profile::time("sgd update", &dev, || opt.step(&params, &step.grads, 0.01))?;
            }
            Mode::Grad => {
                model()?.train_step(&x, |logits| candle_nn::loss::cross_entropy(logits, &y))?;
            }
            Mode::Forward => {
                let logits = model()?.forward_t(&x, true)?;
                candle_nn::loss::cross_entropy(&logits, &y)?.to_vec0::<f32>()?;
            }
            Mode::Eval => {
                let (_, l) = match &frozen {
                    Some(f) => f.infer(&x)?,
                    None => model()?.infer(&x)?,
                };
                l.to_dtype(DType::F32)?.sum_all()?.to_vec0::<f32>()?;
            }
        }
        let enqueued = t.elapsed();
        dev.synchronize()?;
        Ok(enqueued)
    };
    let (median, host) = median_seconds(b.warmup, b.steps, &mut step)?;
    let profile = if b.profile { Some(profiled(&mut step)?) } else { None };
    print(json!({
        "profile": profile,
        "bench": "backbone", "arch": b.arch, "mode": b.mode, "backend": b.backend, "batch": batch, "size": size,
        "device": b.device.device, "frozen": frozen.is_some(), "median_step_seconds": median, "median_host_seconds": host, "images_per_sec": batch as f64 / median, "steps": b.steps,
        "kernels": lt_models::ops::kernel_name(), "gemm": lt_models::ops::gemm_isa().name(), "cpu_features": lt_models::ops::cpu_features(), "tf32": b.tf32, "precision": b.precision, "taped": taped,
        "device_pool_peak_mib": lt_models::ops::device_memory_peak(&dev).map(|b| b as f64 / 1048576.0),
    }));
    Ok(())
}

/// One more `step` with its ops timed (see `BackboneBench::profile`): `[{op, calls, ms}]` and the
/// whole step.
fn profiled(step: &mut impl FnMut() -> Result<Duration>) -> Result<serde_json::Value> {
    lt_models::profile::set_enabled(true);
    let t = Instant::now();
    let done = step();
    let seconds = t.elapsed().as_secs_f64();
    lt_models::profile::set_enabled(false);
    done?;
    let ops: Vec<_> = lt_models::profile::totals()
        .into_iter()
        .map(|(op, calls, s)| json!({"op": op, "calls": calls, "ms": 1000.0 * s}))
        .collect();
    Ok(json!({"step_ms": 1000.0 * seconds, "ops": ops}))
}

fn retrain(b: RetrainBench) -> Result<()> {
    let dev = b.device.open()?;
    let (n, d, c, m, half) = match b.size {
        Size::Cifar => (12_406usize, 64usize, 100usize, 8usize, false),
        Size::Imagenet => (115_846, 2048, 1000, 4, true),
    };
    let name = serde_json::to_value(b.size)?.as_str().unwrap_or("size").to_string();
    let path = b.dir.join(format!("bench-features-{name}.safetensors"));
    if !path.exists() {
        std::fs::create_dir_all(&b.dir)?;
        let t = Instant::now();
        crate::commands::bench_features::write(&path, n, d, c, m, half)?;
        eprintln!("generated {} in {:.1} s", path.display(), t.elapsed().as_secs_f64());
    }
    let fs = lt_core::formats::features::Features::open(&path)?;
    let mut cfg = lt_retrain::RetrainConfig::new(b.method);
    (cfg.epochs, cfg.batch_size) = (b.epochs as usize, 512);
    // One fit with fixed knobs: the time of a run, not of a validation search.
    cfg.tau = Some(1.0);
    (cfg.srepr.lambda, cfg.srepr.temperature) = (Some(1.0), Some(1.0));
    let t = Instant::now();
    let kept = crate::device::stage2_features(&fs, &dev);
    let out = lt_retrain::retrain(crate::device::stage2_source(&kept, &fs), &cfg, &dev)?;
    let secs = t.elapsed().as_secs_f64();
    print(json!({
        "bench": "retrain", "size": b.size, "method": b.method, "epochs": b.epochs, "samples": n, "dim": d, "classes": c,
        "members": m, "dtype": if half { "f16" } else { "f32" }, "seconds": secs, "seconds_per_epoch": secs / b.epochs as f64,
        "file_mib": std::fs::metadata(&path)?.len() as f64 / (1024.0 * 1024.0), "final_loss": out.epoch_losses.last(),
        // The features kept on the device (null on the CPU; 0 if they did not fit).
        "resident_mib": kept.as_ref().map(|k| k.kept_bytes() as f64 / (1024.0 * 1024.0)),
    }));
    Ok(())
}
