//! Throughput of the convolution kernels (forward, input gradient, weight gradient) on the
//! ResNet-32 layer shapes at batch 128: `cargo run --release -p lt-models --example conv_throughput`.
use lt_models::ops::conv::{backward_input, backward_weight, forward, ConvShape};
use std::time::Instant;
fn main() {
    for s in [
        ConvShape { n: 128, h: 32, w: 32, cin: 16, cout: 16, k: 3, stride: 1, pad: 1 },
        ConvShape { n: 128, h: 16, w: 16, cin: 32, cout: 32, k: 3, stride: 1, pad: 1 },
        ConvShape { n: 128, h: 8, w: 8, cin: 64, cout: 64, k: 3, stride: 1, pad: 1 },
        ConvShape { n: 128, h: 32, w: 32, cin: 16, cout: 32, k: 3, stride: 2, pad: 1 },
    ] {
        let x = vec![0.5f32; s.input_len()];
        let w = vec![0.1f32; s.weight_len()];
        let dy = vec![0.2f32; s.output_len()];
        let mut out = vec![0f32; s.output_len()];
        let mut dx = vec![0f32; s.input_len()];
        let mut dw = vec![0f32; s.weight_len()];
        let flops = 2.0 * s.macs() as f64;
        let time = |f: &mut dyn FnMut()| {
            f();
            let t = Instant::now();
            for _ in 0..5 {
                f();
            }
            t.elapsed().as_secs_f64() / 5.0
        };
        let tf = time(&mut || forward(&x, &w, &s, &mut out));
        let tx = time(&mut || backward_input(&dy, &w, &s, &mut dx));
        let tw = time(&mut || backward_weight(&x, &dy, &s, &mut dw));
        println!(
            "{:?}: fwd {:.2} ms ({:.0} GF), dx {:.2} ms ({:.0} GF), dw {:.2} ms ({:.0} GF)",
            (s.h, s.cin, s.cout, s.stride),
            tf * 1e3,
            flops / tf / 1e9,
            tx * 1e3,
            flops / tx / 1e9,
            tw * 1e3,
            flops / tw / 1e9
        );
    }
}
