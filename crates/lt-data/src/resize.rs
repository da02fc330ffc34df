//! Bilinear resizing of 8-bit RGB images for the image-file transforms: the `image` crate's
//! `resize(.., FilterType::Triangle)` to the bit, computing only a window of the output.
//!
//! That resize is separable: a vertical pass over the full width in `f32`, then a horizontal
//! pass rounded to bytes. Every output pixel depends only on the input rows and columns under
//! its filter, with weights that depend only on its own coordinates. So a window of the output
//! (the centre crop of the evaluation transform) can be computed alone: the same weights and
//! the same sums in the same order give the same bytes. Without the generic per-pixel accessors
//! and with rounding done without a library call, this is several times faster than the
//! original (`lt bench loader --folder`), which is what decides whether the loader keeps up with
//! a GPU on ImageNet-size images.

/// A rectangle of pixels: `x`, `y` of its top-left corner, `w` x `h` pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rect {
    /// Left column.
    pub x: u32,
    /// Top row.
    pub y: u32,
    /// Width.
    pub w: u32,
    /// Height.
    pub h: u32,
}

impl Rect {
    /// The rectangle of a whole `w` x `h` image.
    pub fn whole(w: u32, h: u32) -> Self {
        Self { x: 0, y: 0, w, h }
    }
}

/// The filter taps of one output coordinate: the first input index and the normalised weights.
struct Taps {
    first: usize,
    weights: Vec<f32>,
}

/// The triangle (bilinear) kernel.
fn triangle(x: f32) -> f32 {
    if x.abs() < 1.0 {
        1.0 - x.abs()
    } else {
        0.0
    }
}

/// The taps of output coordinate `out` when `len` input samples are resized to `new_len`, as the
/// `image` crate computes them (support 1, widened by the ratio when shrinking).
fn taps(out: u32, len: u32, new_len: u32) -> Taps {
    let ratio = len as f32 / new_len as f32;
    let sratio = if ratio < 1.0 { 1.0 } else { ratio };
    let support = sratio;
    let centre = (out as f32 + 0.5) * ratio;
    let left = ((centre - support).floor() as i64).clamp(0, len as i64 - 1);
    let right = ((centre + support).ceil() as i64).clamp(left + 1, len as i64);
    let centre = centre - 0.5;
    let mut weights: Vec<f32> = (left..right).map(|i| triangle((i as f32 - centre) / sratio)).collect();
    let mut sum = 0.0f32;
    for w in &weights {
        sum += w;
    }
    for w in &mut weights {
        *w /= sum;
    }
    Taps { first: left as usize, weights }
}

/// The horizontal pass's taps, every column's padded to one count `taps` with zero weights (an
/// exact no-op: the sums are of non-negative values and start at `+0`, so adding `+0` before or
/// after a column's own taps leaves every bit as it was), so that the pass runs a loop of fixed
/// length per column: column `k` reads `taps` input columns from `start[k]`.
struct Horizontal {
    start: Vec<usize>,
    weights: Vec<f32>,
    taps: usize,
}

impl Horizontal {
    /// The padded taps of `columns`, whose input columns start at `lo` and span `len`.
    fn new(columns: &[Taps], lo: usize, len: usize) -> Self {
        let taps = columns.iter().map(|c| c.weights.len()).max().unwrap_or(0);
        let (mut start, mut weights) = (Vec::with_capacity(columns.len()), vec![0f32; columns.len() * taps]);
        for (c, w) in columns.iter().zip(weights.chunks_exact_mut(taps.max(1))) {
            // The window of `taps` inputs that holds the column's own, inside the row.
            let first = c.first - lo;
            let s = first.min(len - taps);
            w[first - s..first - s + c.weights.len()].copy_from_slice(&c.weights);
            start.push(s);
        }
        Self { start, weights, taps }
    }

    /// The pass over one row of the vertical pass (`row`, RGB f32) into `line` (RGB f32).
    fn run(&self, row: &[f32], line: &mut [f32]) {
        match self.taps {
            2 => self.fixed::<2>(row, line),
            3 => self.fixed::<3>(row, line),
            4 => self.fixed::<4>(row, line),
            5 => self.fixed::<5>(row, line),
            6 => self.fixed::<6>(row, line),
            7 => self.fixed::<7>(row, line),
            8 => self.fixed::<8>(row, line),
            _ => self.any(row, line),
        }
    }

