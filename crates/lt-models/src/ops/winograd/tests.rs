//! Winograd F(2x2, 3x3) against the direct passes and known values.

use super::*;
use crate::ops::conv;
use crate::ops::conv::tests::data;

/// The Winograd pass against the direct one (same scale, bias, residual, ReLU) on shapes with
/// odd sides, several images, several and partial column blocks, one and many chunks.
#[test]
fn winograd_matches_the_direct_convolution_within_rounding() {
    let shapes =
        [(1, 5, 7, 8, 8), (2, 6, 6, 16, 24), (3, 9, 4, 32, 40), (1, 14, 14, 64, 32), (2, 7, 7, 512, 16)];
    for (i, &(n, h, w, cin, cout)) in shapes.iter().enumerate() {
        let s = ConvShape { n, h, w, cin, cout, k: 3, stride: 1, pad: 1 };
        assert!(applies(&s));
        let x = data(s.input_len(), 1 + i as u64);
        let wt = data(s.weight_len(), 100 + i as u64);
        let scale: Vec<f32> = data(cout, 200 + i as u64).iter().map(|v| 0.5 + v.abs()).collect();
        let bias = data(cout, 300 + i as u64);
        let residual = data(s.output_len(), 400 + i as u64);
        for (with_residual, relu) in [(false, false), (true, true), (false, true)] {
            let fuse = Fuse {
                scale: None,
                bias: Some(&bias),
                residual: with_residual.then_some(&residual[..]),
                relu,
            };
            let mut want = vec![0f32; s.output_len()];
            // The direct pass (`PackedWeights::new` packs for it, whatever `pays` says).
            conv::forward_packed(&x, &conv::PackedWeights::new(&wt, &s, Some(&scale)), &s, &fuse, &mut want);
            let mut got = vec![f32::NAN; s.output_len()];
            forward(&x, &pack_weights(&wt, &s, Some(&scale)), &s, &fuse, &mut got);
            // Each sum has 9 * cin terms of magnitude up to ~1.5; the two passes' rounding
            // differs by up to ~4e-8 per term here (measured), a wrong transform by O(1).
            let tol = 2e-7 * (9 * cin) as f32;
            for (k, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!((g - w).abs() <= tol, "{s:?} {with_residual} {relu}: [{k}] {g} vs {w}");
            }
        }
    }
}

/// The input gradient by Winograd against direct loops, written and accumulated, on shapes
/// with odd sides, channel counts that differ (swapped by the gradient), partial column blocks
/// and heavy weights.
#[test]
fn the_input_gradient_matches_direct_loops() {
    let shapes = [(1, 5, 7, 8, 16), (2, 6, 9, 24, 8), (1, 9, 4, 40, 32), (1, 6, 6, 512, 264)];
    for (i, &(n, h, w, cin, cout)) in shapes.iter().enumerate() {
        let s = ConvShape { n, h, w, cin, cout, k: 3, stride: 1, pad: 1 };
        let (x, wt, dy) = (
            data(s.input_len(), 20 + i as u64),
            data(s.weight_len(), 30 + i as u64),
            data(s.output_len(), 40 + i as u64),
        );
        let (_, want, _) = conv::tests::reference(&x, &wt, &dy, &s);
        // Each sum has 9 * cout terms of magnitude up to 1 (see the forward test).
        let tol = 2e-7 * (9 * cout) as f32;
        let mut got = vec![f32::NAN; s.input_len()];
        input_gradient(&dy, &wt, &s, false, &mut got);
        let base = data(s.input_len(), 50 + i as u64);
        let mut acc = base.clone();
        input_gradient(&dy, &wt, &s, true, &mut acc);
        for (k, ((g, a), (w, b))) in got.iter().zip(&acc).zip(want.iter().zip(&base)).enumerate() {
            assert!((g - w).abs() <= tol, "{s:?}: dx[{k}] {g} vs {w}");
            assert!((a - (w + b)).abs() <= tol, "{s:?}: accumulated dx[{k}] {a} vs {w} + {b}");
        }
    }
}

/// A transform of known values: a kernel that picks one input pixel gives back that pixel.
#[test]
fn an_identity_kernel_returns_its_input() {
    let s = ConvShape { n: 1, h: 4, w: 5, cin: 8, cout: 8, k: 3, stride: 1, pad: 1 };
    let mut wt = vec![0f32; s.weight_len()];
    for c in 0..8 {
        wt[(c * 8 + c) * 9 + 4] = 1.0; // centre tap, channel to itself
    }
    let x = data(s.input_len(), 7);
    let mut got = vec![0f32; s.output_len()];
    forward(&x, &pack_weights(&wt, &s, None), &s, &Fuse::default(), &mut got);
    for (g, v) in got.iter().zip(&x) {
        assert!((g - v).abs() <= 1e-6, "{g} vs {v}");
    }
}

