//! The SIMD kernel sets: one kernel body (`kernel_bodies!`) instantiated per instruction set
//! over that set's vector type and seven primitives (`zero`, `load`, `store`, `splat`, `fma`,
//! and `add` and `max` for the epilogue), and one block-width dispatch (`dispatchers!`) per set.
//!
//! - `avx2`: `__m256`, 8 lanes; blocks of 8 or 16 columns (1 or 2 vectors per row).
//! - `avx512`: `__m512`, 16 lanes; blocks of 16 or 32 columns (1 or 2 vectors per row), and the
//!   AVX2 kernel for 8-column blocks.
//!
//! The AVX2 instantiation runs in every test on a machine with AVX2; the AVX-512 one shares its
//! body, so what is specific to it is the primitive mapping and the dispatch, both checked against
//! the portable kernels by `check::agrees_with_portable` before the set is first used.

// Numerical kernels index several arrays with one loop variable.
#![allow(clippy::needless_range_loop)]
#![cfg_attr(not(target_arch = "x86_64"), allow(dead_code, unused_imports))]

use super::{Isa, KernelSet};

/// The gather and outer-product kernels over this module's `V`, `LANES` and primitives, for
/// `MR` rows and `NV` vectors of columns.
#[cfg(target_arch = "x86_64")]
macro_rules! kernel_bodies {
    ($feature:literal) => {
        /// Gather-GEMM block of `MR` rows and `NV` vectors of columns.
        ///
        /// # Safety
        /// As for `gather_block` (with `nb * 8 = LANES * NV`); the CPU has this set's features.
        #[target_feature(enable = $feature)]
        pub(crate) unsafe fn gather<const MR: usize, const NV: usize>(a: &GatherArgs) {
            // SAFETY: loads and stores stay within the extents the caller guarantees (see
            // `gather_block`); the CPU has the features (checked when the set was selected).
            unsafe {
                let width = LANES * NV;
                let mut acc = [[zero(); NV]; MR];
                for tap in a.taps {
                    let mut b = a.packed.add(tap.w * width);
                    let mut src = [std::ptr::null::<f32>(); MR];
                    src.copy_from_slice(&tap.src[..MR]);
                    for _ in 0..a.depth {
                        let mut bv = [zero(); NV];
                        for (k, v) in bv.iter_mut().enumerate() {
                            *v = load(b.add(LANES * k));
                        }
                        for j in 0..MR {
                            let x = splat(src[j]);
                            for k in 0..NV {
                                acc[j][k] = fma(x, bv[k], acc[j][k]);
                            }
                            src[j] = src[j].add(1);
                        }
                        b = b.add(width);
                    }
                }
                let e = &a.epilogue;
                for j in 0..MR {
                    for k in 0..NV {
                        let bias = (!e.bias.is_null()).then(|| e.bias.add(LANES * k));
                        let residual = e.residual.map(|r| r[j].add(LANES * k));
                        finish(a.out[j].add(LANES * k), acc[j][k], a.accumulate, bias, residual, e.relu);
                    }
                }
            }
        }

        /// Outer-product accumulation block of `MR` rows and `NV` vectors of columns.
        ///
        /// # Safety
        /// As for `outer_block` (with `nb * 8 = LANES * NV`); the CPU has this set's features.
        #[target_feature(enable = $feature)]
        pub(crate) unsafe fn outer<const MR: usize, const NV: usize>(a: &OuterArgs) {
            // SAFETY: loads and stores stay within the extents the caller guarantees (see
            // `outer_block`); the CPU has the features (checked when the set was selected).
            unsafe {
                let mut acc = [[zero(); NV]; MR];
                for j in 0..MR {
                    for k in 0..NV {
                        acc[j][k] = load(a.acc.add(j * a.acc_stride + LANES * k));
                    }
                }
                for run in a.runs {
                    let (mut x, mut dy) = (a.x.add(run.x), a.dy.add(run.dy));
                    for _ in 0..run.count {
                        let mut g = [zero(); NV];
                        for (k, v) in g.iter_mut().enumerate() {
                            *v = load(dy.add(LANES * k));
                        }
                        for j in 0..MR {
                            let v = splat(x.add(j));
                            for k in 0..NV {
                                acc[j][k] = fma(v, g[k], acc[j][k]);
                            }
                        }
                        // Wrapping: after a run's last pixel these point past it, maybe past
                        // the end of `x` or `dy` (`add` would be undefined behaviour there).
                        x = x.wrapping_add(a.x_stride);
                        dy = dy.wrapping_add(a.dy_stride);
                    }
                }
                for j in 0..MR {
                    for k in 0..NV {
                        store(a.acc.add(j * a.acc_stride + LANES * k), acc[j][k]);
                    }
                }
            }
        }
    };
}

