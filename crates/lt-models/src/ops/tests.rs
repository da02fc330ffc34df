//! The fast ops against candle's stock ops: values and gradients on odd shapes.

use super::*;
use candle_core::{Device, Var};
use lt_core::Rng;

fn randn(shape: &[usize], seed: u64) -> Tensor {
    let n: usize = shape.iter().product();
    let mut v = vec![0f32; n];
    Rng::new(seed).fill_normal(&mut v, 0.0, 1.0);
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn assert_close(a: &Tensor, b: &Tensor, tol: f32, what: &str) {
    assert_eq!(a.dims(), b.dims(), "{what}: shapes");
    let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-3);
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        assert!((x - y).abs() <= tol * scale, "{what}[{i}]: {x} vs {y} (scale {scale})");
    }
}

/// Runs `f` under both backends on fresh variables built from `inputs`; compares the outputs
/// and the gradients of `sum(out * r)` with respect to every input.
fn check(inputs: &[Tensor], what: &str, f: impl Fn(Backend, &[Tensor]) -> Tensor) {
    let run = |b: Backend| {
        let vars: Vec<Var> = inputs.iter().map(|t| Var::from_tensor(t).unwrap()).collect();
        let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let out = f(b, &ts);
        let r = randn(out.dims(), 99);
        let loss = (out.clone() * r).unwrap().sum_all().unwrap();
        let g = loss.backward().unwrap();
        let grads: Vec<Tensor> =
            vars.iter().map(|v| g.get(v.as_tensor()).expect("gradient").clone()).collect();
        (out, grads)
    };
    let (fo, fg) = run(Backend::Fast);
    let (co, cg) = run(Backend::Candle);
    assert_close(&fo, &co, 1e-4, &format!("{what} output"));
    for (i, (a, b)) in fg.iter().zip(&cg).enumerate() {
        assert_close(a, b, 1e-4, &format!("{what} grad {i}"));
    }
}

#[test]
fn conv2d_matches_candle_on_odd_shapes() {
    for (i, &(n, h, w, cin, cout, k, s, p)) in [
        (2, 9, 7, 3, 16, 3, 1, 1),
        (1, 8, 8, 16, 32, 3, 2, 1),
        (3, 5, 6, 8, 24, 1, 1, 0),
        (1, 11, 11, 3, 8, 7, 2, 3),
        (2, 6, 6, 12, 20, 1, 2, 0),
    ]
    .iter()
    .enumerate()
    {
        let x = randn(&[n, h, w, cin], i as u64);
        let wt = (randn(&[cout, cin, k, k], 100 + i as u64) * 0.2).unwrap();
        check(&[x, wt], &format!("conv {n}x{h}x{w}x{cin} -> {cout} k{k} s{s} p{p}"), |b, t| {
            b.conv2d(&t[0], &t[1], s, p).unwrap()
        });
    }
}

#[test]
fn conv2d_on_non_contiguous_input() {
    // NCHW variable viewed as NHWC (a permuted, non-contiguous view).
    let x = randn(&[2, 4, 6, 5], 7);
    let wt = (randn(&[8, 4, 3, 3], 8) * 0.3).unwrap();
    check(&[x, wt], "conv on permuted input", |b, t| {
        let nhwc = t[0].permute((0, 2, 3, 1)).unwrap();
        assert!(!nhwc.is_contiguous());
        b.conv2d(&nhwc, &t[1], 1, 1).unwrap()
    });
}

