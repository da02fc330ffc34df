//! Batch normalisation over NHWC activations (channel innermost), optionally fused with ReLU.
//!
//! Statistics are accumulated per chunk of pixels in `f32` and across chunks in `f64`, so that
//! a batch of 128 x 32 x 32 pixels keeps PyTorch's precision.

// Numerical kernels index several arrays with one loop variable.
#![allow(clippy::needless_range_loop)]

use rayon::prelude::*;

const CHUNK_PIXELS: usize = 512;

/// Per-channel mean and biased variance of `x` (`[P, c]`), reading `x` from memory once.
///
/// Each chunk of pixels gets its own sum and, in a second pass while the chunk is still in
/// cache, its sum of squared deviations from its own mean (both in `f32`); the chunks are then
/// combined in `f64` and in chunk order: `mean = sum / P`, and the exact decomposition
/// `M2 = sum over chunks of (M2_chunk + n_chunk * (mean_chunk - mean)^2)`, `var = M2 / P`.
pub fn batch_stats(x: &[f32], c: usize) -> (Vec<f64>, Vec<f64>) {
    let p = x.len() / c;
    let parts = x
        .par_chunks(CHUNK_PIXELS * c)
        .map(|chunk| {
            let n = (chunk.len() / c) as f32;
            let mut sum = vec![0f32; c];
            for px in chunk.chunks_exact(c) {
                for (s, &v) in sum.iter_mut().zip(px) {
                    *s += v;
                }
            }
            let mean: Vec<f32> = sum.iter().map(|s| s / n).collect();
            let mut m2 = vec![0f32; c];
            for px in chunk.chunks_exact(c) {
                for ((s, &v), &m) in m2.iter_mut().zip(px).zip(&mean) {
                    let d = v - m;
                    *s += d * d;
                }
            }
            (n as f64, sum, m2)
        })
        .collect::<Vec<_>>();
    let mut total = vec![0f64; c];
    for (_, sum, _) in &parts {
        for (t, &s) in total.iter_mut().zip(sum) {
            *t += s as f64;
        }
    }
    let mean: Vec<f64> = total.iter().map(|s| s / p as f64).collect();
    let mut m2 = vec![0f64; c];
    for (n, sum, part) in &parts {
        for k in 0..c {
            let d = sum[k] as f64 / n - mean[k];
            m2[k] += part[k] as f64 + n * d * d;
        }
    }
    let var = m2.iter().map(|s| s / p as f64).collect();
    (mean, var)
}

/// Sums per-chunk partial vectors in chunk order, so that the result does not depend on how
/// the work was spread over threads (training runs are reproducible bit for bit).
fn ordered_sum(parts: Vec<Vec<f64>>, len: usize) -> Vec<f64> {
    parts.into_iter().fold(vec![0f64; len], add_vec)
}

fn add_vec(mut a: Vec<f64>, b: Vec<f64>) -> Vec<f64> {
    for (x, y) in a.iter_mut().zip(&b) {
        *x += y;
    }
    a
}

/// `out = scale * x + shift` per channel, with ReLU when `relu`.
pub fn affine(x: &[f32], c: usize, scale: &[f32], shift: &[f32], relu: bool, out: &mut [f32]) {
    if relu {
        affine_impl::<true>(x, c, scale, shift, out)
    } else {
        affine_impl::<false>(x, c, scale, shift, out)
    }
}

fn affine_impl<const RELU: bool>(x: &[f32], c: usize, scale: &[f32], shift: &[f32], out: &mut [f32]) {
    out.par_chunks_mut(CHUNK_PIXELS * c).zip(x.par_chunks(CHUNK_PIXELS * c)).for_each(|(o, i)| {
        for (op, ip) in o.chunks_exact_mut(c).zip(i.chunks_exact(c)) {
            for ((o, &v), (&a, &b)) in op.iter_mut().zip(ip).zip(scale.iter().zip(shift)) {
                let r = v * a + b;
                *o = if RELU { r.max(0.0) } else { r };
            }
        }
    });
}

