//! Batch normalisation over NHWC activations (channel innermost), optionally fused with ReLU
//! or with a residual add and ReLU.
//!
//! Statistics are accumulated per image row in `f32` and across rows in `f64`, so that a batch
//! of 128 x 32 x 32 pixels keeps PyTorch's precision ([`Moments`], [`chunk_pixels`]).

// Numerical kernels index several arrays with one loop variable.
#![allow(clippy::needless_range_loop)]

use rayon::prelude::*;

use super::kernels;

/// Pixels per task of the element-wise passes, and per chunk of batch statistics of values
/// without image rows (see [`chunk_pixels`]).
const CHUNK_PIXELS: usize = 512;

/// Runs `$body` (which handles channels `$k0..$k0 + $b` and returns `$b`) over channels
/// `0..$c` in blocks of `$b` = 16, 8, 4 or 1 channels, widest first: the sums of one block stay
/// in registers over a chunk's pixels.
macro_rules! by_channel_blocks {
    ($c:expr, $k0:ident, $b:ident => $body:expr) => {{
        let mut $k0 = 0;
        while $k0 < $c {
            $k0 += match $c - $k0 {
                16.. => {
                    const $b: usize = 16;
                    $body
                }
                8.. => {
                    const $b: usize = 8;
                    $body
                }
                4.. => {
                    const $b: usize = 4;
                    $body
                }
                _ => {
                    const $b: usize = 1;
                    $body
                }
            };
        }
    }};
}

mod stats;

use stats::{add_arrays, lanes, reduce_pixels, tile_pixels};
pub use stats::{batch_stats, chunk_pixels, Moments};

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

/// What a batch norm's affine map is followed by before its output is stored.
#[derive(Clone, Copy, Debug)]
pub enum Then<'a> {
    /// Nothing: `out = scale * x + shift`.
    Store,
    /// ReLU: `out = max(scale * x + shift, 0)`.
    Relu,
    /// A residual add and ReLU: `out = max(scale * x + shift + residual, 0)` (`residual` shaped
    /// like `x`), the pass a residual block's second batch norm and the add after it make.
    AddRelu(&'a [f32]),
}

impl Then<'_> {
    /// [`Then::Relu`] when `relu`, [`Then::Store`] otherwise.
    pub fn relu_if(relu: bool) -> Self {
        if relu {
            Then::Relu
        } else {
            Then::Store
        }
    }
}

/// `out = scale * x + shift` per channel, with ReLU when `relu`.
pub fn affine(x: &[f32], c: usize, scale: &[f32], shift: &[f32], relu: bool, out: &mut [f32]) {
    apply(x, c, (scale, shift), Then::relu_if(relu), out)
}

/// `out = then(scale * x + shift)` per channel over `x` (`[P, c]`).
pub fn apply(x: &[f32], c: usize, (scale, shift): (&[f32], &[f32]), then: Then, out: &mut [f32]) {
    assert_eq!(x.len(), out.len(), "batch norm input and output lengths");
    let chunk = CHUNK_PIXELS * c;
    let chunks = out.par_chunks_mut(chunk).zip(x.par_chunks(chunk));
    match then {
        Then::AddRelu(residual) => {
            assert_eq!(residual.len(), x.len(), "residual length");
            chunks.zip(residual.par_chunks(chunk)).for_each(|((o, i), r)| {
                kernels::vectorised(
                    #[inline(always)]
                    || {
                        for ((op, ip), rp) in
                            o.chunks_exact_mut(c).zip(i.chunks_exact(c)).zip(r.chunks_exact(c))
                        {
                            affine_pixel(op, ip, Some(rp), (scale, shift), true);
                        }
                    },
                )
            })
        }
        Then::Relu | Then::Store => {
            let relu = matches!(then, Then::Relu);
            chunks.for_each(|(o, i)| {
                kernels::vectorised(
                    #[inline(always)]
                    || {
                        for (op, ip) in o.chunks_exact_mut(c).zip(i.chunks_exact(c)) {
                            if relu {
                                affine_pixel(op, ip, None, (scale, shift), true);
                            } else {
                                affine_pixel(op, ip, None, (scale, shift), false);
                            }
                        }
                    },
                )
            })
        }
    }
}