#[test]
fn batch_norm_relu_matches_candle() {
    for (i, &(n, h, w, c, relu)) in [
        (4, 5, 3, 16, true),
        (1, 7, 7, 8, false),
        (3, 2, 2, 3, true),
        (4, 32, 32, 16, true),
        (2, 30, 20, 8, false),
        // A block of 16 channels kept in registers, two more, and 8 one by one.
        (2, 5, 6, 40, true),
    ]
    .iter()
    .enumerate()
    {
        let x = randn(&[n, h, w, c], 10 + i as u64).affine(3.0, 1.5).unwrap();
        let g = randn(&[c], 20 + i as u64).affine(0.5, 1.0).unwrap();
        let b = randn(&[c], 30 + i as u64);
        check(&[x.clone(), g, b], &format!("bn relu={relu} {n}x{h}x{w}x{c}"), |be, t| {
            be.batch_norm_train(&t[0], &t[1], &t[2], 1e-5, relu).unwrap().0
        });
        let (_, fs) =
            Backend::Fast.batch_norm_train(&x, &randn(&[c], 1), &randn(&[c], 2), 1e-5, relu).unwrap();
        let (_, cs) =
            Backend::Candle.batch_norm_train(&x, &randn(&[c], 1), &randn(&[c], 2), 1e-5, relu).unwrap();
        assert_close(&fs.mean, &cs.mean, 1e-5, "bn mean");
        assert_close(&fs.var, &cs.var, 1e-5, "bn var");
        assert_eq!(fs.count, n * h * w);
    }
}

#[test]
fn eval_batch_norm_matches_candle() {
    let (n, h, w, c) = (2, 3, 5, 8);
    let x = randn(&[n, h, w, c], 41);
    let g = randn(&[c], 42).affine(0.3, 1.0).unwrap();
    let b = randn(&[c], 43);
    let rm = randn(&[c], 44);
    let rv = randn(&[c], 45).abs().unwrap().affine(1.0, 0.1).unwrap();
    for relu in [false, true] {
        check(&[x.clone(), g.clone(), b.clone()], &format!("bn eval relu={relu}"), |be, t| {
            be.batch_norm_eval(&t[0], (&t[1], &t[2]), (&rm, &rv), 1e-5, relu).unwrap()
        });
    }
}

#[test]
fn batch_norm_refuses_a_single_value_per_channel() {
    let x = randn(&[1, 1, 1, 4], 0);
    let err = Backend::Fast.batch_norm_train(&x, &randn(&[4], 1), &randn(&[4], 2), 1e-5, true).unwrap_err();
    assert!(err.to_string().contains("more than one value per channel"), "{err}");
}

#[test]
fn add_relu_shortcut_and_pools_match_candle() {
    let a = randn(&[2, 6, 5, 8], 1);
    let b = randn(&[2, 6, 5, 8], 2);
    check(&[a.clone(), b], "add_relu", |be, t| be.add_relu(&t[0], &t[1]).unwrap());
    check(std::slice::from_ref(&a), "relu", |be, t| be.relu(&t[0]).unwrap());
    check(std::slice::from_ref(&a), "shortcut odd width", |be, t| be.shortcut_a(&t[0], 4).unwrap());
    check(&[randn(&[1, 8, 8, 16], 3)], "shortcut", |be, t| be.shortcut_a(&t[0], 8).unwrap());
    check(std::slice::from_ref(&a), "avg pool", |be, t| be.avg_pool(&t[0]).unwrap());
    check(&[randn(&[2, 9, 8, 5], 4)], "max pool 3x3 s2 p1", |be, t| be.max_pool(&t[0], 3, 2, 1).unwrap());
    check(&[randn(&[1, 4, 4, 3], 5)], "max pool 2x2 s2", |be, t| be.max_pool(&t[0], 2, 2, 0).unwrap());
}

#[test]
fn untracked_input_gets_no_gradient_work() {
    // The image entering the first convolution is not a variable: only the weight gradient is
    // computed (and the op must not fail computing nothing).
    let x = randn(&[1, 5, 5, 3], 1);
    let w = Var::from_tensor(&randn(&[8, 3, 3, 3], 2)).unwrap();
    let out = Backend::Fast.conv2d(&x, w.as_tensor(), 1, 1).unwrap();
    let g = out.sum_all().unwrap().backward().unwrap();
    assert!(g.get(&x).is_none());
    assert!(g.get(w.as_tensor()).is_some());
}

