//! Pointwise convolutions (1x1, stride 1, no padding): plain matrix products on NHWC data
//! through the `gemm` crate, in the forward pass and both gradients.

// Numerical kernels index several arrays with one loop variable.
#![allow(clippy::needless_range_loop)]

use super::*;

/// Whether `s` is a plain matrix product on NHWC data: 1x1, stride 1, no padding.
pub fn is_pointwise(s: &ConvShape) -> bool {
    s.k == 1 && s.stride == 1 && s.pad == 0
}

/// A matrix operand: values, row stride, column stride.
type Operand<'a> = (&'a [f32], usize, usize);

/// Elements an `rows x cols` operand with strides `(rs, cs)` reaches.
fn extent(rows: usize, cols: usize, rs: usize, cs: usize) -> usize {
    if rows == 0 || cols == 0 {
        0
    } else {
        (rows - 1) * rs + (cols - 1) * cs + 1
    }
}

/// `dst[m, n] (+)= lhs[m, k] * rhs[k, n]` through the `gemm` crate, on the rayon pool when
/// `parallel` (else on the calling thread); every operand is checked to hold its extent.
pub(super) fn matmul(
    (m, n, k): (usize, usize, usize),
    dst: (&mut [f32], usize, usize),
    accumulate: bool,
    lhs: Operand,
    rhs: Operand,
    parallel: bool,
) {
    assert!(extent(m, n, dst.1, dst.2) <= dst.0.len(), "matmul output extent");
    assert!(extent(m, k, lhs.1, lhs.2) <= lhs.0.len(), "matmul left operand extent");
    assert!(extent(k, n, rhs.1, rhs.2) <= rhs.0.len(), "matmul right operand extent");
    let threads = rayon::current_num_threads();
    let par =
        if threads > 1 && parallel { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None };
    let i = |v: usize| v as isize;
    // SAFETY: the extents were checked above; `dst` is a unique borrow, so it overlaps neither
    // operand; `gemm` reads `lhs`, `rhs` and (when accumulating) `dst`, and writes `dst`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.0.as_mut_ptr(),
            i(dst.2),
            i(dst.1),
            accumulate,
            lhs.0.as_ptr(),
            i(lhs.2),
            i(lhs.1),
            rhs.0.as_ptr(),
            i(rhs.2),
            i(rhs.1),
            1.0,
            1.0,
            false,
            false,
            false,
            par,
        )
    }
}

/// Pointwise passes as matrix products over `P` pixels (`x`, `dy` are `[P, C]`, `w` is
/// `[C_out, C_in]`): forward `out = x * w^T`, input gradient `dx (+)= dy * w`, weight gradient
/// `dw = dy^T * x`.
pub(super) fn pointwise_forward(x: &[f32], w: &[f32], s: &ConvShape, out: &mut [f32]) {
    pointwise_forward_by_rows(x, w, s, out, false);
}

/// Most input channels for which [`pointwise_forward_by_rows`] runs by tasks of rows. Below it
/// a pointwise convolution writes many outputs per multiply-add (`1 / C_in` of them), and
/// reading its output back for the batch norm's moments costs a large part of the product
/// (ResNet-50 batch 32, 56x56 64->256: 18 ms for the product, 8.5 more to summarise it after
/// the fact, 4 in the tasks); above, `gemm` on the whole pool is faster than tasks that each
/// repack the weights (a tenth for 1024->512 at 14x14), more than summarising saves.
const POINTWISE_ROWS_MAX_CIN: usize = 128;

/// [`pointwise_forward`]; with `summarise`, the output's moments by image row (see
/// [`forward_with_moments`]). With many pixels and few input channels (see
/// [`POINTWISE_ROWS_MAX_CIN`]), tasks of whole image rows (about [`POINTWISE_CHUNK`] pixels
/// each, as many per task whatever the thread count) each run a single-threaded product and
/// summarise their rows while they are in cache; otherwise one product on the whole pool (and
/// no moments: the caller summarises the output after it).
pub(super) fn pointwise_forward_by_rows(
    x: &[f32],
    w: &[f32],
    s: &ConvShape,
    out: &mut [f32],
    summarise: bool,
) -> Option<norm::Moments> {
    let (p, cin, cout) = (s.n * s.h * s.w, s.cin, s.cout);
    if p < 4 * POINTWISE_CHUNK || cin > POINTWISE_ROWS_MAX_CIN {
        matmul((p, cout, cin), (out, cout, 1), false, (x, cin, 1), (w, 1, cin), true);
        return None;
    }
    let rows = s.n * s.h;
    let per_task = rows.div_ceil(p.div_ceil(POINTWISE_CHUNK)) * s.w;
    let parts: Vec<Option<norm::Moments>> = out
        .par_chunks_mut(per_task * cout)
        .zip(x.par_chunks(per_task * cin))
        .map(|(o, xc)| {
            matmul((xc.len() / cin, cout, cin), (o, cout, 1), false, (xc, cin, 1), (w, 1, cin), false);
            summarise.then(|| {
                let mut m = norm::Moments::with_capacity(cout, o.len() / (s.w * cout));
                o.chunks(s.w * cout).for_each(|row| m.push(row));
                m
            })
        })
        .collect();
    summarise.then(|| norm::Moments::concat(cout, parts.into_iter().flatten()))
}

