//! The weight gradient: by pixel groups, by input channels, or as products of patch panels
//! ([`weight_method`] chooses), each summing in a fixed order.

// Numerical kernels index several arrays with one loop variable.
#![allow(clippy::needless_range_loop)]

use super::*;

/// Weight gradient: `dw[C_out, C_in, k, k] = sum over pixels of dy (x) x` (overwrites `dw`).
///
/// Three methods, chosen by [`weight_method`]: by pixels (groups of output rows, each with its
/// own partial sum, summed in order at the end), by input channels (each task owns its rows of
/// the gradient and runs over every pixel: no partial sums to zero, store and add), or as
/// products of patch panels through `gemm` (large gradients: many input channels). Every
/// method sums in a fixed order, so the result is the same bit for bit on every run.
pub fn backward_weight(x: &[f32], dy: &[f32], s: &ConvShape, dw: &mut [f32]) {
    assert_eq!(x.len(), s.input_len(), "conv input length");
    assert_eq!(dy.len(), s.output_len(), "conv output-gradient length");
    assert_eq!(dw.len(), s.weight_len(), "conv weight-gradient length");
    if is_pointwise(s) {
        return pointwise_backward_weight(x, dy, s, dw);
    }
    let method = weight_method(s);
    if method == WeightMethod::Panels {
        let grouped = s.cout * s.k * s.k * s.cin <= PANEL_GROUPED_WEIGHTS;
        return panels_backward_weight(x, dy, s, dw, panel_pixels(s.k * s.k * s.cin), grouped);
    }
    let (k, cin, cout) = (s.k, s.cin, s.cout);
    let blocks = col_blocks(cout);
    let cpad = blocks.last().map(|&(c0, nb)| c0 + 8 * nb).unwrap_or(0);
    // dy padded to `cpad` columns when C_out is not a multiple of 8.
    let dy_padded = padded_columns(dy, cout, cpad);
    let g = WeightGrad { x, dy: &dy_padded, s, blocks: &blocks, cpad };
    // acc[(t * cin + ci) * cpad + co]
    let acc = if method == WeightMethod::Channels { g.by_channels() } else { g.by_pixels() };
    for co in 0..cout {
        for ci in 0..cin {
            for t in 0..k * k {
                dw[(co * cin + ci) * k * k + t] = acc[(t * cin + ci) * cpad + co];
            }
        }
    }
}

/// Pixels per panel of [`panels_backward_weight`] for panel rows of `width` floats: at most
/// 8 MiB a panel (and at least one row).
fn panel_pixels(width: usize) -> usize {
    ((8 << 20) / (4 * width.max(1))).max(1)
}

/// Weight gradient as matrix products through `gemm`: the input patches of a run of output
/// pixels are copied into a panel `[pixels, k * k * C_in]` (tap-major rows, zeros where a tap
/// falls into the padding) and `acc[C_out, k * k * C_in] += dy^T * panel`, panel after panel
/// in order (so the sums have a fixed order), `chunk` pixels a panel. The copy costs one pass
/// over `k * k` times the input; `gemm`'s packed, cache-blocked product wins that back where
/// the gradient is large (many input channels) or the input is strided (see
/// [`weight_method`]). When `grouped` ([`PANEL_GROUPED_WEIGHTS`]), the pixels are cut into
/// [`PIXEL_GROUPS`] fixed groups, each running its own panels (an eighth of `chunk` pixels)
/// through single-threaded products into its own partial gradient, summed in group order.
pub(super) fn panels_backward_weight(
    x: &[f32],
    dy: &[f32],
    s: &ConvShape,
    dw: &mut [f32],
    chunk: usize,
    grouped: bool,
) {
    let (k, cin) = (s.k, s.cin);
    let (taps, pixels) = (k * k, s.n * s.oh() * s.ow());
    let width = taps * cin;
    // acc[co * width + t * cin + ci]
    let acc = if grouped {
        // Each group its own panels and single-threaded products into its own partial.
        let chunk = (chunk / PIXEL_GROUPS).max(1);
        by_pixel_groups(pixels, s.cout * width, |range| panel_products(x, dy, s, range, chunk, false))
    } else {
        panel_products(x, dy, s, 0..pixels, chunk, true)
    };
    for (dst, src) in dw.chunks_exact_mut(width).zip(acc.chunks_exact(width)) {
        for ci in 0..cin {
            for t in 0..taps {
                dst[ci * taps + t] = src[t * cin + ci];
            }
        }
    }
}