#[test]
fn window_output_sizes_follow_the_pytorch_formula() {
    // (size + 2 pad - k) / stride + 1, floor division; None when the window does not fit.
    assert_eq!(window_out(32, 3, 1, 1), Some(32));
    assert_eq!(window_out(32, 3, 2, 1), Some(16));
    assert_eq!(window_out(224, 7, 2, 3), Some(112));
    assert_eq!(window_out(112, 3, 2, 1), Some(56));
    assert_eq!(window_out(9, 3, 2, 1), Some(5));
    assert_eq!(window_out(6, 1, 2, 0), Some(3));
    assert_eq!(window_out(7, 1, 2, 0), Some(4));
    assert_eq!(window_out(2, 5, 1, 1), None);
    assert_eq!(window_out(4, 3, 0, 0), None);
}

#[test]
fn eval_batch_norm_formula_matches_a_hand_computation() {
    // scale = gamma / sqrt(var + eps), shift = beta - mean * scale.
    let (scale, shift) = norm::eval_scale_shift(&[2.0, 1.0], &[0.5, -1.0], &[1.0, -2.0], &[3.0, 0.0], 1.0);
    assert_eq!(scale, vec![1.0, 1.0]);
    assert_eq!(shift, vec![-0.5, 1.0]);
    let x = Tensor::new(&[[[[1.0f32, 0.0], [3.0, -3.0]]]], &Device::Cpu).unwrap();
    let g = Tensor::new(&[2.0f32, 1.0], &Device::Cpu).unwrap();
    let b = Tensor::new(&[0.5f32, -1.0], &Device::Cpu).unwrap();
    let (m, v) = (
        Tensor::new(&[1.0f32, -2.0], &Device::Cpu).unwrap(),
        Tensor::new(&[3.0f32, 0.0], &Device::Cpu).unwrap(),
    );
    for be in [Backend::Fast, Backend::Candle] {
        let y = be.batch_norm_eval(&x, (&g, &b), (&m, &v), 1.0, true).unwrap();
        assert_eq!(y.flatten_all().unwrap().to_vec1::<f32>().unwrap(), vec![0.5, 1.0, 2.5, 0.0], "{be:?}");
    }
}

#[test]
fn batch_statistics_match_a_two_pass_f64_reference_far_from_zero() {
    // Several chunks, the last one partial, values with a large common offset (where a
    // one-pass sum of squares would lose the variance) and a different scale per channel.
    let (p, c) = (3 * 512 + 77, 5);
    let mut v = vec![0f32; p * c];
    Rng::new(7).fill_normal(&mut v, 0.0, 1.0);
    for (i, x) in v.iter_mut().enumerate() {
        let k = (i % c) as f32;
        *x = 50.0 * (k - 2.0) + (0.1 + k) * *x;
    }
    let (mean, var) = norm::batch_stats(&v, c, 512);
    for k in 0..c {
        let xs: Vec<f64> = v.iter().skip(k).step_by(c).map(|&x| x as f64).collect();
        let m = xs.iter().sum::<f64>() / p as f64;
        let s = xs.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / p as f64;
        assert!((mean[k] - m).abs() <= 1e-6 * (1.0 + m.abs()), "channel {k}: mean {} vs {m}", mean[k]);
        assert!((var[k] - s).abs() <= 1e-4 * s, "channel {k}: variance {} vs {s}", var[k]);
    }
}

#[test]
fn batch_norm_with_a_residual_add_is_the_affine_map_plus_the_residual_then_relu() {
    let (p, c) = (1000, 19);
    let mut v = vec![0f32; 2 * p * c];
    Rng::new(8).fill_normal(&mut v, 0.0, 2.0);
    let (x, r) = v.split_at(p * c);
    let scale: Vec<f32> = (0..c).map(|k| 0.5 + k as f32 / 10.0).collect();
    let shift: Vec<f32> = (0..c).map(|k| k as f32 / 7.0 - 1.0).collect();
    let mut out = vec![0f32; p * c];
    norm::apply(x, c, (&scale, &shift), norm::Then::AddRelu(r), &mut out);
    for (i, &o) in out.iter().enumerate() {
        let want = (x[i] * scale[i % c] + shift[i % c] + r[i]).max(0.0);
        assert_eq!(o.to_bits(), want.to_bits(), "value {i}");
    }
    assert!(out.contains(&0.0) && out.iter().any(|&o| o > 0.0));
}

