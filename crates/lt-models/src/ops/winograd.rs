//! Winograd F(2x2, 3x3) for 3x3, stride-1, pad-1 convolutions: their forward pass (evaluation
//! and training) and their input gradient (itself such a convolution, of the output gradient
//! with the kernels transposed and turned half a turn).
//!
//! Each 2x2 block of output pixels (a *tile*) is computed from the 4x4 input patch around it
//! (Lavin and Gray, "Fast Algorithms for Convolutional Neural Networks", 2016): with
//! `V = Bᵀ d B` the patch's transform (per input channel), `U = G g Gᵀ` the kernel's (per
//! input and output channel, computed once when the weights are packed), the tile is
//! `Y = Aᵀ (Σ_ci U ⊙ V) A`. The sum over input channels is, for each of the 16 positions
//! `ξ` of the 4x4 transform, a matrix product `M[ξ] = V[ξ] U[ξ]` (tiles x input channels
//! times input x output channels), which runs on the gather kernels (one tap of `C_in`
//! scalars per row). That is 16 multiplies per tile where the direct convolution takes 36, for
//! the price of the two transforms (additions only) and weights 16/9 the size.
//!
//! The sums differ from the direct convolution's in rounding only (the transforms add, subtract
//! and halve): about 4e-8 of the sum of the terms' magnitudes in the tests. Which layers run so
//! is [`pays`] (measured per kernel set). Work is split into ranges of tiles, and groups of
//! column blocks where there are few ranges or the weights are heavy ([`split`]); every output
//! value is computed by one fixed sequence of operations whatever the split, so the bits do not
//! depend on the thread count. In training the forward pass and the input gradient run so where
//! they pay; the weight gradient stays direct (it is the exact gradient of the same convolution:
//! the two passes compute one function and differ in rounding only).

use std::cell::RefCell;

use rayon::prelude::*;

use super::conv::{column_group, column_groups, pack, ConvShape, Fuse, OutPtr, Packed, ReadOrder};
use super::kernels::{gather_block, Epilogue, GatherArgs, Tap, MR_MAX, NR_MAX};

/// Positions of the 4x4 transform.
const POSITIONS: usize = 16;

/// Lanes of the transforms (channel counts are multiples of this).
const LANES: usize = 8;

/// Bytes of transformed input a task's tiles may take with light weights: a fraction of a
/// core's L2 cache, so that they, their products and a column block's weights stay there.
const LIGHT_RANGE_BYTES: usize = 128 << 10;

/// Bytes of transformed input a task's tiles may take with heavy weights (see
/// [`super::conv::heavy_weights`]): more tiles per task, so that each weight read from memory
/// serves more of them.
const HEAVY_RANGE_BYTES: usize = 1 << 20;

/// Most bytes of heavy weights one task reads: beyond this the column blocks are split between
/// tasks (each transforming the same inputs).
const TASK_WEIGHT_BYTES: usize = 2 << 20;

/// Whether Winograd F(2x2, 3x3) computes convolution `s`: 3x3, stride 1, padding 1, channel
/// counts multiples of eight (the transforms' lanes).
pub(crate) fn applies(s: &ConvShape) -> bool {
    s.k == 3
        && s.stride == 1
        && s.pad == 1
        && s.cin.is_multiple_of(LANES)
        && s.cout.is_multiple_of(LANES)
        && s.cin > 0
}

/// Whether convolution `s` runs by Winograd F(2x2, 3x3) (its forward pass; its input gradient
/// runs so where this holds of [`input_gradient_shape`], see [`input_gradient_pays`]): where it [`applies`] and was
/// measured faster than the direct pass with the selected kernel set (`conv_throughput`'s
/// `eval` column against `folded`, batch 1 and batched, ResNet-32 and ResNet-50 layers, and
/// whole networks). With AVX-512 the direct strip kernels run ResNet-32's layers (16-64
/// channels) and 7x7 images faster; Winograd wins from 64 channels on images of 14x14 or more
/// (ResNet-50 at batch 1: 56x56x64 0.62 -> 0.54 ms, 28x28x128 0.70 -> 0.49, 14x14x256 0.62 ->
/// 0.55). With AVX2 it wins from 32 channels (batch 128 16x16x32 2.80 -> 2.53 ms, 8x8x64 2.99
/// -> 2.25; ResNet-50 batch 1 1.06-1.20 -> 0.66-0.84) unless the layer is too small to split
/// (under 2^23 multiplies) or its images are under 8x8 (where the direct pass skips the taps
/// that fall outside the image and a tile computes padding: ResNet-50 on 32x32 images trains
/// at 82-94 img/s with its 4x4, 2x2 and 1x1 layers by Winograd, 95-99 without).
pub(crate) fn pays(s: &ConvShape) -> bool {
    if !applies(s) {
        return false;
    }
    match super::kernels::selected_isa() {
        super::kernels::Isa::Avx512 => s.cin >= 64 && s.h * s.w >= 14 * 14,
        _ => s.cin >= 32 && s.macs() >= 1 << 23 && s.h.min(s.w) >= 8,
    }
}

