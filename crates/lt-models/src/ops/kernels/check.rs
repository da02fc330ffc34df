//! The agreement check of a kernel set with the portable reference, on every block shape the
//! set runs (rows 1 to 6, each of its widths), with and without accumulation and the epilogue.
//! Used by the tests for every set this CPU has, and before a SIMD set is first used.

use super::{
    portable, Epilogue, GatherArgs, GradStripArgs, KernelSet, OuterArgs, Run, StripArgs, StripRow, Tap,
    Window, MR_MAX, NR_MAX,
};

/// Deterministic values in `[-1, 1)`.
pub(crate) fn data(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| (((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 8) % 1000) as f32 / 500.0 - 1.0)
        .collect()
}

fn compare(what: &str, a: &[f32], b: &[f32]) -> Result<(), String> {
    match a.iter().zip(b).position(|(x, y)| (x - y).abs() > 1e-4 * (1.0 + y.abs())) {
        Some(i) => Err(format!("{what}: element {i} is {} where the reference has {}", a[i], b[i])),
        None => Ok(()),
    }
}

/// One gather block of `set` against the portable kernel.
pub(crate) fn gather_agrees(
    set: &KernelSet,
    mr: usize,
    nb: usize,
    accumulate: bool,
    fused: bool,
) -> Result<(), String> {
    let (nr, depth, taps) = (nb * 8, 7, 3);
    let src = data(taps * MR_MAX * depth, 1);
    let packed = data(taps * depth * nr, 2);
    let bias = data(nr, 7);
    let residual = data(MR_MAX * nr, 8);
    // Taps in a shuffled weight order, to exercise per-tap weight rows.
    let sources: Vec<Tap> = (0..taps)
        .map(|t| Tap {
            src: std::array::from_fn(|j| src[(t * MR_MAX + j) * depth..].as_ptr()),
            w: ((t + 1) % taps) * depth,
        })
        .collect();
    let epilogue = if fused {
        Epilogue {
            bias: bias.as_ptr(),
            residual: Some(std::array::from_fn(|j| residual[j * nr..].as_ptr())),
            relu: true,
        }
    } else {
        Epilogue::NONE
    };
    let mut out_a = data(MR_MAX * nr, 3);
    let mut out_b = out_a.clone();
    // Every row's pointer from one base pointer (one from `o[j * nr..]` would reborrow the
    // whole vector and, under Stacked Borrows, invalidate the rows taken before it).
    let mk = |o: &mut Vec<f32>| {
        let base = o.as_mut_ptr();
        GatherArgs {
            taps: &sources,
            depth,
            packed: packed.as_ptr(),
            out: std::array::from_fn(|j| base.wrapping_add(j * nr)),
            accumulate,
            epilogue,
        }
    };
    // SAFETY: sources, packed weights, bias, residual and outputs are vectors of the sizes the
    // block reads and writes; the set comes from `simd_sets` (its features were detected).
    unsafe {
        (set.gather)(&mk(&mut out_a), mr, nb);
        portable::gather(&mk(&mut out_b), mr, nb);
    }
    let what = format!("{} gather {mr} x {nb} (accumulate {accumulate}, epilogue {fused})", set.name());
    compare(&what, &out_a, &out_b)
}

/// One outer-product block of `set` against the portable kernel.
pub(crate) fn outer_agrees(set: &KernelSet, mr: usize, nb: usize) -> Result<(), String> {
    let count = 11;
    let x = data(count * 9 + 40, 4);
    let dy = data(count * 40 + 60, 5);
    let runs =
        [Run { x: 0, dy: 0, count: 4 }, Run { x: 37, dy: 81, count: 0 }, Run { x: 40, dy: 60, count: 7 }];
    let mut acc_a = data(MR_MAX * (NR_MAX + 8), 6);
    let mut acc_b = acc_a.clone();
    let mk = |acc: &mut Vec<f32>| OuterArgs {
        x: x.as_ptr(),
        x_stride: 9,
        dy: dy.as_ptr(),
        dy_stride: 40,
        runs: &runs,
        acc: acc.as_mut_ptr(),
        acc_stride: NR_MAX + 8,
    };
    // SAFETY: the runs stay inside `x` and `dy`, the accumulator is `MR_MAX` rows of 40; the set
    // comes from `simd_sets` (its features were detected).
    unsafe {
        (set.outer)(&mk(&mut acc_a), mr, nb);
        portable::outer(&mk(&mut acc_b), mr, nb);
    }
    compare(&format!("{} outer {mr} x {nb}", set.name()), &acc_a, &acc_b)
}

