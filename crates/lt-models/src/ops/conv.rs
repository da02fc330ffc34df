//! 2-D convolution on NHWC activations: forward, input gradient and weight gradient.
//!
//! Weights use PyTorch's `[C_out, C_in, k, k]` layout; activations are `[N, H, W, C]`. The
//! passes run on the `ops::kernels` micro-kernels without an im2col buffer and are spread over
//! the rayon pool: the forward pass and the input gradient by blocks of pixels, the weight
//! gradient by groups of rows or by input channels, or, where the gradient is large, as
//! products of bounded patch panels (see [`weight_method`]). A pointwise convolution (1x1,
//! stride 1, no padding: most of a bottleneck ResNet's work) is a plain matrix product on NHWC
//! data, and its training passes run through the `gemm` crate instead (its own cache blocking,
//! and AVX2 or AVX-512 micro-kernels chosen at run time); its depth loop is sequential, so its
//! sums too have a fixed order.

// Numerical kernels index several arrays with one loop variable.
#![allow(clippy::needless_range_loop)]

use rayon::prelude::*;

use super::kernels::{
    self, gather_block, outer_block, Epilogue, GatherArgs, OuterArgs, Run, Tap, MR_MAX, NR_MAX,
};
use super::{norm, strided, strip, window_out, winograd};

/// Geometry of a square-kernel convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConvShape {
    /// Batch size.
    pub n: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Input channels.
    pub cin: usize,
    /// Output channels.
    pub cout: usize,
    /// Kernel side.
    pub k: usize,
    /// Stride.
    pub stride: usize,
    /// Zero padding on every side.
    pub pad: usize,
}

impl ConvShape {
    /// Whether the kernel fits the padded input (and the stride is not zero).
    pub fn fits(&self) -> bool {
        window_out(self.h, self.k, self.stride, self.pad).is_some()
            && window_out(self.w, self.k, self.stride, self.pad).is_some()
    }
    /// Output height (see [`window_out`]; 0 when the kernel does not fit).
    pub fn oh(&self) -> usize {
        window_out(self.h, self.k, self.stride, self.pad).unwrap_or(0)
    }
    /// Output width (see [`window_out`]; 0 when the kernel does not fit).
    pub fn ow(&self) -> usize {
        window_out(self.w, self.k, self.stride, self.pad).unwrap_or(0)
    }
    /// Elements of the input.
    pub fn input_len(&self) -> usize {
        self.n * self.h * self.w * self.cin
    }
    /// Elements of the output.
    pub fn output_len(&self) -> usize {
        self.n * self.oh() * self.ow() * self.cout
    }
    /// Elements of the weight.
    pub fn weight_len(&self) -> usize {
        self.cout * self.cin * self.k * self.k
    }
    /// Multiply-accumulates of the forward pass.
    pub fn macs(&self) -> usize {
        self.output_len() * self.cin * self.k * self.k
    }
}

/// Column blocks of `cols` columns: `(first column, 8-column units)`, as wide as the kernel set
/// runs; the last may be narrower than its units (padded columns are computed into a scratch row
/// and dropped).
fn col_blocks(cols: usize) -> Vec<(usize, usize)> {
    let nb_max = kernels::nb_max();
    let mut v = Vec::new();
    let mut c = 0;
    while c < cols {
        let left = cols - c;
        let nb = if left >= 32 && nb_max >= 4 {
            4
        } else if left > 8 {
            2
        } else {
            1
        };
        v.push((c, nb));
        c += 8 * nb;
    }
    v
}

/// The loop order in which [`pack`] reads its source: the one that walks the weight tensor
/// `[C_out, C_in, k, k]` in memory order for the pass (the writes go to a small block in cache).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum ReadOrder {
    /// Tap, then depth, then column: the packed order (sequential writes; the forward pass).
    TapDepthColumn,
    /// Depth, then column, then tap (depth = output channels: the input gradient).
    DepthColumnTap,
}

/// Weights packed by [`pack`]: the rows, and each column block's first column, 8-column units and
/// offset in them.
pub(super) type Packed = (crate::pool::Floats, Vec<(usize, usize, usize)>);

/// Packs the rows `value(tap, depth, column)` into `[col block][tap][depth][nr]` with zero
/// padding of columns; the blocks are filled in parallel, each reading in `order`.
pub(super) fn pack(
    taps: usize,
    depth: usize,
    cols: usize,
    order: ReadOrder,
    value: impl Fn(usize, usize, usize) -> f32 + Sync,
) -> Packed {
    pack_blocks(&col_blocks(cols), taps, depth, cols, order, value)
}

/// [`pack`] into the column blocks `blocks` (`(first column, 8-column units)`, in order).
pub(super) fn pack_blocks(
    blocks: &[(usize, usize)],
    taps: usize,
    depth: usize,
    cols: usize,
    order: ReadOrder,
    value: impl Fn(usize, usize, usize) -> f32 + Sync,
) -> Packed {
    let mut index = Vec::new();
    let mut len = 0;
    for &(c0, nb) in blocks {
        index.push((c0, nb, len));
        len += taps * depth * 8 * nb;
    }
    let mut packed = crate::pool::Floats::zeroed(len);
    let mut parts = Vec::with_capacity(index.len());
    let mut rest = &mut packed[..];
    for &(c0, nb, _) in &index {
        let (part, tail) = rest.split_at_mut(taps * depth * 8 * nb);
        parts.push((c0, nb, part));
        rest = tail;
    }
    parts.into_par_iter().for_each(|(c0, nb, part)| {
        let nr = 8 * nb;
        let width = nr.min(cols - c0);
        let mut put = |t: usize, d: usize, l: usize| part[(t * depth + d) * nr + l] = value(t, d, c0 + l);
        match order {
            ReadOrder::TapDepthColumn => {
                for t in 0..taps {
                    for d in 0..depth {
                        (0..width).for_each(|l| put(t, d, l));
                    }
                }
            }
            ReadOrder::DepthColumnTap => {
                for d in 0..depth {
                    for l in 0..width {
                        (0..taps).for_each(|t| put(t, d, l));
                    }
                }
            }
        }
    });
    (packed, index)
}

