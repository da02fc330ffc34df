//! The strip pass: the forward pass and the input gradient of 3x3, stride-1, pad-1 convolutions
//! with as many channels in as out, for ResNet's channel counts (16 to 512): one kernel call per
//! strip of up to 16 (one vector of columns) or 10 (two) output pixels of an image row and
//! column block ([`kernels::strip_block`]).
//!
//! A gather block plans six pixels at a time, and where it is one vector wide (16 channels)
//! each of its multiply-adds needs a load of its own (the broadcast source value) besides the
//! weights: the loads, not the arithmetic, set its pace. The strip kernel broadcasts each
//! source value once for the three outputs it reaches, keeps 16 or 20 sums in flight, and a
//! strip takes a whole stretch of an image row, so its padding is two zero pixels at most
//! instead of a general plan per block that touches the edge.

use rayon::prelude::*;

use super::conv::{heavy_weights, tasks_wanted, ConvShape, Fuse, OutPtr};
use super::kernels::{self, StripArgs, StripKernel, StripRow, Window};
use super::norm::Moments;

/// Which source row a kernel row reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Rows {
    /// Kernel row `kh` of output row `y` reads source row `y - 1 + kh` (the forward pass).
    Forward,
    /// Kernel row `kh` of input-gradient row `y` reads output-gradient row `y + 1 - kh` (the
    /// input gradient, whose weights are packed with the kernel columns reversed).
    Flipped,
}

/// The strip kernel for a gather of `depth` floats per source pixel into the column blocks
/// `index` (`(first column, 8-column units, offset)`) over `s`, if the shape is one the strip
/// pass serves and the kernel set has one.
pub(crate) fn kernel_for(
    s: &ConvShape,
    depth: usize,
    index: &[(usize, usize, usize)],
) -> Option<StripKernel> {
    let kernel = kernels::strip_kernel()?;
    let square = s.k == 3 && s.stride == 1 && s.pad == 1 && s.cin == s.cout;
    let blocks = index
        .iter()
        .all(|&(c0, nb, _)| c0 + 8 * nb <= s.cout && kernel.rows(Window::Three, nb, depth).is_some());
    (square && blocks && !index.is_empty()).then_some(kernel)
}

