//! Small NHWC kernels: residual add + ReLU, the option-A shortcut, pooling.

// Numerical kernels index several arrays with one loop variable.
#![allow(clippy::needless_range_loop)]

use rayon::prelude::*;

use super::kernels;

const CHUNK: usize = 1 << 16;

/// `out = max(a + b, 0)`.
pub fn add_relu(a: &[f32], b: &[f32], out: &mut [f32]) {
    out.par_chunks_mut(CHUNK).zip(a.par_chunks(CHUNK)).zip(b.par_chunks(CHUNK)).for_each(|((o, a), b)| {
        kernels::vectorised(
            #[inline(always)]
            || {
                for ((o, &a), &b) in o.iter_mut().zip(a).zip(b) {
                    *o = (a + b).max(0.0);
                }
            },
        )
    });
}

/// `out = dy * (y > 0)`: the gradient through a ReLU given its output `y`.
pub fn relu_backward(y: &[f32], dy: &[f32], out: &mut [f32]) {
    out.par_chunks_mut(CHUNK).zip(y.par_chunks(CHUNK)).zip(dy.par_chunks(CHUNK)).for_each(|((o, y), d)| {
        kernels::vectorised(
            #[inline(always)]
            || {
                for ((o, &y), &d) in o.iter_mut().zip(y).zip(d) {
                    *o = if y > 0.0 { d } else { 0.0 };
                }
            },
        )
    });
}

/// Dimensions of an NHWC activation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Nhwc {
    /// Batch size.
    pub n: usize,
    /// Height.
    pub h: usize,
    /// Width.
    pub w: usize,
    /// Channels.
    pub c: usize,
}

