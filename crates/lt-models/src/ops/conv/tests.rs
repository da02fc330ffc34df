//! Tests of the convolution passes against direct loops, and helpers other ops' tests use.

use super::*;

/// Deterministic values in `[-1, 1)`.
pub(crate) fn data(n: usize, seed: u64) -> Vec<f32> {
    let mut r = lt_core::Rng::new(seed);
    (0..n).map(|_| r.uniform_f32() * 2.0 - 1.0).collect()
}

/// Direct-loop reference of the three passes.
pub(crate) fn reference(x: &[f32], w: &[f32], dy: &[f32], s: &ConvShape) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (oh, ow) = (s.oh(), s.ow());
    let mut out = vec![0f32; s.output_len()];
    let mut dx = vec![0f32; s.input_len()];
    let mut dw = vec![0f32; s.weight_len()];
    for n in 0..s.n {
        for y in 0..oh {
            for xo in 0..ow {
                for co in 0..s.cout {
                    let o = ((n * oh + y) * ow + xo) * s.cout + co;
                    for kh in 0..s.k {
                        for kw in 0..s.k {
                            let iy = (y * s.stride + kh) as isize - s.pad as isize;
                            let ix = (xo * s.stride + kw) as isize - s.pad as isize;
                            if iy < 0 || ix < 0 || iy >= s.h as isize || ix >= s.w as isize {
                                continue;
                            }
                            for ci in 0..s.cin {
                                let i = ((n * s.h + iy as usize) * s.w + ix as usize) * s.cin + ci;
                                let wi = ((co * s.cin + ci) * s.k + kh) * s.k + kw;
                                out[o] += x[i] * w[wi];
                                dx[i] += dy[o] * w[wi];
                                dw[wi] += dy[o] * x[i];
                            }
                        }
                    }
                }
            }
        }
    }
    (out, dx, dw)
}

/// Asserts `a` and `b` agree to a relative 1e-4.
pub(crate) fn close(a: &[f32], b: &[f32], what: &str) {
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!((x - y).abs() <= 1e-4 * (1.0 + y.abs()), "{what}[{i}]: {x} vs {y}");
    }
}

#[test]
fn every_pass_is_the_same_bit_for_bit_on_any_thread_count() {
    // A pointwise shape (through `gemm`) and 3x3 ones with each weight-gradient method.
    let shapes = [
        ConvShape { n: 4, h: 12, w: 12, cin: 40, cout: 72, k: 1, stride: 1, pad: 0 },
        ConvShape { n: 4, h: 10, w: 10, cin: 24, cout: 16, k: 3, stride: 1, pad: 1 },
        ConvShape { n: 1, h: 4, w: 4, cin: 64, cout: 16, k: 3, stride: 1, pad: 1 },
        // 16 channels in and out: the strip pass (where the kernel set has one).
        ConvShape { n: 3, h: 6, w: 21, cin: 16, cout: 16, k: 3, stride: 1, pad: 1 },
        ConvShape { n: 2, h: 8, w: 8, cin: 128, cout: 40, k: 3, stride: 2, pad: 1 },
        ConvShape { n: 2, h: 9, w: 9, cin: 24, cout: 40, k: 1, stride: 2, pad: 0 },
        // Enough pixels for the pointwise weight gradient in pixel groups.
        ConvShape { n: 2, h: 130, w: 130, cin: 3, cout: 5, k: 1, stride: 1, pad: 0 },
        // Heavy weights and few row blocks (batch-1-like): column groups by thread count.
        ConvShape { n: 1, h: 7, w: 7, cin: 256, cout: 160, k: 3, stride: 1, pad: 1 },
        // The forward pass and the input gradient by Winograd with every kernel set.
        ConvShape { n: 2, h: 16, w: 16, cin: 64, cout: 64, k: 3, stride: 1, pad: 1 },
    ];
    let methods: Vec<WeightMethod> = [1, 2, 4].iter().map(|&i| weight_method(&shapes[i])).collect();
    assert_eq!(methods, [WeightMethod::Pixels, WeightMethod::Channels, WeightMethod::Panels]);
    let last = shapes.last().unwrap();
    assert!(winograd::pays(last) && winograd::input_gradient_pays(last));
    for s in shapes {
        let (x, w, dy) = (data(s.input_len(), 81), data(s.weight_len(), 82), data(s.output_len(), 83));
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| {
                let mut out = vec![0f32; s.output_len()];
                let mut dx = vec![0f32; s.input_len()];
                let mut dw = vec![0f32; s.weight_len()];
                forward(&x, &w, &s, &mut out);
                backward_input(&dy, &w, &s, &mut dx);
                backward_weight(&x, &dy, &s, &mut dw);
                let mut summarised = vec![0f32; s.output_len()];
                let moments = forward_with_moments(&x, &w, &s, &mut summarised).mean_var();
                assert!(summarised == out, "{s:?}: the forward pass with moments has other outputs");
                let (mut dw1, mut dx1) = (vec![0f32; s.weight_len()], vec![0f32; s.input_len()]);
                if fuses_gradients(&s) {
                    pointwise_backward_both(&x, &dy, &w, &s, &mut dw1, &mut dx1, false);
                }
                (out, dx, dw, moments, dw1, dx1)
            })
        };
        let one = run(1);
        for threads in [2, 3] {
            assert!(one == run(threads), "{s:?}: {threads} threads differ from one");
        }
    }
}

