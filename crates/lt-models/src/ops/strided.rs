//! The input gradient of 3x3, stride-2, pad-1 convolutions through the strip kernel, by column
//! phase (see [`strided_input_gradient`]): ResNet's downsampling 3x3 layers. Where the stride-1
//! strip pass ([`super::strip`]) slides a three-pixel window along an image row, each phase here
//! takes one or two output-gradient pixels ([`Window::Single`], [`Window::Pair`]) and writes
//! every other input pixel.

use rayon::prelude::*;

use super::conv::{pack_blocks, ConvShape, OutPtr, ReadOrder};
use super::kernels::{self, StripArgs, StripKernel, StripRow, Window};
use super::strip::{strips, Tasks};

/// The input gradient of `s`, a 3x3, stride-2, pad-1 convolution, through the strip kernel by
/// column phases, into `dx` (added to it when `accumulate`); `false` (and nothing done) where
/// the shape is another or the kernel set has no strip blocks for its channel counts.
///
/// Input pixel `(y, x)` takes output-gradient rows `y / 2` (kernel row 1) for even `y`, and
/// `(y + 1) / 2` and `(y - 1) / 2` (kernel rows 0 and 2) for odd `y`; in each, even `x = 2j`
/// takes pixel `j` through kernel column 1 ([`Window::Single`]) and odd `x = 2j + 1` pixels `j`
/// and `j + 1` through columns 2 and 0 ([`Window::Pair`]). Each phase of an image row is a strip
/// pass over consecutive output-gradient pixels, written two input pixels apart: no block sums
/// a tap that falls between the stride's grid, and one broadcast serves the two outputs an odd
/// phase's pixel reaches (the gather pass plans per block of six pixels with at most four taps
/// of `C_out` each). Tasks ([`Tasks`]) and the order of the sums as in the stride-1 strip pass.
pub(crate) fn strided_input_gradient(
    dy: &[f32],
    w: &[f32],
    s: &ConvShape,
    dx: &mut [f32],
    accumulate: bool,
) -> bool {
    kernels::strip_kernel().is_some_and(|kernel| strided_pass(kernel, dy, w, s, dx, accumulate))
}