/// Fewest pixels for which a folded pointwise convolution (evaluation) runs as a matrix product
/// through `gemm` ([`pointwise_forward_fused`]) rather than on the gather kernels, whose packed
/// weights are kept between calls: `gemm` repacks the weights on every call, which costs more
/// than it saves below about this many rows per weight (ResNet-50 on AVX-512, `lt bench
/// backbone --mode eval`: batch 32 25.8 -> 28.8 img/s with every layer through `gemm` and 28.2
/// from 1,024 pixels against 27.7 from 1,600; batch 1, whose largest pointwise layer has 3,136
/// pixels, 17.0-17.6 with 1,024 and 3,200 against 15.2-15.7 with every layer through `gemm`).
pub(super) const POINTWISE_GEMM_PIXELS: usize = 1024;

/// Pixels per task of [`pointwise_forward_fused`]: enough for `gemm` to amortise packing the
/// weights, few enough that a task's output stays in the L2 cache for its epilogue.
const POINTWISE_CHUNK: usize = 512;

/// [`pointwise_forward`] with the scaled weights `w` (`[C_out, C_in]`) and the
/// epilogue of `fuse` (bias, residual, ReLU). With many pixels, tasks of [`POINTWISE_CHUNK`]
/// pixels each run a single-threaded product and then the epilogue on their own rows while
/// they are in cache; with few (batch 1), one product on the whole pool and the epilogue after
/// (a small output).
pub(super) fn pointwise_forward_fused(x: &[f32], w: &[f32], s: &ConvShape, fuse: &Fuse, out: &mut [f32]) {
    let (p, cin, cout) = (s.n * s.h * s.w, s.cin, s.cout);
    assert_eq!(w.len(), cin * cout, "pointwise weight length");
    assert!(fuse.scale.is_none(), "a scale is folded in when packing");
    if let Some(b) = fuse.bias {
        assert_eq!(b.len(), cout, "bias length");
    }
    if let Some(r) = fuse.residual {
        assert_eq!(r.len(), out.len(), "residual length");
    }
    let finish = |first_pixel: usize, rows: &mut [f32]| {
        if !fuse.has_epilogue() {
            return;
        }
        for (i, row) in rows.chunks_exact_mut(cout).enumerate() {
            let residual = fuse.residual.map(|r| &r[(first_pixel + i) * cout..][..cout]);
            finish_row(row, fuse.bias, residual, fuse.relu);
        }
    };
    // The choice depends on the shape alone (not the thread count), so the bits do too.
    if p < 4 * POINTWISE_CHUNK {
        matmul((p, cout, cin), (out, cout, 1), false, (x, cin, 1), (w, 1, cin), true);
        // Rows of whole pixels per task: the epilogue is element-wise, so any split gives the
        // same values.
        out.par_chunks_mut(64 * cout).enumerate().for_each(|(i, rows)| finish(i * 64, rows));
        return;
    }
    out.par_chunks_mut(POINTWISE_CHUNK * cout).zip(x.par_chunks(POINTWISE_CHUNK * cin)).enumerate().for_each(
        |(i, (o, xc))| {
            let rows = xc.len() / cin;
            matmul((rows, cout, cin), (o, cout, 1), false, (xc, cin, 1), (w, 1, cin), false);
            finish(i * POINTWISE_CHUNK, o);
        },
    );
}

/// See [`pointwise_forward`].
pub(super) fn pointwise_backward_input(
    dy: &[f32],
    w: &[f32],
    s: &ConvShape,
    dx: &mut [f32],
    accumulate: bool,
) {
    let (p, cin, cout) = (s.n * s.h * s.w, s.cin, s.cout);
    matmul((p, cin, cout), (dx, cin, 1), accumulate, (dy, cout, 1), (w, cin, 1), true)
}