impl Nhwc {
    /// From `[N, H, W, C]` dims.
    pub fn of(dims: [usize; 4]) -> Self {
        let [n, h, w, c] = dims;
        Self { n, h, w, c }
    }
    /// As `[N, H, W, C]` dims.
    pub fn dims(&self) -> [usize; 4] {
        [self.n, self.h, self.w, self.c]
    }
    /// Number of values.
    pub fn len(&self) -> usize {
        self.n * self.h * self.w * self.c
    }
    /// Whether there are no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Output `(H, W, C)` of the option-A shortcut of an `h x w x c` input with `pad` channels of
/// zeros on each side: `(ceil(h / 2), ceil(w / 2), c + 2 pad)`.
pub fn shortcut_dims(h: usize, w: usize, c: usize, pad: usize) -> (usize, usize, usize) {
    (h.div_ceil(2), w.div_ceil(2), c + 2 * pad)
}

/// Option-A shortcut: `x` subsampled by 2 (`x[:, ::2, ::2]`) and zero-padded to `C + 2 * pad`
/// channels (`pad` on each side), see [`shortcut_dims`].
pub fn shortcut_forward(x: &[f32], s: Nhwc, pad: usize, out: &mut [f32]) {
    let (Nhwc { n, h, w, c }, (oh, ow, oc)) = (s, shortcut_dims(s.h, s.w, s.c, pad));
    assert_eq!((x.len(), out.len()), (s.len(), n * oh * ow * oc), "shortcut lengths");
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

/// Gradient of [`shortcut_forward`] with respect to `x` (`s` is the input's shape).
pub fn shortcut_backward(dy: &[f32], s: Nhwc, pad: usize, dx: &mut [f32]) {
    shortcut_backward_into(dy, s, pad, dx, false)
}

/// [`shortcut_backward`] added to `dx` (only the pixels the shortcut read are touched).
pub fn shortcut_backward_acc(dy: &[f32], s: Nhwc, pad: usize, dx: &mut [f32]) {
    shortcut_backward_into(dy, s, pad, dx, true)
}

fn shortcut_backward_into(dy: &[f32], s: Nhwc, pad: usize, dx: &mut [f32], accumulate: bool) {
    let (Nhwc { n, h, w, c }, (oh, ow, oc)) = (s, shortcut_dims(s.h, s.w, s.c, pad));
    assert_eq!((dy.len(), dx.len()), (n * oh * ow * oc, s.len()), "shortcut gradient lengths");
    dx.par_chunks_mut(h * w * c).enumerate().take(n).for_each(|(ni, d)| {
        if !accumulate {
            d.fill(0.0);
        }
        for y in 0..oh {
            for xo in 0..ow {
                let src = &dy[((ni * oh + y) * ow + xo) * oc + pad..][..c];
                let dst = &mut d[((2 * y) * w + 2 * xo) * c..][..c];
                if accumulate {
                    dst.iter_mut().zip(src).for_each(|(d, s)| *d += s);
                } else {
                    dst.copy_from_slice(src);
                }
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

/// A pooling window: `k x k`, stride, zero padding on every side (padding never wins).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Window {
    /// Window side.
    pub k: usize,
    /// Stride.
    pub stride: usize,
    /// Padding on every side.
    pub pad: usize,
}

impl Window {
    /// Output shape of the window over `s`, or `None` when it does not fit (see
    /// [`super::window_out`]; padding must not exceed half the window).
    pub fn output(&self, s: Nhwc) -> Option<Nhwc> {
        let oh = super::window_out(s.h, self.k, self.stride, self.pad)?;
        let ow = super::window_out(s.w, self.k, self.stride, self.pad)?;
        (2 * self.pad <= self.k).then_some(Nhwc { h: oh, w: ow, ..s })
    }

    /// The input positions (along one axis of `n`) that output position `o` reads, in window
    /// order, skipping the padding.
    pub(crate) fn inputs(&self, o: usize, n: usize) -> impl Iterator<Item = usize> {
        let (first, pad) = (o * self.stride, self.pad);
        (first..first + self.k).filter_map(move |i| i.checked_sub(pad).filter(|&i| i < n))
    }
}

/// Whether `v` replaces `max` as the running maximum of a window: a larger value, or a NaN
/// (which then propagates, as in PyTorch).
#[inline(always)]
fn replaces_max(v: f32, max: f32) -> bool {
    // Both tests always (`|`, not `||`): a branch-free select the compiler vectorises.
    (v > max) | v.is_nan()
}

/// Max pooling of `x` (shape `s`) with window `win` (which must fit, see [`Window::output`]):
/// writes the output and, for each output value, the flat input index of its maximum (the first
/// in window order; the last NaN where there is one; a window of `-inf` alone points at its first
/// input). Spread over output rows, with a branch-free channel loop that vectorises.
pub fn max_pool_forward(x: &[f32], s: Nhwc, win: Window, out: &mut [f32], argmax: &mut [u32]) {
    let o = win.output(s).expect("the pooling window fits the input");
    let Nhwc { h, w, c, .. } = s;
    assert_eq!((x.len(), out.len(), argmax.len()), (s.len(), o.len(), o.len()), "max pool lengths");
    assert!(s.len() <= u32::MAX as usize, "max pool: input too large for 32-bit indices");
    let (oh, ow) = (o.h, o.w);
    out.par_chunks_mut(ow * c).zip(argmax.par_chunks_mut(ow * c)).enumerate().for_each(
        |(r, (orow, arow))| {
            let (ni, y) = (r / oh, r % oh);
            // The window's inputs (first offsets) in window order; the channel loop keeps the tap
            // number (the same for every channel, so its selects vectorise), made an index after.
            let mut taps: Vec<usize> = Vec::with_capacity(win.k * win.k);
            for (xo, (acc, am)) in orow.chunks_exact_mut(c).zip(arow.chunks_exact_mut(c)).enumerate() {
                taps.clear();
                for iy in win.inputs(y, h) {
                    taps.extend(win.inputs(xo, w).map(|ix| ((ni * h + iy) * w + ix) * c));
                }
                kernels::vectorised(
                    #[inline(always)]
                    || {
                        acc.fill(f32::NEG_INFINITY);
                        am.fill(0);
                        for (t, &first) in taps.iter().enumerate() {
                            let t = t as u32;
                            for ((a, m), &v) in acc.iter_mut().zip(am.iter_mut()).zip(&x[first..][..c]) {
                                let replace = replaces_max(v, *a);
                                *a = if replace { v } else { *a };
                                *m = if replace { t } else { *m };
                            }
                        }
                        for (ch, m) in am.iter_mut().enumerate() {
                            *m = (taps[*m as usize] + ch) as u32;
                        }
                    },
                )
            }
        },
    );
}

/// [`max_pool_forward`] without the argmax, for a pass with no backward (evaluation): the same
/// values, NaN included, spread over output rows rather than images (a batch of one runs on
/// every thread) and with a branch-free channel loop that vectorises (on the selected kernel
/// set's instruction set, as does the training pass's).
pub fn max_pool_values(x: &[f32], s: Nhwc, win: Window, out: &mut [f32]) {
    let o = win.output(s).expect("the pooling window fits the input");
    let Nhwc { h, w, c, .. } = s;
    assert_eq!((x.len(), out.len()), (s.len(), o.len()), "max pool lengths");
    let (oh, ow) = (o.h, o.w);
    out.par_chunks_mut(ow * c).enumerate().for_each(|(r, orow)| {
        let (ni, y) = (r / oh, r % oh);
        for (xo, acc) in orow.chunks_exact_mut(c).enumerate() {
            kernels::vectorised(
                #[inline(always)]
                || {
                    acc.fill(f32::NEG_INFINITY);
                    for iy in win.inputs(y, h) {
                        for ix in win.inputs(xo, w) {
                            let src = &x[((ni * h + iy) * w + ix) * c..][..c];
                            for (a, &v) in acc.iter_mut().zip(src) {
                                *a = if replaces_max(v, *a) { v } else { *a };
                            }
                        }
                    }
                },
            )
        }
    });
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