#[test]
fn shortcut_gradient_added_in_place_equals_the_gradient_plus_what_was_there() {
    use super::elementwise::{shortcut_backward, shortcut_backward_acc, shortcut_dims, Nhwc};
    let s = Nhwc { n: 2, h: 5, w: 6, c: 4 };
    let (oh, ow, oc) = shortcut_dims(s.h, s.w, s.c, 2);
    let dy: Vec<f32> = randn(&[s.n * oh * ow * oc], 70).to_vec1().unwrap();
    let base: Vec<f32> = randn(&[s.len()], 71).to_vec1().unwrap();
    let mut alone = vec![f32::NAN; s.len()];
    shortcut_backward(&dy, s, 2, &mut alone);
    let mut acc = base.clone();
    shortcut_backward_acc(&dy, s, 2, &mut acc);
    for (i, ((&a, &b), &g)) in acc.iter().zip(&base).zip(&alone).enumerate() {
        assert_eq!(a.to_bits(), (b + g).to_bits(), "value {i}");
    }
    assert!(alone.iter().filter(|&&g| g != 0.0).count() == s.n * oh * ow * s.c);
}

#[test]
fn moments_of_any_chunking_give_the_same_statistics() {
    // Pixel rows pushed one by one (as the strip pass does), in uneven pieces, and appended
    // from two halves: all agree with the 512-pixel chunks to rounding.
    let (p, c) = (777, 21);
    let mut v = vec![0f32; p * c];
    Rng::new(9).fill_normal(&mut v, 3.0, 1.5);
    let (want_mean, want_var) = norm::Moments::of(&v, c, 512).mean_var();
    let mut rows = norm::Moments::new(c);
    for row in v.chunks(7 * c) {
        rows.push(row);
    }
    let (a, b) = v.split_at(400 * c);
    let halves = norm::Moments::of(a, c, 512).append(norm::Moments::of(b, c, 512));
    assert_eq!(halves.chunks(), 1 + 1);
    for m in [rows, halves] {
        assert_eq!(m.len(), v.len());
        let (mean, var) = m.mean_var();
        for k in 0..c {
            assert!(
                (mean[k] - want_mean[k]).abs() < 1e-6,
                "channel {k}: mean {} vs {}",
                mean[k],
                want_mean[k]
            );
            assert!((var[k] - want_var[k]).abs() < 1e-5 * want_var[k], "channel {k}: var");
        }
    }
}

#[test]
fn max_pool_values_equal_the_training_pass_bit_for_bit_and_argmax_is_the_first_maximum() {
    use super::elementwise::{max_pool_forward, max_pool_values, Nhwc, Window};
    for (i, &(n, h, w, c, k, stride, pad)) in
        [(2, 9, 8, 5, 3, 2, 1), (1, 112, 112, 64, 3, 2, 1), (3, 4, 6, 3, 2, 2, 0), (1, 7, 5, 17, 3, 1, 1)]
            .iter()
            .enumerate()
    {
        let s = Nhwc { n, h, w, c };
        let win = Window { k, stride, pad };
        let mut x: Vec<f32> = randn(&[s.len()], 60 + i as u64).to_vec1().unwrap();
        // A few NaNs, which must win wherever they fall in a window.
        for j in (0..x.len()).step_by(97) {
            x[j] = f32::NAN;
        }
        let len = win.output(s).unwrap().len();
        let (mut want, mut argmax, mut got) = (vec![0f32; len], vec![0u32; len], vec![1f32; len]);
        max_pool_forward(&x, s, win, &mut want, &mut argmax);
        max_pool_values(&x, s, win, &mut got);
        // Each argmax is the first input of its window, in window order, that holds the value;
        // where the value is NaN, the last NaN (each NaN replaces the running maximum).
        let o = win.output(s).unwrap();
        for (j, (&v, &a)) in want.iter().zip(&argmax).enumerate() {
            let (ni, y, xo, ch) = (j / (o.h * o.w * c), j / (o.w * c) % o.h, j / c % o.w, j % c);
            let mut window = win
                .inputs(y, h)
                .flat_map(|iy| win.inputs(xo, w).map(move |ix| ((ni * h + iy) * w + ix) * c + ch));
            let want_index = if v.is_nan() {
                window.filter(|&i| x[i].is_nan()).last()
            } else {
                window.find(|&i| x[i] == v)
            };
            assert_eq!(Some(a as usize), want_index, "argmax of output {j}, {s:?} {win:?}");
        }
        assert!(want.iter().any(|v| v.is_nan()) && want.iter().any(|v| !v.is_nan()));
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&got), bits(&want), "max pool {s:?} {win:?}");
    }
}