/// `$body` once for each row `$j` below `$mr` (at most 16), `$j` a constant in each copy: a
/// loop unrolled by the macro rather than left to the compiler, which keeps wide strips' loops
/// (and so their sums in memory) otherwise.
#[cfg(target_arch = "x86_64")]
macro_rules! for_rows {
    ($mr:expr, $j:ident, $body:block) => {
        for_rows!(@ $mr, $j, $body, 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15)
    };
    (@ $mr:expr, $j:ident, $body:block, $($n:literal)*) => {
        $(
            if $n < $mr {
                const $j: usize = $n;
                $body
            }
        )*
    };
}

/// The strip kernel ([`super::StripArgs`]) over this module's `V`: `MR` rows, `NV` vectors of
/// columns, `C` channels per source pixel, the window's `KW` kernel columns from window pixel
/// `LO` ([`super::Window`]).
#[cfg(target_arch = "x86_64")]
macro_rules! strip_body {
    ($feature:literal) => {
        /// Strip block of `MR` output pixels by `NV` vectors over `C` channels, `KW` kernel
        /// columns from window pixel `LO`.
        ///
        /// # Safety
        /// As for `strip_block` (with `nb * 8 = LANES * NV`, `depth = C`, `LO` and `KW` the
        /// window's); the CPU has this set's features.
        #[target_feature(enable = $feature)]
        pub(crate) unsafe fn strip<
            const MR: usize,
            const NV: usize,
            const C: usize,
            const LO: usize,
            const KW: usize,
        >(
            a: &StripArgs,
        ) {
            debug_assert_eq!((a.depth, LO, KW), (C, a.window.first(), a.window.columns()));
            // SAFETY: loads and stores stay within the extents the caller guarantees (see
            // `strip_block`); the CPU has the features (checked when the set was selected).
            unsafe {
                let width = LANES * NV;
                const { assert!(MR <= 16) };
                let mut acc = [[zero(); NV]; 16];
                for (kh, row) in a.rows.iter().enumerate() {
                    let Some(r) = row else { continue };
                    let w = a.packed.add(kh * KW * C * width);
                    for d in 0..C {
                        let mut wv = [[zero(); NV]; KW];
                        for (kx, v) in wv.iter_mut().enumerate() {
                            for (k, v) in v.iter_mut().enumerate() {
                                *v = load(w.add((kx * C + d) * width + LANES * k));
                            }
                        }
                        // Output `j` takes window pixel `j + LO + kx` through kernel column
                        // `kx` (the repeated loads of a pixel are one after unrolling).
                        for_rows!(MR, J, {
                            for kx in 0..KW {
                                let q = J + LO + kx;
                                let p = if q == 0 {
                                    r.first
                                } else if q == MR + 1 {
                                    r.last
                                } else {
                                    r.mid.add((q - 1) * C)
                                };
                                let x = splat(p.add(d));
                                for k in 0..NV {
                                    acc[J][k] = fma(x, wv[kx][k], acc[J][k]);
                                }
                            }
                        });
                    }
                }
                for j in 0..MR {
                    for k in 0..NV {
                        let at = j * a.out_stride + LANES * k;
                        let bias = (!a.bias.is_null()).then(|| a.bias.add(LANES * k));
                        let residual = (!a.residual.is_null()).then(|| a.residual.add(at));
                        finish(a.out.add(at), acc[j][k], a.accumulate, bias, residual, a.relu);
                    }
                }
            }
        }
    };
}