/// Input gradient of a strided 1x1 convolution without padding (a ResNet's downsampling
/// shortcut): only the input pixels on the stride grid feed an output pixel, and each receives
/// `dy * w` of that pixel. All of them are one matrix product through `gemm` into a buffer of
/// output-pixel rows, which are then placed in `dx` image row by image row (pixels off the grid
/// zeroed, or left as they are when accumulating). Without padding every input position on the
/// grid has its output position (`oh = (h - 1) / stride + 1`).
pub(super) fn sampled_pointwise_backward_input(
    dy: &[f32],
    w: &[f32],
    s: &ConvShape,
    dx: &mut [f32],
    accumulate: bool,
) {
    let (oh, ow, st, cin, cout) = (s.oh(), s.ow(), s.stride, s.cin, s.cout);
    let pixels = s.n * oh * ow;
    let mut grad = vec![0f32; pixels * cin];
    matmul((pixels, cin, cout), (&mut grad, cin, 1), false, (dy, cout, 1), (w, cin, 1), true);
    dx.par_chunks_mut(s.w * cin).enumerate().for_each(|(r, row)| {
        let (n, iy) = (r / s.h, r % s.h);
        let oy = (iy % st == 0).then_some(iy / st);
        for (ix, px) in row.chunks_exact_mut(cin).enumerate() {
            let ox = (ix % st == 0).then_some(ix / st);
            match oy.zip(ox) {
                Some((oy, ox)) => {
                    let g = &grad[((n * oh + oy) * ow + ox) * cin..][..cin];
                    if accumulate {
                        px.iter_mut().zip(g).for_each(|(a, b)| *a += b);
                    } else {
                        px.copy_from_slice(g);
                    }
                }
                None if !accumulate => px.fill(0.0),
                None => {}
            }
        }
    });
}

/// See [`pointwise_forward`]. Where the pixels are many next to the gradient (at most
/// [`POINTWISE_GROUPED_WEIGHTS`] values: ResNet-50's 56x56 and 28x28 stages), `gemm`'s own
/// split of the small product spreads poorly over the threads, so the pixels are cut into
/// [`PIXEL_GROUPS`] fixed groups, each a single-threaded product into its own partial gradient,
/// summed in group order; the group count does not depend on the thread count, so neither do
/// the sums. Measured with 2 threads at batch 32 (GFLOP/s, one product against groups):
/// 56x56 256->64 96 -> 196-202, 28x28 512->128 111-134 -> 229-243, 128->512 131-138 -> 171-209,
/// 512->256 174-181 -> 242; the 14x14 ones (2^18 values and more) gain nothing (211-232
/// either way) and the 7x7 ones run at 270-280 as one product.
pub(super) fn pointwise_backward_weight(x: &[f32], dy: &[f32], s: &ConvShape, dw: &mut [f32]) {
    let (p, cin, cout) = (s.n * s.h * s.w, s.cin, s.cout);
    if !by_pixel_groups_pays(s) {
        return matmul((cout, cin, p), (dw, cin, 1), false, (dy, 1, cout), (x, cin, 1), true);
    }
    let sum = by_pixel_groups(p, cout * cin, |pixels| {
        let mut acc = vec![0f32; cout * cin];
        let (dy, x) = (&dy[pixels.start * cout..], &x[pixels.start * cin..]);
        matmul((cout, cin, pixels.len()), (&mut acc, cin, 1), false, (dy, 1, cout), (x, cin, 1), false);
        acc
    });
    dw.copy_from_slice(&sum);
}

/// Whether [`pointwise_backward_both`] computes both gradients of `s` (else
/// [`backward_weight`], then [`backward_input`]): a pointwise expansion (more output channels
/// than input ones) whose weight gradient goes by pixel groups (2,048 pixels or more and at most
/// 2^17 weights: `by_pixel_groups_pays`), whose output gradient, the widest operand, both
/// passes would otherwise read from memory.
pub fn fuses_gradients(s: &ConvShape) -> bool {
    is_pointwise(s) && by_pixel_groups_pays(s) && s.cout > s.cin
}

