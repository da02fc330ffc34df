//! The strip pass: the forward pass and the input gradient of 3x3, stride-1, pad-1 convolutions
//! with 16 channels in and out (ResNet-32's first stage), one kernel call per strip of up to
//! [`STRIP_ROWS`] output pixels of an image row ([`kernels::strip_block`]).
//!
//! On such layers a gather block is one vector wide, so each of its multiply-adds needs a load
//! of its own (the broadcast source value) besides the weights: the loads, not the arithmetic,
//! set its pace. The strip kernel broadcasts each source value once for the three outputs it
//! reaches and keeps up to sixteen sums in flight, and a strip takes whole halves of a 32-pixel
//! row, so its padding is two zero pixels at most instead of a plan per six-pixel block.

use rayon::prelude::*;

use super::conv::{ConvShape, Fuse};
use super::kernels::{self, StripArgs, StripFn, StripRow, STRIP_COLS, STRIP_DEPTH, STRIP_ROWS};

/// Which source row a kernel row reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Rows {
    /// Kernel row `kh` of output row `y` reads source row `y - 1 + kh` (the forward pass).
    Forward,
    /// Kernel row `kh` of input-gradient row `y` reads output-gradient row `y + 1 - kh` (the
    /// input gradient, whose weights are packed with the kernel columns reversed).
    Flipped,
}

/// The strip kernel to run a gather of `depth` floats per source pixel into `cols` columns
/// over `s` with, if the shape is one the strip pass serves and the kernel set has one.
pub(crate) fn kernel_for(s: &ConvShape, depth: usize, cols: usize) -> Option<StripFn> {
    let fits = s.k == 3 && s.stride == 1 && s.pad == 1 && depth == STRIP_DEPTH && cols == STRIP_COLS;
    fits.then(kernels::strip_kernel).flatten()
}