/// The weight-gradient strip kernel ([`super::GradStripArgs`]) over this module's `V`: `MR`
/// input channels (at most 6), `NV` vectors of output channels.
#[cfg(target_arch = "x86_64")]
macro_rules! grad_strip_body {
    ($feature:literal) => {
        /// Weight-gradient strip block of `MR` input channels by `NV` vectors.
        ///
        /// # Safety
        /// As for `grad_strip_block` (with `nb * 8 = LANES * NV`); the CPU has this set's
        /// features.
        #[target_feature(enable = $feature)]
        pub(crate) unsafe fn grad_strip<const MR: usize, const NV: usize>(a: &GradStripArgs) {
            // SAFETY: loads and stores stay within the extents the caller guarantees (see
            // `grad_strip_block`); the CPU has the features (checked when the set was selected).
            unsafe {
                const { assert!(MR <= 6) };
                let at = |kw: usize, j: usize, k: usize| {
                    a.acc.add(kw * a.tap_stride + j * a.acc_stride + LANES * k)
                };
                // Sums of tap `kw`, row `j` (16 rows declared so that `for_rows!`'s copies
                // index inside the array; the unused ones vanish).
                let mut acc = [[[zero(); NV]; 16]; 3];
                for kw in 0..3 {
                    for_rows!(MR, J, {
                        for k in 0..NV {
                            acc[kw][J][k] = load(at(kw, J, k));
                        }
                    });
                }
                let dy_at = |p: *const f32| {
                    let mut v = [zero(); NV];
                    for (k, v) in v.iter_mut().enumerate() {
                        *v = load(p.add(LANES * k));
                    }
                    v
                };
                for &(xo, dyo) in a.rows {
                    let (mut x, dy) = (a.x.add(xo), a.dy.add(dyo));
                    // dy at pixels q - 1, q and q + 1 (zero outside the row).
                    let mut prev = [zero(); NV];
                    let mut cur = dy_at(dy);
                    for q in 0..a.width {
                        let next =
                            if q + 1 < a.width { dy_at(dy.add((q + 1) * a.dy_stride)) } else { [zero(); NV] };
                        for_rows!(MR, J, {
                            let v = splat(x.add(J));
                            for k in 0..NV {
                                acc[0][J][k] = fma(v, next[k], acc[0][J][k]);
                                acc[1][J][k] = fma(v, cur[k], acc[1][J][k]);
                                acc[2][J][k] = fma(v, prev[k], acc[2][J][k]);
                            }
                        });
                        prev = cur;
                        cur = next;
                        // Wrapping: after a row's last pixel `x` points past it (see `outer`).
                        x = x.wrapping_add(a.x_stride);
                    }
                }
                for kw in 0..3 {
                    for_rows!(MR, J, {
                        for k in 0..NV {
                            store(at(kw, J, k), acc[kw][J][k]);
                        }
                    });
                }
            }
        }

        /// The weight-gradient strip kernel: `GRAD_STRIP_SHAPES`.
        pub(crate) const GRAD_STRIPS: GradStripKernel =
            GradStripKernel { run: grad_strip_dispatch, shapes: GRAD_STRIP_SHAPES };

        grad_strip_blocks!(grad_strip_dispatcher);
    };
}

/// `strip::<mr, $nv, $c, LO, KW>(a)` for a run-time `mr`, one of the listed row counts, and the
/// window `$window` (`LO`, `KW` its first window pixel and kernel columns).
#[cfg(target_arch = "x86_64")]
macro_rules! by_strip_rows {
    ($window:ident, $nv:tt, $c:literal, $a:expr, $mr:expr; $($n:literal)+) => {{
        const LO: usize = Window::$window.first();
        const KW: usize = Window::$window.columns();
        match $mr {
            $($n => strip::<$n, $nv, $c, LO, KW>($a),)+
            mr => unreachable!("a strip of {mr} rows over {} channels", $c),
        }
    }};
}