/// `1 / sqrt(var + eps)` in `f64`, rounded once to `f32`.
pub fn invstd(var: f64, eps: f64) -> f32 {
    (1.0 / (var + eps).sqrt()) as f32
}

/// The statistics of one training-mode batch.
#[derive(Clone, Debug)]
pub struct TrainStats {
    /// Per-channel mean.
    pub mean: Vec<f32>,
    /// Per-channel `1 / sqrt(var + eps)` (see [`invstd`]).
    pub invstd: Vec<f32>,
    /// Per-channel biased variance.
    pub var: Vec<f64>,
}

/// The batch statistics of `x` (`[P, c]`) for training-mode batch norm with `eps`.
pub fn train_stats(x: &[f32], c: usize, eps: f64) -> TrainStats {
    let (mean, var) = batch_stats(x, c);
    TrainStats {
        mean: mean.iter().map(|&m| m as f32).collect(),
        invstd: var.iter().map(|&v| invstd(v, eps)).collect(),
        var,
    }
}

/// The affine map of training-mode batch norm: `scale = gamma * invstd`,
/// `shift = beta - mean * scale`.
pub fn train_scale_shift(gamma: &[f32], beta: &[f32], mean: &[f32], invstd: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let scale: Vec<f32> = gamma.iter().zip(invstd).map(|(g, i)| g * i).collect();
    let shift = beta.iter().zip(mean).zip(&scale).map(|((b, m), s)| b - m * s).collect();
    (scale, shift)
}

/// The affine map of eval-mode batch norm with running statistics: `scale = gamma /
/// sqrt(var + eps)` (the square root in `f64`), `shift = beta - mean * scale`.
pub fn eval_scale_shift(
    gamma: &[f32],
    beta: &[f32],
    mean: &[f32],
    var: &[f32],
    eps: f64,
) -> (Vec<f32>, Vec<f32>) {
    let scale: Vec<f32> = gamma.iter().zip(var).map(|(g, &v)| g / ((v as f64 + eps).sqrt() as f32)).collect();
    let shift = beta.iter().zip(mean).zip(&scale).map(|((b, m), s)| b - m * s).collect();
    (scale, shift)
}

/// Training-mode forward: normalises `x` (`[P, c]`) with its batch statistics, then applies
/// ReLU when `relu`; returns the statistics.
pub fn forward_train(
    x: &[f32],
    c: usize,
    (gamma, beta): (&[f32], &[f32]),
    eps: f64,
    relu: bool,
    out: &mut [f32],
) -> TrainStats {
    let stats = train_stats(x, c, eps);
    let (scale, shift) = train_scale_shift(gamma, beta, &stats.mean, &stats.invstd);
    affine(x, c, &scale, &shift, relu, out);
    stats
}

/// What the batch-norm backward pass reads besides the output gradient (all per channel but `x`
/// and `y`, which are `[P, C]`).
#[derive(Clone, Copy, Debug)]
pub struct BnBackward<'a> {
    /// The input.
    pub x: &'a [f32],
    /// The output when a ReLU follows (its gradient mask is `y > 0`).
    pub y: Option<&'a [f32]>,
    /// The scale parameter.
    pub gamma: &'a [f32],
    /// The mean used by the forward pass.
    pub mean: &'a [f32],
    /// The `1 / sqrt(var + eps)` used by the forward pass.
    pub invstd: &'a [f32],
    /// Batch statistics (training mode: the input gradient includes the statistics' own
    /// gradients) or fixed ones (eval mode: it is `gamma * invstd * dz`).
    pub batch_statistics: bool,
}

impl BnBackward<'_> {
    /// Gradients for the output gradient `dy`: returns `(dgamma, dbeta)` and writes `dx` when
    /// requested.
    pub fn run(&self, dy: &[f32], dx: Option<&mut [f32]>) -> (Vec<f32>, Vec<f32>) {
        match self.y {
            Some(y) => backward_impl::<true>(self, y, dy, dx),
            None => backward_impl::<false>(self, dy, dy, dx),
        }
    }
}

