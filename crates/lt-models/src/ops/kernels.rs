//! Register-blocked micro-kernels for the convolution ops (AVX2 + FMA, with a portable fallback).
//!
//! Every convolution pass of the project reduces to one of two shapes:
//!
//! - **gather GEMM** ([`gather_block`]): an output block of `MR <= 6` rows by `NR = 8 * NB`
//!   columns accumulates, over a list of *taps*, the products of a scalar from each row's own
//!   source pointer with a packed row of weights. Convolution forward (rows = output pixels,
//!   columns = output channels, taps = kernel positions, sources = input pixels) and the input
//!   gradient (rows = input pixels, columns = input channels, sources = output-gradient pixels)
//!   both have this shape, with no im2col buffer: a tap whose source falls in the padding points
//!   at a zero row.
//! - **outer-product accumulation** ([`outer_block`]): `MR` consecutive input channels by `NR`
//!   output channels accumulate `x[p, c..c+MR]^T * dy[p, co..co+NR]` over a run of pixels: the
//!   weight gradient.
//!
//! The AVX2 kernels keep the `MR x NR` accumulator block (up to 12 `ymm` registers) in registers;
//! the fallback computes the same sums in portable Rust (used on CPUs without AVX2/FMA and as the
//! reference in tests).

// Numerical kernels index several arrays with one loop variable.
#![allow(clippy::needless_range_loop)]

/// Maximum rows of a block.
pub const MR_MAX: usize = 6;

/// One tap of a gather-GEMM block: a source pointer per row and the tap's first weight row.
#[derive(Clone, Copy, Debug)]
pub struct Tap {
    /// `MR` source pointers, each to `depth` contiguous floats (a zero row for padding).
    pub src: [*const f32; MR_MAX],
    /// Index of the tap's first row in the packed weights (rows of `NR` floats).
    pub w: usize,
}

/// Arguments of one gather-GEMM block.
pub struct GatherArgs<'a> {
    /// The taps to accumulate over.
    pub taps: &'a [Tap],
    /// Scalars per source (and weight rows per tap).
    pub depth: usize,
    /// Packed weights of this column block: rows of `NR` floats.
    pub packed: *const f32,
    /// `MR` output pointers, each to `NR` contiguous floats.
    pub out: [*mut f32; MR_MAX],
    /// Add to the existing output instead of overwriting it.
    pub accumulate: bool,
}

/// One run of pixels for [`outer_block`]: offsets of its first `x` and `dy` values and its length.
#[derive(Clone, Copy, Debug)]
pub struct Run {
    /// Offset of the run's first `x` value from [`OuterArgs::x`].
    pub x: usize,
    /// Offset of the run's first `dy` value from [`OuterArgs::dy`].
    pub dy: usize,
    /// Pixels in the run.
    pub count: usize,
}

/// Arguments of one outer-product accumulation block.
pub struct OuterArgs<'a> {
    /// Base of the `x` values (channel `c` of the block's first row added by the caller).
    pub x: *const f32,
    /// Distance between consecutive pixels of a run in `x`.
    pub x_stride: usize,
    /// Base of the `dy` values (output channel `co` of the block's first column added).
    pub dy: *const f32,
    /// Distance between consecutive pixels of a run in `dy`.
    pub dy_stride: usize,
    /// The runs of pixels to accumulate over.
    pub runs: &'a [Run],
    /// Accumulator block: `MR` rows of `NR` floats, row stride `acc_stride`.
    pub acc: *mut f32,
    /// Row stride of the accumulator block.
    pub acc_stride: usize,
}

type GatherFn = unsafe fn(&GatherArgs, usize, usize);
type OuterFn = unsafe fn(&OuterArgs, usize, usize);

struct Kernels {
    gather: GatherFn,
    outer: OuterFn,
    name: &'static str,
}

fn select() -> &'static Kernels {
    static K: std::sync::OnceLock<Kernels> = std::sync::OnceLock::new();
    K.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if std::env::var_os("LT_NO_SIMD").is_none()
                && is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
            {
                return Kernels {
                    gather: avx2::gather_dispatch,
                    outer: avx2::outer_dispatch,
                    name: "avx2+fma",
                };
            }
        }
        Kernels { gather: portable::gather, outer: portable::outer, name: "portable" }
    })
}

/// Name of the kernel set in use (`avx2+fma` or `portable`).
pub fn kernel_name() -> &'static str {
    select().name
}

/// Runs one gather-GEMM block of `mr` rows and `nb * 8` columns.
///
/// # Safety
/// Every pointer in `args` must be valid for the reads and writes the block performs:
/// `taps[t].src[j]` for `depth` floats (`j < mr`), `packed + taps[t].w * nb * 8` for
/// `depth * nb * 8` floats, `out[j]` for `nb * 8` floats.
#[inline]
pub unsafe fn gather_block(args: &GatherArgs, mr: usize, nb: usize) {
    assert!((1..=MR_MAX).contains(&mr) && (nb == 1 || nb == 2), "gather block {mr} x {nb}");
    // SAFETY: the caller upholds the pointer contract above; the block size was checked, and the
    // selected kernel set runs only where its CPU features were detected.
    unsafe { (select().gather)(args, mr, nb) }
}

