//! The forward pass: packed weights, the fused epilogue (bias, residual, ReLU), the batch-norm
//! moments of the output, and the choice of strip, Winograd, strided, pointwise or gather
//! kernels.

// Numerical kernels index several arrays with one loop variable.
#![allow(clippy::needless_range_loop)]

use super::*;

/// Forward convolution: `out[N, OH, OW, C_out] = conv(x[N, H, W, C_in], w[C_out, C_in, k, k])`.
pub fn forward(x: &[f32], w: &[f32], s: &ConvShape, out: &mut [f32]) {
    forward_fused(x, w, s, &Fuse::default(), out)
}

/// [`forward`] with the weights scaled per output channel and a bias, a residual and ReLU
/// applied as each output block is stored (see [`Fuse`]):
/// `out = max(conv(x, w * scale) + bias + residual, 0)`.
pub fn forward_fused(x: &[f32], w: &[f32], s: &ConvShape, fuse: &Fuse, out: &mut [f32]) {
    assert_eq!(x.len(), s.input_len(), "conv input length");
    assert_eq!(w.len(), s.weight_len(), "conv weight length");
    assert_eq!(out.len(), s.output_len(), "conv output length");
    // A pointwise convolution with nothing folded in is a plain product; a folded one goes
    // through `PackedWeights` like the rest (`gemm` by chunks of pixels with the epilogue while
    // they are in cache, or the gather kernels for few pixels). A 3x3 stride-1 one runs by
    // Winograd where that pays (see `PackedWeights::fastest`).
    if is_pointwise(s) && fuse.scale.is_none() && !fuse.has_epilogue() {
        return pointwise_forward(x, w, s, out);
    }
    let packed = PackedWeights::fastest(w, s, fuse.scale);
    forward_packed(x, &packed, s, &Fuse { scale: None, ..*fuse }, out)
}

/// A convolution's weights packed for the forward pass of the gather kernels, with an optional
/// per-output-channel scale folded in (see [`forward_fused`]). Packing reads every weight once
/// in a transposed order; a caller that runs the same weights many times (evaluation) can pack
/// them once and call [`forward_packed`].
pub struct PackedWeights {
    /// The gather kernels' packed weights and their column blocks (built on first use for a
    /// pointwise convolution).
    gather: std::sync::OnceLock<Packed>,
    /// `(k, C_in, C_out)` of the convolution the weights belong to.
    dims: (usize, usize, usize),
    /// A pointwise convolution's scaled weights `[C_out, C_in]` (the right operand `w^T` of a
    /// matrix product).
    pointwise: Option<Vec<f32>>,
    /// Weights packed for Winograd F(2x2, 3x3) ([`PackedWeights::fastest`]); the forward
    /// pass then runs by it (`ops/winograd.rs`).
    winograd: Option<Packed>,
}

impl PackedWeights {
    /// Packs `w` (`[C_out, C_in, k, k]`), each output channel's weights times `scale[co]`.
    pub fn new(w: &[f32], s: &ConvShape, scale: Option<&[f32]>) -> Self {
        let (k, cin, cout) = (s.k, s.cin, s.cout);
        assert_eq!(w.len(), s.weight_len(), "conv weight length");
        if let Some(sc) = scale {
            assert_eq!(sc.len(), cout, "scale length");
        }
        let scale = |co: usize| scale.map_or(1.0, |sc| sc[co]);
        if is_pointwise(s) {
            let plain =
                w.chunks_exact(cin).enumerate().flat_map(|(co, row)| row.iter().map(move |&v| v * scale(co)));
            return Self {
                gather: std::sync::OnceLock::new(),
                dims: (k, cin, cout),
                pointwise: Some(plain.collect()),
                winograd: None,
            };
        }
        // Packed rows: tap t = kh*k + kw, then input channel: the k taps of one kernel row are
        // consecutive, matching k consecutive input pixels of one row (the merged tap).
        let (data, index) = pack(k * k, cin, cout, ReadOrder::TapDepthColumn, |t, ci, co| {
            w[(co * cin + ci) * k * k + t] * scale(co)
        });
        Self { gather: (data, index).into(), dims: (k, cin, cout), pointwise: None, winograd: None }
    }