/// The largest weight gradient [`backward_weight`] computes in panels by pixel groups (each
/// group's partial gradient is this large): one product over all pixels splits its few output
/// blocks poorly over the threads. ResNet-50 at batch 32 (`conv_throughput resnet50 32`, ms
/// one product against groups): 56x56 128->128 stride 2 53.7 -> 33.0-35.4, 256->512 1x1
/// stride 2 42.6 -> 30.1-31.3, 14x14 256->256 34.7 -> 31.3, 28x28 256->256 stride 2 35.2 ->
/// 33.0; larger gradients (7x7, 2^21 values and more) as one product.
const PANEL_GROUPED_WEIGHTS: usize = 1 << 20;

/// `acc[C_out, k * k * C_in] = sum over the output pixels `range` of dy^T * patches`, panel of
/// `chunk` pixels after panel in order, the copies and products on the rayon pool when
/// `parallel` (see [`panels_backward_weight`]).
fn panel_products(
    x: &[f32],
    dy: &[f32],
    s: &ConvShape,
    range: std::ops::Range<usize>,
    chunk: usize,
    parallel: bool,
) -> Vec<f32> {
    let (k, cin, cout) = (s.k, s.cin, s.cout);
    let (oh, ow) = (s.oh(), s.ow());
    let width = k * k * cin;
    let chunk = chunk.clamp(1, range.len().max(1));
    let mut panel = vec![0f32; chunk * width];
    let mut acc = vec![0f32; cout * width];
    let patch = |p: usize, row: &mut [f32]| {
        let (n, y, xo) = (p / (oh * ow), p / ow % oh, p % ow);
        for (t, seg) in row.chunks_exact_mut(cin).enumerate() {
            let iy = (y * s.stride + t / k) as isize - s.pad as isize;
            let ix = (xo * s.stride + t % k) as isize - s.pad as isize;
            if iy < 0 || ix < 0 || iy >= s.h as isize || ix >= s.w as isize {
                seg.fill(0.0);
            } else {
                let i = ((n * s.h + iy as usize) * s.w + ix as usize) * cin;
                seg.copy_from_slice(&x[i..i + cin]);
            }
        }
    };
    for p0 in range.clone().step_by(chunk) {
        let rows = chunk.min(range.end - p0);
        let panel = &mut panel[..rows * width];
        if parallel {
            panel.par_chunks_mut(width).enumerate().for_each(|(r, row)| patch(p0 + r, row));
        } else {
            panel.chunks_mut(width).enumerate().for_each(|(r, row)| patch(p0 + r, row));
        }
        let lhs = (&dy[p0 * cout..], 1, cout);
        matmul((cout, width, rows), (&mut acc, width, 1), p0 > range.start, lhs, (panel, width, 1), parallel);
    }
    acc
}

/// `dy` (`[P, cout]`) with its rows padded by zeros to `cpad` columns (itself when `cpad == cout`).
pub(super) fn padded_columns(dy: &[f32], cout: usize, cpad: usize) -> std::borrow::Cow<'_, [f32]> {
    if cpad == cout {
        return dy.into();
    }
    let mut v = vec![0f32; dy.len() / cout * cpad];
    for (src, dst) in dy.chunks_exact(cout).zip(v.chunks_exact_mut(cpad)) {
        dst[..cout].copy_from_slice(src);
    }
    v.into()
}

/// How [`backward_weight`] runs a convolution that is not pointwise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightMethod {
    /// Micro-kernels over groups of output rows, one partial gradient per group.
    Pixels,
    /// Micro-kernels over input channels, each task owning its rows of the gradient.
    Channels,
    /// Patch panels through `gemm` (see `panels_backward_weight`).
    Panels,
}

/// The method [`backward_weight`] uses for `s`. Measured with `conv_throughput resnet50 32`
/// (2 AVX2 cores): patch panels through `gemm` run the gradients with at least `9 * 256` rows
/// per output channel (ResNet-50's 14x14 and 7x7 stages) at 1.5-2x the micro-kernels, the
/// strided ones from `9 * 128` rows and the strided 1x1 (shortcut) ones at 1.2-2x; below that (ResNet-32, ResNet-50's first two
/// stages) the panel copy costs more than it saves. Among the micro-kernel splits: by input
/// channels when the pixels are fewer than about the weight rows per output channel
/// (`k * k * C_in`), where re-reading them per task costs less than zeroing, storing and adding
/// per-group partial gradients; by pixels otherwise.
pub fn weight_method(s: &ConvShape) -> WeightMethod {
    let rows = s.k * s.k * s.cin;
    if s.k == 1 || rows >= 9 * 256 || (s.stride > 1 && rows >= 9 * 128) {
        WeightMethod::Panels
    } else if s.n * s.oh() * s.ow() * 2 < 3 * rows {
        WeightMethod::Channels
    } else {
        WeightMethod::Pixels
    }
}