/// A set's `strip_dispatch`, from a strip-block list (`blocks.rs`): each listed block `(window,
/// nb, depth; rows)` to the kernel compiled for it, with `nb * 8 / LANES` vectors per row.
#[cfg(target_arch = "x86_64")]
macro_rules! strip_dispatcher {
    ($(($w:ident, $nb:literal, $c:literal; $($n:literal)+)),+ $(,)?) => {
        /// Strip block of `mr` rows and `nb` 8-column units (one of `STRIPS.shapes`).
        ///
        /// # Safety
        /// As for `strip_block`; the CPU has this set's features.
        pub(crate) unsafe fn strip_dispatch(a: &StripArgs, mr: usize, nb: usize) {
            // SAFETY: the caller upholds the kernel's contract and detected the features.
            unsafe {
                match (a.window, nb, a.depth) {
                    $((Window::$w, $nb, $c) => by_strip_rows!($w, { $nb * 8 / LANES }, $c, a, mr; $($n)+),)+
                    (w, nb, c) => unreachable!("strip block {w:?} {nb} x {c} is not one of STRIPS.shapes"),
                }
            }
        }
    };
}

/// A set's `grad_strip_dispatch`, from a weight-gradient block list (`blocks.rs`): each listed
/// block `(nb; input channels)` to the kernel compiled for it, with `nb * 8 / LANES` vectors.
#[cfg(target_arch = "x86_64")]
macro_rules! grad_strip_dispatcher {
    ($(($nb:literal; $($n:literal)+)),+ $(,)?) => {
        /// Weight-gradient strip block of `mr` input channels and `nb` 8-column units (one of
        /// `GRAD_STRIPS.shapes`).
        ///
        /// # Safety
        /// As for `grad_strip_block`; the CPU has this set's features.
        pub(crate) unsafe fn grad_strip_dispatch(a: &GradStripArgs, mr: usize, nb: usize) {
            // SAFETY: the caller upholds the kernel's contract and detected the features.
            unsafe {
                match (nb, mr) {
                    $($(($nb, $n) => grad_strip::<$n, { $nb * 8 / LANES }>(a),)+)+
                    _ => unreachable!("grad strip block {mr} x {nb} is not one of GRAD_STRIPS.shapes"),
                }
            }
        }
    };
}

/// `$f::<mr, $nv>(a)` for a run-time `mr` in `1..=6`.
#[cfg(target_arch = "x86_64")]
macro_rules! by_rows {
    ($f:ident, $nv:literal, $a:expr, $mr:expr) => {
        match $mr {
            1 => $f::<1, $nv>($a),
            2 => $f::<2, $nv>($a),
            3 => $f::<3, $nv>($a),
            4 => $f::<4, $nv>($a),
            5 => $f::<5, $nv>($a),
            _ => $f::<6, $nv>($a),
        }
    };
}

/// `gather_dispatch` and `outer_dispatch` of one set from its one mapping of the block width `nb`
/// (8-column units) to a kernel pair and its vectors per row: `nb => (gather, outer, NV)`.
#[cfg(target_arch = "x86_64")]
macro_rules! dispatchers {
    ($($nb:pat => ($g:ident, $o:ident, $nv:literal)),+ $(,)?) => {
        /// Gather block of `mr` rows and `nb` 8-column units.
        ///
        /// # Safety
        /// As for `gather_block`; the CPU has this set's features.
        pub(crate) unsafe fn gather_dispatch(a: &GatherArgs, mr: usize, nb: usize) {
            // SAFETY: the caller upholds the kernel's contract and detected the features.
            unsafe {
                match nb {
                    $($nb => by_rows!($g, $nv, a, mr),)+
                }
            }
        }

        /// Outer-product block of `mr` rows and `nb` 8-column units.
        ///
        /// # Safety
        /// As for `outer_block`; the CPU has this set's features.
        pub(crate) unsafe fn outer_dispatch(a: &OuterArgs, mr: usize, nb: usize) {
            // SAFETY: the caller upholds the kernel's contract and detected the features.
            unsafe {
                match nb {
                    $($nb => by_rows!($o, $nv, a, mr),)+
                }
            }
        }
    };
}