#[test]
fn both_pointwise_gradients_in_one_pass_match_the_two_passes() {
    // Pixels not a multiple of the groups or the chunks, two chunks a group (625 and 915
    // pixels); an expansion of 4 and one of 2.
    for s in [
        ConvShape { n: 3, h: 45, w: 37, cin: 8, cout: 32, k: 1, stride: 1, pad: 0 },
        ConvShape { n: 2, h: 60, w: 61, cin: 16, cout: 32, k: 1, stride: 1, pad: 0 },
    ] {
        assert!(fuses_gradients(&s), "{s:?}");
        let (x, w, dy) = (data(s.input_len(), 201), data(s.weight_len(), 202), data(s.output_len(), 203));
        let (mut dw, mut dx) = (vec![0f32; s.weight_len()], vec![0f32; s.input_len()]);
        backward_weight(&x, &dy, &s, &mut dw);
        backward_input(&dy, &w, &s, &mut dx);
        let (mut dw1, mut dx1) = (vec![f32::NAN; s.weight_len()], vec![f32::NAN; s.input_len()]);
        pointwise_backward_both(&x, &dy, &w, &s, &mut dw1, &mut dx1, false);
        close(&dw1, &dw, &format!("{s:?}: weight gradient in one pass"));
        close(&dx1, &dx, &format!("{s:?}: input gradient in one pass"));
        let base = data(s.input_len(), 204);
        let mut dx2 = base.clone();
        pointwise_backward_both(&x, &dy, &w, &s, &mut dw1, &mut dx2, true);
        let want: Vec<f32> = base.iter().zip(&dx).map(|(a, b)| a + b).collect();
        close(&dx2, &want, &format!("{s:?}: input gradient added in one pass"));
    }
    // Reductions, few pixels and wide weights take the two passes.
    for (n, h, cin, cout) in [(2, 40, 32, 16), (1, 40, 16, 32), (3, 30, 512, 1024)] {
        let s = ConvShape { n, h, w: h, cin, cout, k: 1, stride: 1, pad: 0 };
        assert!(!fuses_gradients(&s), "{s:?}");
    }
}

#[test]
fn forward_moments_are_the_output_statistics_by_image_rows_on_every_path() {
    // The strip pass (where the kernel set has one, else the portable strip kernel runs it
    // too) summarises each row as it stores it, and so does a pointwise one with many pixels
    // (tasks of whole rows); a strided 3x3 (the gather pass), a Winograd one and a small
    // pointwise one summarise the output after the fact. Either way the chunks are the
    // output's image rows, so the statistics equal those of the output summarised alone,
    // bit for bit.
    for s in [
        ConvShape { n: 3, h: 7, w: 21, cin: 16, cout: 16, k: 3, stride: 1, pad: 1 },
        ConvShape { n: 2, h: 9, w: 9, cin: 32, cout: 32, k: 3, stride: 1, pad: 1 },
        ConvShape { n: 2, h: 12, w: 12, cin: 64, cout: 64, k: 3, stride: 1, pad: 1 },
        // Through Winograd with every kernel set (see `winograd::pays`).
        ConvShape { n: 2, h: 16, w: 16, cin: 64, cout: 64, k: 3, stride: 1, pad: 1 },
        ConvShape { n: 2, h: 20, w: 20, cin: 8, cout: 24, k: 3, stride: 2, pad: 1 },
        ConvShape { n: 2, h: 30, w: 30, cin: 8, cout: 24, k: 1, stride: 1, pad: 0 },
        // Enough pixels for tasks of whole rows that summarise as they go (rows of 13
        // pixels: the tasks' pixel counts are no multiple of a power of two).
        ConvShape { n: 3, h: 70, w: 13, cin: 8, cout: 24, k: 1, stride: 1, pad: 0 },
    ] {
        let (x, w) = (data(s.input_len(), 91), data(s.weight_len(), 92));
        let mut out = vec![0f32; s.output_len()];
        let m = forward_with_moments(&x, &w, &s, &mut out);
        assert_eq!((m.chunks(), m.len()), (s.n * s.oh(), out.len()), "{s:?}: chunks and values");
        let (mean, var) = m.mean_var();
        let after = norm::Moments::of(&out, s.cout, s.ow()).mean_var();
        assert!((&mean, &var) == (&after.0, &after.1), "{s:?}: statistics differ from the output's");
        let pixels = s.n * s.oh() * s.ow();
        for k in 0..s.cout {
            let v: Vec<f64> = out.iter().skip(k).step_by(s.cout).map(|&v| v as f64).collect();
            let mu = v.iter().sum::<f64>() / pixels as f64;
            let sigma2 = v.iter().map(|x| (x - mu) * (x - mu)).sum::<f64>() / pixels as f64;
            let what = format!("{s:?} channel {k}");
            assert!((mean[k] - mu).abs() <= 1e-6 * (1.0 + mu.abs()), "{what}: mean {} vs {mu}", mean[k]);
            assert!((var[k] - sigma2).abs() <= 1e-5 * sigma2, "{what}: variance {} vs {sigma2}", var[k]);
        }
    }
}