/// `U = G g Gᵀ` of one 3x3 kernel `g` (row-major), row-major 4x4, with
/// `G = [[1, 0, 0], [½, ½, ½], [½, -½, ½], [0, 0, 1]]`.
fn kernel_transform(g: &[f32]) -> [f32; POSITIONS] {
    let row = |r: usize| [g[3 * r], g[3 * r + 1], g[3 * r + 2]];
    let (g0, g1, g2) = (row(0), row(1), row(2));
    // q = G g (4x3), then U = q Gᵀ (4x4).
    let q: [[f32; 3]; 4] = [
        g0,
        std::array::from_fn(|c| 0.5 * (g0[c] + g1[c] + g2[c])),
        std::array::from_fn(|c| 0.5 * (g0[c] - g1[c] + g2[c])),
        g2,
    ];
    let mut u = [0f32; POSITIONS];
    for (i, q) in q.iter().enumerate() {
        u[4 * i] = q[0];
        u[4 * i + 1] = 0.5 * (q[0] + q[1] + q[2]);
        u[4 * i + 2] = 0.5 * (q[0] - q[1] + q[2]);
        u[4 * i + 3] = q[2];
    }
    u
}

/// The transformed kernels of `w` (`[C_out, C_in, 3, 3]`), each output channel's times
/// `scale[co]`, packed for the gather kernels as 16 taps (one per position) of `C_in` rows.
pub(crate) fn pack_weights(w: &[f32], s: &ConvShape, scale: Option<&[f32]>) -> Packed {
    assert_eq!(w.len(), s.weight_len(), "conv weight length");
    if let Some(sc) = scale {
        assert_eq!(sc.len(), s.cout, "scale length");
    }
    let cin = s.cin;
    pack_kernels(s, |co, ci| {
        let sc = scale.map_or(1.0, |sc| sc[co]);
        std::array::from_fn(|t| w[(co * cin + ci) * 9 + t] * sc)
    })
}

/// The convolution whose forward pass is the input gradient of `s` (3x3, stride 1, pad 1):
/// the output gradient in, the input gradient out, channel counts swapped.
fn input_gradient_shape(s: &ConvShape) -> ConvShape {
    ConvShape { cin: s.cout, cout: s.cin, ..*s }
}

/// Whether the input gradient of convolution `s` runs by Winograd ([`input_gradient`]): where
/// its forward pass, [`input_gradient_shape`], [`pays`].
pub(crate) fn input_gradient_pays(s: &ConvShape) -> bool {
    pays(&input_gradient_shape(s))
}

/// The input gradient `dx` (`[N, H, W, C_in]`) of convolution `s` from the output gradient
/// `dy` and the weights `w` (`[C_out, C_in, 3, 3]`), written or, with `accumulate`, added to
/// `dx`: the forward pass of [`input_gradient_shape`] with kernel `(ci, co)` the kernel
/// `(co, ci)` turned half a turn (`w'[ci, co, kh, kw] = w[co, ci, 2 - kh, 2 - kw]`).
pub(crate) fn input_gradient(dy: &[f32], w: &[f32], s: &ConvShape, accumulate: bool, dx: &mut [f32]) {
    assert_eq!(w.len(), s.weight_len(), "conv weight length");
    let t = input_gradient_shape(s);
    let cin = s.cin;
    let packed = pack_kernels(&t, |ci, co| std::array::from_fn(|k| w[(co * cin + ci) * 9 + 8 - k]));
    run(dy, &packed, &t, (&Fuse::default(), accumulate), dx);
}