/// One strip block of `set` against the portable kernel: `window`, `mr` rows of `nb` 8-column
/// units over `c` channels, the window's edge pixels real or zero (`edges`), the middle kernel
/// row absent or not, with or without accumulation and the epilogue; output rows a few floats
/// apart.
pub(crate) fn strip_agrees(
    set: &KernelSet,
    (window_kind, mr, nb, c): (Window, usize, usize, usize),
    edges: bool,
    fused: bool,
) -> Result<(), String> {
    let Some(kernel) = set.strip.map(|k| k.run) else { return Ok(()) };
    let (nr, stride) = (8 * nb, 8 * nb + 8);
    let window = data(3 * (mr + 2) * c, 9);
    let zero = vec![0f32; c];
    let packed = data(3 * window_kind.columns() * c * nr, 10);
    let (bias, residual) = (data(nr, 11), data(mr * stride, 12));
    let row = |kh: usize| {
        let base = &window[kh * (mr + 2) * c..];
        StripRow {
            first: if edges { base.as_ptr() } else { zero.as_ptr() },
            mid: base[c..].as_ptr(),
            last: if edges { base[(mr + 1) * c..].as_ptr() } else { zero.as_ptr() },
        }
    };
    let rows = [Some(row(0)), (!fused).then(|| row(1)), Some(row(2))];
    let mut out_a = data(mr * stride, 13);
    let mut out_b = out_a.clone();
    let mk = |o: &mut Vec<f32>| StripArgs {
        window: window_kind,
        rows,
        depth: c,
        packed: packed.as_ptr(),
        out: o.as_mut_ptr(),
        out_stride: stride,
        accumulate: fused,
        bias: if fused { bias.as_ptr() } else { std::ptr::null() },
        residual: if fused { residual.as_ptr() } else { std::ptr::null() },
        relu: fused,
    };
    // SAFETY: the window holds `mr + 2` pixels per kernel row; the zero pixel, weights, bias,
    // residual and outputs are vectors of the sizes the block reads and writes; the set comes
    // from `simd_sets` (its features were detected).
    unsafe {
        kernel(&mk(&mut out_a), mr, nb);
        portable::strip(&mk(&mut out_b), mr, nb);
    }
    let what = format!(
        "{} {window_kind:?} strip of {mr} x {nb} over {c} (edges {edges}, epilogue {fused})",
        set.name()
    );
    compare(&what, &out_a, &out_b)
}

/// One weight-gradient strip block of `set` against the portable kernel: `mr` input channels of
/// `nb` 8-column units over two row pairs of `width` pixels (strides wider than the block).
pub(crate) fn grad_strip_agrees(set: &KernelSet, mr: usize, nb: usize, width: usize) -> Result<(), String> {
    let Some(kernel) = set.grad_strip.map(|k| k.run) else { return Ok(()) };
    let nr = 8 * nb;
    let (x_stride, dy_stride, acc_stride) = (mr + 3, nr + 8, nr + 4);
    let x = data(3 * width * x_stride, 14);
    let dy = data(3 * width * dy_stride, 15);
    let rows = [(width * x_stride, 0), (0, 2 * width * dy_stride)];
    let tap_stride = mr * acc_stride + 4;
    let mut acc_a = data(3 * tap_stride, 16);
    let mut acc_b = acc_a.clone();
    let mk = |acc: &mut Vec<f32>| GradStripArgs {
        x: x.as_ptr(),
        dy: dy.as_ptr(),
        rows: &rows,
        width,
        x_stride,
        dy_stride,
        acc: acc.as_mut_ptr(),
        acc_stride,
        tap_stride,
    };
    // SAFETY: both row pairs stay inside `x` and `dy`; the accumulator holds the three taps' rows;
    // the set comes from `simd_sets` (its features were detected).
    unsafe {
        kernel(&mk(&mut acc_a), mr, nb);
        portable::grad_strip(&mk(&mut acc_b), mr, nb);
    }
    compare(&format!("{} grad strip {mr} x {nb}, width {width}", set.name()), &acc_a, &acc_b)
}

/// Whether `set` computes what the portable kernels compute on every block shape it runs.
pub fn agrees_with_portable(set: &KernelSet) -> Result<(), String> {
    for nb in set.widths() {
        for mr in 1..=MR_MAX {
            for (accumulate, fused) in [(false, false), (true, false), (false, true), (true, true)] {
                gather_agrees(set, mr, nb, accumulate, fused)?;
            }
            outer_agrees(set, mr, nb)?;
        }
    }
    for &(nb, rows) in set.grad_strip.map_or(&[][..], |k| k.shapes) {
        for mr in 1..=rows {
            for width in [1, 2, 7] {
                grad_strip_agrees(set, mr, nb, width)?;
            }
        }
    }
    for &(window, nb, c, rows) in set.strip.map_or(&[][..], |k| k.shapes) {
        for mr in 1..=rows {
            for (edges, fused) in [(false, false), (true, false), (false, true), (true, true)] {
                strip_agrees(set, (window, mr, nb, c), edges, fused)?;
            }
        }
    }
    Ok(())
}