#[test]
fn weight_gradient_panels_of_any_size_match_direct_loops() {
    for s in [
        ConvShape { n: 2, h: 5, w: 6, cin: 7, cout: 9, k: 3, stride: 1, pad: 1 },
        ConvShape { n: 1, h: 7, w: 7, cin: 4, cout: 5, k: 3, stride: 2, pad: 0 },
    ] {
        let (x, dy) = (data(s.input_len(), 91), data(s.output_len(), 92));
        let (_, _, want) = reference(&x, &data(s.weight_len(), 93), &dy, &s);
        // One pixel, a few (the last panel partial) and all pixels a panel.
        for (chunk, grouped) in [1, 7, 9, usize::MAX].into_iter().flat_map(|c| [(c, false), (c, true)]) {
            let mut dw = vec![f32::NAN; s.weight_len()];
            panels_backward_weight(&x, &dy, &s, &mut dw, chunk, grouped);
            close(&dw, &want, &format!("dw in panels of {chunk} pixels (grouped: {grouped}), {s:?}"));
        }
    }
}

#[test]
fn the_portable_weight_gradient_strips_match_direct_loops() {
    // Whatever kernel set this CPU selects, the strip path with the portable kernel: an
    // input-channel remainder, 16- and 32-column blocks, one-pixel rows, padded columns.
    for s in [
        ConvShape { n: 2, h: 5, w: 7, cin: 9, cout: 48, k: 3, stride: 1, pad: 1 },
        ConvShape { n: 1, h: 3, w: 1, cin: 4, cout: 16, k: 3, stride: 1, pad: 1 },
        ConvShape { n: 1, h: 4, w: 6, cin: 5, cout: 12, k: 3, stride: 1, pad: 1 },
    ] {
        let (x, dy) = (data(s.input_len(), 95), data(s.output_len(), 96));
        let (_, _, want) = reference(&x, &data(s.weight_len(), 97), &dy, &s);
        let blocks = col_blocks(s.cout);
        let cpad = blocks.last().map(|&(c0, nb)| c0 + 8 * nb).unwrap_or(0);
        let dyp = padded_columns(&dy, s.cout, cpad);
        let g = WeightGrad { x: &x, dy: &dyp, s: &s, blocks: &blocks, cpad };
        let mut acc = vec![0f32; 9 * s.cin * cpad];
        let portable = kernels::PORTABLE.grad_strip.unwrap();
        // Two calls over the rows, as two row groups of a task add into one gradient.
        g.strip_rows(portable, 0, 1, &mut Vec::new(), &mut acc);
        g.strip_rows(portable, 1, s.n * s.oh(), &mut Vec::new(), &mut acc);
        let got: Vec<f32> = (0..s.weight_len())
            .map(|i| {
                let (co, ci, t) = (i / (s.cin * 9), i / 9 % s.cin, i % 9);
                acc[(t * s.cin + ci) * cpad + co]
            })
            .collect();
        close(&got, &want, &format!("weight gradient strips {s:?}"));
    }
}