/// Runs one outer-product accumulation block of `mr` rows and `nb * 8` columns.
///
/// # Safety
/// For every run, `x + run.x` must be valid for `run.count` pixels of `mr` floats at stride
/// `x_stride`, `dy + run.dy` for `run.count` pixels of `nb * 8` floats at stride `dy_stride`;
/// `acc` for `mr` rows of `nb * 8` floats.
#[inline]
pub unsafe fn outer_block(args: &OuterArgs, mr: usize, nb: usize) {
    assert!((1..=MR_MAX).contains(&mr) && (nb == 1 || nb == 2), "outer block {mr} x {nb}");
    // SAFETY: as in `gather_block`.
    unsafe { (select().outer)(args, mr, nb) }
}

/// The portable implementation, also the reference of the kernel tests.
pub mod portable {
    use super::*;

    /// Portable gather-GEMM block.
    ///
    /// # Safety
    /// See [`super::gather_block`].
    pub unsafe fn gather(a: &GatherArgs, mr: usize, nb: usize) {
        // SAFETY: the reads and writes stay within the extents the caller guarantees (see
        // `gather_block`): `depth` floats per source, `depth` packed rows of `nr` floats from each
        // tap's first row, `nr` floats per output row.
        unsafe {
            let nr = nb * 8;
            let mut acc = [[0f32; 16]; MR_MAX];
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
                for (o, &v) in out.iter_mut().zip(&acc[j][..nr]) {
                    *o = if a.accumulate { *o + v } else { v };
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
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::*;
    use std::arch::x86_64::*;

    pub unsafe fn gather_dispatch(a: &GatherArgs, mr: usize, nb: usize) {
        // SAFETY: the caller upholds the contract of the kernel (see `gather_block` and
        // `outer_block`) and selected this set after detecting AVX2 and FMA.
        unsafe {
            match (mr, nb) {
                (1, 1) => gather::<1, 1>(a),
                (2, 1) => gather::<2, 1>(a),
                (3, 1) => gather::<3, 1>(a),
                (4, 1) => gather::<4, 1>(a),
                (5, 1) => gather::<5, 1>(a),
                (6, 1) => gather::<6, 1>(a),
                (1, _) => gather::<1, 2>(a),
                (2, _) => gather::<2, 2>(a),
                (3, _) => gather::<3, 2>(a),
                (4, _) => gather::<4, 2>(a),
                (5, _) => gather::<5, 2>(a),
                _ => gather::<6, 2>(a),
            }
        }
    }

    pub unsafe fn outer_dispatch(a: &OuterArgs, mr: usize, nb: usize) {
        // SAFETY: the caller upholds the contract of the kernel (see `gather_block` and
        // `outer_block`) and selected this set after detecting AVX2 and FMA.
        unsafe {
            match (mr, nb) {
                (1, 1) => outer::<1, 1>(a),
                (2, 1) => outer::<2, 1>(a),
                (3, 1) => outer::<3, 1>(a),
                (4, 1) => outer::<4, 1>(a),
                (5, 1) => outer::<5, 1>(a),
                (6, 1) => outer::<6, 1>(a),
                (1, _) => outer::<1, 2>(a),
                (2, _) => outer::<2, 2>(a),
                (3, _) => outer::<3, 2>(a),
                (4, _) => outer::<4, 2>(a),
                (5, _) => outer::<5, 2>(a),
                _ => outer::<6, 2>(a),
            }
        }
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn gather<const MR: usize, const NB: usize>(a: &GatherArgs) {
        // SAFETY: loads and stores stay within the extents the caller guarantees (see
        // `gather_block`); the CPU has AVX2 and FMA (checked when the kernel set was selected).
        unsafe {
            let mut acc = [[_mm256_setzero_ps(); NB]; MR];
            for tap in a.taps {
                let mut b = a.packed.add(tap.w * 8 * NB);
                let mut src = [std::ptr::null::<f32>(); MR];
                src.copy_from_slice(&tap.src[..MR]);
                for _ in 0..a.depth {
                    let mut bv = [_mm256_setzero_ps(); NB];
                    for (k, v) in bv.iter_mut().enumerate() {
                        *v = _mm256_loadu_ps(b.add(8 * k));
                    }
                    for j in 0..MR {
                        let x = _mm256_broadcast_ss(&*src[j]);
                        for k in 0..NB {
                            acc[j][k] = _mm256_fmadd_ps(x, bv[k], acc[j][k]);
                        }
                        src[j] = src[j].add(1);
                    }
                    b = b.add(8 * NB);
                }
            }
            for j in 0..MR {
                for k in 0..NB {
                    let p = a.out[j].add(8 * k);
                    let v =
                        if a.accumulate { _mm256_add_ps(_mm256_loadu_ps(p), acc[j][k]) } else { acc[j][k] };
                    _mm256_storeu_ps(p, v);
                }
            }
        }
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn outer<const MR: usize, const NB: usize>(a: &OuterArgs) {
        // SAFETY: loads and stores stay within the extents the caller guarantees (see
        // `outer_block`); the CPU has AVX2 and FMA (checked when the kernel set was selected).
        unsafe {
            let mut acc = [[_mm256_setzero_ps(); NB]; MR];
            for j in 0..MR {
                for k in 0..NB {
                    acc[j][k] = _mm256_loadu_ps(a.acc.add(j * a.acc_stride + 8 * k));
                }
            }
            for run in a.runs {
                let (mut x, mut dy) = (a.x.add(run.x), a.dy.add(run.dy));
                for _ in 0..run.count {
                    let mut g = [_mm256_setzero_ps(); NB];
                    for (k, v) in g.iter_mut().enumerate() {
                        *v = _mm256_loadu_ps(dy.add(8 * k));
                    }
                    for j in 0..MR {
                        let v = _mm256_broadcast_ss(&*x.add(j));
                        for k in 0..NB {
                            acc[j][k] = _mm256_fmadd_ps(v, g[k], acc[j][k]);
                        }
                    }
                    x = x.add(a.x_stride);
                    dy = dy.add(a.dy_stride);
                }
            }
            for j in 0..MR {
                for k in 0..NB {
                    _mm256_storeu_ps(a.acc.add(j * a.acc_stride + 8 * k), acc[j][k]);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                (((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 8) % 1000) as f32 / 500.0 - 1.0
            })
            .collect()
    }

    /// Whether this CPU should run the AVX2 kernels, or why not.
    fn simd_expected() -> Result<(), &'static str> {
        if std::env::var_os("LT_NO_SIMD").is_some() {
            return Err("LT_NO_SIMD is set");
        }
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                return Ok(());
            }
        }
        Err("the CPU has no AVX2 + FMA")
    }

    #[test]
    fn simd_kernels_match_the_portable_reference() {
        match simd_expected() {
            Ok(()) => assert_eq!(kernel_name(), "avx2+fma", "AVX2 + FMA detected but not selected"),
            Err(why) => {
                eprintln!("SKIPPED simd_kernels_match_the_portable_reference: {why}; the portable kernels are compared with themselves");
                assert_eq!(kernel_name(), "portable");
            }
        }
        for nb in [1, 2] {
            let nr = nb * 8;
            for mr in 1..=MR_MAX {
                let depth = 7;
                let taps = 3;
                let src = data(taps * MR_MAX * depth, 1);
                let packed = data(taps * depth * nr, 2);
                // Taps in a shuffled weight order, to exercise per-tap weight rows.
                let sources: Vec<Tap> = (0..taps)
                    .map(|t| Tap {
                        src: std::array::from_fn(|j| src[(t * MR_MAX + j) * depth..].as_ptr()),
                        w: ((t + 1) % taps) * depth,
                    })
                    .collect();
                let mut out_a = data(MR_MAX * nr, 3);
                let mut out_b = out_a.clone();
                for accumulate in [false, true] {
                    let mk = |o: &mut Vec<f32>| GatherArgs {
                        taps: &sources,
                        depth,
                        packed: packed.as_ptr(),
                        out: std::array::from_fn(|j| o[j * nr..].as_mut_ptr()),
                        accumulate,
                    };
                    // SAFETY: sources, packed weights and outputs are vectors of the sizes the block reads.
                    unsafe {
                        gather_block(&mk(&mut out_a), mr, nb);
                        portable::gather(&mk(&mut out_b), mr, nb);
                    }
                    for (x, y) in out_a.iter().zip(&out_b) {
                        assert!((x - y).abs() < 1e-4, "gather mr={mr} nb={nb}: {x} vs {y}");
                    }
                }
                let count = 11;
                let x = data(count * 9 + 40, 4);
                let dy = data(count * 20 + 60, 5);
                let runs = [
                    Run { x: 0, dy: 0, count: 4 },
                    Run { x: 37, dy: 81, count: 0 },
                    Run { x: 40, dy: 60, count: 7 },
                ];
                let mut acc_a = data(MR_MAX * 24, 6);
                let mut acc_b = acc_a.clone();
                let mk = |acc: &mut Vec<f32>| OuterArgs {
                    x: x.as_ptr(),
                    x_stride: 9,
                    dy: dy.as_ptr(),
                    dy_stride: 20,
                    runs: &runs,
                    acc: acc.as_mut_ptr(),
                    acc_stride: 24,
                };
                // SAFETY: the runs stay inside `x` and `dy`, the accumulator is `MR_MAX` rows of 24.
                unsafe {
                    outer_block(&mk(&mut acc_a), mr, nb);
                    portable::outer(&mk(&mut acc_b), mr, nb);
                }
                for (x, y) in acc_a.iter().zip(&acc_b) {
                    assert!((x - y).abs() < 1e-4, "outer mr={mr} nb={nb}");
                }
            }
        }
    }
}
