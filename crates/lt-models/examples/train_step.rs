//! A ResNet-32 training step (forward, backward) and inference at batch 128 with the fused CPU
//! path; pass `candle` to use candle's stock ops instead:
//! `cargo run --release -p lt-models --example train_step [candle]`.
use candle_core::{Device, Tensor};
use lt_models::{Arch, Backend, Model};
use std::time::Instant;
fn main() {
    let dev = Device::Cpu;
    let b = 128;
    let mut m = Model::new(Arch::new("resnet32", 10, 3).unwrap(), 0, &dev).unwrap();
    if std::env::args().any(|a| a == "candle") {
        m.set_backend(Backend::Candle);
    }
    let x = Tensor::randn(0f32, 1.0, (b, 3, 32, 32), &dev).unwrap();
    let y = Tensor::from_vec((0..b as u32).map(|i| i % 10).collect::<Vec<_>>(), b, &dev).unwrap();
    for i in 0..4 {
        let t = Instant::now();
        let pass = m.train_forward(&x).unwrap();
        let loss = candle_nn::loss::cross_entropy(&pass.logits, &y).unwrap();
        let tf = t.elapsed();
        let g = pass.backward(&loss).unwrap();
        let tb = t.elapsed();
        drop(g);
        println!(
            "step {i}: fwd {:.0} ms, fwd+bwd {:.0} ms, {:.0} img/s",
            tf.as_secs_f64() * 1e3,
            tb.as_secs_f64() * 1e3,
            b as f64 / tb.as_secs_f64()
        );
    }
    let t = Instant::now();
    for _ in 0..3 {
        m.infer(&x).unwrap();
    }
    println!("eval {:.0} img/s", 3.0 * b as f64 / t.elapsed().as_secs_f64());
}