#[test]
fn both_weight_gradient_splits_give_the_same_sums() {
    for s in [
        ConvShape { n: 3, h: 9, w: 7, cin: 13, cout: 20, k: 3, stride: 1, pad: 1 },
        ConvShape { n: 2, h: 6, w: 6, cin: 9, cout: 8, k: 3, stride: 2, pad: 1 },
    ] {
        let x = data(s.input_len(), 71);
        let dy = data(s.output_len(), 72);
        let blocks = col_blocks(s.cout);
        let cpad = blocks.last().map(|&(c0, nb)| c0 + 8 * nb).unwrap_or(0);
        let dyp = padded_columns(&dy, s.cout, cpad);
        let g = WeightGrad { x: &x, dy: &dyp, s: &s, blocks: &blocks, cpad };
        let (a, b) = (g.by_pixels(), g.by_channels());
        assert!(a.iter().any(|&v| v != 0.0));
        close(&a, &b, &format!("weight gradient splits {s:?}"));
    }
}

/// A batch of no images, on every path (strip, Winograd, gather, strided, pointwise, sampled
/// pointwise): empty outputs, empty moments, a zero weight gradient, no panic.
#[test]
fn an_empty_batch_gives_empty_outputs_and_zero_weight_gradients() {
    for (cin, cout, k, stride) in
        [(16, 16, 3, 1), (64, 64, 3, 1), (24, 40, 3, 2), (24, 40, 1, 1), (24, 40, 1, 2), (5, 7, 3, 1)]
    {
        let s = ConvShape { n: 0, h: 9, w: 9, cin, cout, k, stride, pad: k / 2 };
        let w = data(s.weight_len(), 5);
        let (mut out, mut dx, mut dw) = (Vec::new(), Vec::new(), vec![f32::NAN; s.weight_len()]);
        forward(&[], &w, &s, &mut out);
        let m = forward_with_moments(&[], &w, &s, &mut out);
        assert!(m.is_empty(), "{s:?}: moments of nothing");
        backward_input(&[], &w, &s, &mut dx);
        backward_input_acc(&[], &w, &s, &mut dx);
        backward_weight(&[], &[], &s, &mut dw);
        assert!(dw.iter().all(|&v| v == 0.0), "{s:?}: weight gradient of no pixels");
    }
}

/// Every public pass (forward, forward with moments, fused forward with scaled weights alone and
/// with the whole epilogue, input gradient written and accumulated, weight gradient) against
/// direct loops.
pub(crate) fn all_passes(s: &ConvShape, seed: u64) {
    let (x, w, dy) =
        (data(s.input_len(), seed), data(s.weight_len(), seed + 1), data(s.output_len(), seed + 2));
    let (ro, rdx, rdw) = reference(&x, &w, &dy, s);
    let mut out = vec![f32::NAN; s.output_len()];
    forward(&x, &w, s, &mut out);
    close(&out, &ro, &format!("forward {s:?}"));
    let mut out = vec![f32::NAN; s.output_len()];
    let (mean, var) = forward_with_moments(&x, &w, s, &mut out).mean_var();
    close(&out, &ro, &format!("forward with moments {s:?}"));
    // The moments are the output's per-channel mean and (biased) variance.
    let pixels = (s.output_len() / s.cout) as f64;
    for c in 0..s.cout {
        let values = ro.iter().skip(c).step_by(s.cout).map(|&v| v as f64);
        let m = values.clone().sum::<f64>() / pixels;
        let v = values.map(|x| (x - m) * (x - m)).sum::<f64>() / pixels;
        let scale = 1.0 + m.abs() + v;
        assert!(
            (mean[c] - m).abs() <= 1e-5 * scale && (var[c] - v).abs() <= 1e-4 * scale,
            "moments {s:?} channel {c}"
        );
    }
    let (scale, bias, residual) =
        (data(s.cout, seed + 3), data(s.cout, seed + 4), data(s.output_len(), seed + 5));
    // Scaled weights alone (no epilogue), then the whole epilogue.
    let mut scaled = vec![f32::NAN; s.output_len()];
    forward_fused(&x, &w, s, &Fuse { scale: Some(&scale), ..Fuse::default() }, &mut scaled);
    let want: Vec<f32> = ro.iter().enumerate().map(|(j, o)| o * scale[j % s.cout]).collect();
    close(&scaled, &want, &format!("forward with scaled weights {s:?}"));
    let fuse = Fuse { scale: Some(&scale), bias: Some(&bias), residual: Some(&residual), relu: true };
    let mut fused = vec![f32::NAN; s.output_len()];
    forward_fused(&x, &w, s, &fuse, &mut fused);
    let want: Vec<f32> = ro
        .iter()
        .zip(&residual)
        .enumerate()
        .map(|(j, (o, r))| (o * scale[j % s.cout] + bias[j % s.cout] + r).max(0.0))
        .collect();
    assert!(want.contains(&0.0) && want.iter().any(|&v| v > 0.0), "the ReLU cuts some outputs, not all");
    close(&fused, &want, &format!("fused forward {s:?}"));
    let mut dx = vec![f32::NAN; s.input_len()];
    backward_input(&dy, &w, s, &mut dx);
    close(&dx, &rdx, &format!("dx {s:?}"));
    let base = data(s.input_len(), seed + 6);
    let mut acc = base.clone();
    backward_input_acc(&dy, &w, s, &mut acc);
    let want: Vec<f32> = base.iter().zip(&rdx).map(|(a, b)| a + b).collect();
    close(&acc, &want, &format!("dx accumulated {s:?}"));
    let mut dw = vec![f32::NAN; s.weight_len()];
    backward_weight(&x, &dy, s, &mut dw);
    close(&dw, &rdw, &format!("dw {s:?}"));
}

