//! The input gradient: a gather pass over the output gradient, taps merged along kernel rows at
//! stride 1 and ordered by phase at larger strides.

// Numerical kernels index several arrays with one loop variable.
#![allow(clippy::needless_range_loop)]

use super::*;

/// Input gradient: `dx[N, H, W, C_in]` from `dy[N, OH, OW, C_out]` (overwrites `dx`).
///
/// Each input pixel gathers from the output pixels its taps reach. With stride 1 the `k` taps of
/// a kernel row reach `k` consecutive output pixels, so they merge into one tap (weights packed
/// with the kernel column reversed); with a larger stride the logical rows are ordered by phase
/// (`x mod stride`) so that a block shares its valid taps and skips the others. Pointwise
/// convolutions, strided or not, are a matrix product through `gemm` instead, and a 3x3
/// stride-1 pad-1 one runs by Winograd F(2x2, 3x3) where that pays (`ops/winograd.rs`).
pub fn backward_input(dy: &[f32], w: &[f32], s: &ConvShape, dx: &mut [f32]) {
    backward_input_into(dy, w, s, dx, false)
}

/// [`backward_input`] that adds the input gradient to `dx` instead of overwriting it.
pub fn backward_input_acc(dy: &[f32], w: &[f32], s: &ConvShape, dx: &mut [f32]) {
    backward_input_into(dy, w, s, dx, true)
}