/// The seven vector primitives of one instruction set, each a `#[target_feature]` function.
#[cfg(target_arch = "x86_64")]
macro_rules! primitives {
    ($feature:literal, $v:ty, $lanes:literal, $setzero:ident, $loadu:ident, $storeu:ident, $set1:ident,
     $fmadd:ident, $addv:ident, $maxv:ident) => {
        type V = $v;
        const LANES: usize = $lanes;

        #[inline]
        #[target_feature(enable = $feature)]
        fn zero() -> V {
            $setzero()
        }

        #[inline]
        #[target_feature(enable = $feature)]
        unsafe fn load(p: *const f32) -> V {
            // SAFETY: the caller guarantees `LANES` readable floats at `p`.
            unsafe { $loadu(p) }
        }

        #[inline]
        #[target_feature(enable = $feature)]
        unsafe fn store(p: *mut f32, v: V) {
            // SAFETY: the caller guarantees `LANES` writable floats at `p`.
            unsafe { $storeu(p, v) }
        }

        #[inline]
        #[target_feature(enable = $feature)]
        unsafe fn splat(p: *const f32) -> V {
            // SAFETY: the caller guarantees one readable float at `p`.
            $set1(unsafe { *p })
        }

        #[inline]
        #[target_feature(enable = $feature)]
        fn fma(a: V, b: V, c: V) -> V {
            $fmadd(a, b, c)
        }

        #[inline]
        #[target_feature(enable = $feature)]
        fn add(a: V, b: V) -> V {
            $addv(a, b)
        }

        #[inline]
        #[target_feature(enable = $feature)]
        fn max(a: V, b: V) -> V {
            $maxv(a, b)
        }

        /// Stores the sums `v` at `p` through an epilogue: plus the old value (`accumulate`),
        /// the `bias` and `residual` vectors where given, then ReLU.
        ///
        /// # Safety
        /// `LANES` floats at `p` (and at `bias` and `residual` when given) are valid.
        #[inline]
        #[target_feature(enable = $feature)]
        unsafe fn finish(
            p: *mut f32,
            mut v: V,
            accumulate: bool,
            bias: Option<*const f32>,
            residual: Option<*const f32>,
            relu: bool,
        ) {
            // SAFETY: the caller guarantees the extents.
            unsafe {
                if accumulate {
                    v = add(v, load(p));
                }
                if let Some(b) = bias {
                    v = add(v, load(b));
                }
                if let Some(r) = residual {
                    v = add(v, load(r));
                }
                if relu {
                    v = max(v, zero());
                }
                store(p, v);
            }
        }
    };
}

/// Runs `f` compiled for this set's instruction set: plain loops inlined into `f` (sums kept in
/// fixed-size arrays, say) are vectorised for it.
#[cfg(target_arch = "x86_64")]
macro_rules! vectorised {
    ($feature:literal) => {
        /// Runs `f`, inlined here, with this set's features enabled.
        ///
        /// # Safety
        /// The CPU has this set's features.
        #[target_feature(enable = $feature)]
        pub(crate) unsafe fn vectorised<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
    };
}

/// AVX2 + FMA: 8 lanes.
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2 {
    use super::super::{GatherArgs, OuterArgs, StripArgs, StripKernel, Window, AVX2_STRIP_SHAPES};
    use std::arch::x86_64::*;

    primitives!(
        "avx2,fma",
        __m256,
        8,
        _mm256_setzero_ps,
        _mm256_loadu_ps,
        _mm256_storeu_ps,
        _mm256_set1_ps,
        _mm256_fmadd_ps,
        _mm256_add_ps,
        _mm256_max_ps
    );
    kernel_bodies!("avx2,fma");
    vectorised!("avx2,fma");
    strip_body!("avx2,fma");

    /// The strip kernel: `AVX2_STRIP_SHAPES` (the stride-2 input gradient's phases).
    pub(crate) const STRIPS: StripKernel = StripKernel { run: strip_dispatch, shapes: AVX2_STRIP_SHAPES };

    avx2_strip_blocks!(strip_dispatcher);
    // Blocks of 8 or 16 columns: 1 or 2 vectors per row.
    dispatchers!(1 => (gather, outer, 1), _ => (gather, outer, 2));
}