    /// [`PackedWeights::new`] for the fastest forward pass measured for the shape (evaluation,
    /// and training's forward pass): a 3x3 stride-1 pad-1 convolution is packed for Winograd
    /// F(2x2, 3x3) where that was measured faster with the selected kernel set
    /// (`ops/winograd.rs`); its forward pass then takes 16 multiplies per tile of 2x2 output
    /// pixels where the direct one takes 36, with the same sums up to rounding.
    pub fn fastest(w: &[f32], s: &ConvShape, scale: Option<&[f32]>) -> Self {
        if !winograd::pays(s) {
            return Self::new(w, s, scale);
        }
        Self {
            gather: std::sync::OnceLock::new(),
            dims: (s.k, s.cin, s.cout),
            pointwise: None,
            winograd: Some(winograd::pack_weights(w, s, scale)),
        }
    }

    /// The gather kernels' packed weights and column blocks.
    fn gather(&self) -> (&[f32], &[(usize, usize, usize)]) {
        let (data, index) = self.gather.get_or_init(|| {
            let (cin, cout) = (self.dims.1, self.dims.2);
            let w = self.pointwise.as_deref().unwrap_or_default();
            pack(1, cin, cout, ReadOrder::TapDepthColumn, |_, ci, co| w[co * cin + ci])
        });
        (data, index)
    }

    /// Whether these are weights of a convolution with `s`'s kernel and channels (and were
    /// packed for a pointwise convolution exactly when `s` is one).
    pub fn fits(&self, s: &ConvShape) -> bool {
        self.dims == (s.k, s.cin, s.cout) && self.pointwise.is_some() == is_pointwise(s)
    }
}

/// [`forward`] that also returns the per-chunk moments of its output (what training-mode batch
/// norm needs, see [`norm::Moments`]): the strip pass takes each output image row's moments
/// as soon as it has stored the row, while it is in cache; the other paths summarise the output
/// once it is written, in the same chunks (one output image row each, see
/// [`norm::chunk_pixels`]).
pub fn forward_with_moments(x: &[f32], w: &[f32], s: &ConvShape, out: &mut [f32]) -> norm::Moments {
    let moments = if is_pointwise(s) {
        assert_eq!(x.len(), s.input_len(), "conv input length");
        assert_eq!(w.len(), s.weight_len(), "conv weight length");
        assert_eq!(out.len(), s.output_len(), "conv output length");
        pointwise_forward_by_rows(x, w, s, out, true)
    } else {
        forward_packed_into(x, &PackedWeights::fastest(w, s, None), s, &Fuse::default(), out, true)
    };
    moments.unwrap_or_else(|| norm::Moments::of(out, s.cout, s.ow()))
}

/// [`forward_fused`] with weights packed beforehand; `fuse.scale` must be `None` (a scale is
/// folded in when packing).
pub fn forward_packed(x: &[f32], packed: &PackedWeights, s: &ConvShape, fuse: &Fuse, out: &mut [f32]) {
    forward_packed_into(x, packed, s, fuse, out, false);
}