/// A raw output pointer shared by the workers of a gather or strip pass, which write disjoint
/// blocks of the output.
#[derive(Clone, Copy)]
pub(super) struct OutPtr(pub(super) *mut f32);
// SAFETY: workers write disjoint blocks (each output value belongs to one block), and the
// pointer outlives the parallel pass that uses it (the pass borrows `out` mutably).
unsafe impl Send for OutPtr {}
// SAFETY: as for `Send`: concurrent users write disjoint blocks only.
unsafe impl Sync for OutPtr {}

/// What the forward pass applies to its sums on the way out: eval mode's folded batch norm
/// (`bias`, per output channel), the residual add (`residual`, shaped like the output) and ReLU.
#[derive(Clone, Copy, Debug, Default)]
pub struct Fuse<'a> {
    /// Multiplies the weights of each output channel (`C_out` values; folded into the packed
    /// weights, so it costs nothing per pixel).
    pub scale: Option<&'a [f32]>,
    /// Added to every output pixel, per channel (`C_out` values).
    pub bias: Option<&'a [f32]>,
    /// Added element by element (the output's shape).
    pub residual: Option<&'a [f32]>,
    /// `max(v, 0)` last.
    pub relu: bool,
}

impl Fuse<'_> {
    /// Whether anything happens to the sums as they are stored (bias, residual or ReLU; the
    /// scale is in the packed weights).
    fn has_epilogue(&self) -> bool {
        self.bias.is_some() || self.residual.is_some() || self.relu
    }
}

/// Packed weights above this many bytes are "heavy": more than a core's L2 cache holds, so a
/// pass that streamed all of them once per row block would be bound by memory (ResNet-50's last
/// stages, above all at batch 1, where few row blocks share much weight).
const HEAVY_WEIGHT_BYTES: usize = 1 << 20;

/// Whether the packed weights with column blocks `index` are heavy ([`HEAVY_WEIGHT_BYTES`]) and
/// split into more than one column block: then the gather and strip passes run a column block
/// at a time over many rows, so that its weights come from memory once per task.
pub(super) fn heavy_weights(packed: &[f32], index: &[(usize, usize, usize)]) -> bool {
    std::mem::size_of_val(packed) > HEAVY_WEIGHT_BYTES && index.len() > 1
}

/// Tasks a parallel pass aims for: about four per thread, so that tasks of uneven cost still
/// balance over the threads.
pub(super) fn tasks_wanted() -> usize {
    4 * rayon::current_num_threads()
}

/// Into how many groups a pass that has `row_tasks` tasks of rows splits its `blocks` column
/// blocks: one where the rows make [`tasks_wanted`] tasks, else as many as make them up, at most
/// one block a group.
pub(super) fn column_groups(row_tasks: usize, blocks: usize) -> usize {
    let want = tasks_wanted();
    if row_tasks >= want {
        1
    } else {
        blocks.min(want.div_ceil(row_tasks.max(1))).max(1)
    }
}

/// Group `g` of `groups` groups of consecutive column blocks of `index` (the last ones shorter
/// or empty).
pub(super) fn column_group(
    index: &[(usize, usize, usize)],
    groups: usize,
    g: usize,
) -> &[(usize, usize, usize)] {
    let per = index.len().div_ceil(groups).max(1);
    &index[(g * per).min(index.len())..((g + 1) * per).min(index.len())]
}

/// One row block's plan in a [`gather_pass`]: its rows, tap depth, output offsets and the range
/// of its taps.
#[derive(Clone, Copy)]
struct BlockPlan {
    mr: usize,
    depth: usize,
    offs: [usize; MR_MAX],
    taps: (usize, usize),
}