/// One pixel of [`apply`]: `op = scale * ip + shift (+ rp)`, then ReLU when `relu` (always with
/// a residual).
#[inline(always)]
fn affine_pixel(
    op: &mut [f32],
    ip: &[f32],
    rp: Option<&[f32]>,
    (scale, shift): (&[f32], &[f32]),
    relu: bool,
) {
    match rp {
        Some(rp) => {
            for (((o, &v), &r), (&a, &b)) in op.iter_mut().zip(ip).zip(rp).zip(scale.iter().zip(shift)) {
                *o = (v * a + b + r).max(0.0);
            }
        }
        None => {
            for ((o, &v), (&a, &b)) in op.iter_mut().zip(ip).zip(scale.iter().zip(shift)) {
                let r = v * a + b;
                *o = if relu { r.max(0.0) } else { r };
            }
        }
    }
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

/// The batch statistics of `x` (`[P, c]`, summarised in chunks of `chunk` pixels, see
/// [`chunk_pixels`]) for training-mode batch norm with `eps`.
pub fn train_stats(x: &[f32], c: usize, chunk: usize, eps: f64) -> TrainStats {
    TrainStats::of(&Moments::of(x, c, chunk), eps)
}

impl TrainStats {
    /// The statistics of the values `moments` summarised, for batch norm with `eps`.
    pub fn of(moments: &Moments, eps: f64) -> Self {
        let (mean, var) = moments.mean_var();
        TrainStats {
            mean: mean.iter().map(|&m| m as f32).collect(),
            invstd: var.iter().map(|&v| invstd(v, eps)).collect(),
            var,
        }
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

/// Training-mode forward: normalises `x` (`[P, c]`) with its batch statistics (from `moments`
/// when the caller summarised `x` as it wrote it, see [`Moments`]; computed here otherwise, in
/// chunks of `chunk` pixels), then applies `then`; returns the statistics.
pub fn forward_train(
    x: &[f32],
    (c, chunk): (usize, usize),
    (gamma, beta): (&[f32], &[f32]),
    eps: f64,
    (moments, then): (Option<&Moments>, Then),
    out: &mut [f32],
) -> TrainStats {
    let stats = match moments {
        Some(m) => {
            assert_eq!(m.len(), x.len(), "moments of another length than the batch norm input");
            TrainStats::of(m, eps)
        }
        None => train_stats(x, c, chunk, eps),
    };
    let (scale, shift) = train_scale_shift(gamma, beta, &stats.mean, &stats.invstd);
    apply(x, c, (&scale, &shift), then, out);
    stats
}

/// What the batch-norm backward pass reads besides the output gradient (all per channel but `x`
/// and `y`, which are `[P, C]`).
#[derive(Clone, Copy, Debug)]
pub struct BnBackward<'a> {
    /// The input.
    pub x: &'a [f32],
    /// The ReLU that followed, if any: where its gradient mask comes from.
    pub relu: Relu<'a>,
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

/// The ReLU after a batch norm, as its backward pass sees it.
#[derive(Clone, Copy, Debug)]
pub enum Relu<'a> {
    /// None followed.
    None,
    /// Its output `y` (`[P, C]`): the gradient mask is `y > 0`.
    Output(&'a [f32]),
    /// The forward pass's affine map `(scale, shift)`: the mask `scale * x + shift > 0` is
    /// recomputed from the input, which the pass reads anyway, so the output is not read. With
    /// the very `scale` and `shift` that [`apply`] used, it is the same mask bit for bit (the
    /// output is `(scale * x + shift).max(0)`, positive exactly where its argument is).
    Affine(&'a [f32], &'a [f32]),
}

/// [`Relu`] as a constant parameter of the backward pass's loops.
const NO_RELU: u8 = 0;
const RELU_OUTPUT: u8 = 1;
const RELU_AFFINE: u8 = 2;

impl BnBackward<'_> {
    /// Gradients for the output gradient `dy`: returns `(dgamma, dbeta)` and writes `dx` when
    /// requested.
    pub fn run(&self, dy: &[f32], dx: Option<&mut [f32]>) -> (Vec<f32>, Vec<f32>) {
        let c = self.gamma.len();
        let zeros = vec![0f32; c];
        let none = (&zeros[..], &zeros[..]);
        match self.relu {
            Relu::None => backward_impl::<NO_RELU>(self, dy, none, dy, dx),
            Relu::Output(y) => backward_impl::<RELU_OUTPUT>(self, y, none, dy, dx),
            Relu::Affine(scale, shift) => {
                assert!(scale.len() == c && shift.len() == c, "ReLU mask's affine map of {c} channels");
                backward_impl::<RELU_AFFINE>(self, dy, (scale, shift), dy, dx)
            }
        }
    }
}

/// The gradient `d` through the ReLU of mode `M` at one value: `y` its output, `x` the batch
/// norm's input and `(a, b)` its channel's affine map.
#[inline(always)]
fn masked<const M: u8>(d: f32, y: f32, x: f32, (a, b): (f32, f32)) -> f32 {
    let off = match M {
        RELU_OUTPUT => y <= 0.0,
        // The output recomputed as the forward pass computed it (a NaN gives 0: masked).
        RELU_AFFINE => (x * a + b).max(0.0) <= 0.0,
        _ => false,
    };
    if off {
        0.0
    } else {
        d
    }
}

/// One tile of the backward pass's first pass, from channel `k0`.
struct Pass1<'a> {
    x: &'a [f32],
    dy: &'a [f32],
    y: &'a [f32],
    c: usize,
    k0: usize,
    mean: &'a [f32],
    invstd: &'a [f32],
    affine: (&'a [f32], &'a [f32]),
}

impl Pass1<'_> {
    /// Adds `sum dz` to `sb` and `sum dz * xhat` to `sg` for channels `k0..k0 + B`, with `dz`
    /// the gradient `dy` through the ReLU of mode `M` (see [`masked`], [`reduce_pixels`]);
    /// returns `B`.
    #[inline(always)]
    fn sums<const B: usize, const M: u8>(&self, sb: &mut [f32], sg: &mut [f32]) -> usize {
        let Pass1 { x, dy, y, c, k0, .. } = *self;
        let m: &[f32; B] = lanes(self.mean, k0);
        let is: &[f32; B] = lanes(self.invstd, k0);
        let (sa, sh): (&[f32; B], &[f32; B]) = (lanes(self.affine.0, k0), lanes(self.affine.1, k0));
        let merge =
            |(a, b): ([f32; B], [f32; B]), (e, f): ([f32; B], [f32; B])| (add_arrays(a, e), add_arrays(b, f));
        let (b, g) = reduce_pixels(x.len() / c, ([0f32; B], [0f32; B]), merge, |(b, g), i| {
            let at = i * c + k0;
            let (xv, dv, yv) = (lanes::<B>(x, at), lanes::<B>(dy, at), lanes::<B>(y, at));
            for k in 0..B {
                let d = masked::<M>(dv[k], yv[k], xv[k], (sa[k], sh[k]));
                b[k] += d;
                g[k] += d * (xv[k] - m[k]) * is[k];
            }
        });
        for ((tb, tg), (vb, vg)) in
            sb[k0..k0 + B].iter_mut().zip(&mut sg[k0..k0 + B]).zip(b.into_iter().zip(g))
        {
            *tb += vb;
            *tg += vg;
        }
        B
    }
}

