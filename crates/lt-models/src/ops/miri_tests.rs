//! The unsafe CPU paths of the convolution ops on shapes small enough for Miri. Each shape is
//! chosen for an edge of a pass: blocks of fewer than `MR_MAX` rows, column counts that are not a
//! multiple of a block's width, stride 2, padding, 1x1 convolutions, Winograd tiles cut by the
//! image's edge, weight gradients with a partial block of input channels. They run natively too
//! (fast). Under Miri (the tests on rayon's pool need Tree Borrows, since crossbeam-epoch trips
//! Stacked Borrows, and leak its global collector):
//!
//! ```sh
//! export MIRIFLAGS="-Zmiri-tree-borrows -Zmiri-ignore-leaks"
//! cargo +nightly miri test -p lt-models --lib -- ops::miri_tests                # the portable set
//! export RUSTFLAGS="-C target-feature=+avx2,+fma,+avx512f" CARGO_TARGET_DIR=target/miri-simd
//! cargo +nightly miri test -p lt-models --lib -- ops::miri_tests::kernel       # every set's blocks
//! LT_KERNELS=avx2 MIRIFLAGS="$MIRIFLAGS -Zmiri-env-forward=LT_KERNELS" cargo +nightly miri test \
//!   -p lt-models --lib -- ops::miri_tests::gather_and_strip ops::miri_tests::winograd  # AVX2 passes
//! ```
//!
//! Miri cannot interpret the AVX-512 epilogue (`_mm512_max_ps`: its blocks run without it), and
//! the `gemm` crate's 1x1 products panic in its dispatch under Miri with the SIMD flags.

use super::conv::tests::{all_passes, close, data, reference};
use super::conv::{weight_method, ConvShape, Fuse, WeightMethod};
use super::kernels::{self, check, Window, MR_MAX};
use super::winograd;

/// Runs `f` on a pool of two threads (the passes' tasks then run concurrently, which Miri
/// checks for data races).
fn two_threads<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    eprintln!("kernel set {}", kernels::kernel_name());
    rayon::ThreadPoolBuilder::new().num_threads(2).build().expect("pool").install(f)
}

/// The portable set and every SIMD set this CPU (or Miri's target features) has.
fn kernel_sets() -> Vec<kernels::KernelSet> {
    // The epilogue's ReLU of the AVX-512 set is `_mm512_max_ps`, which Miri does not interpret
    // (`llvm.x86.avx512.max.ps.512`): see `fused`.
    let mut sets = vec![kernels::PORTABLE];
    sets.extend(kernels::simd_sets().into_iter().filter_map(|(_, s)| s));
    sets
}

/// The (accumulate, epilogue) cases a set's blocks run: under Miri the AVX-512 set's without
/// the epilogue (its ReLU is an intrinsic Miri does not interpret).
fn fused(set: &kernels::KernelSet) -> &'static [(bool, bool)] {
    if cfg!(miri) && set.isa == kernels::Isa::Avx512 {
        &[(false, false), (true, false)]
    } else {
        &[(false, false), (true, true)]
    }
}

/// Gather and outer-product blocks of every row count and width of every set, the gather
/// blocks with and without accumulation and the epilogue.
#[test]
fn kernel_gather_and_outer_blocks() {
    for set in &kernel_sets() {
        for nb in set.widths() {
            eprintln!("{} gather and outer blocks, nb {nb}", set.name());
            for mr in 1..=MR_MAX {
                for &(accumulate, fused) in fused(set) {
                    check::gather_agrees(set, mr, nb, accumulate, fused).unwrap();
                }
                check::outer_agrees(set, mr, nb).unwrap();
            }
        }
    }
}

/// Every weight-gradient strip block shape (fewest and most input channels) of every set,
/// over rows of 1, 2 and 3 pixels.
#[test]
fn kernel_grad_strip_blocks() {
    for set in &kernel_sets() {
        let Some(k) = set.grad_strip else { continue };
        for &(nb, rows) in k.shapes {
            eprintln!("{} grad strip blocks, nb {nb}", set.name());
            for mr in [1, rows] {
                for width in [1, 2, 3] {
                    check::grad_strip_agrees(set, mr, nb, width).unwrap();
                }
            }
        }
    }
}

