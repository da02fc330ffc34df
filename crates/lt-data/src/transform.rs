//! Augmentation and normalisation of small in-memory images (CIFAR-size).

use candle_core::{DType, Device, Tensor};
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

    /// The lookup table mapping a byte of channel `c` to its normalised value,
    /// `(v / 255 - mean) / std` in `f32`.
    pub fn table(&self, c: usize) -> [f32; 256] {
        let mut t = [0f32; 256];
        let (m, s) = (self.mean[c % self.mean.len()], self.std[c % self.std.len()]);
        for (v, out) in t.iter_mut().enumerate() {
            *out = (v as f32 / 255.0 - m) / s;
        }
        t
    }

    /// Normalises samples of bytes of `shape` (`C x H x W`; `bytes` holds one or more) into `out`
    /// through [`Normalize::table`].
    pub fn apply(&self, bytes: &[u8], shape: [usize; 3], out: &mut [f32]) {
        debug_assert_eq!(bytes.len(), out.len());
        let [c, h, w] = shape;
        let tables: Vec<[f32; 256]> = (0..c).map(|ch| self.table(ch)).collect();
        let plane = (h * w).max(1);
        for (k, (src, dst)) in bytes.chunks(plane).zip(out.chunks_mut(plane)).enumerate() {
            let table = &tables[k % c.max(1)];
            for (o, &b) in dst.iter_mut().zip(src) {
                *o = table[b as usize];
            }
        }
    }

    /// The tables of `channels` channels, one after the other (`channels * 256` values), on
    /// `device`: what [`Normalize::apply_tensor`] looks bytes up in.
    pub fn tables(&self, channels: usize, device: &Device) -> candle_core::Result<Tensor> {
        let v: Vec<f32> = (0..channels).flat_map(|c| self.table(c)).collect();
        Tensor::from_vec(v, channels * 256, device)
    }

    /// Normalises a batch of bytes `B x C x H x W` (`u8`) on its device, through `tables`
    /// ([`Normalize::tables`] on the same device): the values [`Normalize::apply`] gives, as `f32`.
    pub fn apply_tensor(bytes: &Tensor, tables: &Tensor) -> candle_core::Result<Tensor> {
        let (_, c, _, _) = bytes.dims4()?;
        let offsets =
            Tensor::arange_step(0u32, (c * 256) as u32, 256, bytes.device())?.reshape((1, c, 1, 1))?;
        let index = bytes.to_dtype(DType::U32)?.broadcast_add(&offsets)?.flatten_all()?;
        tables.index_select(&index, 0)?.reshape(bytes.dims())
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

/// Writes the image `img` (`c x h x w` bytes) into `out`, augmented as `aug` says. Padding pixels
/// are zero bytes, as torchvision's `RandomCrop(padding)` pads before normalisation.
pub fn augment(img: &[u8], c: usize, h: usize, w: usize, aug: Augment, rng: &mut Rng, out: &mut [u8]) {
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
        let plane = &img[ch * h * w..(ch + 1) * h * w];
        let oplane = &mut out[ch * h * w..(ch + 1) * h * w];
        for y in 0..h {
            let sy = y as isize + dy;
            let orow = &mut oplane[y * w..(y + 1) * w];
            if sy < 0 || sy >= h as isize {
                orow.fill(0);
                continue;
            }
            let srow = &plane[sy as usize * w..(sy as usize + 1) * w];
            for (x, o) in orow.iter_mut().enumerate() {
                // Flip happens after the crop: output column x reads crop column w-1-x.
                let cx = if flip { w - 1 - x } else { x } as isize;
                let sx = cx + dx;
                *o = if sx < 0 || sx >= w as isize { 0 } else { srow[sx as usize] };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalisation_is_per_channel_and_the_same_on_bytes_and_on_tensors() {
        let img: Vec<u8> = (0..2 * 3 * 3).map(|i| i as u8 * 10).collect();
        let norm = Normalize { mean: vec![0.5, 0.25], std: vec![0.5, 2.0] };
        let mut out = vec![0f32; img.len()];
        norm.apply(&img, [2, 3, 3], &mut out);
        for (i, (&b, &o)) in img.iter().zip(&out).enumerate() {
            let c = i / 9;
            let want = (b as f32 / 255.0 - norm.mean[c]) / norm.std[c];
            assert_eq!(o, want, "value {i}");
        }
        // The tensor path (what the loader runs on the batch's device) gives the same bits.
        let dev = Device::Cpu;
        let batch =
            Tensor::from_vec([img.clone(), img.iter().rev().copied().collect()].concat(), (2, 2, 3, 3), &dev)
                .unwrap();
        let got = Normalize::apply_tensor(&batch, &norm.tables(2, &dev).unwrap()).unwrap();
        let got = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let mut second = vec![0f32; img.len()];
        norm.apply(&img.iter().rev().copied().collect::<Vec<_>>(), [2, 3, 3], &mut second);
        assert_eq!(got, [out, second].concat());
    }

    #[test]
    fn no_augment_copies_the_image() {
        let img: Vec<u8> = (0..2 * 3 * 3).map(|i| i as u8 * 10).collect();
        let mut out = vec![0u8; img.len()];
        augment(&img, 2, 3, 3, Augment::None, &mut Rng::new(0), &mut out);
        assert_eq!(out, img);
    }

    #[test]
    fn crop_and_flip_move_pixels_and_pad_with_zero_bytes() {
        // 1 channel, 4x4, pixel value = 10*y + x + 1 (never 0, so padding is recognisable).
        let img: Vec<u8> = (0..16).map(|i| (10 * (i / 4) + i % 4 + 1) as u8).collect();
        let mut rng = Rng::new(1);
        let mut seen_flip = false;
        let mut seen_shift = false;
        for _ in 0..200 {
            let mut out = vec![0u8; 16];
            augment(&img, 1, 4, 4, Augment::PadCropFlip { pad: 2, flip: true }, &mut rng, &mut out);
            // Every non-zero output pixel must be an input pixel whose row/col relation holds.
            for y in 0..4 {
                let nz: Vec<u8> = out[y * 4..y * 4 + 4].iter().copied().filter(|&v| v != 0).collect();
                for pair in nz.windows(2) {
                    let d = pair[1] as i64 - pair[0] as i64;
                    assert!(d == 1 || d == -1, "row {nz:?} is not a contiguous (possibly flipped) run");
                    if d == -1 {
                        seen_flip = true;
                    }
                }
            }
            if out[0] != 1 {
                seen_shift = true;
            }
        }
        assert!(seen_flip && seen_shift);
    }
}