/// AVX-512F: 16 lanes (and the AVX2 kernels for 8-column blocks).
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512 {
    use super::super::{
        GatherArgs, GradStripArgs, GradStripKernel, OuterArgs, StripArgs, StripKernel, Window,
        GRAD_STRIP_SHAPES, STRIP_SHAPES,
    };
    use super::avx2::{gather as gather8, outer as outer8};
    use std::arch::x86_64::*;

    primitives!(
        "avx512f,avx2,fma",
        __m512,
        16,
        _mm512_setzero_ps,
        _mm512_loadu_ps,
        _mm512_storeu_ps,
        _mm512_set1_ps,
        _mm512_fmadd_ps,
        _mm512_add_ps,
        _mm512_max_ps
    );
    kernel_bodies!("avx512f,avx2,fma");
    vectorised!("avx512f,avx2,fma");
    strip_body!("avx512f,avx2,fma");
    grad_strip_body!("avx512f,avx2,fma");

    /// The strip kernel: `STRIP_SHAPES`.
    pub(crate) const STRIPS: StripKernel = StripKernel { run: strip_dispatch, shapes: STRIP_SHAPES };

    avx512_strip_blocks!(strip_dispatcher);
    // Blocks of 8 columns on the AVX2 kernels, of 16 or 32 on 1 or 2 `zmm` vectors per row.
    dispatchers!(1 => (gather8, outer8, 1), 2 => (gather, outer, 1), _ => (gather, outer, 2));
}

/// Every SIMD set of this build, widest first, with whether this CPU can run it.
pub(crate) fn sets() -> Vec<(&'static str, Option<KernelSet>)> {
    #[cfg(target_arch = "x86_64")]
    {
        let avx2 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
        let avx512 = avx2 && is_x86_feature_detected!("avx512f");
        vec![
            (
                Isa::Avx512.name(),
                avx512.then_some(KernelSet {
                    isa: Isa::Avx512,
                    gather: avx512::gather_dispatch,
                    outer: avx512::outer_dispatch,
                    nb_max: 4,
                    strip: Some(avx512::STRIPS),
                    grad_strip: Some(avx512::GRAD_STRIPS),
                }),
            ),
            (
                Isa::Avx2.name(),
                avx2.then_some(KernelSet {
                    isa: Isa::Avx2,
                    gather: avx2::gather_dispatch,
                    outer: avx2::outer_dispatch,
                    nb_max: 2,
                    // The stride-2 input gradient's phases, and 3x3 stride-1 strips over 16
                    // channels (see `AVX2_STRIP_SHAPES`).
                    strip: Some(avx2::STRIPS),
                    // Three taps of two `ymm` vectors per input channel leave room for one.
                    grad_strip: None,
                }),
            ),
        ]
    }
    #[cfg(not(target_arch = "x86_64"))]
    Vec::new()
}

/// The x86 features the kernel sets use, `name` when present and `-name` when absent.
pub(crate) fn cpu_features() -> Vec<String> {
    #[cfg(target_arch = "x86_64")]
    {
        let flags = [
            ("avx2", is_x86_feature_detected!("avx2")),
            ("fma", is_x86_feature_detected!("fma")),
            ("avx512f", is_x86_feature_detected!("avx512f")),
        ];
        flags.iter().map(|(n, on)| if *on { n.to_string() } else { format!("-{n}") }).collect()
    }
    #[cfg(not(target_arch = "x86_64"))]
    Vec::new()
}