/// Light weights split into ranges of tiles, heavy ones (over 1 MiB) into groups of column
/// blocks too; either way each value is computed by the same operations.
#[test]
fn the_bits_do_not_depend_on_the_thread_count() {
    for (n, h, c) in [(2, 14, 64), (1, 7, 256)] {
        let s = ConvShape { n, h, w: h, cin: c, cout: c + 32, k: 3, stride: 1, pad: 1 };
        let x = data(s.input_len(), 11);
        let packed = pack_weights(&data(s.weight_len(), 12), &s, None);
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("pool");
            let mut out = vec![0f32; s.output_len()];
            pool.install(|| forward(&x, &packed, &s, &Fuse::default(), &mut out));
            out
        };
        let one = run(1);
        for threads in [2, 3, 8] {
            let same = run(threads).iter().zip(&one).all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "{s:?}: {threads} threads");
        }
    }
}

/// A whole evaluation pass with Winograd layers (the 64-channel 16x16 first stage of this
/// CIFAR ResNet, whatever the kernel set) against the per-op path, with batch-norm
/// statistics that make the folded scale and bias matter.
#[test]
fn a_model_evaluated_through_winograd_matches_the_per_op_path() {
    use crate::{Arch, Model};
    use candle_core::{Device, Tensor};
    let s = ConvShape { n: 2, h: 16, w: 16, cin: 64, cout: 64, k: 3, stride: 1, pad: 1 };
    assert!(pays(&s), "the first stage runs through Winograd with the selected kernel set");
    let arch = Arch::new("cifar-resnet8x64", 5, 3).expect("arch");
    let fused = Model::new(arch, 3, &Device::Cpu).expect("model");
    let mut per_op = Model::new(arch, 3, &Device::Cpu).expect("model");
    per_op.set_fused(false);
    for (i, (name, b)) in fused.store().named_buffers().into_iter().enumerate() {
        let v = data(b.elem_count(), 500 + i as u64);
        let v: Vec<f32> = if name.ends_with("running_mean") {
            v.iter().map(|v| 0.1 * v).collect()
        } else if name.ends_with("running_var") {
            v.iter().map(|v| 0.5 + v.abs()).collect()
        } else {
            continue;
        };
        let t = Tensor::from_vec(v, b.shape(), &Device::Cpu).expect("tensor");
        fused.store().set_buffer(&name, t.clone()).expect("buffer");
        per_op.store().set_buffer(&name, t).expect("buffer");
    }
    let x = Tensor::from_vec(data(2 * 3 * 16 * 16, 9), (2, 3, 16, 16), &Device::Cpu).expect("input");
    let (fa, la) = fused.infer(&x).expect("fused");
    let (fb, lb) = per_op.infer(&x).expect("per op");
    for (what, a, b) in [("features", fa, fb), ("logits", la, lb)] {
        let (a, b) = (
            a.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            b.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        );
        let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
        let worst = a.iter().zip(&b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(scale > 0.1, "{what}: values up to {scale} test nothing");
        assert!(worst <= 1e-5 * scale, "{what}: worst difference {worst} against values up to {scale}");
    }
}

/// The products of one column block against direct sums, with a partial block of rows (7 tiles:
/// 6 + 1): the gather kernel writes each row of `m` through its own pointer (Miri's Stacked
/// Borrows checks that taking one row's pointer does not invalidate the others').
#[test]
fn the_products_of_a_partial_row_block_match_direct_sums() {
    let (count, cin, nb) = (7, 8, 1);
    let nr = 8 * nb;
    let v = data(POSITIONS * count * cin, 70);
    let packed = data(POSITIONS * cin * nr, 71);
    let mut m = vec![f32::NAN; count * POSITIONS * nr];
    products(&v, (count, cin), &packed, nb, &mut m);
    for (j, p, l) in
        (0..count).flat_map(|j| (0..POSITIONS).flat_map(move |p| (0..nr).map(move |l| (j, p, l))))
    {
        let want: f32 =
            (0..cin).map(|c| v[(j * POSITIONS + p) * cin + c] * packed[(p * cin + c) * nr + l]).sum();
        let got = m[(j * POSITIONS + p) * nr + l];
        assert!(
            (got - want).abs() <= 1e-5 * (1.0 + want.abs()),
            "tile {j} position {p} column {l}: {got} vs {want}"
        );
    }
}