/// The shallowest strip block of each window and width of every set: one row with zero edge
/// pixels and no epilogue, and the most rows (two at the wider width) with real edge pixels and
/// the epilogue.
#[test]
fn kernel_strip_blocks() {
    for set in &kernel_sets() {
        let Some(k) = set.strip else { continue };
        for window in [Window::Three, Window::Pair, Window::Single] {
            for nb in [2, 4] {
                let Some(&(_, _, c, rows)) =
                    k.shapes.iter().filter(|&&(w, b, _, _)| (w, b) == (window, nb)).min_by_key(|s| s.2)
                else {
                    continue;
                };
                eprintln!("{} {window:?} strip blocks, nb {nb}, depth {c}, up to {rows} rows", set.name());
                // The most rows at the narrower width only (the portable strip kernel is slow
                // under Miri: a 12-row block 64 deep and 32 wide takes minutes).
                let most = if nb == 2 { rows } else { 2 };
                for (mr, (edges, fused)) in [1, most].into_iter().zip(fused(set).iter().copied()) {
                    check::strip_agrees(set, (window, mr, nb, c), edges, fused).unwrap();
                }
            }
        }
    }
}

/// `s` with `n, h, w, cin, cout, k, stride, pad`.
fn shape(
    (n, h, w, cin, cout, k, stride, pad): (usize, usize, usize, usize, usize, usize, usize, usize),
) -> ConvShape {
    ConvShape { n, h, w, cin, cout, k, stride, pad }
}

/// 3x3 convolutions through the gather passes, the strip passes and the weight gradient's two
/// micro-kernel splits.
#[test]
fn gather_and_strip_passes_on_small_shapes() {
    let shapes = [
        // 16 channels in and out: the strip pass forward and backward (and its moments);
        // rows of 3 pixels (a strip shorter than the window), weight gradient by channels.
        (1, 2, 3, 16, 16, 3, 1, 1),
        // Stride 2, 16 -> 32: the input gradient by column phases (the strided strip pass).
        (1, 3, 3, 16, 32, 3, 2, 1),
        // 3 -> 12: one partial column block (12 of 16) on the way out, a partial block of input
        // channels (3 of 8) on the way back; a 14-pixel row gives blocks wholly inside the
        // image (the merged taps of both gather passes) and blocks that cross a row's end.
        (1, 3, 14, 3, 12, 3, 1, 1),
        // No padding, 3 output channels (a block of 8 columns with 5 dropped).
        (1, 4, 5, 8, 3, 3, 1, 0),
        // The weight gradient by pixels, 2 input channels (a partial channel block) and 16
        // output channels: the weight-gradient strip kernel where the set has one.
        (1, 6, 6, 2, 16, 3, 1, 1),
        // The weight gradient by pixels through the outer-product blocks: stride 2, 1 channel.
        (1, 10, 10, 1, 8, 3, 2, 1),
        // The weight gradient by channels with 7 input channels (6 + 1), stride 2.
        (1, 5, 5, 7, 8, 3, 2, 1),
        // A 5x5 kernel, pad 2, two images (blocks that cross from one image to the next).
        (2, 3, 4, 2, 9, 5, 1, 2),
    ];
    let methods: Vec<WeightMethod> = shapes.iter().map(|&s| weight_method(&shape(s))).collect();
    assert!(
        methods.contains(&WeightMethod::Pixels) && methods.contains(&WeightMethod::Channels),
        "{methods:?}"
    );
    two_threads(|| {
        for (i, &s) in shapes.iter().enumerate() {
            eprintln!("{:?}", shape(s));
            all_passes(&shape(s), 10 * i as u64 + 1);
        }
    });
}