    /// [`Horizontal::run`] for `T` taps (unrolled).
    fn fixed<const T: usize>(&self, row: &[f32], line: &mut [f32]) {
        let columns = self.start.iter().zip(self.weights.chunks_exact(T));
        for ((&s, w), px) in columns.zip(line.chunks_exact_mut(3)) {
            let src = &row[s * 3..(s + T) * 3];
            let mut acc = [0f32; 3];
            for j in 0..T {
                for ch in 0..3 {
                    acc[ch] += src[j * 3 + ch] * w[j];
                }
            }
            px.copy_from_slice(&acc);
        }
    }

    /// [`Horizontal::run`] for any number of taps.
    fn any(&self, row: &[f32], line: &mut [f32]) {
        let t = self.taps.max(1);
        let columns = self.start.iter().zip(self.weights.chunks_exact(t));
        for ((&s, w), px) in columns.zip(line.chunks_exact_mut(3)) {
            let mut acc = [0f32; 3];
            for (j, &w) in w.iter().enumerate().take(self.taps) {
                for ch in 0..3 {
                    acc[ch] += row[(s + j) * 3 + ch] * w;
                }
            }
            px.copy_from_slice(&acc);
        }
    }
}

/// `x` clamped to `[0, 255]` and rounded half away from zero, as `f32::round` (without its
/// library call: the fraction of a value below 2^23 is exact in `f32`).
fn to_byte(x: f32) -> u8 {
    let x = x.clamp(0.0, 255.0);
    let whole = x as i32;
    (whole + i32::from(x - whole as f32 >= 0.5)) as u8
}

