//! Throughput of the convolution kernels (forward, input gradient, weight gradient and the
//! method it ran) on the ResNet-32 layer shapes at batch 128 or every distinct convolution of
//! ResNet-50 (224x224, batch 8 unless given), and of the evaluation pass's folded convolution
//! (batch norm, residual add and ReLU applied as the output is stored; its weights packed once,
//! as evaluation keeps them): `folded` on the direct kernels, `eval` packed as evaluation packs
//! it (Winograd F(2x2, 3x3) for the 3x3 stride-1 layers where it pays), against the same work as
//! three passes: `cargo run --release -p lt-models --example conv_throughput [resnet50 [batch]]`.
//! The training passes (`fwd`, `with moments`, `dx`) run as training runs them: by Winograd
//! where it pays, so their GF count the direct convolution's multiplies (an effective rate).
//! Times are the best of 7 runs (the least disturbed by other work on the machine); GF =
//! GFLOP/s.
use lt_models::ops::conv::{
    backward_input, backward_weight, forward, forward_packed, forward_with_moments, fuses_gradients,
    is_pointwise, pointwise_backward_both, weight_method, ConvShape, Fuse, PackedWeights,
};
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

/// The ResNet-32 layer shapes at batch 128, or (`Some(batch)`) every distinct one of ResNet-50.
fn shapes(resnet50: Option<usize>) -> Vec<ConvShape> {
    let c = |n, h, cin, cout, k, stride| ConvShape { n, h, w: h, cin, cout, k, stride, pad: k / 2 };
    if let Some(n) = resnet50 {
        vec![
            c(n, 224, 3, 64, 7, 2),
            c(n, 56, 64, 64, 1, 1),
            c(n, 56, 256, 64, 1, 1),
            c(n, 56, 64, 64, 3, 1),
            c(n, 56, 64, 256, 1, 1),
            c(n, 56, 256, 128, 1, 1),
            c(n, 28, 512, 128, 1, 1),
            c(n, 56, 128, 128, 3, 2),
            c(n, 28, 128, 128, 3, 1),
            c(n, 28, 128, 512, 1, 1),
            c(n, 56, 256, 512, 1, 2),
            c(n, 28, 512, 256, 1, 1),
            c(n, 14, 1024, 256, 1, 1),
            c(n, 28, 256, 256, 3, 2),
            c(n, 14, 256, 256, 3, 1),
            c(n, 14, 256, 1024, 1, 1),
            c(n, 28, 512, 1024, 1, 2),
            c(n, 14, 1024, 512, 1, 1),
            c(n, 7, 2048, 512, 1, 1),
            c(n, 14, 512, 512, 3, 2),
            c(n, 7, 512, 512, 3, 1),
            c(n, 7, 512, 2048, 1, 1),
            c(n, 14, 1024, 2048, 1, 2),
        ]
    } else {
        vec![
            c(128, 32, 3, 16, 3, 1),
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
    // `resnet50 [batch]` (batch 8 unless given).
    let args: Vec<String> = std::env::args().skip(1).collect();
    let resnet50 = (args.first().map(String::as_str) == Some("resnet50"))
        .then(|| args.get(1).and_then(|b| b.parse().ok()).unwrap_or(8));
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
        // As training runs it: the output's batch-norm moments taken too.
        let tm = best(&mut || {
            forward_with_moments(&x, &w, &s, &mut out);
        });
        let fuse = Fuse { scale: Some(&scale), bias: Some(&shift), residual: Some(&dy), relu: true };
        // As evaluation runs it: the folded weights packed once, then kept.
        let packed = PackedWeights::new(&w, &s, fuse.scale);
        let kept = Fuse { scale: None, ..fuse };
        let tfused = best(&mut || forward_packed(&x, &packed, &s, &kept, &mut out));
        // As evaluation packs it (Winograd F(2x2, 3x3) where it pays).
        let inference = PackedWeights::fastest(&w, &s, fuse.scale);
        let tinfer = best(&mut || forward_packed(&x, &inference, &s, &kept, &mut out));
        let tsplit = best(&mut || {
            forward(&x, &w, &s, &mut out);
            norm::affine(&out, s.cout, &scale, &shift, false, &mut tmp);
            elementwise::add_relu(&tmp, &dy, &mut out);
        });
        let tx = best(&mut || backward_input(&dy, &w, &s, &mut dx));
        let tw = best(&mut || backward_weight(&x, &dy, &s, &mut dw));
        // Both gradients in one pass where training computes them so.
        let both = fuses_gradients(&s)
            .then(|| best(&mut || pointwise_backward_both(&x, &dy, &w, &s, &mut dw, &mut dx, false)));
        let method = if is_pointwise(&s) { "gemm".to_string() } else { format!("{:?}", weight_method(&s)) };
        println!(
            "{:>3}x{:<3} {:>4}->{:<4} k{} stride {}: fwd {:6.2} ms ({:3.0} GF), with moments {:6.2} ms | folded {:6.2} ms (eval {:6.2}) vs 3 passes {:6.2} ms | dx {:6.2} ms ({:3.0} GF) | dw {:6.2} ms ({:3.0} GF, {})",
            s.h, s.w, s.cin, s.cout, s.k, s.stride,
            tf * 1e3, gf(tf), tm * 1e3, tfused * 1e3, tinfer * 1e3, tsplit * 1e3, tx * 1e3, gf(tx), tw * 1e3, gf(tw), method
        );
        if let Some(t) = both {
            println!(
                "{:>22} dx and dw in one pass {:6.2} ms against {:6.2} ms apart",
                "",
                t * 1e3,
                (tx + tw) * 1e3
            );
        }
    }
}