/// The kernels `kernel(co, ci)` (row-major 3x3) of convolution `s` transformed (`G g Gᵀ`) and
/// packed for the gather kernels as 16 taps (one per position) of `C_in` rows.
fn pack_kernels(s: &ConvShape, kernel: impl Fn(usize, usize) -> [f32; 9] + Sync) -> Packed {
    assert!(applies(s), "Winograd weights for a convolution {s:?}");
    let (cin, cout) = (s.cin, s.cout);
    let mut u = vec![0f32; cout * cin * POSITIONS];
    u.par_chunks_mut(cin * POSITIONS).enumerate().for_each(|(co, row)| {
        for (ci, out) in row.chunks_exact_mut(POSITIONS).enumerate() {
            out.copy_from_slice(&kernel_transform(&kernel(co, ci)));
        }
    });
    pack(POSITIONS, cin, cout, ReadOrder::TapDepthColumn, |p, ci, co| u[(co * cin + ci) * POSITIONS + p])
}

/// Eight channels' values: the transforms run on these (rustc turns their loops into vector
/// instructions under the selected kernel set's features).
type Lanes = [f32; LANES];

#[inline(always)]
fn add(mut a: Lanes, b: Lanes) -> Lanes {
    for i in 0..LANES {
        a[i] += b[i];
    }
    a
}

#[inline(always)]
fn sub(mut a: Lanes, b: Lanes) -> Lanes {
    for i in 0..LANES {
        a[i] -= b[i];
    }
    a
}

/// Eight values of `data` from `at`.
#[inline(always)]
fn load(data: &[f32], at: usize) -> Lanes {
    data[at..at + LANES].try_into().expect("eight lanes")
}

/// `Bᵀ d` of four values (a column or a row of a patch), with
/// `Bᵀ = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]`.
#[inline(always)]
fn input_1d(d0: Lanes, d1: Lanes, d2: Lanes, d3: Lanes) -> [Lanes; 4] {
    [sub(d0, d2), add(d1, d2), sub(d2, d1), sub(d1, d3)]
}

/// `Aᵀ m` of four values, with `Aᵀ = [[1, 1, 1, 0], [0, 1, -1, -1]]`.
#[inline(always)]
fn output_1d(m0: Lanes, m1: Lanes, m2: Lanes, m3: Lanes) -> [Lanes; 2] {
    [add(add(m0, m1), m2), sub(sub(m1, m2), m3)]
}

/// How `forward` splits its work: tiles per task (whole row blocks) and groups of column
/// blocks (each task runs one group over one range of tiles).
fn split(s: &ConvShape, packed: &[f32], index: &[(usize, usize, usize)]) -> (usize, usize) {
    let tiles = tile_count(s);
    let heavy = super::conv::heavy_weights(packed, index);
    let budget = if heavy { HEAVY_RANGE_BYTES } else { LIGHT_RANGE_BYTES };
    let range = (budget / (POSITIONS * s.cin * 4) / MR_MAX * MR_MAX).max(MR_MAX).min(tiles.max(1));
    let groups = column_groups(tiles.div_ceil(range), index.len());
    if heavy {
        let for_weights = std::mem::size_of_val(packed).div_ceil(TASK_WEIGHT_BYTES);
        (range, groups.max(for_weights.min(index.len()).max(1)))
    } else {
        (range, groups)
    }
}