/// Resizes the `src` rectangle of the `width`-pixel-wide RGB image `rgb` (row-major, 3 bytes a
/// pixel) to `new_w` x `new_h` and writes the `window` of that result to `out` (row-major RGB,
/// `window.w * window.h * 3` bytes), bit for bit what `image::imageops::resize` with
/// `FilterType::Triangle` of the cropped image, cropped to `window`, gives.
///
/// # Panics
/// If `src` is not inside the image, `window` not inside `new_w` x `new_h`, or `out` has the
/// wrong length: callers compute all three from the image's own dimensions.
pub fn resize_rgb_window(
    rgb: &[u8],
    width: u32,
    src: Rect,
    (new_w, new_h): (u32, u32),
    window: Rect,
    out: &mut [u8],
) {
    assert!(src.x + src.w <= width && (src.y + src.h) as usize * width as usize * 3 <= rgb.len());
    assert!(window.x + window.w <= new_w && window.y + window.h <= new_h);
    assert_eq!(out.len(), window.w as usize * window.h as usize * 3);
    if out.is_empty() {
        return;
    }
    if src.w == 0 || src.h == 0 {
        out.fill(0);
        return;
    }
    let stride = width as usize * 3;
    let pixel = |x: usize, y: usize| (src.y as usize + y) * stride + (src.x as usize + x) * 3;
    if (new_w, new_h) == (src.w, src.h) {
        // The `image` crate copies instead of resampling.
        let row = window.w as usize * 3;
        for (k, dst) in out.chunks_exact_mut(row).enumerate() {
            let at = pixel(window.x as usize, window.y as usize + k);
            dst.copy_from_slice(&rgb[at..at + row]);
        }
        return;
    }
    let columns: Vec<Taps> = (window.x..window.x + window.w).map(|x| taps(x, src.w, new_w)).collect();
    let rows: Vec<Taps> = (window.y..window.y + window.h).map(|y| taps(y, src.h, new_h)).collect();
    // The input columns the window's output columns read.
    let lo = columns.first().map_or(0, |t| t.first);
    let hi = columns.last().map_or(0, |t| t.first + t.weights.len());
    let mut row = vec![0f32; (hi - lo) * 3];
    let mut line = vec![0f32; window.w as usize * 3];
    let horizontal = Horizontal::new(&columns, lo, hi - lo);
    for (t, dst) in rows.iter().zip(out.chunks_exact_mut(window.w as usize * 3)) {
        // Vertical pass: the output row over the needed columns, in f32.
        row.fill(0.0);
        for (i, &w) in t.weights.iter().enumerate() {
            let at = pixel(lo, t.first + i);
            for (acc, &v) in row.iter_mut().zip(&rgb[at..at + (hi - lo) * 3]) {
                *acc += v as f32 * w;
            }
        }
        // Horizontal pass, then the row rounded to bytes (a loop of its own, which vectorises).
        horizontal.run(&row, &mut line);
        for (b, &v) in dst.iter_mut().zip(&line) {
            *b = to_byte(v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::imageops::{crop_imm, resize, FilterType};
    use image::RgbImage;
    use lt_core::Rng;

    fn noise(w: u32, h: u32, rng: &mut Rng) -> RgbImage {
        let bytes = (0..w * h * 3).map(|_| rng.below(256) as u8).collect();
        RgbImage::from_raw(w, h, bytes).unwrap()
    }

    /// The `image` crate's answer: resize the cropped image, then cut the window out.
    fn reference(img: &RgbImage, src: Rect, new: (u32, u32), window: Rect) -> Vec<u8> {
        let cropped = crop_imm(img, src.x, src.y, src.w, src.h).to_image();
        let full = resize(&cropped, new.0, new.1, FilterType::Triangle);
        crop_imm(&full, window.x, window.y, window.w, window.h).to_image().into_raw()
    }

    fn ours(img: &RgbImage, src: Rect, new: (u32, u32), window: Rect) -> Vec<u8> {
        let mut out = vec![0u8; window.w as usize * window.h as usize * 3];
        resize_rgb_window(img.as_raw(), img.width(), src, new, window, &mut out);
        out
    }

    #[test]
    fn matches_the_image_crate_bit_for_bit_on_random_crops_sizes_and_windows() {
        let mut rng = Rng::new(11);
        for case in 0..300 {
            let (w, h) = (1 + rng.below(90) as u32, 1 + rng.below(90) as u32);
            let img = noise(w, h, &mut rng);
            let (sw, sh) = (1 + rng.below(w as u64) as u32, 1 + rng.below(h as u64) as u32);
            let src = Rect {
                x: rng.below((w - sw + 1) as u64) as u32,
                y: rng.below((h - sh + 1) as u64) as u32,
                w: sw,
                h: sh,
            };
            // Shrinking, enlarging, one side equal, or both equal (the copy).
            let new = match case % 4 {
                0 => (1 + rng.below(40) as u32, 1 + rng.below(40) as u32),
                1 => (sw + rng.below(50) as u32, sh + rng.below(50) as u32),
                2 => (sw, 1 + rng.below(60) as u32),
                _ => (sw, sh),
            };
            let (ww, wh) = (1 + rng.below(new.0 as u64) as u32, 1 + rng.below(new.1 as u64) as u32);
            let window = Rect {
                x: rng.below((new.0 - ww + 1) as u64) as u32,
                y: rng.below((new.1 - wh + 1) as u64) as u32,
                w: ww,
                h: wh,
            };
            assert_eq!(
                ours(&img, src, new, window),
                reference(&img, src, new, window),
                "case {case}: {w}x{h} {src:?} -> {new:?} {window:?}"
            );
        }
    }

    #[test]
    fn matches_at_imagenet_sizes() {
        let mut rng = Rng::new(3);
        let img = noise(500, 375, &mut rng);
        // The training transform: a crop resized to 224 x 224, all of it.
        let src = Rect { x: 37, y: 20, w: 301, h: 254 };
        let whole = Rect::whole(224, 224);
        assert_eq!(ours(&img, src, (224, 224), whole), reference(&img, src, (224, 224), whole));
        // The evaluation transform: the whole image to a shorter side of 256, its centre 224.
        let centre = Rect { x: 59, y: 16, w: 224, h: 224 };
        let all = Rect::whole(500, 375);
        assert_eq!(ours(&img, all, (341, 256), centre), reference(&img, all, (341, 256), centre));
    }

    #[test]
    fn to_byte_rounds_half_away_from_zero_and_clamps_as_round_does() {
        for x in [-3.0f32, 0.0, 0.25, 0.49999997, 0.5, 1.5, 2.5, 254.49998, 254.5, 255.0, 300.0] {
            assert_eq!(to_byte(x), x.clamp(0.0, 255.0).round() as u8, "{x}");
        }
        let mut rng = Rng::new(5);
        for _ in 0..100_000 {
            let x = rng.uniform_range(-10.0, 270.0) as f32;
            assert_eq!(to_byte(x), x.clamp(0.0, 255.0).round() as u8, "{x}");
        }
    }
}