/// Both gradients of a pointwise convolution ([`fuses_gradients`]) in one pass over the output
/// gradient: in each of 8 fixed groups of pixels (`PIXEL_GROUPS`), chunk by chunk of 512
/// pixels (`POINTWISE_CHUNK`), the chunk's input gradient (`dy * w`, into `dx` or added to it
/// when `accumulate`) and then its product into the group's partial weight gradient, while the
/// chunk of `dy` is in cache; the partial gradients summed in group order. Groups and chunks
/// depend on the shape alone, so the bits do too. ResNet-50 batch 32 (`conv_throughput`, AVX-512):
/// 56x56 64->256 39.4 ms for the two passes, 30.0 in one; 28x28 128->512 30.9 and 26.1; the
/// layers that reduce channels gained nothing.
pub fn pointwise_backward_both(
    x: &[f32],
    dy: &[f32],
    w: &[f32],
    s: &ConvShape,
    dw: &mut [f32],
    dx: &mut [f32],
    accumulate: bool,
) {
    assert!(fuses_gradients(s), "both gradients in one pass for {s:?}");
    assert_eq!(x.len(), s.input_len(), "conv input length");
    assert_eq!(dy.len(), s.output_len(), "conv output-gradient length");
    assert_eq!(w.len(), s.weight_len(), "conv weight length");
    assert_eq!(dw.len(), s.weight_len(), "conv weight-gradient length");
    assert_eq!(dx.len(), s.input_len(), "conv input-gradient length");
    let (p, cin, cout) = (s.n * s.h * s.w, s.cin, s.cout);
    let per = p.div_ceil(PIXEL_GROUPS);
    let partials: Vec<Vec<f32>> = dx
        .par_chunks_mut(per * cin)
        .zip(dy.par_chunks(per * cout))
        .zip(x.par_chunks(per * cin))
        .map(|((dx, dy), x)| {
            let mut acc = vec![0f32; cout * cin];
            let chunks = dx.chunks_mut(POINTWISE_CHUNK * cin).zip(dy.chunks(POINTWISE_CHUNK * cout));
            for ((dxc, dyc), xc) in chunks.zip(x.chunks(POINTWISE_CHUNK * cin)) {
                let n = xc.len() / cin;
                matmul((n, cin, cout), (dxc, cin, 1), accumulate, (dyc, cout, 1), (w, cin, 1), false);
                matmul((cout, cin, n), (&mut acc, cin, 1), true, (dyc, 1, cout), (xc, cin, 1), false);
            }
            acc
        })
        .collect();
    dw.copy_from_slice(&sum_in_order(partials, cout * cin));
}

/// Fixed groups of pixels whose partial weight gradients are summed in order.
pub(super) const PIXEL_GROUPS: usize = 8;

/// `partial(range)` over [`PIXEL_GROUPS`] fixed contiguous ranges of `0..pixels`, in parallel,
/// summed in group order ([`sum_in_order`]): the groups do not depend on the thread count, so
/// neither do the bits.
pub(super) fn by_pixel_groups(
    pixels: usize,
    len: usize,
    partial: impl Fn(std::ops::Range<usize>) -> Vec<f32> + Sync,
) -> Vec<f32> {
    let per = pixels.div_ceil(PIXEL_GROUPS);
    let partials = (0..PIXEL_GROUPS)
        .into_par_iter()
        .map(|g| partial((g * per).min(pixels)..((g + 1) * per).min(pixels)))
        .collect();
    sum_in_order(partials, len)
}

/// The element-wise sum of `partials` (each `len` values), the first plus the others in order
/// (`len` zeros when there are none).
pub(super) fn sum_in_order(partials: Vec<Vec<f32>>, len: usize) -> Vec<f32> {
    let mut parts = partials.into_iter();
    let mut sum = parts.next().unwrap_or_else(|| vec![0f32; len]);
    for part in parts {
        assert_eq!(part.len(), len, "partial sum length");
        sum.iter_mut().zip(&part).for_each(|(a, b)| *a += b);
    }
    sum
}

/// The largest pointwise weight gradient computed by pixel groups (see
/// [`pointwise_backward_weight`]).
const POINTWISE_GROUPED_WEIGHTS: usize = 1 << 17;

/// Whether a pointwise convolution's weight gradient is computed by [`PIXEL_GROUPS`] pixel
/// groups (by [`pointwise_backward_weight`], or with the input gradient by
/// [`pointwise_backward_both`]): 2,048 pixels or more, at most [`POINTWISE_GROUPED_WEIGHTS`]
/// weights.
fn by_pixel_groups_pays(s: &ConvShape) -> bool {
    s.n * s.h * s.w >= 2048 && s.cin * s.cout <= POINTWISE_GROUPED_WEIGHTS
}
