//! Batch statistics: per-chunk moments of `[P, c]` values combined exactly in `f64`
//! ([`Moments`]), chunked by image row ([`chunk_pixels`]), and the register-blocked reductions
//! that the batch-norm passes share.

// Numerical kernels index several arrays with one loop variable.
#![allow(clippy::needless_range_loop)]

use rayon::prelude::*;

use super::CHUNK_PIXELS;
use crate::ops::kernels;

/// Per-chunk moments of `[P, c]` values, chunks in order: each chunk's pixel count, and per
/// channel its sum and its sum of squared deviations from its own mean (both `f32`, the second
/// computed in a second pass over the chunk while it is in cache).
///
/// [`Moments::mean_var`] combines them in `f64` and in chunk order: `mean = sum / P`, and the
/// exact decomposition `M2 = sum over chunks of (M2_chunk + n_chunk * (mean_chunk - mean)^2)`,
/// `var = M2 / P`. The result depends on the chunks (not on which thread summarised them), so
/// whoever computes them chooses chunks that do not depend on the thread count.
#[derive(Clone, Debug, Default)]
pub struct Moments {
    c: usize,
    counts: Vec<usize>,
    /// `[chunks, c]` sums.
    sums: Vec<f32>,
    /// `[chunks, c]` sums of squared deviations.
    m2: Vec<f32>,
}

impl Moments {
    /// No chunks yet, `c` channels.
    pub fn new(c: usize) -> Self {
        Self { c, ..Self::default() }
    }

    /// No chunks yet, `c` channels, room for `chunks` chunks.
    pub fn with_capacity(c: usize, chunks: usize) -> Self {
        let (counts, sums, m2) =
            (Vec::with_capacity(chunks), Vec::with_capacity(chunks * c), Vec::with_capacity(chunks * c));
        Self { c, counts, sums, m2 }
    }

    /// Every part's chunks, part after part (parts of `c` channels).
    pub fn concat(c: usize, parts: impl IntoIterator<Item = Moments>) -> Self {
        let parts: Vec<Moments> = parts.into_iter().collect();
        let chunks = parts.iter().map(Moments::chunks).sum();
        parts.into_iter().fold(Moments::with_capacity(c, chunks), Moments::append)
    }

    /// The moments of `x` (`[P, c]`) in chunks of `chunk` pixels (the last may be shorter; an
    /// NHWC activation's chunk is one image row, see [`chunk_pixels`]), summarised in
    /// parallel.
    pub fn of(x: &[f32], c: usize, chunk: usize) -> Self {
        let chunk = chunk.max(1) * c;
        let per_task = CHUNK_PIXELS * c / chunk.max(1) * chunk;
        let parts: Vec<Moments> = x
            .par_chunks(per_task.max(chunk))
            .map(|rows| {
                let mut m = Moments::with_capacity(c, rows.len().div_ceil(chunk));
                rows.chunks(chunk).for_each(|row| m.push(row));
                m
            })
            .collect();
        Moments::concat(c, parts)
    }

    /// Adds one chunk (`[n, c]`, `n > 0`) after the others.
    pub fn push(&mut self, chunk: &[f32]) {
        let c = self.c;
        if c == 0 || chunk.len() < c {
            return;
        }
        let n = chunk.len() / c;
        let at = self.sums.len();
        self.sums.resize(at + c, 0.0);
        self.m2.resize(at + c, 0.0);
        let (sum, m2) = (&mut self.sums[at..], &mut self.m2[at..]);
        kernels::vectorised(
            #[inline(always)]
            || {
                // Tile by tile, so that a wide chunk is not read from memory once per block.
                let tiles = || chunk.chunks(tile_pixels(c) * c);
                tiles().for_each(|t| by_channel_blocks!(c, k0, B => block_sums::<B>(t, c, k0, sum)));
                tiles().for_each(|t| by_channel_blocks!(c, k0, B => block_m2::<B>(t, (c, n), k0, sum, m2)));
            },
        );
        self.counts.push(n);
    }

    /// `self`'s chunks followed by `other`'s.
    pub fn append(mut self, other: Moments) -> Self {
        if other.counts.is_empty() {
            return self;
        }
        assert_eq!(self.c, other.c, "moments of different channel counts");
        self.counts.extend(other.counts);
        self.sums.extend(other.sums);
        self.m2.extend(other.m2);
        self
    }

    /// Values summarised: pixels times channels.
    pub fn len(&self) -> usize {
        self.counts.iter().sum::<usize>() * self.c
    }

    /// Chunks summarised.
    pub fn chunks(&self) -> usize {
        self.counts.len()
    }