fn backward_input_into(dy: &[f32], w: &[f32], s: &ConvShape, dx: &mut [f32], accumulate: bool) {
    assert_eq!(dy.len(), s.output_len(), "conv output-gradient length");
    assert_eq!(w.len(), s.weight_len(), "conv weight length");
    assert_eq!(dx.len(), s.input_len(), "conv input-gradient length");
    if dy.is_empty() || dx.is_empty() {
        // No output pixel (an empty batch, or images smaller than the kernel): no gradient.
        if !accumulate {
            dx.fill(0.0);
        }
        return;
    }
    if is_pointwise(s) {
        return pointwise_backward_input(dy, w, s, dx, accumulate);
    }
    if s.k == 1 && s.pad == 0 {
        return sampled_pointwise_backward_input(dy, w, s, dx, accumulate);
    }
    if strided::strided_input_gradient(dy, w, s, dx, accumulate) {
        return;
    }
    if winograd::input_gradient_pays(s) {
        return winograd::input_gradient(dy, w, s, accumulate, dx);
    }
    let (k, cin, cout) = (s.k, s.cin, s.cout);
    // Packed rows: tap t' = kh*k + (k-1-kw), then output channel.
    let (packed, index) = pack(k * k, cout, cin, ReadOrder::DepthColumnTap, |t, co, ci| {
        w[((co * cin + ci) * k + t / k) * k + (k - 1 - t % k)]
    });
    if let Some(kernel) = strip::kernel_for(s, cout, &index) {
        let (dims, rows) = ((s.n, s.h, s.w, cout), strip::Rows::Flipped);
        strip::strip_pass(kernel, dy, dims, rows, (&packed, &index), dx, accumulate, &Fuse::default(), false);
        return;
    }
    let zeros = vec![0f32; k * cin.max(cout)];
    let (oh, ow) = (s.oh() as isize, s.ow() as isize);
    let (st, pad, wd) = (s.stride, s.pad as isize, s.w);
    // Logical order within an image row: phase-major (x = r, r + s, r + 2s, ... for r < s).
    let order: Vec<usize> = (0..st).flat_map(|r| (r..wd).step_by(st)).collect();
    let plan = |r0: usize, mr: usize, taps: &mut Vec<Tap>, offs: &mut [usize; MR_MAX]| {
        if st == 1 {
            // The common block: its rows lie in one image row, and each reaches `k` in-range
            // output pixels in every kernel row. Each kernel row is one merged tap whose sources
            // step by `cout` from row to row: the taps the general plan below gives such a block,
            // without its per-pointer checks.
            let (img_row, x0) = (r0 / wd, r0 % wd);
            let (n, iy) = (img_row / s.h, img_row % s.h);
            let reach = k as isize - 1;
            let (oy_top, ox0) = (iy as isize + pad - reach, x0 as isize + pad - reach);
            if x0 + mr <= wd
                && oy_top >= 0
                && iy as isize + pad < oh
                && ox0 >= 0
                && (x0 + mr) as isize + pad <= ow
            {
                for (j, o) in offs.iter_mut().take(mr).enumerate() {
                    *o = ((n * s.h + iy) * wd + x0 + j) * cin;
                }
                let ow = ow as usize;
                let first = ((n * oh as usize + oy_top as usize) * ow + ox0 as usize) * cout;
                let span = ((k - 1) * ow + mr - 1 + k) * cout;
                let window = dy[first..first + span].as_ptr();
                for kh in 0..k {
                    // Kernel row `kh` reaches output row `iy + pad - kh`, `k - 1 - kh` below the top.
                    let src: [*const f32; MR_MAX] = std::array::from_fn(|j| {
                        if j < mr {
                            window.wrapping_add(((k - 1 - kh) * ow + j) * cout)
                        } else {
                            zeros.as_ptr()
                        }
                    });
                    taps.push(Tap { src, w: kh * k * cout });
                }
                return k * cout;
            }
        }
        // `(image, y, x)` of each row, stepping through the logical order from the first.
        let (img_row, mut local) = (r0 / wd, r0 % wd);
        let (mut n, mut iy) = (img_row / s.h, img_row % s.h);
        let coords: [(usize, usize, usize); MR_MAX] = std::array::from_fn(|j| {
            if j >= mr {
                return (0, 0, 0);
            }
            let c = (n, iy, order[local]);
            offs[j] = ((n * s.h + iy) * wd + order[local]) * cin;
            local += 1;
            if local == wd {
                local = 0;
                iy += 1;
                if iy == s.h {
                    iy = 0;
                    n += 1;
                }
            }
            c
        });
        let out_pos = |iy: usize, ix: usize, kh: usize, kw: usize| -> Option<(isize, isize)> {
            let ny = iy as isize + pad - kh as isize;
            let nx = ix as isize + pad - kw as isize;
            let sti = st as isize;
            if ny < 0 || nx < 0 || ny % sti != 0 || nx % sti != 0 || ny / sti >= oh || nx / sti >= ow {
                None
            } else {
                Some((ny / sti, nx / sti))
            }
        };
        let src = |n: usize, oy: isize, ox: isize| {
            dy[((n as isize * oh + oy) * ow + ox) as usize * cout..].as_ptr()
        };
        // Stride 1: merge a kernel row when every pixel reaches k in-range output columns.
        let merged = st == 1
            && coords[..mr].iter().all(|&(_, _, ix)| {
                let lo = ix as isize + pad - (k as isize - 1);
                lo >= 0 && ix as isize + pad < ow
            });
        if merged {
            for kh in 0..k {
                let mut any = false;
                let ptrs: [*const f32; MR_MAX] = std::array::from_fn(|j| {
                    let (n, iy, ix) = coords[j];
                    let oy = iy as isize + pad - kh as isize;
                    if j >= mr || oy < 0 || oy >= oh {
                        return zeros.as_ptr();
                    }
                    any = true;
                    src(n, oy, ix as isize + pad - (k as isize - 1))
                });
                if any {
                    taps.push(Tap { src: ptrs, w: kh * k * cout });
                }
            }
            return k * cout;
        }
        let (n0, iy0, ix0) = coords[0];
        let (nl, iyl, ixl) = coords[mr - 1];
        if st > 1 && n0 == nl && iy0 == iyl && ixl == ix0 + (mr - 1) * st {
            // One image row, one phase (most blocks): every row reaches the same kernel taps, at
            // consecutive output pixels; no per-row division.
            let sti = st as isize;
            for kh in 0..k {
                let ny = iy0 as isize + pad - kh as isize;
                if ny < 0 || ny % sti != 0 || ny / sti >= oh {
                    continue;
                }
                for kw in 0..k {
                    let nx = ix0 as isize + pad - kw as isize;
                    if nx.rem_euclid(sti) != 0 {
                        continue;
                    }
                    let ox0 = nx.div_euclid(sti);
                    let mut any = false;
                    let ptrs: [*const f32; MR_MAX] = std::array::from_fn(|j| {
                        let ox = ox0 + j as isize;
                        if j < mr && ox >= 0 && ox < ow {
                            any = true;
                            src(n0, ny / sti, ox)
                        } else {
                            zeros.as_ptr()
                        }
                    });
                    if any {
                        taps.push(Tap { src: ptrs, w: (kh * k + (k - 1 - kw)) * cout });
                    }
                }
            }
            return cout;
        }
        for kh in 0..k {
            for kw in 0..k {
                let mut any = false;
                let ptrs: [*const f32; MR_MAX] = std::array::from_fn(|j| {
                    let (n, iy, ix) = coords[j];
                    match (j < mr).then(|| out_pos(iy, ix, kh, kw)).flatten() {
                        Some((oy, ox)) => {
                            any = true;
                            src(n, oy, ox)
                        }
                        None => zeros.as_ptr(),
                    }
                });
                if any {
                    taps.push(Tap { src: ptrs, w: (kh * k + (k - 1 - kw)) * cout });
                }
            }
        }
        cout
    };
    gather_pass(dx, accumulate, &Fuse::default(), s.n * s.h * wd, cin, &packed, &index, plan);
}
