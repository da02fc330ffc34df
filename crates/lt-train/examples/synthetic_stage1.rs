//! Stage 1 on the embedded synthetic long-tailed set: trains SGD and SWA backbones and prints
//! their test accuracy by shot group.
//!
//! `cargo run --release -p lt-train --example synthetic_stage1 -- [ARCH] [EPOCHS] [SWA_START] [N_MAX]`
use lt_data::{load_bundle, DataOptions, DatasetName, SyntheticConfig};
use lt_train::{train, RunOptions, SwaConfig, TrainConfig};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, d: &str| args.get(i).cloned().unwrap_or_else(|| d.to_string());
    let epochs: usize = arg(1, "30").parse()?;
    let synthetic = SyntheticConfig { n_max: arg(3, "500").parse()?, ..Default::default() };
    let data = load_bundle(DatasetName::Synthetic, &DataOptions { synthetic, ..Default::default() })?;
    let cfg = TrainConfig {
        arch: arg(0, "cifar-resnet8x16"),
        epochs,
        batch_size: 64,
        lr: 0.1,
        momentum: 0.9,
        nesterov: true,
        weight_decay: 5e-4,
        warmup_epochs: 2,
        swa: Some(SwaConfig { start: arg(2, "24").parse()?, lr: 0.05, rank: 20, collect_every_steps: None }),
        seed: 0,
        workers: 2,
        init: None,
        backbone_lr_scale: 1.0,
        freeze_bn: false,
        precision: lt_models::Precision::F32,
    };
    let dir = std::env::temp_dir().join(format!("lt-synthetic-stage1-{}", std::process::id()));
    let t = std::time::Instant::now();
    let s = train(&cfg, &data, &dir, &RunOptions::default())?;
    let show = |name: &str, e: &lt_metrics::Evaluation| {
        println!(
            "{name}: all {:.1}  many {:.1}  medium {:.1}  few {:.1}  nll {:.3}  ece {:.3}",
            100.0 * e.accuracy,
            100.0 * e.many.unwrap_or(f64::NAN),
            100.0 * e.medium.unwrap_or(f64::NAN),
            100.0 * e.few.unwrap_or(f64::NAN),
            e.nll,
            e.ece
        )
    };
    show("SGD", &s.sgd);
    if let Some(swa) = &s.swa {
        show("SWA", swa);
    }
    println!("{:.0} s, run directory {}", t.elapsed().as_secs_f64(), dir.display());
    Ok(())
}
