//! Small NHWC kernels: residual add + ReLU, the option-A shortcut, pooling.

// Numerical kernels index several arrays with one loop variable.
#![allow(clippy::needless_range_loop)]

use rayon::prelude::*;

const CHUNK: usize = 1 << 16;

/// `out = max(a + b, 0)`.
pub fn add_relu(a: &[f32], b: &[f32], out: &mut [f32]) {
    out.par_chunks_mut(CHUNK).zip(a.par_chunks(CHUNK)).zip(b.par_chunks(CHUNK)).for_each(|((o, a), b)| {
        for ((o, &a), &b) in o.iter_mut().zip(a).zip(b) {
            *o = (a + b).max(0.0);
        }
    });
}

/// `out = dy * (y > 0)`: the gradient through a ReLU given its output `y`.
pub fn relu_backward(y: &[f32], dy: &[f32], out: &mut [f32]) {
    out.par_chunks_mut(CHUNK).zip(y.par_chunks(CHUNK)).zip(dy.par_chunks(CHUNK)).for_each(|((o, y), d)| {
        for ((o, &y), &d) in o.iter_mut().zip(y).zip(d) {
            *o = if y > 0.0 { d } else { 0.0 };
        }
    });
}

/// Option-A shortcut: `x[N, H, W, C]` subsampled by 2 (`x[:, ::2, ::2]`) and zero-padded to
/// `C + 2 * pad` channels (`pad` on each side): output `[N, ceil(H/2), ceil(W/2), C + 2 pad]`.
pub fn shortcut_forward(x: &[f32], n: usize, h: usize, w: usize, c: usize, pad: usize, out: &mut [f32]) {
    let (oh, ow, oc) = (h.div_ceil(2), w.div_ceil(2), c + 2 * pad);
    out.par_chunks_mut(oh * ow * oc).enumerate().take(n).for_each(|(ni, o)| {
        for y in 0..oh {
            for xo in 0..ow {
                let dst = &mut o[(y * ow + xo) * oc..(y * ow + xo + 1) * oc];
                let src = &x[((ni * h + 2 * y) * w + 2 * xo) * c..][..c];
                dst[..pad].fill(0.0);
                dst[pad..pad + c].copy_from_slice(src);
                dst[pad + c..].fill(0.0);
            }
        }
    });
}

/// Gradient of [`shortcut_forward`] with respect to `x`.
pub fn shortcut_backward(dy: &[f32], n: usize, h: usize, w: usize, c: usize, pad: usize, dx: &mut [f32]) {
    let (oh, ow, oc) = (h.div_ceil(2), w.div_ceil(2), c + 2 * pad);
    dx.par_chunks_mut(h * w * c).enumerate().take(n).for_each(|(ni, d)| {
        d.fill(0.0);
        for y in 0..oh {
            for xo in 0..ow {
                let src = &dy[((ni * oh + y) * ow + xo) * oc + pad..][..c];
                d[((2 * y) * w + 2 * xo) * c..][..c].copy_from_slice(src);
            }
        }
    });
}

/// Global average pooling `[N, H, W, C] -> [N, C]`.
pub fn avg_pool_forward(x: &[f32], n: usize, hw: usize, c: usize, out: &mut [f32]) {
    out.par_chunks_mut(c).enumerate().take(n).for_each(|(ni, o)| {
        let mut acc = vec![0f32; c];
        for px in x[ni * hw * c..(ni + 1) * hw * c].chunks_exact(c) {
            for (a, &v) in acc.iter_mut().zip(px) {
                *a += v;
            }
        }
        for (o, a) in o.iter_mut().zip(&acc) {
            *o = a / hw as f32;
        }
    });
}

/// Gradient of [`avg_pool_forward`].
pub fn avg_pool_backward(dy: &[f32], n: usize, hw: usize, c: usize, dx: &mut [f32]) {
    dx.par_chunks_mut(hw * c).enumerate().take(n).for_each(|(ni, d)| {
        let g: Vec<f32> = dy[ni * c..(ni + 1) * c].iter().map(|v| v / hw as f32).collect();
        for px in d.chunks_exact_mut(c) {
            px.copy_from_slice(&g);
        }
    });
}

/// Max pooling with a `k x k` window, stride `s`, padding `p` (padding never wins):
/// returns the output and, for each output value, the flat input index of its maximum.
#[allow(clippy::too_many_arguments)]
pub fn max_pool_forward(
    x: &[f32],
    n: usize,
    h: usize,
    w: usize,
    c: usize,
    k: usize,
    s: usize,
    p: usize,
    out: &mut [f32],
    argmax: &mut [u32],
) {
    let oh = (h + 2 * p - k) / s + 1;
    let ow = (w + 2 * p - k) / s + 1;
    out.par_chunks_mut(oh * ow * c).zip(argmax.par_chunks_mut(oh * ow * c)).enumerate().take(n).for_each(
        |(ni, (o, am))| {
            for y in 0..oh {
                for xo in 0..ow {
                    let base = (y * ow + xo) * c;
                    o[base..base + c].fill(f32::NEG_INFINITY);
                    for ky in 0..k {
                        let iy = (y * s + ky) as isize - p as isize;
                        if iy < 0 || iy >= h as isize {
                            continue;
                        }
                        for kx in 0..k {
                            let ix = (xo * s + kx) as isize - p as isize;
                            if ix < 0 || ix >= w as isize {
                                continue;
                            }
                            let src = ((ni * h + iy as usize) * w + ix as usize) * c;
                            for ch in 0..c {
                                let v = x[src + ch];
                                // NaN propagates like PyTorch: a NaN replaces the current maximum.
                                if v > o[base + ch] || v.is_nan() {
                                    o[base + ch] = v;
                                    am[base + ch] = (src + ch) as u32;
                                }
                            }
                        }
                    }
                }
            }
        },
    );
}

/// Gradient of [`max_pool_forward`]: scatters `dy` to the argmax positions of each image.
pub fn max_pool_backward(
    dy: &[f32],
    argmax: &[u32],
    n: usize,
    in_per_image: usize,
    out_per_image: usize,
    dx: &mut [f32],
) {
    dx.par_chunks_mut(in_per_image).enumerate().take(n).for_each(|(ni, d)| {
        d.fill(0.0);
        let base = ni * in_per_image;
        for (g, &i) in dy[ni * out_per_image..(ni + 1) * out_per_image]
            .iter()
            .zip(&argmax[ni * out_per_image..(ni + 1) * out_per_image])
        {
            d[i as usize - base] += g;
        }
    });
}