#[test]
fn relu_mask_recomputed_from_the_input_is_the_mask_of_the_output_bit_for_bit() {
    // 40 channels: the 16-, 8- and 1-channel blocks of both passes; a quarter of the inputs sit
    // exactly where the affine map is zero (x = 0.5 with scale 2 and shift -1 on even channels).
    let (p, c) = (1500, 40);
    let mut v = vec![0f32; 2 * p * c];
    Rng::new(9).fill_normal(&mut v, 0.0, 1.0);
    let (x, dy) = v.split_at_mut(p * c);
    for (i, xv) in x.iter_mut().enumerate() {
        if i % 4 == 0 {
            *xv = 0.5;
        }
    }
    let gamma: Vec<f32> = (0..c).map(|k| 0.5 + k as f32 / 13.0).collect();
    let beta: Vec<f32> = (0..c).map(|k| k as f32 / 9.0 - 1.5).collect();
    let stats = norm::train_stats(x, c, 64, 1e-5);
    let (mut scale, mut shift) = norm::train_scale_shift(&gamma, &beta, &stats.mean, &stats.invstd);
    for k in (0..c).step_by(2) {
        (scale[k], shift[k]) = (2.0, -1.0);
    }
    let mut y = vec![0f32; p * c];
    norm::apply(x, c, (&scale, &shift), norm::Then::Relu, &mut y);
    assert!(y.iter().filter(|&&v| v == 0.0).count() > p * c / 4, "zeros where the map is zero, and below");
    let run = |relu| {
        let b = norm::BnBackward {
            x,
            relu,
            gamma: &gamma,
            mean: &stats.mean,
            invstd: &stats.invstd,
            batch_statistics: true,
        };
        let mut dx = vec![0f32; p * c];
        let (dg, db) = b.run(dy, Some(&mut dx));
        [dx, dg, db]
    };
    let from_output = run(norm::Relu::Output(&y));
    let from_input = run(norm::Relu::Affine(&scale, &shift));
    let unmasked = run(norm::Relu::None);
    for (what, (a, b)) in ["dx", "dgamma", "dbeta"].iter().zip(from_output.iter().zip(&from_input)) {
        assert!(a.iter().zip(b).all(|(u, v)| u.to_bits() == v.to_bits()), "{what}");
    }
    assert_ne!(from_output[2], unmasked[2], "the mask changes the gradient");
}

#[test]
fn running_out_of_memory_is_told_from_a_refusal() {
    use candle_core::Error;
    // The texts of the driver's error (cudarc's `DriverError`, wrapped by candle) and of a cuDNN
    // call's (`cudnn::CudnnError`), as they reach the cuDNN route.
    let driver = Error::Msg("DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\")".into());
    let cudnn = |status: &str| {
        Error::Msg(format!(
            "cuDNN cudnnBatchNormalizationForwardTrainingEx failed: {status} (run with CUDNN_LOGLEVEL_DBG=2)"
        ))
    };
    assert!(super::out_of_memory(&driver));
    assert!(super::out_of_memory(&driver.context("batch norm on [128, 32, 32, 16]")));
    assert!(super::out_of_memory(&cudnn("CUDNN_STATUS_INTERNAL_ERROR_DEVICE_ALLOCATION_FAILED")));
    assert!(super::out_of_memory(&cudnn("CUDNN_STATUS_ALLOC_FAILED")));
    for refusal in ["CUDNN_STATUS_NOT_SUPPORTED", "CUDNN_STATUS_BAD_PARAM", "CUDNN_STATUS_EXECUTION_FAILED"] {
        assert!(!super::out_of_memory(&cudnn(refusal)), "{refusal}");
    }
}