/// The gradient through an optional ReLU (mask `y > 0`).
#[inline(always)]
fn masked<const RELU: bool>(d: f32, y: f32) -> f32 {
    if RELU && y <= 0.0 {
        0.0
    } else {
        d
    }
}

/// `y` is the ReLU output when `RELU` (any slice of the right length otherwise).
fn backward_impl<const RELU: bool>(
    b: &BnBackward,
    y: &[f32],
    dy: &[f32],
    dx: Option<&mut [f32]>,
) -> (Vec<f32>, Vec<f32>) {
    let BnBackward { x, gamma, mean, invstd, batch_statistics, .. } = *b;
    let c = gamma.len();
    let p = x.len() / c;
    let chunk = CHUNK_PIXELS * c;
    // Pass 1: dbeta = sum dz, dgamma = sum dz * xhat, with dz = dy * mask.
    let parts = x
        .par_chunks(chunk)
        .zip(dy.par_chunks(chunk))
        .zip(y.par_chunks(chunk))
        .map(|((xc, dc), yc)| {
            let mut acc = vec![0f64; 2 * c];
            let mut sb = vec![0f32; c];
            let mut sg = vec![0f32; c];
            for ((xp, dp), yp) in xc.chunks_exact(c).zip(dc.chunks_exact(c)).zip(yc.chunks_exact(c)) {
                for (((b, g), (&xv, &dv)), ((&yv, &m), &is)) in sb
                    .iter_mut()
                    .zip(sg.iter_mut())
                    .zip(xp.iter().zip(dp))
                    .zip(yp.iter().zip(mean).zip(invstd))
                {
                    let d = masked::<RELU>(dv, yv);
                    *b += d;
                    *g += d * (xv - m) * is;
                }
            }
            for k in 0..c {
                acc[k] += sb[k] as f64;
                acc[c + k] += sg[k] as f64;
            }
            acc
        })
        .collect::<Vec<_>>();
    let sums = ordered_sum(parts, 2 * c);
    let dbeta: Vec<f32> = sums[..c].iter().map(|&v| v as f32).collect();
    let dgamma: Vec<f32> = sums[c..].iter().map(|&v| v as f32).collect();
    if let Some(dx) = dx {
        let m = p as f32;
        let a: Vec<f32> = (0..c).map(|k| gamma[k] * invstd[k]).collect();
        // dx = a * (dz - dbeta/m - xhat * dgamma/m) = a*dz - a*dgamma/m*invstd*(x - mean) - a*dbeta/m
        let f = if batch_statistics { 1.0 } else { 0.0 };
        let k1: Vec<f32> = (0..c).map(|k| f * a[k] * dgamma[k] / m * invstd[k]).collect();
        let k0: Vec<f32> = (0..c).map(|k| f * a[k] * dbeta[k] / m - k1[k] * mean[k]).collect();
        dx.par_chunks_mut(chunk)
            .zip(x.par_chunks(chunk))
            .zip(dy.par_chunks(chunk))
            .zip(y.par_chunks(chunk))
            .for_each(|(((oc, xc), dc), yc)| {
                for (((op, xp), dp), yp) in oc
                    .chunks_exact_mut(c)
                    .zip(xc.chunks_exact(c))
                    .zip(dc.chunks_exact(c))
                    .zip(yc.chunks_exact(c))
                {
                    for ((o, (&xv, &dv)), (&yv, ((&ak, &k1v), &k0v))) in
                        op.iter_mut().zip(xp.iter().zip(dp)).zip(yp.iter().zip(a.iter().zip(&k1).zip(&k0)))
                    {
                        *o = ak * masked::<RELU>(dv, yv) - k1v * xv - k0v;
                    }
                }
            });
    }
    (dgamma, dbeta)
}
