//! The portable kernels: plain Rust, any CPU; the reference of the SIMD sets.

// Numerical kernels index several arrays with one loop variable.
#![allow(clippy::needless_range_loop)]

use super::{Epilogue, GatherArgs, GradStripArgs, OuterArgs, StripArgs, MR_MAX, NR_MAX};

/// Applies the epilogue to row `j`'s sum `v` in column `l`, given the existing output `old`.
///
/// # Safety
/// The epilogue's pointers must be valid for column `l` (see [`super::gather_block`]).
#[inline]
pub(super) unsafe fn finish(e: &Epilogue, accumulate: bool, old: f32, v: f32, j: usize, l: usize) -> f32 {
    let mut v = if accumulate { old + v } else { v };
    // SAFETY: the caller guarantees `bias` and `residual[j]` hold at least `l + 1` floats.
    unsafe {
        if !e.bias.is_null() {
            v += *e.bias.add(l);
        }
        if let Some(r) = e.residual {
            v += *r[j].add(l);
        }
    }
    if e.relu {
        v.max(0.0)
    } else {
        v
    }
}

/// Portable gather-GEMM block.
///
/// # Safety
/// See [`super::gather_block`].
pub unsafe fn gather(a: &GatherArgs, mr: usize, nb: usize) {
    // SAFETY: the reads and writes stay within the extents the caller guarantees (see
    // `gather_block`): `depth` floats per source, `depth` packed rows of `nr` floats from each
    // tap's first row, `nr` floats per output row (and per bias and residual row).
    unsafe {
        let nr = nb * 8;
        let mut acc = [[0f32; NR_MAX]; MR_MAX];
        for tap in a.taps {
            let mut b = a.packed.add(tap.w * nr);
            for c in 0..a.depth {
                let brow = std::slice::from_raw_parts(b, nr);
                for j in 0..mr {
                    let v = *tap.src[j].add(c);
                    for (o, &w) in acc[j][..nr].iter_mut().zip(brow) {
                        *o += v * w;
                    }
                }
                b = b.add(nr);
            }
        }
        for j in 0..mr {
            let out = std::slice::from_raw_parts_mut(a.out[j], nr);
            for (l, (o, &v)) in out.iter_mut().zip(&acc[j][..nr]).enumerate() {
                *o = finish(&a.epilogue, a.accumulate, *o, v, j, l);
            }
        }
    }
}

/// Portable outer-product accumulation block.
///
/// # Safety
/// See [`super::outer_block`].
pub unsafe fn outer(a: &OuterArgs, mr: usize, nb: usize) {
    // SAFETY: the reads and writes stay within the extents the caller guarantees (see
    // `outer_block`): `mr` floats of `x` and `nr` of `dy` per pixel of each run, `mr` rows of
    // `nr` floats of the accumulator.
    unsafe {
        let nr = nb * 8;
        for run in a.runs {
            for p in 0..run.count {
                let x = a.x.add(run.x + p * a.x_stride);
                let dy = std::slice::from_raw_parts(a.dy.add(run.dy + p * a.dy_stride), nr);
                for j in 0..mr {
                    let v = *x.add(j);
                    let acc = std::slice::from_raw_parts_mut(a.acc.add(j * a.acc_stride), nr);
                    for (o, &g) in acc.iter_mut().zip(dy) {
                        *o += v * g;
                    }
                }
            }
        }
    }
}

/// Portable strip block: the sums of [`StripArgs`], in its order.
///
/// # Safety
/// See [`super::strip_block`].
pub unsafe fn strip(a: &StripArgs, mr: usize, nb: usize) {
    let (c, nr) = (a.depth, 8 * nb);
    // SAFETY: the reads and writes stay within the extents the caller guarantees (see
    // `strip_block`).
    unsafe {
        let mut acc = vec![[0f32; NR_MAX]; mr];
        for (kh, row) in a.rows.iter().enumerate() {
            let Some(r) = row else { continue };
            let pixel = |q: usize| match q {
                0 => r.first,
                q if q == mr + 1 => r.last,
                q => r.mid.add((q - 1) * c),
            };
            let (first, columns) = (a.window.first(), a.window.columns());
            for d in 0..c {
                // Window pixel `q` reaches output `q - first - kx` through kernel column `kx`.
                for q in first..mr + first + columns - 1 {
                    let v = *pixel(q).add(d);
                    for kx in (0..columns).filter(|&kx| q >= first + kx && q - first - kx < mr) {
                        let w =
                            std::slice::from_raw_parts(a.packed.add(((kh * columns + kx) * c + d) * nr), nr);
                        for (o, &w) in acc[q - first - kx].iter_mut().zip(w) {
                            *o += v * w;
                        }
                    }
                }
            }
        }
        for (j, sums) in acc.iter().enumerate() {
            let e = a.epilogue(j);
            let out = std::slice::from_raw_parts_mut(a.out.add(j * a.out_stride), nr);
            for (l, (o, &v)) in out.iter_mut().zip(sums).enumerate() {
                *o = finish(&e, a.accumulate, *o, v, 0, l);
            }
        }
    }
}

/// Portable weight-gradient strip block: the sums of [`GradStripArgs`], in its order.
///
/// # Safety
/// See [`super::grad_strip_block`].
pub unsafe fn grad_strip(a: &GradStripArgs, mr: usize, nb: usize) {
    let nr = 8 * nb;
    // SAFETY: the reads and writes stay within the extents the caller guarantees (see
    // `grad_strip_block`).
    unsafe {
        for &(xo, dyo) in a.rows {
            for q in 0..a.width {
                let x = a.x.add(xo + q * a.x_stride);
                for kw in 0..3 {
                    // Pixel q + 1 - kw of the dy row, if inside it.
                    let Some(p) = (q + 1).checked_sub(kw).filter(|&p| p < a.width) else { continue };
                    let dy = std::slice::from_raw_parts(a.dy.add(dyo + p * a.dy_stride), nr);
                    for j in 0..mr {
                        let v = *x.add(j);
                        let acc = std::slice::from_raw_parts_mut(
                            a.acc.add(kw * a.tap_stride + j * a.acc_stride),
                            nr,
                        );
                        for (o, &g) in acc.iter_mut().zip(dy) {
                            *o += v * g;
                        }
                    }
                }
            }
        }
    }
}