/// [`strided_input_gradient`] through `kernel`.
fn strided_pass(
    kernel: StripKernel,
    dy: &[f32],
    w: &[f32],
    s: &ConvShape,
    dx: &mut [f32],
    accumulate: bool,
) -> bool {
    let (cin, cout) = (s.cin, s.cout);
    if (s.k, s.stride, s.pad) != (3, 2, 1) || cin == 0 {
        return false;
    }
    // Column blocks all of the widest width that divides the input channels and has blocks of
    // both windows over the output channels; per phase, its window, first input column, first
    // packed tap and most rows.
    let phases = |nb: usize| {
        let rows = |k: Window| kernel.rows(k, nb, cout);
        Some([(Window::Single, 0, 0, rows(Window::Single)?), (Window::Pair, 1, 3, rows(Window::Pair)?)])
    };
    let Some((nb, phases)) =
        [4, 2].into_iter().filter(|&nb| cin % (8 * nb) == 0).find_map(|nb| Some((nb, phases(nb)?)))
    else {
        return false;
    };
    let blocks: Vec<(usize, usize)> = (0..cin).step_by(8 * nb).map(|c0| (c0, nb)).collect();
    assert_eq!(dy.len(), s.output_len(), "conv output-gradient length");
    assert_eq!(w.len(), s.weight_len(), "conv weight length");
    assert_eq!(dx.len(), s.input_len(), "conv input-gradient length");
    // Per column block: the even phase's three taps (kernel rows, column 1), then the odd
    // phase's six (kernel rows, then columns 2 and 0); output channels are the depth.
    let (packed, index) = pack_blocks(&blocks, 9, cout, cin, ReadOrder::DepthColumnTap, |t, co, ci| {
        let (kh, kw) = if t < 3 { (t, 1) } else { ((t - 3) / 2, 2 - 2 * ((t - 3) % 2)) };
        w[((co * cin + ci) * 3 + kh) * 3 + kw]
    });
    let (h, wd, oh, ow) = (s.h, s.w, s.oh(), s.ow());
    let tasks = Tasks::new(s.n * h, &packed, &index);
    let zero = vec![0f32; cout];
    let (len, outp) = (dx.len(), OutPtr(dx.as_mut_ptr()));
    (0..tasks.count()).into_par_iter().for_each(|t| {
        // Capture the whole wrapper (not its raw-pointer field) so the closure stays Send.
        let base = outp;
        let (rows, blocks) = tasks.task(t);
        for img_row in rows {
            let (img, y) = (img_row / h, img_row % h);
            for &(c0, nb, off) in blocks {
                let nr = 8 * nb;
                for (window, phase, taps, max_rows) in phases {
                    let count = (wd + 1 - phase) / 2;
                    let weights = &packed[off + taps * cout * nr..][..3 * window.columns() * cout * nr];
                    for (j0, mr) in strips(count, max_rows) {
                        // Kernel row `kh` reaches output-gradient row `(y + 1 - kh) / 2` where
                        // that is whole and inside the image.
                        let row = |kh: usize| {
                            let twice = (y + 1).checked_sub(kh).filter(|t| t % 2 == 0 && t / 2 < oh)?;
                            let at = |x: usize| ((img * oh + twice / 2) * ow + x) * cout;
                            Some(StripRow {
                                first: zero.as_ptr(),
                                mid: dy[at(j0)..][..mr * cout].as_ptr(),
                                last: if j0 + mr < ow {
                                    dy[at(j0 + mr)..][..cout].as_ptr()
                                } else {
                                    zero.as_ptr()
                                },
                            })
                        };
                        let first = (img_row * wd + 2 * j0 + phase) * cin + c0;
                        assert!(first + (mr - 1) * 2 * cin + nr <= len, "strip outside the input gradient");
                        let args = StripArgs {
                            window,
                            rows: [row(0), row(1), row(2)],
                            depth: cout,
                            packed: weights.as_ptr(),
                            // SAFETY: the strip's pixels lie inside `dx` (checked above).
                            out: unsafe { base.0.add(first) },
                            out_stride: 2 * cin,
                            accumulate,
                            bias: std::ptr::null(),
                            residual: std::ptr::null(),
                            relu: false,
                        };
                        // SAFETY: `mid` and `last` are slices of `dy` of the extents the window
                        // reads (`first` it does not read), the zero pixel has `cout` floats, the
                        // weights are sliced above and the outputs checked above; tasks write
                        // disjoint (row, column block) parts; `kernel` is the selected set's.
                        unsafe { kernels::strip_block(&kernel, &args, mr, nb) };
                    }
                }
            }
        }
    });
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::conv::tests::{close, data};
    use crate::ops::conv::{backward_input, heavy_weights};

    /// The input gradient of a 3x3, stride-2, pad-1 convolution by direct loops.
    fn strided_reference(w: &[f32], dy: &[f32], s: &ConvShape) -> Vec<f32> {
        let mut dx = vec![0f32; s.input_len()];
        for (n, oy, ox) in
            (0..s.n).flat_map(|n| (0..s.oh()).flat_map(move |y| (0..s.ow()).map(move |x| (n, y, x))))
        {
            for (kh, kw) in (0..3).flat_map(|kh| (0..3).map(move |kw| (kh, kw))) {
                let (iy, ix) = ((2 * oy + kh).wrapping_sub(1), (2 * ox + kw).wrapping_sub(1));
                if iy >= s.h || ix >= s.w {
                    continue;
                }
                for (co, ci) in (0..s.cout).flat_map(|co| (0..s.cin).map(move |ci| (co, ci))) {
                    let g = dy[((n * s.oh() + oy) * s.ow() + ox) * s.cout + co];
                    dx[((n * s.h + iy) * s.w + ix) * s.cin + ci] +=
                        g * w[((co * s.cin + ci) * 3 + kh) * 3 + kw];
                }
            }
        }
        dx
    }

    /// Stride-2 shapes for the strip kernel's two column phases: one-pixel and odd and even
    /// heights and widths (an odd phase with no pixel, a last pixel whose right neighbour is
    /// padding or not), phase rows longer than a strip, one and several column blocks of 16
    /// and 32 columns, and weights heavy enough to run a column block per task.
    fn strided_shapes() -> Vec<ConvShape> {
        [
            (2, 1, 1, 16, 32),
            (1, 2, 2, 16, 32),
            (2, 5, 7, 16, 32),
            (1, 6, 34, 16, 32),
            (1, 7, 31, 32, 64),
            (2, 4, 30, 64, 64),
            (1, 3, 9, 64, 128),
            (1, 2, 5, 128, 256),
        ]
        .into_iter()
        .map(|(n, h, w, cin, cout)| ConvShape { n, h, w, cin, cout, k: 3, stride: 2, pad: 1 })
        .collect()
    }

    #[test]
    fn the_portable_strided_input_gradient_by_phases_matches_direct_loops() {
        let portable = kernels::PORTABLE.strip.unwrap();
        for (i, s) in strided_shapes().iter().enumerate() {
            let (w, dy) = (data(s.weight_len(), 100 + i as u64), data(s.output_len(), 120 + i as u64));
            let want = strided_reference(&w, &dy, s);
            let mut dx = vec![f32::NAN; s.input_len()];
            assert!(strided_pass(portable, &dy, &w, s, &mut dx, false), "{s:?}: not run by phases");
            close(&dx, &want, &format!("strided input gradient {s:?}"));
            let base = data(s.input_len(), 140);
            let mut dx = base.clone();
            assert!(strided_pass(portable, &dy, &w, s, &mut dx, true), "{s:?}: not run by phases");
            let want: Vec<f32> = base.iter().zip(&want).map(|(a, b)| a + b).collect();
            close(&dx, &want, &format!("strided input gradient, accumulated {s:?}"));
        }
        // Heavy weights: more than a megabyte in more than one column block.
        let s = strided_shapes()[7];
        let blocks: Vec<_> = (0..s.cin).step_by(32).map(|c0| (c0, 4)).collect();
        let (packed, index) =
            pack_blocks(&blocks, 9, s.cout, s.cin, ReadOrder::DepthColumnTap, |_, _, _| 0.0);
        assert!(heavy_weights(&packed, &index), "{s:?} should have heavy weights");
        // Shapes the phases do not serve are left to the gather pass.
        let w = vec![0f32; 9 * 40 * 24];
        for s in [
            ConvShape { n: 1, h: 4, w: 4, cin: 24, cout: 40, k: 3, stride: 2, pad: 1 },
            ConvShape { n: 1, h: 4, w: 4, cin: 24, cout: 40, k: 3, stride: 1, pad: 1 },
        ] {
            let (dy, mut dx) = (vec![0f32; s.output_len()], vec![0f32; s.input_len()]);
            assert!(!strided_pass(portable, &dy, &w, &s, &mut dx, false), "{s:?} has no phase blocks");
        }
    }

    #[test]
    fn the_strided_input_gradient_through_the_selected_strip_kernel_matches_direct_loops() {
        if kernels::strip_kernel().is_none() {
            eprintln!("SKIPPED: the {} kernels have no strip kernel", kernels::kernel_name());
            return;
        }
        for (i, s) in strided_shapes().iter().enumerate() {
            let (w, dy) = (data(s.weight_len(), 160 + i as u64), data(s.output_len(), 180 + i as u64));
            let mut dx = vec![f32::NAN; s.input_len()];
            backward_input(&dy, &w, s, &mut dx);
            close(&dx, &strided_reference(&w, &dy, s), &format!("strided input gradient {s:?}"));
        }
    }
}