/// Runs `kernel` over `n` images of `h x w` pixels: `out[n, y, x, ..STRIP_COLS]` from the 3x3
/// windows of `src[n, y, x, ..STRIP_DEPTH]` (rows chosen by `rows`) and `packed` (9 taps of
/// `STRIP_DEPTH` rows of `STRIP_COLS` floats), added to `out` when `accumulate`, through
/// `fuse`'s bias, residual and ReLU (its scale must already be in `packed`).
///
/// Each output pixel is one kernel call's sum in the kernel's order, whatever the thread count.
#[allow(clippy::too_many_arguments)]
pub(crate) fn strip_pass(
    kernel: StripFn,
    src: &[f32],
    (n, h, w): (usize, usize, usize),
    rows: Rows,
    packed: &[f32],
    out: &mut [f32],
    accumulate: bool,
    fuse: &Fuse,
) {
    let (c, row_len) = (STRIP_DEPTH, w * STRIP_COLS);
    assert_eq!(src.len(), n * h * w * c, "strip pass source length");
    assert_eq!(out.len(), n * h * row_len, "strip pass output length");
    assert!(packed.len() >= 9 * c * STRIP_COLS, "strip pass packed weights");
    assert!(fuse.scale.is_none(), "a scale is folded in when packing");
    if let Some(b) = fuse.bias {
        assert_eq!(b.len(), STRIP_COLS, "bias length");
    }
    if let Some(r) = fuse.residual {
        assert_eq!(r.len(), out.len(), "residual length");
    }
    if out.is_empty() {
        return;
    }
    // Strips of near-equal length: a 32-pixel row is two of 16.
    let strips = w.div_ceil(STRIP_ROWS);
    let zero = [0f32; STRIP_DEPTH];
    out.par_chunks_mut(row_len).enumerate().with_min_len(4).for_each(|(img_row, out_row)| {
        let (img, y) = (img_row / h, img_row % h);
        let mut x0 = 0;
        for i in 0..strips {
            let mr = (w - x0).div_ceil(strips - i);
            let row = |kh: usize| {
                let sy = match rows {
                    Rows::Forward => (y + kh).checked_sub(1),
                    Rows::Flipped => (y + 1).checked_sub(kh),
                }
                .filter(|&sy| sy < h)?;
                let pixel =
                    |x: usize, count: usize| src[((img * h + sy) * w + x) * c..][..count * c].as_ptr();
                Some(StripRow {
                    first: if x0 > 0 { pixel(x0 - 1, 1) } else { zero.as_ptr() },
                    mid: pixel(x0, mr),
                    last: if x0 + mr < w { pixel(x0 + mr, 1) } else { zero.as_ptr() },
                })
            };
            let args = StripArgs {
                rows: [row(0), row(1), row(2)],
                packed: packed.as_ptr(),
                out: out_row[x0 * STRIP_COLS..][..mr * STRIP_COLS].as_mut_ptr(),
                accumulate,
                bias: fuse.bias.map_or(std::ptr::null(), <[f32]>::as_ptr),
                residual: fuse.residual.map_or(std::ptr::null(), |r| {
                    r[(img_row * w + x0) * STRIP_COLS..][..mr * STRIP_COLS].as_ptr()
                }),
                relu: fuse.relu,
            };
            // SAFETY: every pointer comes from a slice of the extent the kernel reads or writes
            // (`first`/`last` one pixel, `mid` `mr` pixels, the output and residual `mr` rows,
            // the bias and the packed weights checked above); `kernel` is the selected set's
            // (or the portable one), which this CPU runs.
            unsafe { kernels::strip_block(kernel, &args, mr) };
            x0 += mr;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::conv::{backward_input, forward, forward_fused};

    fn data(n: usize, seed: u64) -> Vec<f32> {
        let mut r = lt_core::Rng::new(seed);
        (0..n).map(|_| r.uniform_f32() * 2.0 - 1.0).collect()
    }

    /// `forward` and `backward_input` by direct loops, for 16 channels in and out.
    fn reference(x: &[f32], w: &[f32], dy: &[f32], s: &ConvShape) -> (Vec<f32>, Vec<f32>) {
        let c = STRIP_DEPTH;
        let (mut out, mut dx) = (vec![0f32; s.output_len()], vec![0f32; s.input_len()]);
        for n in 0..s.n {
            for y in 0..s.h {
                for xo in 0..s.w {
                    for (kh, kw) in (0..3).flat_map(|kh| (0..3).map(move |kw| (kh, kw))) {
                        let (iy, ix) = ((y + kh).wrapping_sub(1), (xo + kw).wrapping_sub(1));
                        if iy >= s.h || ix >= s.w {
                            continue;
                        }
                        for co in 0..c {
                            for ci in 0..c {
                                let (o, i) = (
                                    ((n * s.h + y) * s.w + xo) * c + co,
                                    ((n * s.h + iy) * s.w + ix) * c + ci,
                                );
                                let wi = ((co * c + ci) * 3 + kh) * 3 + kw;
                                out[o] += x[i] * w[wi];
                                dx[i] += dy[o] * w[wi];
                            }
                        }
                    }
                }
            }
        }
        (out, dx)
    }

    fn close(a: &[f32], b: &[f32], what: &str) {
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!((x - y).abs() <= 1e-4 * (1.0 + y.abs()), "{what}[{i}]: {x} vs {y}");
        }
    }

    /// Widths with one strip shorter than the kernel's three columns, one of every length,
    /// whole 16-pixel strips and uneven ones; heights of one row (both kernel rows padding).
    fn shapes() -> Vec<ConvShape> {
        [(2, 1, 1), (1, 1, 2), (2, 3, 5), (1, 4, 16), (2, 5, 32), (1, 2, 33), (1, 3, 47)]
            .into_iter()
            .map(|(n, h, w)| ConvShape { n, h, w, cin: 16, cout: 16, k: 3, stride: 1, pad: 1 })
            .collect()
    }

    #[test]
    fn the_portable_strip_pass_matches_direct_loops() {
        for (i, s) in shapes().iter().enumerate() {
            let (x, w, dy) =
                (data(s.input_len(), 1 + i as u64), data(s.weight_len(), 20), data(s.output_len(), 30));
            let (ro, rdx) = reference(&x, &w, &dy, s);
            let c = STRIP_DEPTH;
            // Forward packing: row (kh * 3 + kw) * C_in + ci; input gradient: kw reversed, C_out.
            let fwd: Vec<f32> = (0..9 * c * c)
                .map(|r| {
                    let (tap, d, col) = (r / (c * c), r / c % c, r % c);
                    w[((col * c + d) * 3 + tap / 3) * 3 + tap % 3]
                })
                .collect();
            let bwd: Vec<f32> = (0..9 * c * c)
                .map(|r| {
                    let (tap, d, col) = (r / (c * c), r / c % c, r % c);
                    w[((d * c + col) * 3 + tap / 3) * 3 + (2 - tap % 3)]
                })
                .collect();
            let dims = (s.n, s.h, s.w);
            let portable = kernels::PORTABLE.strip.unwrap();
            let mut out = vec![f32::NAN; s.output_len()];
            strip_pass(portable, &x, dims, Rows::Forward, &fwd, &mut out, false, &Fuse::default());
            close(&out, &ro, &format!("strip forward {s:?}"));
            let base = data(s.input_len(), 40);
            let mut dx = base.clone();
            strip_pass(portable, &dy, dims, Rows::Flipped, &bwd, &mut dx, true, &Fuse::default());
            let want: Vec<f32> = base.iter().zip(&rdx).map(|(a, b)| a + b).collect();
            close(&dx, &want, &format!("strip input gradient, accumulated {s:?}"));
            let (bias, residual) = (data(c, 50), data(s.output_len(), 60));
            let fuse = Fuse { scale: None, bias: Some(&bias), residual: Some(&residual), relu: true };
            let mut fused = vec![f32::NAN; s.output_len()];
            strip_pass(portable, &x, dims, Rows::Forward, &fwd, &mut fused, false, &fuse);
            let want: Vec<f32> = ro
                .iter()
                .zip(&residual)
                .enumerate()
                .map(|(j, (o, r))| (o + bias[j % c] + r).max(0.0))
                .collect();
            assert!(want.contains(&0.0) && want.iter().any(|&v| v > 0.0));
            close(&fused, &want, &format!("strip forward with epilogue {s:?}"));
        }
    }

    #[test]
    fn the_convolution_passes_through_the_selected_strip_kernel_match_direct_loops() {
        let Some(_) = kernel_for(&shapes()[0], STRIP_DEPTH, STRIP_COLS) else {
            eprintln!("SKIPPED: the {} kernels have no strip kernel", kernels::kernel_name());
            return;
        };
        for (i, s) in shapes().iter().enumerate() {
            let (x, w, dy) =
                (data(s.input_len(), 5 + i as u64), data(s.weight_len(), 21), data(s.output_len(), 31));
            let (ro, rdx) = reference(&x, &w, &dy, s);
            let mut out = vec![f32::NAN; s.output_len()];
            forward(&x, &w, s, &mut out);
            close(&out, &ro, &format!("forward {s:?}"));
            let mut dx = vec![f32::NAN; s.input_len()];
            backward_input(&dy, &w, s, &mut dx);
            close(&dx, &rdx, &format!("input gradient {s:?}"));
            let (scale, bias) = (data(16, 70), data(16, 71));
            let fuse = Fuse { scale: Some(&scale), bias: Some(&bias), residual: None, relu: false };
            let mut fused = vec![f32::NAN; s.output_len()];
            forward_fused(&x, &w, s, &fuse, &mut fused);
            let want: Vec<f32> =
                ro.iter().enumerate().map(|(j, o)| o * scale[j % 16] + bias[j % 16]).collect();
            close(&fused, &want, &format!("folded forward {s:?}"));
        }
    }
}
