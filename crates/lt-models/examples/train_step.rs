//! A ResNet-32 training step (forward, backward) and inference at batch 128 with the fused CPU
//! path; `--backend candle` uses candle's stock ops instead:
//! `cargo run --release -p lt-models --example train_step [-- --backend candle]`.
use std::time::Instant;

use anyhow::{bail, Result};
use candle_core::{Device, Tensor};
use lt_models::{Arch, Backend, Model};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let backend =
        match args.iter().position(|a| a == "--backend").map(|i| args.get(i + 1).map(String::as_str)) {
            None | Some(Some("fast")) => Backend::Fast,
            Some(Some("candle")) => Backend::Candle,
            Some(other) => bail!("--backend fast|candle, got {other:?}"),
        };
    let dev = Device::Cpu;
    let b = 128;
    let mut m = Model::new(Arch::new("resnet32", 10, 3)?, 0, &dev)?;
    m.set_backend(backend);
    let x = Tensor::randn(0f32, 1.0, (b, 3, 32, 32), &dev)?;
    let y = Tensor::from_vec((0..b as u32).map(|i| i % 10).collect::<Vec<_>>(), b, &dev)?;
    for i in 0..4 {
        let t = Instant::now();
        let step = m.train_step(&x, |logits| candle_nn::loss::cross_entropy(logits, &y))?;
        let secs = t.elapsed().as_secs_f64();
        drop(step);
        println!("step {i}: forward + backward {:.0} ms, {:.0} img/s", secs * 1e3, b as f64 / secs);
    }
    let t = Instant::now();
    for _ in 0..3 {
        m.infer(&x)?;
    }
    println!("eval {:.0} img/s", 3.0 * b as f64 / t.elapsed().as_secs_f64());
    Ok(())
}
