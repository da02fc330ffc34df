//! Augmentation and normalisation of small in-memory images (CIFAR-size).

use lt_core::Rng;
use serde::{Deserialize, Serialize};

/// Per-channel normalisation `(x / 255 - mean) / std`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Normalize {
    /// Channel means (of pixels scaled to `[0, 1]`).
    pub mean: Vec<f32>,
    /// Channel standard deviations.
    pub std: Vec<f32>,
}

impl Normalize {
    /// CIFAR-10/100 statistics used by the LDAM-DRW reference.
    pub fn cifar() -> Self {
        Self { mean: vec![0.4914, 0.4822, 0.4465], std: vec![0.2023, 0.1994, 0.2010] }
    }

    /// Fashion-MNIST statistics.
    pub fn fashion_mnist() -> Self {
        Self { mean: vec![0.2860], std: vec![0.3530] }
    }

    /// MNIST statistics (torchvision's MNIST example).
    pub fn mnist() -> Self {
        Self { mean: vec![0.1307], std: vec![0.3081] }
    }

    /// ImageNet statistics (torchvision).
    pub fn imagenet() -> Self {
        Self { mean: vec![0.485, 0.456, 0.406], std: vec![0.229, 0.224, 0.225] }
    }

    /// iNaturalist-2018 statistics (decoupling reference).
    pub fn inat() -> Self {
        Self { mean: vec![0.466, 0.471, 0.380], std: vec![0.195, 0.194, 0.192] }
    }

    /// Mean 0.5, std 0.5 on every channel.
    pub fn half(channels: usize) -> Self {
        Self { mean: vec![0.5; channels], std: vec![0.5; channels] }
    }

    /// The lookup table mapping a byte of channel `c` to its normalised value.
    pub fn table(&self, c: usize) -> [f32; 256] {
        let mut t = [0f32; 256];
        let (m, s) = (self.mean[c % self.mean.len()], self.std[c % self.std.len()]);
        for (v, out) in t.iter_mut().enumerate() {
            *out = (v as f32 / 255.0 - m) / s;
        }
        t
    }
}

/// Augmentation of small images at training time.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum Augment {
    /// No augmentation.
    None,
    /// Zero-pad by `pad` pixels on every side, take a random crop of the original size, and flip
    /// horizontally with probability 1/2 when `flip` (the standard CIFAR augmentation).
    PadCropFlip {
        /// Padding in pixels.
        pad: usize,
        /// Whether to flip horizontally at random.
        flip: bool,
    },
}

/// Writes the normalised (and, when requested, augmented) image `img` (`c x h x w` bytes) into
/// `out`. Padding pixels are zero bytes before normalisation, as torchvision's `RandomCrop(padding)`.
#[allow(clippy::too_many_arguments)]
pub fn augment_normalize(
    img: &[u8],
    c: usize,
    h: usize,
    w: usize,
    aug: Augment,
    norm: &Normalize,
    rng: &mut Rng,
    out: &mut [f32],
) {
    debug_assert_eq!(img.len(), c * h * w);
    debug_assert_eq!(out.len(), c * h * w);
    let (dy, dx, flip) = match aug {
        Augment::None => (0isize, 0isize, false),
        Augment::PadCropFlip { pad, flip } => {
            // torchvision draws the crop's top then left offset in the padded image.
            let top = rng.below(2 * pad as u64 + 1) as isize - pad as isize;
            let left = rng.below(2 * pad as u64 + 1) as isize - pad as isize;
            let f = flip && rng.bernoulli(0.5);
            (top, left, f)
        }
    };
    for ch in 0..c {
        let table = norm.table(ch);
        let zero = table[0];
        let plane = &img[ch * h * w..(ch + 1) * h * w];
        let oplane = &mut out[ch * h * w..(ch + 1) * h * w];
        for y in 0..h {
            let sy = y as isize + dy;
            let orow = &mut oplane[y * w..(y + 1) * w];
            if sy < 0 || sy >= h as isize {
                orow.fill(zero);
                continue;
            }
            let srow = &plane[sy as usize * w..(sy as usize + 1) * w];
            for (x, o) in orow.iter_mut().enumerate() {
                // Flip happens after the crop: output column x reads crop column w-1-x.
                let cx = if flip { w - 1 - x } else { x } as isize;
                let sx = cx + dx;
                *o = if sx < 0 || sx >= w as isize { zero } else { table[srow[sx as usize] as usize] };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_augment_is_plain_normalisation() {
        let img: Vec<u8> = (0..2 * 3 * 3).map(|i| i as u8 * 10).collect();
        let norm = Normalize { mean: vec![0.5, 0.25], std: vec![0.5, 2.0] };
        let mut out = vec![0f32; img.len()];
        augment_normalize(&img, 2, 3, 3, Augment::None, &norm, &mut Rng::new(0), &mut out);
        for (i, (&b, &o)) in img.iter().zip(&out).enumerate() {
            let c = i / 9;
            let want = (b as f32 / 255.0 - norm.mean[c]) / norm.std[c];
            assert!((o - want).abs() < 1e-6);
        }
    }

    #[test]
    fn crop_and_flip_move_pixels_and_pad_with_zero_bytes() {
        // 1 channel, 4x4, pixel value = 10*y + x + 1 (never 0, so padding is recognisable).
        let img: Vec<u8> = (0..16).map(|i| (10 * (i / 4) + i % 4 + 1) as u8).collect();
        let norm = Normalize { mean: vec![0.0], std: vec![1.0 / 255.0] };
        let mut rng = Rng::new(1);
        let mut seen_flip = false;
        let mut seen_shift = false;
        for _ in 0..200 {
            let mut out = vec![0f32; 16];
            augment_normalize(
                &img,
                1,
                4,
                4,
                Augment::PadCropFlip { pad: 2, flip: true },
                &norm,
                &mut rng,
                &mut out,
            );
            // Every non-zero output pixel must be an input pixel whose row/col relation holds.
            let values: Vec<u32> = out.iter().map(|&v| v.round() as u32).collect();
            for y in 0..4 {
                let row: Vec<u32> = values[y * 4..y * 4 + 4].to_vec();
                let nz: Vec<u32> = row.iter().copied().filter(|&v| v != 0).collect();
                for pair in nz.windows(2) {
                    let d = pair[1] as i64 - pair[0] as i64;
                    assert!(d == 1 || d == -1, "row {row:?} is not a contiguous (possibly flipped) run");
                    if d == -1 {
                        seen_flip = true;
                    }
                }
            }
            if values[0] != 1 {
                seen_shift = true;
            }
        }
        assert!(seen_flip && seen_shift);
    }
}
