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
//!
//! Here: the geometry ([`ConvShape`]), packed weights, the fused epilogue ([`Fuse`]) and the
//! gather pass that the forward pass and the input gradient share. The passes: `forward.rs`,
//! `backward_input.rs`, `backward_weight.rs`, and `pointwise.rs` for the 1x1 products.

// Numerical kernels index several arrays with one loop variable.
#![allow(clippy::needless_range_loop)]

use rayon::prelude::*;

use super::kernels::{
    self, gather_block, outer_block, Epilogue, GatherArgs, OuterArgs, Run, Tap, MR_MAX, NR_MAX,
};
use super::{norm, strided, strip, window_out, winograd};

mod backward_input;
mod backward_weight;
mod forward;
mod pointwise;
#[cfg(test)]
pub(crate) mod tests;

pub use backward_input::{backward_input, backward_input_acc};
pub use backward_weight::{backward_weight, weight_method, WeightMethod};
pub use forward::{forward, forward_fused, forward_packed, forward_with_moments, PackedWeights};
pub use pointwise::{fuses_gradients, is_pointwise, pointwise_backward_both};
// The pointwise products serve the other passes too; the tests reach the weight gradient's parts.
#[cfg(test)]
use backward_weight::*;
use pointwise::*;

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