/// Runs `kernel` over `n` images of `h x w` pixels: `out[n, y, x, ..cols]` from the 3x3 windows
/// of `src[n, y, x, ..depth]` (rows chosen by `rows`) and the packed column blocks `index` of
/// `packed` (each 9 taps of `depth` rows), added to `out` when `accumulate`, through `fuse`'s
/// bias, residual and ReLU (its scale must already be in `packed`).
///
/// A task is a group of image rows: with light weights over every column block, row by row (the
/// source rows come from memory once); with heavy ones ([`heavy_weights`]) over one column
/// block, so that its weights come from memory once per task (ResNet-50's 512-channel layer has
/// 9 MiB of them). Each output value is one kernel call's sum in the kernel's order, whatever
/// the thread count.
///
/// With `summarise`, and light weights, each output image row's moments are taken as soon as
/// the row is stored, while it is in cache, one chunk per image row in order (so they do not
/// depend on the thread count either); the result is `None` otherwise.
#[allow(clippy::too_many_arguments)]
pub(crate) fn strip_pass(
    kernel: StripKernel,
    src: &[f32],
    (n, h, w, depth): (usize, usize, usize, usize),
    rows: Rows,
    (packed, index): (&[f32], &[(usize, usize, usize)]),
    out: &mut [f32],
    accumulate: bool,
    fuse: &Fuse,
    summarise: bool,
) -> Option<Moments> {
    let cols = index.last().map_or(0, |&(c0, nb, _)| c0 + 8 * nb);
    assert_eq!(src.len(), n * h * w * depth, "strip pass source length");
    assert_eq!(out.len(), n * h * w * cols, "strip pass output length");
    assert!(fuse.scale.is_none(), "a scale is folded in when packing");
    if let Some(b) = fuse.bias {
        assert_eq!(b.len(), cols, "bias length");
    }
    if let Some(r) = fuse.residual {
        assert_eq!(r.len(), out.len(), "residual length");
    }
    let max_rows = index.iter().map(|&(_, nb, _)| kernel.rows(Window::Three, nb, depth)).min().flatten();
    let (Some(max_rows), false) = (max_rows, out.is_empty()) else {
        return summarise.then(|| Moments::new(cols));
    };
    let split = Tasks::new(n * h, packed, index);
    let zero = vec![0f32; depth];
    let summarise = summarise && !split.heavy;
    let (len, outp) = (out.len(), OutPtr(out.as_mut_ptr()));
    let tasks = (0..split.count()).into_par_iter().map(|t| {
        // Capture the whole wrapper (not its raw-pointer field) so the closure stays Send.
        let base = outp;
        let (task_rows, blocks) = split.task(t);
        let mut moments = summarise.then(|| Moments::with_capacity(cols, task_rows.len()));
        for img_row in task_rows {
            for &(c0, nb, off) in blocks {
                let nr = 8 * nb;
                let weights = &packed[off..off + 9 * depth * nr];
                let (img, y) = (img_row / h, img_row % h);
                for (x0, mr) in strips(w, max_rows) {
                    let row = |kh: usize| {
                        let sy = match rows {
                            Rows::Forward => (y + kh).checked_sub(1),
                            Rows::Flipped => (y + 1).checked_sub(kh),
                        }
                        .filter(|&sy| sy < h)?;
                        let pixel = |x: usize, count: usize| {
                            src[((img * h + sy) * w + x) * depth..][..count * depth].as_ptr()
                        };
                        Some(StripRow {
                            first: if x0 > 0 { pixel(x0 - 1, 1) } else { zero.as_ptr() },
                            mid: pixel(x0, mr),
                            last: if x0 + mr < w { pixel(x0 + mr, 1) } else { zero.as_ptr() },
                        })
                    };
                    let first = (img_row * w + x0) * cols + c0;
                    assert!(first + (mr - 1) * cols + nr <= len, "strip outside the output");
                    let args = StripArgs {
                        window: Window::Three,
                        rows: [row(0), row(1), row(2)],
                        depth,
                        packed: weights.as_ptr(),
                        // SAFETY: the strip's rows lie inside `out` (checked above).
                        out: unsafe { base.0.add(first) },
                        out_stride: cols,
                        accumulate,
                        bias: fuse.bias.map_or(std::ptr::null(), |b| b[c0..c0 + nr].as_ptr()),
                        residual: fuse
                            .residual
                            .map_or(std::ptr::null(), |r| r[first..first + (mr - 1) * cols + nr].as_ptr()),
                        relu: fuse.relu,
                    };
                    // SAFETY: every pointer comes from a slice of the extent the kernel reads or
                    // writes (`first`/`last` one pixel, `mid` `mr` pixels, the weights, bias and
                    // residual sliced above, the output checked above); tasks write disjoint
                    // (row, column block) parts; `kernel` is the selected set's (or the portable
                    // one), which this CPU runs.
                    unsafe { kernels::strip_block(&kernel, &args, mr, nb) };
                }
            }
            if let Some(m) = moments.as_mut() {
                let first = img_row * w * cols;
                assert!(first + w * cols <= len, "image row outside the output");
                // SAFETY: this task wrote the whole row (every column block, `blocks` being all
                // of them when summarising) and no other task touches it.
                m.push(unsafe { std::slice::from_raw_parts(base.0.add(first), w * cols) });
            }
        }
        moments
    });
    let parts: Vec<Option<Moments>> = tasks.collect();
    summarise.then(|| Moments::concat(cols, parts.into_iter().flatten()))
}

/// The strips of a stretch of `count` pixels, each at most `max_rows` long and of near-equal
/// length (a 32-pixel row is two of 16, or four of 8): `(first pixel, pixels)`, in order.
pub(crate) fn strips(count: usize, max_rows: usize) -> impl Iterator<Item = (usize, usize)> {
    let n = count.div_ceil(max_rows.max(1));
    (0..n).scan(0, move |x0, i| {
        let mr = (count - *x0).div_ceil(n - i);
        *x0 += mr;
        Some((*x0 - mr, mr))
    })
}