/// `y` is the ReLU output in mode [`RELU_OUTPUT`] (any slice of the right length otherwise),
/// `affine` the forward's affine map in mode [`RELU_AFFINE`] (any `c` values otherwise).
fn backward_impl<const M: u8>(
    b: &BnBackward,
    y: &[f32],
    affine: (&[f32], &[f32]),
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
            let (mut sb, mut sg) = (vec![0f32; c], vec![0f32; c]);
            kernels::vectorised(
                #[inline(always)]
                || {
                    // Tile by tile, so that a wide chunk is not read from memory once per block.
                    let len = tile_pixels(c) * c;
                    for ((x, dy), y) in xc.chunks(len).zip(dc.chunks(len)).zip(yc.chunks(len)) {
                        let tile = |k0| Pass1 { x, dy, y, c, k0, mean, invstd, affine };
                        by_channel_blocks!(c, k0, B => tile(k0).sums::<B, M>(&mut sb, &mut sg))
                    }
                },
            );
            sb.iter().chain(&sg).map(|&v| v as f64).collect::<Vec<f64>>()
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
                kernels::vectorised(
                    #[inline(always)]
                    || {
                        for (((op, xp), dp), yp) in oc
                            .chunks_exact_mut(c)
                            .zip(xc.chunks_exact(c))
                            .zip(dc.chunks_exact(c))
                            .zip(yc.chunks_exact(c))
                        {
                            let per_channel = a.iter().zip(&k1).zip(&k0).zip(affine.0.iter().zip(affine.1));
                            for ((o, (&xv, &dv)), (&yv, (((&ak, &k1v), &k0v), (&sa, &sh)))) in
                                op.iter_mut().zip(xp.iter().zip(dp)).zip(yp.iter().zip(per_channel))
                            {
                                *o = ak * masked::<M>(dv, yv, xv, (sa, sh)) - k1v * xv - k0v;
                            }
                        }
                    },
                )
            });
    }
    (dgamma, dbeta)
}