thread_local! {
    /// Each worker's transformed inputs and products, reused between calls.
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// The convolution `s` of `x` (NHWC) with weights packed by [`pack_weights`], its sums through
/// `fuse` (bias, residual, ReLU; the scale is in the weights) into `out` (NHWC).
pub(crate) fn forward(x: &[f32], w: &Packed, s: &ConvShape, fuse: &Fuse, out: &mut [f32]) {
    run(x, w, s, (fuse, false), out)
}

/// [`forward`]; with `accumulate`, each sum is added to the value `out` holds before `fuse`
/// applies.
fn run(x: &[f32], w: &Packed, s: &ConvShape, (fuse, accumulate): (&Fuse, bool), out: &mut [f32]) {
    assert!(applies(s), "Winograd forward pass of a convolution {s:?}");
    assert!(fuse.scale.is_none(), "a scale is folded in when packing");
    assert_eq!(x.len(), s.input_len(), "conv input length");
    assert_eq!(out.len(), s.output_len(), "conv output length");
    let (packed, index) = (&w.0[..], &w.1[..]);
    let tiles = tile_count(s);
    let (chunk, groups) = split(s, packed, index);
    let chunks = tiles.div_ceil(chunk);
    let outp = OutPtr(out.as_mut_ptr());
    let zeros = vec![0f32; s.cin];
    (0..chunks * groups).into_par_iter().for_each(|t| {
        let (c, g) = (t / groups, t % groups);
        let columns = column_group(index, groups, g);
        let first = c * chunk;
        let count = chunk.min(tiles - first);
        SCRATCH.with(|cell| {
            let mut scratch = cell.borrow_mut();
            let (vlen, mlen) = (POSITIONS * count * s.cin, count * POSITIONS * NR_MAX);
            if scratch.len() < vlen + mlen {
                scratch.resize(vlen + mlen, 0.0);
            }
            let (v, m) = scratch.split_at_mut(vlen);
            transform_inputs(x, s, (first, count), &zeros, v);
            for &(c0, nb, off) in columns {
                let m = &mut m[..count * POSITIONS * 8 * nb];
                products(v, (count, s.cin), &packed[off..], nb, m);
                transform_outputs(m, s, (first, count), (c0, 8 * nb), (fuse, accumulate), outp);
            }
        });
    });
}

/// Tiles of the output of `s` (2x2 output pixels each, the last row and column of tiles cut by
/// the image's edge where a side is odd).
fn tile_count(s: &ConvShape) -> usize {
    s.n * s.h.div_ceil(2) * s.w.div_ceil(2)
}

/// Image, tile row and tile column of tile `t`.
fn tile_at(s: &ConvShape, t: usize) -> (usize, usize, usize) {
    let (th, tw) = (s.h.div_ceil(2), s.w.div_ceil(2));
    (t / (th * tw), t % (th * tw) / tw, t % tw)
}

/// `V[j][ξ] = Bᵀ d B` for the tiles `first..first + count` (`j` from 0) into `v`
/// (`[count][16][C_in]`); patch pixels outside the image read `zeros`.
fn transform_inputs(x: &[f32], s: &ConvShape, (first, count): (usize, usize), zeros: &[f32], v: &mut [f32]) {
    let cin = s.cin;
    super::kernels::vectorised(
        #[inline(always)]
        || {
            for (j, tile) in v.chunks_exact_mut(POSITIONS * cin).take(count).enumerate() {
                let (img, ty, tx) = tile_at(s, first + j);
                let d: [&[f32]; POSITIONS] = std::array::from_fn(|p| {
                    let (iy, ix) = ((2 * ty + p / 4).wrapping_sub(1), (2 * tx + p % 4).wrapping_sub(1));
                    if iy < s.h && ix < s.w {
                        &x[((img * s.h + iy) * s.w + ix) * cin..][..cin]
                    } else {
                        &zeros[..cin]
                    }
                });
                for c in (0..cin).step_by(LANES) {
                    // `Bᵀ d B`: each column of the patch, then each row of the result.
                    let mut t = [[0f32; LANES]; POSITIONS];
                    for col in 0..4 {
                        let ld = |r: usize| load(d[4 * r + col], c);
                        let v = input_1d(ld(0), ld(1), ld(2), ld(3));
                        for r in 0..4 {
                            t[4 * r + col] = v[r];
                        }
                    }
                    for r in 0..4 {
                        let v = input_1d(t[4 * r], t[4 * r + 1], t[4 * r + 2], t[4 * r + 3]);
                        for col in 0..4 {
                            tile[(4 * r + col) * cin + c..][..LANES].copy_from_slice(&v[col]);
                        }
                    }
                }
            }
        },
    )
}

/// `M[j][ξ] = V[j][ξ] U[ξ]` for one column block of `8 * nb` columns (weights `packed`, 16
/// taps of `C_in` rows) into `m` (`[count][16][8 * nb]`), on the gather kernels.
fn products(v: &[f32], (count, cin): (usize, usize), packed: &[f32], nb: usize, m: &mut [f32]) {
    let nr = 8 * nb;
    assert!(v.len() >= POSITIONS * count * cin && m.len() >= count * POSITIONS * nr, "Winograd scratch");
    assert!(packed.len() >= POSITIONS * cin * nr, "Winograd weights of a column block");
    // Every row's output pointer from one base pointer: a pointer taken from `m[i..]` reborrows
    // all of `m` and so (under Stacked Borrows) invalidates the rows' pointers taken before it.
    let mp = m.as_mut_ptr();
    for p in 0..POSITIONS {
        for r0 in (0..count).step_by(MR_MAX) {
            let mr = (count - r0).min(MR_MAX);
            let src = std::array::from_fn(|j| v[((r0 + j.min(mr - 1)) * POSITIONS + p) * cin..].as_ptr());
            let taps = [Tap { src, w: p * cin }];
            let out = std::array::from_fn(|j| mp.wrapping_add(((r0 + j.min(mr - 1)) * POSITIONS + p) * nr));
            let args = GatherArgs {
                taps: &taps,
                depth: cin,
                packed: packed.as_ptr(),
                out,
                accumulate: false,
                epilogue: Epilogue::NONE,
            };
            // SAFETY: rows `j < mr` read `cin` floats of `v` and write `nr` floats of `m` inside
            // the extents checked above; the tap's weights are rows `p * cin..(p + 1) * cin` of
            // `nr` floats of the column block (checked above).
            unsafe { gather_block(&args, mr, nb) };
        }
    }
}

/// The output tiles `Aᵀ M A` of one column block (first column `c0`, `nr` columns) for the
/// tiles `first..first + count`, added to what `out` holds with `accumulate`, through `fuse`,
/// into `out` (pixels outside the image of an odd-sized edge tile are dropped).
fn transform_outputs(
    m: &[f32],
    s: &ConvShape,
    (first, count): (usize, usize),
    (c0, nr): (usize, usize),
    (fuse, accumulate): (&Fuse, bool),
    out: OutPtr,
) {
    let cout = s.cout;
    let len = s.output_len();
    super::kernels::vectorised(
        #[inline(always)]
        || {
            let width = nr.min(cout - c0);
            for (j, m) in m.chunks_exact(POSITIONS * nr).take(count).enumerate() {
                let (img, ty, tx) = tile_at(s, first + j);
                for l in (0..width).step_by(LANES) {
                    // `Aᵀ m A`: each column of the product, then each of the two rows.
                    let mut r = [[0f32; LANES]; 8];
                    for col in 0..4 {
                        let ld = |p: usize| load(m, (4 * p + col) * nr + l);
                        let v = output_1d(ld(0), ld(1), ld(2), ld(3));
                        r[col] = v[0];
                        r[4 + col] = v[1];
                    }
                    for a in 0..2 {
                        let y = output_1d(r[4 * a], r[4 * a + 1], r[4 * a + 2], r[4 * a + 3]);
                        for b in 0..2 {
                            let (oy, ox) = (2 * ty + a, 2 * tx + b);
                            if oy >= s.h || ox >= s.w {
                                continue;
                            }
                            let c = c0 + l;
                            let o = ((img * s.h + oy) * s.w + ox) * cout + c;
                            assert!(o + LANES <= len, "Winograd output outside the output");
                            let mut y = y[b];
                            if accumulate {
                                let mut held = [0f32; LANES];
                                // SAFETY: inside `out` (checked above), a value of this task's
                                // (see below).
                                unsafe {
                                    std::ptr::copy_nonoverlapping(out.0.add(o), held.as_mut_ptr(), LANES)
                                };
                                y = add(y, held);
                            }
                            if let Some(bias) = fuse.bias {
                                y = add(y, load(bias, c));
                            }
                            if let Some(res) = fuse.residual {
                                y = add(y, load(res, o));
                            }
                            if fuse.relu {
                                y = y.map(|v| v.max(0.0));
                            }
                            // SAFETY: inside `out` (checked above); each output value belongs to
                            // one tile and one column block, so to one task.
                            unsafe { std::ptr::copy_nonoverlapping(y.as_ptr(), out.0.add(o), LANES) };
                        }
                    }
                }
            }
        },
    )
}

#[cfg(test)]
mod tests;