/// [`forward_packed`]; with `summarise`, the output's moments where the path takes them as it
/// goes (see [`forward_with_moments`]).
fn forward_packed_into(
    x: &[f32],
    packed: &PackedWeights,
    s: &ConvShape,
    fuse: &Fuse,
    out: &mut [f32],
    summarise: bool,
) -> Option<norm::Moments> {
    assert_eq!(x.len(), s.input_len(), "conv input length");
    assert_eq!(out.len(), s.output_len(), "conv output length");
    assert!(packed.fits(s), "packed weights {:?} for a convolution {s:?}", packed.dims);
    assert!(fuse.scale.is_none(), "a scale is folded in when packing");
    if out.is_empty() {
        // No output pixel (an empty batch): nothing to compute, no moments.
        return summarise.then(|| norm::Moments::new(s.cout));
    }
    if let Some(w) = &packed.winograd {
        winograd::forward(x, w, s, fuse, out);
        return None;
    }
    if let Some(plain) = &packed.pointwise {
        if s.n * s.h * s.w >= POINTWISE_GEMM_PIXELS {
            pointwise_forward_fused(x, plain, s, fuse, out);
            return None;
        }
    }
    let (k, cin, cout) = (s.k, s.cin, s.cout);
    let (packed, index) = packed.gather();
    if let Some(kernel) = strip::kernel_for(s, cin, index) {
        let dims = (s.n, s.h, s.w, cin);
        let rows = strip::Rows::Forward;
        return strip::strip_pass(kernel, x, dims, rows, (packed, index), out, false, fuse, summarise);
    }
    let zeros = vec![0f32; k * cin.max(cout)];
    let (oh, ow) = (s.oh(), s.ow());
    let (h, wd, st, pad) = (s.h as isize, s.w as isize, s.stride as isize, s.pad as isize);
    let plan = |r0: usize, mr: usize, taps: &mut Vec<Tap>, offs: &mut [usize; MR_MAX]| {
        for (j, o) in offs.iter_mut().take(mr).enumerate() {
            *o = (r0 + j) * cout;
        }
        let (mut n, rem) = (r0 / (oh * ow), r0 % (oh * ow));
        let (mut y, mut xo) = (rem / ow, rem % ow);
        // The common block: its rows lie in one output row and every window is inside the image.
        // Each kernel row is then one merged tap whose sources step by `stride * cin` from row to
        // row: the taps the general plan below gives such a block, without its per-pointer checks.
        let (iy, ix) = (y as isize * st - pad, xo as isize * st - pad);
        let last_col = ix + ((mr - 1) * s.stride + k) as isize;
        if xo + mr <= ow && iy >= 0 && ix >= 0 && iy + k as isize <= h && last_col <= wd {
            let first = ((n * s.h + iy as usize) * s.w + ix as usize) * cin;
            let span = ((k - 1) * s.w + (mr - 1) * s.stride + k) * cin;
            let window = x[first..first + span].as_ptr();
            for kh in 0..k {
                let src: [*const f32; MR_MAX] = std::array::from_fn(|j| {
                    if j < mr {
                        window.wrapping_add((kh * s.w + j * s.stride) * cin)
                    } else {
                        zeros.as_ptr()
                    }
                });
                taps.push(Tap { src, w: kh * k * cin });
            }
            return k * cin;
        }
        let mut coords = [(0usize, 0isize, 0isize); MR_MAX];
        for c in coords.iter_mut().take(mr) {
            *c = (n, y as isize * st - pad, xo as isize * st - pad);
            xo += 1;
            if xo == ow {
                xo = 0;
                y += 1;
                if y == oh {
                    y = 0;
                    n += 1;
                }
            }
        }
        let interior = coords[..mr].iter().all(|&(_, _, ix)| ix >= 0 && ix + k as isize <= wd);
        let src = |n: usize, iy: isize, ix: isize| -> Option<*const f32> {
            (iy >= 0 && iy < h && ix >= 0 && ix < wd)
                .then(|| x[((n * s.h + iy as usize) * s.w + ix as usize) * cin..].as_ptr())
        };
        let kernel_cols = if interior { 1 } else { k };
        for kh in 0..k {
            for kw in 0..kernel_cols {
                let mut any = false;
                let ptrs: [*const f32; MR_MAX] = std::array::from_fn(|j| {
                    if j >= mr {
                        return zeros.as_ptr();
                    }
                    let (n, iy, ix) = coords[j];
                    match src(n, iy + kh as isize, ix + kw as isize) {
                        Some(p) => {
                            any = true;
                            p
                        }
                        None => zeros.as_ptr(),
                    }
                });
                if any {
                    taps.push(Tap { src: ptrs, w: (kh * k + kw) * cin });
                }
            }
        }
        if interior {
            k * cin
        } else {
            cin
        }
    };
    gather_pass(out, false, fuse, s.n * oh * ow, cout, packed, index, plan);
    None
}