/// The operands of one weight gradient.
pub(super) struct WeightGrad<'a> {
    pub(super) x: &'a [f32],
    /// The output gradient padded to `cpad` columns.
    pub(super) dy: &'a [f32],
    pub(super) s: &'a ConvShape,
    pub(super) blocks: &'a [(usize, usize)],
    pub(super) cpad: usize,
}

impl WeightGrad<'_> {
    /// The runs of tap `t` over the output rows `g0..g1` (all images' rows, flattened).
    fn runs(&self, t: usize, g0: usize, g1: usize, runs: &mut Vec<Run>) {
        let (s, cin, cpad) = (self.s, self.s.cin, self.cpad);
        let (oh, ow) = (s.oh(), s.ow());
        let (kh, kw) = (t / s.k, t % s.k);
        runs.clear();
        // Valid output columns: 0 <= xo*stride - pad + kw < w.
        let lo = (s.pad.saturating_sub(kw)).div_ceil(s.stride);
        let hi = if s.w + s.pad > kw { ((s.w + s.pad - kw - 1) / s.stride + 1).min(ow) } else { 0 };
        if lo >= hi {
            return;
        }
        for g in g0..g1 {
            let (n, y) = (g / oh, g % oh);
            let iy = (y * s.stride + kh) as isize - s.pad as isize;
            if iy < 0 || iy >= s.h as isize {
                continue;
            }
            let ix = lo * s.stride + kw - s.pad;
            runs.push(Run {
                x: ((n * s.h + iy as usize) * s.w + ix) * cin,
                dy: ((n * oh + y) * ow + lo) * cpad,
                count: hi - lo,
            });
        }
    }

    /// Accumulates input channels `c..c + mr` of tap `t`, output-channel blocks `blocks`, over
    /// `runs` into `acc` (the gradient's rows `t * cin + c ..`).
    ///
    /// # Safety
    /// `acc` must point at `k * k * cin * cpad` floats, of which this call alone writes the
    /// rows of `t` and `c..c + mr` meanwhile.
    unsafe fn accumulate(
        &self,
        t: usize,
        c: usize,
        mr: usize,
        runs: &[Run],
        blocks: &[(usize, usize)],
        acc: *mut f32,
    ) {
        let (cin, cpad) = (self.s.cin, self.cpad);
        for &(c0, nb) in blocks {
            let args = OuterArgs {
                x: self.x[c..].as_ptr(),
                x_stride: self.s.stride * cin,
                dy: self.dy[c0..].as_ptr(),
                dy_stride: cpad,
                runs,
                // SAFETY: the block's rows lie inside the gradient (the caller's contract).
                acc: unsafe { acc.add((t * cin + c) * cpad + c0) },
                acc_stride: cpad,
            };
            // SAFETY: runs stay inside x and dy (valid rows/columns only); the accumulator
            // block lies inside `acc` (rows c..c+mr of tap t).
            unsafe { outer_block(&args, mr, nb) };
        }
    }

    /// Work spread by pixels: groups of output rows small enough for their x and dy to stay in
    /// L1 (24 KiB), yet at least 64 pixels (so that an accumulator block loaded from memory
    /// gathers that many products before it is stored again), each group with its own partial
    /// gradient.
    pub(super) fn by_pixels(&self) -> Vec<f32> {
        let (s, cin) = (self.s, self.s.cin);
        let (oh, ow) = (s.oh(), s.ow());
        let acc_len = s.k * s.k * cin * self.cpad;
        let row_bytes = ow * (cin.max(self.cpad)) * 4 * 2;
        let rows_per_task = (24 * 1024 / row_bytes.max(1)).max(64usize.div_ceil(ow.max(1))).max(1);
        let all_rows = s.n * oh;
        let tasks: Vec<(usize, usize)> =
            (0..all_rows).step_by(rows_per_task).map(|g0| (g0, (g0 + rows_per_task).min(all_rows))).collect();
        // A fixed number of contiguous groups (independent of the thread count), summed in order.
        let per_group = tasks.len().div_ceil(PIXEL_GROUPS).max(1);
        let strip = self.grad_strip();
        let partials: Vec<Vec<f32>> = tasks
            .par_chunks(per_group)
            .map(|group| {
                let mut acc = vec![0f32; acc_len];
                let mut runs: Vec<Run> = Vec::with_capacity(rows_per_task);
                let mut pairs: Vec<(usize, usize)> = Vec::with_capacity(rows_per_task);
                for &(g0, g1) in group {
                    if let Some(kernel) = strip {
                        self.strip_rows(kernel, g0, g1, &mut pairs, &mut acc);
                        continue;
                    }
                    for t in 0..s.k * s.k {
                        self.runs(t, g0, g1, &mut runs);
                        if runs.is_empty() {
                            continue;
                        }
                        for c in (0..cin).step_by(MR_MAX) {
                            // SAFETY: `acc` is this group's own gradient of the full size.
                            unsafe {
                                self.accumulate(
                                    t,
                                    c,
                                    (cin - c).min(MR_MAX),
                                    &runs,
                                    self.blocks,
                                    acc.as_mut_ptr(),
                                )
                            };
                        }
                    }
                }
                acc
            })
            .collect();
        sum_in_order(partials, acc_len)
    }

    /// The weight-gradient strip kernel, if the kernel set has one for this gradient: 3x3,
    /// stride 1, pad 1, every column block one the kernel runs.
    fn grad_strip(&self) -> Option<kernels::GradStripKernel> {
        let kernel = kernels::grad_strip_kernel()?;
        let s = self.s;
        let fits = s.k == 3 && s.stride == 1 && s.pad == 1 && !self.blocks.is_empty();
        let blocks = self.blocks.iter().all(|&(_, nb)| kernel.rows(nb).is_some());
        (fits && blocks).then_some(kernel)
    }

    /// Adds to `acc` (a group's own gradient) the products of the output rows `g0..g1` through
    /// `kernel`: per kernel row, the row pairs it reaches, each input-channel block by each
    /// column block, its three taps at once (see [`kernels::GradStripArgs`]).
    pub(super) fn strip_rows(
        &self,
        kernel: kernels::GradStripKernel,
        g0: usize,
        g1: usize,
        pairs: &mut Vec<(usize, usize)>,
        acc: &mut [f32],
    ) {
        let (s, cin, cpad) = (self.s, self.s.cin, self.cpad);
        let (h, w) = (s.h, s.w);
        for kh in 0..3 {
            pairs.clear();
            for g in g0..g1 {
                let (n, y) = (g / h, g % h);
                if let Some(iy) = (y + kh).checked_sub(1).filter(|&iy| iy < h) {
                    pairs.push(((n * h + iy) * w * cin, g * w * cpad));
                }
            }
            if let Some(p) =
                pairs.iter().find(|&&(xo, dyo)| xo + w * cin > self.x.len() || dyo + w * cpad > self.dy.len())
            {
                panic!("row pair {p:?} outside the operands");
            }
            for &(c0, nb) in self.blocks {
                let rows = kernel.rows(nb).unwrap_or(1);
                for c in (0..cin).step_by(rows) {
                    let first = ((kh * 3) * cin + c) * cpad + c0;
                    assert!(first + 2 * cin * cpad <= acc.len(), "gradient block outside the gradient");
                    let args = kernels::GradStripArgs {
                        x: self.x[c..].as_ptr(),
                        dy: self.dy[c0..].as_ptr(),
                        rows: pairs,
                        width: w,
                        x_stride: cin,
                        dy_stride: cpad,
                        acc: acc[first..].as_mut_ptr(),
                        acc_stride: cpad,
                        tap_stride: cin * cpad,
                    };
                    // SAFETY: every row pair lies inside x and dy (checked above; the block's
                    // channels `c..c + mr` and columns `c0..c0 + 8 * nb` lie inside a pixel);
                    // the three taps' rows `c..c + mr` lie inside `acc` (checked above); the
                    // kernel is the selected set's.
                    unsafe { kernels::grad_strip_block(&kernel, &args, rows.min(cin - c), nb) };
                }
            }
        }
    }

    /// Work spread by input channels: each task owns `MR_MAX` input channels of every tap and
    /// runs over all pixels, one output-channel block at a time across the taps (so that block's
    /// slice of `dy` is read from memory once per task, then from cache).
    pub(super) fn by_channels(&self) -> Vec<f32> {
        let (s, cin) = (self.s, self.s.cin);
        let mut acc = vec![0f32; s.k * s.k * cin * self.cpad];
        let accp = OutPtr(acc.as_mut_ptr());
        let all_rows = s.n * s.oh();
        let tap_runs: Vec<Vec<Run>> = (0..s.k * s.k)
            .map(|t| {
                let mut runs = Vec::with_capacity(all_rows);
                self.runs(t, 0, all_rows, &mut runs);
                runs
            })
            .collect();
        (0..cin.div_ceil(MR_MAX)).into_par_iter().for_each(|chunk| {
            // Capture the whole wrapper (not its raw-pointer field) so the closure stays Send.
            let base = accp;
            let c = chunk * MR_MAX;
            for block in self.blocks.chunks(1) {
                for (t, runs) in tap_runs.iter().enumerate().filter(|(_, r)| !r.is_empty()) {
                    // SAFETY: `acc` has the gradient's size; this task alone writes channels
                    // c..c+mr of every tap.
                    unsafe { self.accumulate(t, c, (cin - c).min(MR_MAX), runs, block, base.0) };
                }
            }
        });
        acc
    }
}