#[test]
fn all_passes_match_direct_loops_on_odd_shapes() {
    let shapes = [
        ConvShape { n: 2, h: 7, w: 5, cin: 3, cout: 16, k: 3, stride: 1, pad: 1 },
        ConvShape { n: 1, h: 8, w: 8, cin: 16, cout: 32, k: 3, stride: 2, pad: 1 },
        ConvShape { n: 3, h: 6, w: 9, cin: 5, cout: 20, k: 1, stride: 1, pad: 0 },
        ConvShape { n: 1, h: 9, w: 9, cin: 2, cout: 8, k: 7, stride: 2, pad: 3 },
        ConvShape { n: 2, h: 5, w: 5, cin: 7, cout: 11, k: 1, stride: 2, pad: 0 },
        ConvShape { n: 1, h: 4, w: 6, cin: 24, cout: 3, k: 3, stride: 1, pad: 0 },
        // Rows long enough for whole interior blocks (merged taps in both gather passes).
        ConvShape { n: 1, h: 5, w: 20, cin: 6, cout: 16, k: 3, stride: 1, pad: 1 },
        ConvShape { n: 2, h: 3, w: 26, cin: 4, cout: 8, k: 5, stride: 1, pad: 2 },
        ConvShape { n: 1, h: 6, w: 31, cin: 5, cout: 24, k: 3, stride: 2, pad: 1 },
        // Wide enough for 32-column blocks (AVX-512) plus a partial one.
        ConvShape { n: 1, h: 5, w: 14, cin: 9, cout: 44, k: 3, stride: 1, pad: 1 },
        // A weight gradient through patch panels.
        ConvShape { n: 1, h: 5, w: 7, cin: 130, cout: 12, k: 3, stride: 2, pad: 1 },
        // A folded pointwise forward through one `gemm` product then the epilogue (from
        // `POINTWISE_GEMM_PIXELS` to 4 * `POINTWISE_CHUNK` pixels).
        ConvShape { n: 1, h: 32, w: 40, cin: 7, cout: 12, k: 1, stride: 1, pad: 0 },
        // A pointwise weight gradient in pixel groups (the last one partial).
        ConvShape { n: 1, h: 183, w: 181, cin: 3, cout: 5, k: 1, stride: 1, pad: 0 },
        // Heavy packed weights (over 1 MiB both ways), more than one task of row blocks, a
        // partial column block: the gather passes' column-major order.
        ConvShape { n: 2, h: 10, w: 10, cin: 256, cout: 150, k: 3, stride: 1, pad: 1 },
        // The forward pass and the input gradient by Winograd with every kernel set.
        ConvShape { n: 2, h: 14, w: 14, cin: 64, cout: 64, k: 3, stride: 1, pad: 1 },
    ];
    let heavy = &shapes[shapes.len() - 2];
    assert!(heavy.weight_len() * 4 > HEAVY_WEIGHT_BYTES && heavy.n * heavy.h * heavy.w > 16 * MR_MAX);
    let methods: Vec<WeightMethod> = shapes.iter().filter(|s| !is_pointwise(s)).map(weight_method).collect();
    for m in [WeightMethod::Pixels, WeightMethod::Channels, WeightMethod::Panels] {
        assert!(methods.contains(&m), "no shape runs the weight gradient by {m:?}");
    }
    let last = shapes.last().unwrap();
    assert!(winograd::pays(last) && winograd::input_gradient_pays(last));
    for (i, s) in shapes.iter().enumerate() {
        all_passes(s, 10 * i as u64);
    }
}