    /// Whether no pixel has been summarised.
    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }

    /// Per-channel mean and biased variance of every chunk together (see [`Moments`]).
    pub fn mean_var(&self) -> (Vec<f64>, Vec<f64>) {
        let c = self.c;
        let p = self.counts.iter().sum::<usize>() as f64;
        let mut total = vec![0f64; c];
        for sum in self.sums.chunks_exact(c) {
            for (t, &s) in total.iter_mut().zip(sum) {
                *t += s as f64;
            }
        }
        let mean: Vec<f64> = total.iter().map(|s| s / p).collect();
        let mut m2 = vec![0f64; c];
        for ((&n, sum), part) in
            self.counts.iter().zip(self.sums.chunks_exact(c)).zip(self.m2.chunks_exact(c))
        {
            let n = n as f64;
            for k in 0..c {
                let d = sum[k] as f64 / n - mean[k];
                m2[k] += part[k] as f64 + n * d * d;
            }
        }
        let var = m2.iter().map(|s| s / p).collect();
        (mean, var)
    }
}

/// Independent sums per channel in [`reduce_pixels`] (pixel `i` goes to sum `i % SUMS`),
/// so that consecutive additions do not wait for each other.
const SUMS: usize = 4;

/// Values per array that one tile of a chunk holds: the blocks of channels (see
/// `by_channel_blocks!`) each go over a tile while it is in the L2 cache.
const TILE_VALUES: usize = 1 << 14;

/// Pixels per tile of `c` channels (see [`TILE_VALUES`]).
pub(super) fn tile_pixels(c: usize) -> usize {
    (TILE_VALUES / c.max(1)).max(1)
}

/// Adds the sums of channels `k0..k0 + B` of `tile` (`[n, c]`) to `sum` (see
/// [`reduce_pixels`]); returns `B`.
#[inline(always)]
fn block_sums<const B: usize>(tile: &[f32], c: usize, k0: usize, sum: &mut [f32]) -> usize {
    let s = reduce_pixels(tile.len() / c, [0f32; B], add_arrays, |a, i| {
        for (a, &v) in a.iter_mut().zip(lanes::<B>(tile, i * c + k0)) {
            *a += v;
        }
    });
    for (t, v) in sum[k0..k0 + B].iter_mut().zip(s) {
        *t += v;
    }
    B
}

/// Adds the sums of squared deviations of channels `k0..k0 + B` of `tile` (`[.., c]`) from
/// the mean `sum / n` of its chunk of `n` pixels to `m2`; returns `B`.
#[inline(always)]
fn block_m2<const B: usize>(
    tile: &[f32],
    (c, n): (usize, usize),
    k0: usize,
    sum: &[f32],
    m2: &mut [f32],
) -> usize {
    let mean: [f32; B] = std::array::from_fn(|k| sum[k0 + k] / n as f32);
    let q = reduce_pixels(tile.len() / c, [0f32; B], add_arrays, |a, i| {
        for ((a, &v), &m) in a.iter_mut().zip(lanes::<B>(tile, i * c + k0)).zip(&mean) {
            let d = v - m;
            *a += d * d;
        }
    });
    for (t, v) in m2[k0..k0 + B].iter_mut().zip(q) {
        *t += v;
    }
    B
}

/// The `B` values of `v` from `at`, as an array reference (one vector load where `B` is a
/// vector's width).
#[inline(always)]
pub(super) fn lanes<const B: usize>(v: &[f32], at: usize) -> &[f32; B] {
    v[at..at + B].try_into().expect("B values")
}

/// Element-wise sum of two arrays.
#[inline(always)]
pub(super) fn add_arrays<const B: usize>(a: [f32; B], b: [f32; B]) -> [f32; B] {
    std::array::from_fn(|k| a[k] + b[k])
}

/// `f(acc, i)` for every pixel `i < n`, pixel `i` into accumulator `i % SUMS` (independent
/// chains of additions, kept in registers), the [`SUMS`] accumulators then merged pairwise.
#[inline(always)]
pub(super) fn reduce_pixels<A: Copy>(
    n: usize,
    zero: A,
    merge: impl Fn(A, A) -> A,
    f: impl Fn(&mut A, usize),
) -> A {
    let (mut a0, mut a1, mut a2, mut a3) = (zero, zero, zero, zero);
    let full = n / SUMS * SUMS;
    for i in (0..full).step_by(SUMS) {
        f(&mut a0, i);
        f(&mut a1, i + 1);
        f(&mut a2, i + 2);
        f(&mut a3, i + 3);
    }
    for (i, a) in (full..n).zip([&mut a0, &mut a1, &mut a2]) {
        f(a, i);
    }
    merge(merge(a0, a1), merge(a2, a3))
}

/// The pixels of a chunk of batch statistics for an activation of `dims`: one image row (`W`)
/// of an NHWC activation, whichever pass computes them (the strip pass summarises its output
/// row by row as it writes it), so that every path sums the same chunks in the same order and
/// gets the same statistics bit for bit; 512 pixels for other shapes.
pub fn chunk_pixels(dims: &[usize]) -> usize {
    match dims {
        &[_, _, w, _] => w,
        _ => CHUNK_PIXELS,
    }
}

/// Per-channel mean and biased variance of `x` (`[P, c]`) summarised in chunks of `chunk`
/// pixels, reading `x` from memory once (see [`Moments`]).
pub fn batch_stats(x: &[f32], c: usize, chunk: usize) -> (Vec<f64>, Vec<f64>) {
    Moments::of(x, c, chunk).mean_var()
}