/// How a strip pass splits its work (see [`strip_pass`]): tasks of up to 16 image rows over
/// every column block, or with heavy weights ([`heavy_weights`]) over one column block each, about
/// four tasks per thread. Each output value is computed the same way whatever the split.
pub(crate) struct Tasks<'a> {
    index: &'a [(usize, usize, usize)],
    /// Whether the weights are heavy: a task then runs one column block.
    pub heavy: bool,
    image_rows: usize,
    rows_per_task: usize,
    col_groups: usize,
}

impl<'a> Tasks<'a> {
    /// The tasks of a pass over `image_rows` image rows with the packed weights `packed` in the
    /// column blocks `index`.
    pub fn new(image_rows: usize, packed: &[f32], index: &'a [(usize, usize, usize)]) -> Self {
        let heavy = heavy_weights(packed, index);
        let col_groups = if heavy { index.len() } else { 1 };
        let rows_per_task = (image_rows * col_groups).div_ceil(tasks_wanted()).clamp(1, 16);
        Self { index, heavy, image_rows, rows_per_task, col_groups }
    }

    /// How many tasks there are.
    pub fn count(&self) -> usize {
        self.image_rows.div_ceil(self.rows_per_task) * self.col_groups
    }

    /// Task `t`'s image rows and column blocks.
    pub fn task(&self, t: usize) -> (std::ops::Range<usize>, &'a [(usize, usize, usize)]) {
        let index = self.index;
        let (group, blocks) =
            if self.heavy { (t / self.col_groups, &index[t % self.col_groups..][..1]) } else { (t, index) };
        (group * self.rows_per_task..((group + 1) * self.rows_per_task).min(self.image_rows), blocks)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::conv::tests::{close, data};
    use crate::ops::conv::{backward_input, forward, forward_fused};

    /// `forward` and `backward_input` by direct loops, `c` channels in and out.
    fn reference(x: &[f32], w: &[f32], dy: &[f32], s: &ConvShape) -> (Vec<f32>, Vec<f32>) {
        let c = s.cin;
        let (mut out, mut dx) = (vec![0f32; s.output_len()], vec![0f32; s.input_len()]);
        for (n, y, xo) in (0..s.n).flat_map(|n| (0..s.h).flat_map(move |y| (0..s.w).map(move |x| (n, y, x))))
        {
            for (kh, kw) in (0..3).flat_map(|kh| (0..3).map(move |kw| (kh, kw))) {
                let (iy, ix) = ((y + kh).wrapping_sub(1), (xo + kw).wrapping_sub(1));
                if iy >= s.h || ix >= s.w {
                    continue;
                }
                for (co, ci) in (0..c).flat_map(|co| (0..c).map(move |ci| (co, ci))) {
                    let (o, i) = (((n * s.h + y) * s.w + xo) * c + co, ((n * s.h + iy) * s.w + ix) * c + ci);
                    let wi = ((co * c + ci) * 3 + kh) * 3 + kw;
                    out[o] += x[i] * w[wi];
                    dx[i] += dy[o] * w[wi];
                }
            }
        }
        (out, dx)
    }

    /// Widths with one strip shorter than the kernel's three columns, whole strips and uneven
    /// ones; heights of one row (both outer kernel rows padding); 16 channels (one 16-column
    /// block), 32 (one 32-column block) and 64 (two).
    fn shapes() -> Vec<ConvShape> {
        [
            (2, 1, 1, 16),
            (1, 1, 2, 16),
            (2, 3, 5, 16),
            (1, 4, 16, 16),
            (2, 5, 32, 16),
            (1, 2, 33, 16),
            (1, 3, 47, 16),
        ]
        .into_iter()
        .chain([(2, 3, 7, 32), (1, 4, 25, 32), (1, 3, 13, 64), (2, 2, 1, 64)])
        .map(|(n, h, w, c)| ConvShape { n, h, w, cin: c, cout: c, k: 3, stride: 1, pad: 1 })
        .collect()
    }

    /// Weights packed for the strip pass by hand: column blocks as wide as the strip shapes
    /// allow, each 9 taps (`kh * 3 + kw`, `kw` reversed for the input gradient) of `c` rows.
    fn pack(w: &[f32], c: usize, flipped: bool) -> (Vec<f32>, Vec<(usize, usize, usize)>) {
        let nb = if c == 16 { 2 } else { 4 };
        let index: Vec<_> = (0..c / (8 * nb)).map(|b| (b * 8 * nb, nb, b * 9 * c * 8 * nb)).collect();
        let mut packed = Vec::new();
        for &(c0, nb, _) in &index {
            for (tap, d, l) in
                (0..9).flat_map(|t| (0..c).flat_map(move |d| (0..8 * nb).map(move |l| (t, d, l))))
            {
                let (kh, kw, col) = (tap / 3, tap % 3, c0 + l);
                packed.push(if flipped {
                    w[((d * c + col) * 3 + kh) * 3 + 2 - kw]
                } else {
                    w[((col * c + d) * 3 + kh) * 3 + kw]
                });
            }
        }
        (packed, index)
    }

    #[test]
    fn strips_cover_a_stretch_in_order_with_near_equal_lengths() {
        for (count, max_rows, want) in [
            (32, 16, vec![(0, 16), (16, 16)]),
            (28, 12, vec![(0, 10), (10, 9), (19, 9)]),
            (7, 14, vec![(0, 7)]),
            (0, 10, vec![]),
        ] {
            assert_eq!(
                strips(count, max_rows).collect::<Vec<_>>(),
                want,
                "{count} pixels, {max_rows} at most"
            );
        }
    }

    #[test]
    fn the_portable_strip_pass_matches_direct_loops() {
        let portable = kernels::PORTABLE.strip.unwrap();
        for (i, s) in shapes().iter().enumerate() {
            let c = s.cin;
            let (x, w, dy) =
                (data(s.input_len(), 1 + i as u64), data(s.weight_len(), 20), data(s.output_len(), 30));
            let (ro, rdx) = reference(&x, &w, &dy, s);
            let (fwd, bwd) = (pack(&w, c, false), pack(&w, c, true));
            let dims = (s.n, s.h, s.w, c);
            let fwd = (fwd.0.as_slice(), fwd.1.as_slice());
            let mut out = vec![f32::NAN; s.output_len()];
            strip_pass(portable, &x, dims, Rows::Forward, fwd, &mut out, false, &Fuse::default(), false);
            close(&out, &ro, &format!("strip forward {s:?}"));
            let base = data(s.input_len(), 40);
            let mut dx = base.clone();
            strip_pass(
                portable,
                &dy,
                dims,
                Rows::Flipped,
                (&bwd.0, &bwd.1),
                &mut dx,
                true,
                &Fuse::default(),
                false,
            );
            let want: Vec<f32> = base.iter().zip(&rdx).map(|(a, b)| a + b).collect();
            close(&dx, &want, &format!("strip input gradient, accumulated {s:?}"));
            let (bias, residual) = (data(c, 50), data(s.output_len(), 60));
            let fuse = Fuse { scale: None, bias: Some(&bias), residual: Some(&residual), relu: true };
            let mut fused = vec![f32::NAN; s.output_len()];
            strip_pass(portable, &x, dims, Rows::Forward, fwd, &mut fused, false, &fuse, false);
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
        if kernels::strip_kernel().is_none() {
            eprintln!("SKIPPED: the {} kernels have no strip kernel", kernels::kernel_name());
            return;
        }
        for (i, s) in shapes().iter().enumerate() {
            let c = s.cin;
            let (x, w, dy) =
                (data(s.input_len(), 5 + i as u64), data(s.weight_len(), 21), data(s.output_len(), 31));
            let (ro, rdx) = reference(&x, &w, &dy, s);
            let mut out = vec![f32::NAN; s.output_len()];
            forward(&x, &w, s, &mut out);
            close(&out, &ro, &format!("forward {s:?}"));
            let mut dx = vec![f32::NAN; s.input_len()];
            backward_input(&dy, &w, s, &mut dx);
            close(&dx, &rdx, &format!("input gradient {s:?}"));
            let (scale, bias) = (data(c, 70), data(c, 71));
            let fuse = Fuse { scale: Some(&scale), bias: Some(&bias), residual: None, relu: false };
            let mut fused = vec![f32::NAN; s.output_len()];
            forward_fused(&x, &w, s, &fuse, &mut fused);
            let want: Vec<f32> = ro.iter().enumerate().map(|(j, o)| o * scale[j % c] + bias[j % c]).collect();
            close(&fused, &want, &format!("folded forward {s:?}"));
        }
    }
}