/// 1x1 convolutions: a pointwise one (the `gemm` products, and the gather pass for the folded
/// forward) and a strided one (its sampled input gradient).
#[test]
fn one_by_one_passes_on_small_shapes() {
    two_threads(|| {
        for (i, s) in [(1, 2, 3, 5, 9, 1, 1, 0), (1, 3, 3, 3, 8, 1, 2, 0)].into_iter().enumerate() {
            eprintln!("{:?}", shape(s));
            all_passes(&shape(s), 100 + 10 * i as u64);
        }
    });
}

/// Winograd F(2x2, 3x3), forward (through the fused epilogue) and input gradient (written and
/// accumulated), on odd sides (tiles cut by the image's edge), two images, two column blocks
/// of which the last is partial (24 = 16 + 8).
#[test]
fn winograd_on_small_shapes() {
    two_threads(|| {
        for (i, &(n, h, w, cin, cout)) in [(1, 3, 5, 8, 24), (2, 3, 2, 16, 8)].iter().enumerate() {
            let s = ConvShape { n, h, w, cin, cout, k: 3, stride: 1, pad: 1 };
            eprintln!("{s:?}");
            let seed = 200 + 10 * i as u64;
            let (x, wt, dy) =
                (data(s.input_len(), seed), data(s.weight_len(), seed + 1), data(s.output_len(), seed + 2));
            let (ro, rdx, _) = reference(&x, &wt, &dy, &s);
            let (bias, residual) = (data(cout, seed + 3), data(s.output_len(), seed + 4));
            let fuse = Fuse { scale: None, bias: Some(&bias), residual: Some(&residual), relu: true };
            let mut got = vec![f32::NAN; s.output_len()];
            winograd::forward(&x, &winograd::pack_weights(&wt, &s, None), &s, &fuse, &mut got);
            let want: Vec<f32> = ro
                .iter()
                .zip(&residual)
                .enumerate()
                .map(|(j, (o, r))| (o + bias[j % cout] + r).max(0.0))
                .collect();
            close(&got, &want, &format!("Winograd forward {s:?}"));
            let mut dx = vec![f32::NAN; s.input_len()];
            winograd::input_gradient(&dy, &wt, &s, false, &mut dx);
            close(&dx, &rdx, &format!("Winograd dx {s:?}"));
            let base = data(s.input_len(), seed + 5);
            let mut acc = base.clone();
            winograd::input_gradient(&dy, &wt, &s, true, &mut acc);
            let want: Vec<f32> = base.iter().zip(&rdx).map(|(a, b)| a + b).collect();
            close(&acc, &want, &format!("Winograd dx accumulated {s:?}"));
        }
    });
}

/// A weight-gradient strip block over the last pixels of `x` and `dy`, from a channel and a
/// column other than the first (as `backward_weight` runs an image's last row): the kernels
/// must not step a pointer past their operands (`ptr::add` beyond an allocation is undefined
/// behaviour even when nothing is read there).
#[test]
fn kernel_grad_strip_block_at_the_end_of_its_operands() {
    let (width, cin, cpad, c, c0, mr, nb) = (3, 4, 32, 2, 16, 2, 2);
    let (x, dy) = (check::data(width * cin, 1), check::data(width * cpad, 2));
    let rows = [(0, 0)];
    let run = |set: &kernels::KernelSet| {
        let mut acc = check::data(3 * cin * cpad, 3);
        let args = kernels::GradStripArgs {
            x: x[c..].as_ptr(),
            dy: dy[c0..].as_ptr(),
            rows: &rows,
            width,
            x_stride: cin,
            dy_stride: cpad,
            acc: acc[c * cpad + c0..].as_mut_ptr(),
            acc_stride: cpad,
            tap_stride: cin * cpad,
        };
        // SAFETY: the row pair covers all of `x` and `dy` (channels `c..c + mr`, columns
        // `c0..c0 + 16`), the three taps' rows `c..c + mr` lie inside `acc`.
        set.grad_strip.map(|k| unsafe { (k.run)(&args, mr, nb) }).map(|()| acc)
    };
    let want = run(&kernels::PORTABLE).expect("the portable set has a weight-gradient strip kernel");
    for set in &kernel_sets() {
        if let Some(got) = run(set) {
            close(&got, &want, &format!("{} grad strip at the end of its operands", set.name()));
        }
    }
}
