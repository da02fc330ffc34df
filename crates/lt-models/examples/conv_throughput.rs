//! Throughput of the convolution kernels (forward, input gradient, weight gradient) on the
//! ResNet-32 layer shapes at batch 128, and of the evaluation pass's folded convolution (batch
//! norm, residual add and ReLU applied as the output is stored) against the same work as three
//! passes: `cargo run --release -p lt-models --example conv_throughput [resnet50]`. Times are
//! the best of 7 runs (the least disturbed by other work on the machine); GF = GFLOP/s.
use lt_models::ops::conv::{backward_input, backward_weight, forward, forward_fused, ConvShape, Fuse};
use lt_models::ops::{elementwise, norm};
use std::time::Instant;

/// Best of 7 timed runs after one untimed, in seconds.
fn best(f: &mut dyn FnMut()) -> f64 {
    f();
    (0..7)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

/// The ResNet-32 layer shapes at batch 128, or (`resnet50` as the first argument) a selection
/// of ResNet-50's at batch 8.
fn shapes(resnet50: bool) -> Vec<ConvShape> {
    let c = |n, h, cin, cout, k, stride| ConvShape { n, h, w: h, cin, cout, k, stride, pad: k / 2 };
    if resnet50 {
        vec![
            c(8, 56, 64, 64, 3, 1),
            c(8, 56, 64, 256, 1, 1),
            c(8, 28, 512, 128, 1, 1),
            c(8, 14, 256, 256, 3, 1),
            c(8, 14, 1024, 256, 1, 1),
            c(8, 7, 512, 512, 3, 1),
            c(8, 7, 2048, 512, 1, 1),
            c(8, 14, 256, 256, 3, 2),
        ]
    } else {
        vec![
            c(128, 32, 16, 16, 3, 1),
            c(128, 16, 32, 32, 3, 1),
            c(128, 8, 64, 64, 3, 1),
            c(128, 32, 16, 32, 3, 2),
            c(128, 16, 32, 64, 3, 2),
        ]
    }
}

fn main() {
    println!(
        "kernels: {} (CPU features: {})",
        lt_models::ops::kernel_name(),
        lt_models::ops::cpu_features().join(" ")
    );
    let resnet50 = std::env::args().nth(1).is_some_and(|a| a == "resnet50");
    for s in shapes(resnet50) {
        let x: Vec<f32> = (0..s.input_len()).map(|i| ((i * 7919) % 997) as f32 / 997.0 - 0.5).collect();
        let w: Vec<f32> = (0..s.weight_len()).map(|i| ((i * 104729) % 991) as f32 / 9910.0 - 0.05).collect();
        let dy: Vec<f32> = (0..s.output_len()).map(|i| ((i * 31) % 101) as f32 / 101.0 - 0.5).collect();
        let (scale, shift) = (vec![0.9f32; s.cout], vec![0.1f32; s.cout]);
        let mut out = vec![0f32; s.output_len()];
        let mut tmp = vec![0f32; s.output_len()];
        let mut dx = vec![0f32; s.input_len()];
        let mut dw = vec![0f32; s.weight_len()];
        let gf = |t: f64| 2.0 * s.macs() as f64 / t / 1e9;
        let tf = best(&mut || forward(&x, &w, &s, &mut out));
        let fuse = Fuse { scale: Some(&scale), bias: Some(&shift), residual: Some(&dy), relu: true };
        let tfused = best(&mut || forward_fused(&x, &w, &s, &fuse, &mut out));
        let tsplit = best(&mut || {
            forward(&x, &w, &s, &mut out);
            norm::affine(&out, s.cout, &scale, &shift, false, &mut tmp);
            elementwise::add_relu(&tmp, &dy, &mut out);
        });
        let tx = best(&mut || backward_input(&dy, &w, &s, &mut dx));
        let tw = best(&mut || backward_weight(&x, &dy, &s, &mut dw));
        println!(
            "{:>2}x{:<2} {:>4}->{:<4} k{} stride {}: fwd {:6.2} ms ({:3.0} GF) | folded {:6.2} ms vs 3 passes {:6.2} ms | dx {:6.2} ms ({:3.0} GF) | dw {:6.2} ms ({:3.0} GF)",
            s.h, s.w, s.cin, s.cout, s.k, s.stride,
            tf * 1e3, gf(tf), tfused * 1e3, tsplit * 1e3, tx * 1e3, gf(tx), tw * 1e3, gf(tw)
        );
    }
}