/// Runs gather-GEMM over `rows` logical output rows of `cols` columns:
/// `plan(first_row, mr, taps, offsets)` appends the taps of a block of `mr` consecutive logical
/// rows and fills where each row is stored (row `j` at `out[offsets[j]..][..cols]`), and returns
/// the taps' depth. The sums go through `fuse` on the way out (see [`Fuse`]).
///
/// Work is split into tasks of up to 16 row blocks and a group of column blocks. With light
/// weights a task runs its row blocks one after the other, each over its column blocks; with
/// heavy ones ([`HEAVY_WEIGHT_BYTES`]) tasks take as many row blocks as they may (column groups
/// make up the parallelism) and run column block by column block, so that each column block's
/// weights are read from memory once per task and then from cache. Every output block is
/// computed by one kernel call either way, so the order does not change any result.
#[allow(clippy::too_many_arguments)]
fn gather_pass(
    out: &mut [f32],
    accumulate: bool,
    fuse: &Fuse,
    rows: usize,
    cols: usize,
    packed: &[f32],
    index: &[(usize, usize, usize)],
    plan: impl Fn(usize, usize, &mut Vec<Tap>, &mut [usize; MR_MAX]) -> usize + Sync,
) {
    let blocks = rows.div_ceil(MR_MAX);
    let want = tasks_wanted();
    let heavy = heavy_weights(packed, index);
    // Up to 16 row blocks per task; where that leaves fewer than 4 tasks per thread (a small
    // batch, a late stage), fewer blocks per task (light weights) and the column blocks split
    // between tasks too.
    let per_task = if heavy { blocks.clamp(1, 16) } else { (blocks / want).clamp(1, 16) };
    let row_tasks = blocks.div_ceil(per_task);
    let col_groups = column_groups(row_tasks, index.len());
    let outp = OutPtr(out.as_mut_ptr());
    let len = out.len();
    if let Some(r) = fuse.residual {
        assert_eq!(r.len(), len, "residual length");
    }
    // The bias padded to whole column blocks.
    let bias: Option<Vec<f32>> = fuse.bias.map(|b| {
        assert_eq!(b.len(), cols, "bias length");
        let padded = index.last().map_or(0, |&(c0, nb, _)| c0 + 8 * nb);
        (0..padded).map(|c| b.get(c).copied().unwrap_or(0.0)).collect()
    });
    // One output block: the block `p` (taps `taps`) times the column block `(c0, nb, off)`.
    // `scratch` holds the rows of a partial column block.
    let run_block = |p: &BlockPlan,
                     taps: &[Tap],
                     (c0, nb, off): (usize, usize, usize),
                     scratch: &mut [[f32; NR_MAX]; MR_MAX]| {
        // Capture the whole wrapper (not its raw-pointer field) so the closure stays Send.
        let base = outp;
        let (mr, offs) = (p.mr, &p.offs);
        let nr = 8 * nb;
        let full = c0 + nr <= cols;
        if !full && accumulate {
            let n = cols - c0;
            for j in 0..mr {
                assert!(offs[j] + c0 + n <= len, "gather row outside the output");
                // SAFETY: the first `n` columns of the row are inside `out` (checked above).
                let src = unsafe { std::slice::from_raw_parts(base.0.add(offs[j] + c0), n) };
                scratch[j][..n].copy_from_slice(src);
            }
        }
        let outs: [*mut f32; MR_MAX] = std::array::from_fn(|j| {
            if j < mr && full {
                assert!(offs[j] + c0 + nr <= len, "gather row outside the output");
                // SAFETY: the row lies inside `out` (checked above).
                unsafe { base.0.add(offs[j] + c0) }
            } else {
                scratch[j].as_mut_ptr()
            }
        });
        // A partial block stores its plain sums in the scratch rows; its epilogue runs below.
        let epilogue = match (full, fuse.has_epilogue()) {
            (true, true) => Epilogue {
                bias: bias.as_ref().map_or(std::ptr::null(), |b| b[c0..].as_ptr()),
                residual: fuse.residual.map(|r| {
                    std::array::from_fn(|j| if j < mr { r[offs[j] + c0..].as_ptr() } else { r.as_ptr() })
                }),
                relu: fuse.relu,
            },
            _ => Epilogue::NONE,
        };
        let args = GatherArgs {
            taps,
            depth: p.depth,
            packed: packed[off..].as_ptr(),
            out: outs,
            accumulate,
            epilogue,
        };
        // SAFETY: taps point at `depth` valid floats (rows of the source or a zero row long
        // enough for any depth), weights rows are inside the packed block, outputs are
        // `nr`-float rows of `out` or of the scratch block.
        unsafe { gather_block(&args, mr, nb) };
        if !full {
            let n = cols - c0;
            for j in 0..mr {
                assert!(offs[j] + c0 + n <= len, "gather row outside the output");
                // SAFETY: the first `n` columns of the row are inside `out` (checked above).
                let dst = unsafe { std::slice::from_raw_parts_mut(base.0.add(offs[j] + c0), n) };
                dst.copy_from_slice(&scratch[j][..n]);
                if fuse.has_epilogue() {
                    let residual = fuse.residual.map(|r| &r[offs[j] + c0..][..n]);
                    finish_row(dst, bias.as_ref().map(|b| &b[c0..c0 + n]), residual, fuse.relu);
                }
            }
        }
    };
    (0..row_tasks * col_groups).into_par_iter().for_each(|t| {
        let (task, group) = (t / col_groups, t % col_groups);
        let columns = column_group(index, col_groups, group);
        let mut taps: Vec<Tap> = Vec::with_capacity(if heavy { 64 * per_task } else { 64 });
        let mut scratch = [[0f32; NR_MAX]; MR_MAX];
        let plan_block = |blk: usize, taps: &mut Vec<Tap>| {
            let r0 = blk * MR_MAX;
            let mr = (rows - r0).min(MR_MAX);
            let start = taps.len();
            let mut offs = [0usize; MR_MAX];
            let depth = plan(r0, mr, taps, &mut offs);
            BlockPlan { mr, depth, offs, taps: (start, taps.len()) }
        };
        let task_blocks = task * per_task..((task + 1) * per_task).min(blocks);
        if heavy {
            let plans: Vec<BlockPlan> = task_blocks.map(|blk| plan_block(blk, &mut taps)).collect();
            for &column in columns {
                for p in &plans {
                    run_block(p, &taps[p.taps.0..p.taps.1], column, &mut scratch);
                }
            }
        } else {
            for blk in task_blocks {
                taps.clear();
                let p = plan_block(blk, &mut taps);
                for &column in columns {
                    run_block(&p, &taps, column, &mut scratch);
                }
            }
        }
    });
}

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
fn matmul(
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
fn pointwise_forward(x: &[f32], w: &[f32], s: &ConvShape, out: &mut [f32]) {
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
fn pointwise_forward_by_rows(
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
const POINTWISE_GEMM_PIXELS: usize = 1024;

/// Pixels per task of [`pointwise_forward_fused`]: enough for `gemm` to amortise packing the
/// weights, few enough that a task's output stays in the L2 cache for its epilogue.
const POINTWISE_CHUNK: usize = 512;

/// [`pointwise_forward`] with the scaled weights `w` (`[C_out, C_in]`) and the
/// epilogue of `fuse` (bias, residual, ReLU). With many pixels, tasks of [`POINTWISE_CHUNK`]
/// pixels each run a single-threaded product and then the epilogue on their own rows while
/// they are in cache; with few (batch 1), one product on the whole pool and the epilogue after
/// (a small output).
fn pointwise_forward_fused(x: &[f32], w: &[f32], s: &ConvShape, fuse: &Fuse, out: &mut [f32]) {
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
fn pointwise_backward_input(dy: &[f32], w: &[f32], s: &ConvShape, dx: &mut [f32], accumulate: bool) {
    let (p, cin, cout) = (s.n * s.h * s.w, s.cin, s.cout);
    matmul((p, cin, cout), (dx, cin, 1), accumulate, (dy, cout, 1), (w, cin, 1), true)
}

/// Input gradient of a strided 1x1 convolution without padding (a ResNet's downsampling
/// shortcut): only the input pixels on the stride grid feed an output pixel, and each receives
/// `dy * w` of that pixel. All of them are one matrix product through `gemm` into a buffer of
/// output-pixel rows, which are then placed in `dx` image row by image row (pixels off the grid
/// zeroed, or left as they are when accumulating). Without padding every input position on the
/// grid has its output position (`oh = (h - 1) / stride + 1`).
fn sampled_pointwise_backward_input(dy: &[f32], w: &[f32], s: &ConvShape, dx: &mut [f32], accumulate: bool) {
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
fn pointwise_backward_weight(x: &[f32], dy: &[f32], s: &ConvShape, dw: &mut [f32]) {
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
const PIXEL_GROUPS: usize = 8;

/// `partial(range)` over [`PIXEL_GROUPS`] fixed contiguous ranges of `0..pixels`, in parallel,
/// summed in group order ([`sum_in_order`]): the groups do not depend on the thread count, so
/// neither do the bits.
fn by_pixel_groups(
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
fn sum_in_order(partials: Vec<Vec<f32>>, len: usize) -> Vec<f32> {
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

/// The epilogue of a partial column block, in portable code: bias, residual, ReLU.
fn finish_row(row: &mut [f32], bias: Option<&[f32]>, residual: Option<&[f32]>, relu: bool) {
    for (i, v) in row.iter_mut().enumerate() {
        let mut t = *v + bias.map_or(0.0, |b| b[i]) + residual.map_or(0.0, |r| r[i]);
        if relu {
            t = t.max(0.0);
        }
        *v = t;
    }
}

/// Forward convolution: `out[N, OH, OW, C_out] = conv(x[N, H, W, C_in], w[C_out, C_in, k, k])`.
pub fn forward(x: &[f32], w: &[f32], s: &ConvShape, out: &mut [f32]) {
    forward_fused(x, w, s, &Fuse::default(), out)
}

/// [`forward`] with the weights scaled per output channel and a bias, a residual and ReLU
/// applied as each output block is stored (see [`Fuse`]):
/// `out = max(conv(x, w * scale) + bias + residual, 0)`.
pub fn forward_fused(x: &[f32], w: &[f32], s: &ConvShape, fuse: &Fuse, out: &mut [f32]) {
    assert_eq!(x.len(), s.input_len(), "conv input length");
    assert_eq!(w.len(), s.weight_len(), "conv weight length");
    assert_eq!(out.len(), s.output_len(), "conv output length");
    // A pointwise convolution with nothing folded in is a plain product; a folded one goes
    // through `PackedWeights` like the rest (`gemm` by chunks of pixels with the epilogue while
    // they are in cache, or the gather kernels for few pixels). A 3x3 stride-1 one runs by
    // Winograd where that pays (see `PackedWeights::fastest`).
    if is_pointwise(s) && fuse.scale.is_none() && !fuse.has_epilogue() {
        return pointwise_forward(x, w, s, out);
    }
    let packed = PackedWeights::fastest(w, s, fuse.scale);
    forward_packed(x, &packed, s, &Fuse { scale: None, ..*fuse }, out)
}

/// A convolution's weights packed for the forward pass of the gather kernels, with an optional
/// per-output-channel scale folded in (see [`forward_fused`]). Packing reads every weight once
/// in a transposed order; a caller that runs the same weights many times (evaluation) can pack
/// them once and call [`forward_packed`].
pub struct PackedWeights {
    /// The gather kernels' packed weights and their column blocks (built on first use for a
    /// pointwise convolution).
    gather: std::sync::OnceLock<Packed>,
    /// `(k, C_in, C_out)` of the convolution the weights belong to.
    dims: (usize, usize, usize),
    /// A pointwise convolution's scaled weights `[C_out, C_in]` (the right operand `w^T` of a
    /// matrix product).
    pointwise: Option<Vec<f32>>,
    /// Weights packed for Winograd F(2x2, 3x3) ([`PackedWeights::fastest`]); the forward
    /// pass then runs by it (`ops/winograd.rs`).
    winograd: Option<Packed>,
}

impl PackedWeights {
    /// Packs `w` (`[C_out, C_in, k, k]`), each output channel's weights times `scale[co]`.
    pub fn new(w: &[f32], s: &ConvShape, scale: Option<&[f32]>) -> Self {
        let (k, cin, cout) = (s.k, s.cin, s.cout);
        assert_eq!(w.len(), s.weight_len(), "conv weight length");
        if let Some(sc) = scale {
            assert_eq!(sc.len(), cout, "scale length");
        }
        let scale = |co: usize| scale.map_or(1.0, |sc| sc[co]);
        if is_pointwise(s) {
            let plain =
                w.chunks_exact(cin).enumerate().flat_map(|(co, row)| row.iter().map(move |&v| v * scale(co)));
            return Self {
                gather: std::sync::OnceLock::new(),
                dims: (k, cin, cout),
                pointwise: Some(plain.collect()),
                winograd: None,
            };
        }
        // Packed rows: tap t = kh*k + kw, then input channel: the k taps of one kernel row are
        // consecutive, matching k consecutive input pixels of one row (the merged tap).
        let (data, index) = pack(k * k, cin, cout, ReadOrder::TapDepthColumn, |t, ci, co| {
            w[(co * cin + ci) * k * k + t] * scale(co)
        });
        Self { gather: (data, index).into(), dims: (k, cin, cout), pointwise: None, winograd: None }
    }

    /// [`PackedWeights::new`] for the fastest forward pass measured for the shape (evaluation,
    /// and training's forward pass): a 3x3 stride-1 pad-1 convolution is packed for Winograd
    /// F(2x2, 3x3) where that was measured faster with the selected kernel set
    /// (`ops/winograd.rs`); its forward pass then takes 16 multiplies per tile of 2x2 output
    /// pixels where the direct one takes 36, with the same sums up to rounding.
    pub fn fastest(w: &[f32], s: &ConvShape, scale: Option<&[f32]>) -> Self {
        if !winograd::pays(s) {
            return Self::new(w, s, scale);
        }
        Self {
            gather: std::sync::OnceLock::new(),
            dims: (s.k, s.cin, s.cout),
            pointwise: None,
            winograd: Some(winograd::pack_weights(w, s, scale)),
        }
    }

    /// The gather kernels' packed weights and column blocks.
    fn gather(&self) -> (&[f32], &[(usize, usize, usize)]) {
        let (data, index) = self.gather.get_or_init(|| {
            let (cin, cout) = (self.dims.1, self.dims.2);
            let w = self.pointwise.as_deref().unwrap_or_default();
            pack(1, cin, cout, ReadOrder::TapDepthColumn, |_, ci, co| w[co * cin + ci])
        });
        (data, index)
    }

    /// Whether these are weights of a convolution with `s`'s kernel and channels (and were
    /// packed for a pointwise convolution exactly when `s` is one).
    pub fn fits(&self, s: &ConvShape) -> bool {
        self.dims == (s.k, s.cin, s.cout) && self.pointwise.is_some() == is_pointwise(s)
    }
}

/// [`forward`] that also returns the per-chunk moments of its output (what training-mode batch
/// norm needs, see [`norm::Moments`]): the strip pass takes each output image row's moments
/// as soon as it has stored the row, while it is in cache; the other paths summarise the output
/// once it is written, in the same chunks (one output image row each, see
/// [`norm::chunk_pixels`]).
pub fn forward_with_moments(x: &[f32], w: &[f32], s: &ConvShape, out: &mut [f32]) -> norm::Moments {
    let moments = if is_pointwise(s) {
        assert_eq!(x.len(), s.input_len(), "conv input length");
        assert_eq!(w.len(), s.weight_len(), "conv weight length");
        assert_eq!(out.len(), s.output_len(), "conv output length");
        pointwise_forward_by_rows(x, w, s, out, true)
    } else {
        forward_packed_into(x, &PackedWeights::fastest(w, s, None), s, &Fuse::default(), out, true)
    };
    moments.unwrap_or_else(|| norm::Moments::of(out, s.cout, s.ow()))
}

/// [`forward_fused`] with weights packed beforehand; `fuse.scale` must be `None` (a scale is
/// folded in when packing).
pub fn forward_packed(x: &[f32], packed: &PackedWeights, s: &ConvShape, fuse: &Fuse, out: &mut [f32]) {
    forward_packed_into(x, packed, s, fuse, out, false);
}

/// [`forward_packed`]; with `summarise`, the output's moments where the path takes them as it
/// goes (see [`forward_with_moments`]).
fn forward_packed_into(
    x: &[f32],
    packed: &PackedWeights,
    s: &ConvShape,
    fuse: &Fuse,
    out: &mut [f32],
    summarise: bool,
) -> Option<norm::Moments> {
    assert_eq!(x.len(), s.input_len(), "conv input length");
    assert_eq!(out.len(), s.output_len(), "conv output length");
    assert!(packed.fits(s), "packed weights {:?} for a convolution {s:?}", packed.dims);
    assert!(fuse.scale.is_none(), "a scale is folded in when packing");
    if out.is_empty() {
        // No output pixel (an empty batch): nothing to compute, no moments.
        return summarise.then(|| norm::Moments::new(s.cout));
    }
    if let Some(w) = &packed.winograd {
        winograd::forward(x, w, s, fuse, out);
        return None;
    }
    if let Some(plain) = &packed.pointwise {
        if s.n * s.h * s.w >= POINTWISE_GEMM_PIXELS {
            pointwise_forward_fused(x, plain, s, fuse, out);
            return None;
        }
    }
    let (k, cin, cout) = (s.k, s.cin, s.cout);
    let (packed, index) = packed.gather();
    if let Some(kernel) = strip::kernel_for(s, cin, index) {
        let dims = (s.n, s.h, s.w, cin);
        let rows = strip::Rows::Forward;
        return strip::strip_pass(kernel, x, dims, rows, (packed, index), out, false, fuse, summarise);
    }
    let zeros = vec![0f32; k * cin.max(cout)];
    let (oh, ow) = (s.oh(), s.ow());
    let (h, wd, st, pad) = (s.h as isize, s.w as isize, s.stride as isize, s.pad as isize);
    let plan = |r0: usize, mr: usize, taps: &mut Vec<Tap>, offs: &mut [usize; MR_MAX]| {
        for (j, o) in offs.iter_mut().take(mr).enumerate() {
            *o = (r0 + j) * cout;
        }
        let (mut n, rem) = (r0 / (oh * ow), r0 % (oh * ow));
        let (mut y, mut xo) = (rem / ow, rem % ow);
        // The common block: its rows lie in one output row and every window is inside the image.
        // Each kernel row is then one merged tap whose sources step by `stride * cin` from row to
        // row: the taps the general plan below gives such a block, without its per-pointer checks.
        let (iy, ix) = (y as isize * st - pad, xo as isize * st - pad);
        let last_col = ix + ((mr - 1) * s.stride + k) as isize;
        if xo + mr <= ow && iy >= 0 && ix >= 0 && iy + k as isize <= h && last_col <= wd {
            let first = ((n * s.h + iy as usize) * s.w + ix as usize) * cin;
            let span = ((k - 1) * s.w + (mr - 1) * s.stride + k) * cin;
            let window = x[first..first + span].as_ptr();
            for kh in 0..k {
                let src: [*const f32; MR_MAX] = std::array::from_fn(|j| {
                    if j < mr {
                        window.wrapping_add((kh * s.w + j * s.stride) * cin)
                    } else {
                        zeros.as_ptr()
                    }
                });
                taps.push(Tap { src, w: kh * k * cin });
            }
            return k * cin;
        }
        let mut coords = [(0usize, 0isize, 0isize); MR_MAX];
        for c in coords.iter_mut().take(mr) {
            *c = (n, y as isize * st - pad, xo as isize * st - pad);
            xo += 1;
            if xo == ow {
                xo = 0;
                y += 1;
                if y == oh {
                    y = 0;
                    n += 1;
                }
            }
        }
        let interior = coords[..mr].iter().all(|&(_, _, ix)| ix >= 0 && ix + k as isize <= wd);
        let src = |n: usize, iy: isize, ix: isize| -> Option<*const f32> {
            (iy >= 0 && iy < h && ix >= 0 && ix < wd)
                .then(|| x[((n * s.h + iy as usize) * s.w + ix as usize) * cin..].as_ptr())
        };
        let kernel_cols = if interior { 1 } else { k };
        for kh in 0..k {
            for kw in 0..kernel_cols {
                let mut any = false;
                let ptrs: [*const f32; MR_MAX] = std::array::from_fn(|j| {
                    if j >= mr {
                        return zeros.as_ptr();
                    }
                    let (n, iy, ix) = coords[j];
                    match src(n, iy + kh as isize, ix + kw as isize) {
                        Some(p) => {
                            any = true;
                            p
                        }
                        None => zeros.as_ptr(),
                    }
                });
                if any {
                    taps.push(Tap { src: ptrs, w: (kh * k + kw) * cin });
                }
            }
        }
        if interior {
            k * cin
        } else {
            cin
        }
    };
    gather_pass(out, false, fuse, s.n * oh * ow, cout, packed, index, plan);
    None
}

/// Input gradient: `dx[N, H, W, C_in]` from `dy[N, OH, OW, C_out]` (overwrites `dx`).
///
/// Each input pixel gathers from the output pixels its taps reach. With stride 1 the `k` taps of
/// a kernel row reach `k` consecutive output pixels, so they merge into one tap (weights packed
/// with the kernel column reversed); with a larger stride the logical rows are ordered by phase
/// (`x mod stride`) so that a block shares its valid taps and skips the others. Pointwise
/// convolutions, strided or not, are a matrix product through `gemm` instead, and a 3x3
/// stride-1 pad-1 one runs by Winograd F(2x2, 3x3) where that pays (`ops/winograd.rs`).
pub fn backward_input(dy: &[f32], w: &[f32], s: &ConvShape, dx: &mut [f32]) {
    backward_input_into(dy, w, s, dx, false)
}

/// [`backward_input`] that adds the input gradient to `dx` instead of overwriting it.
pub fn backward_input_acc(dy: &[f32], w: &[f32], s: &ConvShape, dx: &mut [f32]) {
    backward_input_into(dy, w, s, dx, true)
}

fn backward_input_into(dy: &[f32], w: &[f32], s: &ConvShape, dx: &mut [f32], accumulate: bool) {
    assert_eq!(dy.len(), s.output_len(), "conv output-gradient length");
    assert_eq!(w.len(), s.weight_len(), "conv weight length");
    assert_eq!(dx.len(), s.input_len(), "conv input-gradient length");
    if dy.is_empty() || dx.is_empty() {
        // No output pixel (an empty batch, or images smaller than the kernel): no gradient.
        if !accumulate {
            dx.fill(0.0);
        }
        return;
    }
    if is_pointwise(s) {
        return pointwise_backward_input(dy, w, s, dx, accumulate);
    }
    if s.k == 1 && s.pad == 0 {
        return sampled_pointwise_backward_input(dy, w, s, dx, accumulate);
    }
    if strided::strided_input_gradient(dy, w, s, dx, accumulate) {
        return;
    }
    if winograd::input_gradient_pays(s) {
        return winograd::input_gradient(dy, w, s, accumulate, dx);
    }
    let (k, cin, cout) = (s.k, s.cin, s.cout);
    // Packed rows: tap t' = kh*k + (k-1-kw), then output channel.
    let (packed, index) = pack(k * k, cout, cin, ReadOrder::DepthColumnTap, |t, co, ci| {
        w[((co * cin + ci) * k + t / k) * k + (k - 1 - t % k)]
    });
    if let Some(kernel) = strip::kernel_for(s, cout, &index) {
        let (dims, rows) = ((s.n, s.h, s.w, cout), strip::Rows::Flipped);
        strip::strip_pass(kernel, dy, dims, rows, (&packed, &index), dx, accumulate, &Fuse::default(), false);
        return;
    }
    let zeros = vec![0f32; k * cin.max(cout)];
    let (oh, ow) = (s.oh() as isize, s.ow() as isize);
    let (st, pad, wd) = (s.stride, s.pad as isize, s.w);
    // Logical order within an image row: phase-major (x = r, r + s, r + 2s, ... for r < s).
    let order: Vec<usize> = (0..st).flat_map(|r| (r..wd).step_by(st)).collect();
    let plan = |r0: usize, mr: usize, taps: &mut Vec<Tap>, offs: &mut [usize; MR_MAX]| {
        if st == 1 {
            // The common block: its rows lie in one image row, and each reaches `k` in-range
            // output pixels in every kernel row. Each kernel row is one merged tap whose sources
            // step by `cout` from row to row: the taps the general plan below gives such a block,
            // without its per-pointer checks.
            let (img_row, x0) = (r0 / wd, r0 % wd);
            let (n, iy) = (img_row / s.h, img_row % s.h);
            let reach = k as isize - 1;
            let (oy_top, ox0) = (iy as isize + pad - reach, x0 as isize + pad - reach);
            if x0 + mr <= wd
                && oy_top >= 0
                && iy as isize + pad < oh
                && ox0 >= 0
                && (x0 + mr) as isize + pad <= ow
            {
                for (j, o) in offs.iter_mut().take(mr).enumerate() {
                    *o = ((n * s.h + iy) * wd + x0 + j) * cin;
                }
                let ow = ow as usize;
                let first = ((n * oh as usize + oy_top as usize) * ow + ox0 as usize) * cout;
                let span = ((k - 1) * ow + mr - 1 + k) * cout;
                let window = dy[first..first + span].as_ptr();
                for kh in 0..k {
                    // Kernel row `kh` reaches output row `iy + pad - kh`, `k - 1 - kh` below the top.
                    let src: [*const f32; MR_MAX] = std::array::from_fn(|j| {
                        if j < mr {
                            window.wrapping_add(((k - 1 - kh) * ow + j) * cout)
                        } else {
                            zeros.as_ptr()
                        }
                    });
                    taps.push(Tap { src, w: kh * k * cout });
                }
                return k * cout;
            }
        }
        // `(image, y, x)` of each row, stepping through the logical order from the first.
        let (img_row, mut local) = (r0 / wd, r0 % wd);
        let (mut n, mut iy) = (img_row / s.h, img_row % s.h);
        let coords: [(usize, usize, usize); MR_MAX] = std::array::from_fn(|j| {
            if j >= mr {
                return (0, 0, 0);
            }
            let c = (n, iy, order[local]);
            offs[j] = ((n * s.h + iy) * wd + order[local]) * cin;
            local += 1;
            if local == wd {
                local = 0;
                iy += 1;
                if iy == s.h {
                    iy = 0;
                    n += 1;
                }
            }
            c
        });
        let out_pos = |iy: usize, ix: usize, kh: usize, kw: usize| -> Option<(isize, isize)> {
            let ny = iy as isize + pad - kh as isize;
            let nx = ix as isize + pad - kw as isize;
            let sti = st as isize;
            if ny < 0 || nx < 0 || ny % sti != 0 || nx % sti != 0 || ny / sti >= oh || nx / sti >= ow {
                None
            } else {
                Some((ny / sti, nx / sti))
            }
        };
        let src = |n: usize, oy: isize, ox: isize| {
            dy[((n as isize * oh + oy) * ow + ox) as usize * cout..].as_ptr()
        };
        // Stride 1: merge a kernel row when every pixel reaches k in-range output columns.
        let merged = st == 1
            && coords[..mr].iter().all(|&(_, _, ix)| {
                let lo = ix as isize + pad - (k as isize - 1);
                lo >= 0 && ix as isize + pad < ow
            });
        if merged {
            for kh in 0..k {
                let mut any = false;
                let ptrs: [*const f32; MR_MAX] = std::array::from_fn(|j| {
                    let (n, iy, ix) = coords[j];
                    let oy = iy as isize + pad - kh as isize;
                    if j >= mr || oy < 0 || oy >= oh {
                        return zeros.as_ptr();
                    }
                    any = true;
                    src(n, oy, ix as isize + pad - (k as isize - 1))
                });
                if any {
                    taps.push(Tap { src: ptrs, w: kh * k * cout });
                }
            }
            return k * cout;
        }
        let (n0, iy0, ix0) = coords[0];
        let (nl, iyl, ixl) = coords[mr - 1];
        if st > 1 && n0 == nl && iy0 == iyl && ixl == ix0 + (mr - 1) * st {
            // One image row, one phase (most blocks): every row reaches the same kernel taps, at
            // consecutive output pixels; no per-row division.
            let sti = st as isize;
            for kh in 0..k {
                let ny = iy0 as isize + pad - kh as isize;
                if ny < 0 || ny % sti != 0 || ny / sti >= oh {
                    continue;
                }
                for kw in 0..k {
                    let nx = ix0 as isize + pad - kw as isize;
                    if nx.rem_euclid(sti) != 0 {
                        continue;
                    }
                    let ox0 = nx.div_euclid(sti);
                    let mut any = false;
                    let ptrs: [*const f32; MR_MAX] = std::array::from_fn(|j| {
                        let ox = ox0 + j as isize;
                        if j < mr && ox >= 0 && ox < ow {
                            any = true;
                            src(n0, ny / sti, ox)
                        } else {
                            zeros.as_ptr()
                        }
                    });
                    if any {
                        taps.push(Tap { src: ptrs, w: (kh * k + (k - 1 - kw)) * cout });
                    }
                }
            }
            return cout;
        }
        for kh in 0..k {
            for kw in 0..k {
                let mut any = false;
                let ptrs: [*const f32; MR_MAX] = std::array::from_fn(|j| {
                    let (n, iy, ix) = coords[j];
                    match (j < mr).then(|| out_pos(iy, ix, kh, kw)).flatten() {
                        Some((oy, ox)) => {
                            any = true;
                            src(n, oy, ox)
                        }
                        None => zeros.as_ptr(),
                    }
                });
                if any {
                    taps.push(Tap { src: ptrs, w: (kh * k + (k - 1 - kw)) * cout });
                }
            }
        }
        cout
    };
    gather_pass(dx, accumulate, &Fuse::default(), s.n * s.h * wd, cin, &packed, &index, plan);
}

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
fn panels_backward_weight(x: &[f32], dy: &[f32], s: &ConvShape, dw: &mut [f32], chunk: usize, grouped: bool) {
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
fn padded_columns(dy: &[f32], cout: usize, cpad: usize) -> std::borrow::Cow<'_, [f32]> {
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
struct WeightGrad<'a> {
    x: &'a [f32],
    /// The output gradient padded to `cpad` columns.
    dy: &'a [f32],
    s: &'a ConvShape,
    blocks: &'a [(usize, usize)],
    cpad: usize,
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
    fn by_pixels(&self) -> Vec<f32> {
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
    fn strip_rows(
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
    fn by_channels(&self) -> Vec<f32> {
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Deterministic values in `[-1, 1)`.
    pub(crate) fn data(n: usize, seed: u64) -> Vec<f32> {
        let mut r = lt_core::Rng::new(seed);
        (0..n).map(|_| r.uniform_f32() * 2.0 - 1.0).collect()
    }

    /// Direct-loop reference of the three passes.
    pub(crate) fn reference(
        x: &[f32],
        w: &[f32],
        dy: &[f32],
        s: &ConvShape,
    ) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
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
        let methods: Vec<WeightMethod> =
            shapes.iter().filter(|s| !is_pointwise(s)).map(weight_method).collect();
        for m in [WeightMethod::Pixels, WeightMethod::Channels, WeightMethod::Panels] {
            assert!(methods.contains(&m), "no shape runs the weight gradient by {m:?}");
        }
        let last = shapes.last().unwrap();
        assert!(winograd::pays(last) && winograd::input_gradient_pays(last));
        for (i, s) in shapes.iter().enumerate() {
            let x = data(s.input_len(), 1 + i as u64);
            let w = data(s.weight_len(), 10 + i as u64);
            let dy = data(s.output_len(), 20 + i as u64);
            let (ro, rdx, rdw) = reference(&x, &w, &dy, s);
            let mut out = vec![f32::NAN; s.output_len()];
            forward(&x, &w, s, &mut out);
            close(&out, &ro, &format!("forward {s:?}"));
            let mut dx = vec![f32::NAN; s.input_len()];
            backward_input(&dy, &w, s, &mut dx);
            close(&dx, &rdx, &format!("dx {s:?}"));
            let base = data(s.input_len(), 30 + i as u64);
            let mut acc = base.clone();
            backward_input_acc(&dy, &w, s, &mut acc);
            let want: Vec<f32> = base.iter().zip(&rdx).map(|(a, b)| a + b).collect();
            close(&acc, &want, &format!("dx accumulated {s:?}"));
            let mut dw = vec![f32::NAN; s.weight_len()];
            backward_weight(&x, &dy, s, &mut dw);
            close(&dw, &rdw, &format!("dw {s:?}"));
            // The fused forward: weights scaled and a bias added per output channel, residual, ReLU.
            let bias = data(s.cout, 40 + i as u64);
            let residual = data(s.output_len(), 50 + i as u64);
            let scale = data(s.cout, 60 + i as u64);
            // Scaled weights alone (no epilogue) first.
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
            assert!(want.contains(&0.0) && want.iter().any(|&v| v > 0.0));
            close(&fused, &want, &format!("fused forward {s:?}"));
        }
    }
}
