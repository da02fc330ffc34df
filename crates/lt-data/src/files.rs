//! Lazily decoded image files (JPEG, PNG) with the standard ImageNet transforms.
//!
//! Used by ImageNet-LT, iNaturalist-2018 (split list files) and image folders. Nothing is decoded
//! up front: [`ImageFileDataset::load_into`] opens, decodes and transforms one image, and the batch
//! loader calls it from its worker threads.

use std::path::{Path, PathBuf};

use image::RgbImage;
use lt_core::Rng;
use serde::{Deserialize, Serialize};

use crate::dataset::Dataset;
use crate::error::{DataError, Result};
use crate::resize::{resize_rgb_window, Rect};
use crate::transform::Normalize;

/// Training-time transform: torchvision's `RandomResizedCrop(size)` + horizontal flip, with an
/// optional `ColorJitter(brightness, contrast, saturation)` of strength `jitter`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainTransform {
    /// Output side.
    pub size: u32,
    /// Range of the crop's area as a fraction of the image (torchvision: 0.08..1).
    pub scale: (f64, f64),
    /// Range of the crop's aspect ratio (torchvision: 3/4..4/3).
    pub ratio: (f64, f64),
    /// Random horizontal flip.
    pub flip: bool,
    /// Colour jitter strength (0.4 for ImageNet-LT), `None` for none.
    pub jitter: Option<f32>,
}

impl TrainTransform {
    /// `RandomResizedCrop(size)` + flip, with optional jitter.
    pub fn standard(size: u32, jitter: Option<f32>) -> Self {
        Self { size, scale: (0.08, 1.0), ratio: (3.0 / 4.0, 4.0 / 3.0), flip: true, jitter }
    }
}

/// Test-time transform: resize the shorter side to `resize`, then a centre crop of `crop`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalTransform {
    /// Shorter side after resizing (256 for ImageNet).
    pub resize: u32,
    /// Side of the centre crop (224 for ImageNet).
    pub crop: u32,
}

/// One image file and its label.
#[derive(Clone, Debug)]
pub struct ImageEntry {
    /// Path relative to the data set's image root (or absolute).
    pub path: PathBuf,
    /// Class label.
    pub label: u32,
}

/// A data set of image files decoded on demand.
#[derive(Clone, Debug)]
pub struct ImageFileDataset {
    root: PathBuf,
    paths: Vec<PathBuf>,
    labels: Vec<u32>,
    num_classes: usize,
    /// Transform used when loading for training.
    pub train: TrainTransform,
    /// Transform used otherwise.
    pub eval: EvalTransform,
    /// Normalisation.
    pub normalize: Normalize,
}

impl ImageFileDataset {
    /// A data set of `entries` under `root` (labels must be `< num_classes`).
    pub fn new(
        root: PathBuf,
        entries: Vec<ImageEntry>,
        num_classes: usize,
        train: TrainTransform,
        eval: EvalTransform,
        normalize: Normalize,
    ) -> Self {
        let (paths, labels) = entries.into_iter().map(|e| (e.path, e.label)).unzip();
        Self { root, paths, labels, num_classes, train, eval, normalize }
    }

    /// Full path of sample `i`.
    pub fn path(&self, i: usize) -> PathBuf {
        self.root.join(&self.paths[i])
    }

    /// Decodes sample `i` to RGB.
    pub fn decode(&self, i: usize) -> Result<RgbImage> {
        decode_rgb(&self.path(i))
    }
}

/// Opens and decodes an image file to 8-bit RGB.
pub fn decode_rgb(path: &Path) -> Result<RgbImage> {
    let bytes = std::fs::read(path)
        .map_err(|e| DataError::Image { path: path.to_path_buf(), detail: e.to_string() })?;
    let img = image::load_from_memory(&bytes)
        .map_err(|e| DataError::Image { path: path.to_path_buf(), detail: e.to_string() })?;
    Ok(img.into_rgb8())
}

/// Most pixels the evaluation transform resizes an image to before its centre crop (2^26, about
/// 200 MB of RGB): a shorter side of 256 leaves room for aspect ratios up to 1,024.
pub const MAX_RESIZED_PIXELS: u64 = 1 << 26;

/// `(width, height)` of a `w` x `h` image whose shorter side is resized to `resize` (the longer
/// side keeps the aspect ratio, rounded down), or why it cannot be: no pixels, or more than
/// [`MAX_RESIZED_PIXELS`] (a sliver of an image would otherwise allocate gigabytes).
pub fn eval_resize_dims(w: u32, h: u32, resize: u32) -> std::result::Result<(u32, u32), String> {
    if w == 0 || h == 0 {
        return Err(format!("a {w}x{h} image has no pixels"));
    }
    let (w64, h64, r) = (w as u64, h as u64, resize as u64);
    // Each product is below 2^64: all three factors are below 2^32.
    let (nw, nh) = if w <= h { (r, r * h64 / w64) } else { (r * w64 / h64, r) };
    if nw as u128 * nh as u128 > MAX_RESIZED_PIXELS as u128 {
        return Err(format!(
            "a {w}x{h} image resized to a shorter side of {resize} is {nw}x{nh} pixels, more than \
             {MAX_RESIZED_PIXELS}: its aspect ratio is too extreme"
        ));
    }
    // Both sides are at most MAX_RESIZED_PIXELS (the shorter one is `resize`, or both are 0).
    Ok((nw as u32, nh as u32))
}

/// torchvision's `RandomResizedCrop.get_params`: `(top, left, height, width)` of the crop.
pub fn random_resized_crop_params(
    w: u32,
    h: u32,
    scale: (f64, f64),
    ratio: (f64, f64),
    rng: &mut Rng,
) -> (u32, u32, u32, u32) {
    let area = (w as f64) * (h as f64);
    let (lr0, lr1) = (ratio.0.ln(), ratio.1.ln());
    for _ in 0..10 {
        let target = area * rng.uniform_range(scale.0, scale.1);
        let aspect = rng.uniform_range(lr0, lr1).exp();
        let cw = (target * aspect).sqrt().round() as i64;
        let ch = (target / aspect).sqrt().round() as i64;
        if cw > 0 && ch > 0 && cw <= w as i64 && ch <= h as i64 {
            let top = rng.below((h as i64 - ch + 1) as u64) as u32;
            let left = rng.below((w as i64 - cw + 1) as u64) as u32;
            return (top, left, ch as u32, cw as u32);
        }
    }
    // Fallback: a centre crop with the aspect ratio clamped to the range.
    let in_ratio = w as f64 / h as f64;
    let (cw, ch) = if in_ratio < ratio.0 {
        (w, ((w as f64) / ratio.0).round() as u32)
    } else if in_ratio > ratio.1 {
        (((h as f64) * ratio.1).round() as u32, h)
    } else {
        (w, h)
    };
    ((h - ch.min(h)) / 2, (w - cw.min(w)) / 2, ch.min(h), cw.min(w))
}

fn color_jitter(img: &mut [f32], strength: f32, rng: &mut Rng) {
    let lo = (1.0 - strength).max(0.0) as f64;
    let hi = 1.0 + strength as f64;
    let b = rng.uniform_range(lo, hi) as f32;
    let c = rng.uniform_range(lo, hi) as f32;
    let s = rng.uniform_range(lo, hi) as f32;
    let mut order = [0usize, 1, 2];
    rng.shuffle(&mut order);
    let gray = |p: &[f32]| 0.299 * p[0] + 0.587 * p[1] + 0.114 * p[2];
    for op in order {
        match op {
            0 => img.iter_mut().for_each(|v| *v = (*v * b).clamp(0.0, 1.0)),
            1 => {
                let mean = img.chunks_exact(3).map(gray).sum::<f32>() / (img.len() / 3) as f32;
                img.iter_mut().for_each(|v| *v = (*v * c + mean * (1.0 - c)).clamp(0.0, 1.0));
            }
            _ => {
                for p in img.chunks_exact_mut(3) {
                    let g = gray(p);
                    for v in p.iter_mut() {
                        *v = (*v * s + g * (1.0 - s)).clamp(0.0, 1.0);
                    }
                }
            }
        }
    }
}

/// Writes the `w x h` RGB image `hwc` as `C x H x W` planes into `out`, mirrored when `flip`.
fn write_chw(hwc: &[u8], w: usize, h: usize, flip: bool, out: &mut [u8]) {
    for ch in 0..3 {
        for y in 0..h {
            for x in 0..w {
                let sx = if flip { w - 1 - x } else { x };
                out[ch * h * w + y * w + x] = hwc[(y * w + sx) * 3 + ch];
            }
        }
    }
}

impl Dataset for ImageFileDataset {
    fn len(&self) -> usize {
        self.paths.len()
    }
    fn labels(&self) -> &[u32] {
        &self.labels
    }
    fn num_classes(&self) -> usize {
        self.num_classes
    }
    fn sample_shape(&self) -> [usize; 3] {
        // Train and eval crops have the same side in every preset; the train size wins.
        [3, self.train.size as usize, self.train.size as usize]
    }
    fn load_bytes_into(&self, index: usize, train: bool, rng: &mut Rng, out: &mut [u8]) -> Result<()> {
        let img = self.decode(index)?;
        let (w, h) = img.dimensions();
        let side = self.train.size;
        let mut hwc = vec![0u8; side as usize * side as usize * 3];
        let whole = Rect::whole(side, side);
        let flip = if train {
            let t = &self.train;
            let (top, left, ch, cw) = random_resized_crop_params(w, h, t.scale, t.ratio, rng);
            let crop = Rect { x: left, y: top, w: cw, h: ch };
            resize_rgb_window(img.as_raw(), w, crop, (side, side), whole, &mut hwc);
            t.flip && rng.bernoulli(0.5)
        } else {
            let e = &self.eval;
            let (nw, nh) = eval_resize_dims(w, h, e.resize)
                .map_err(|detail| DataError::ImageShape { path: self.path(index), detail })?;
            let crop = e.crop.min(nw).min(nh);
            let top = ((nh - crop) as f64 / 2.0).round() as u32;
            let left = ((nw - crop) as f64 / 2.0).round() as u32;
            let centre = Rect { x: left, y: top, w: crop, h: crop };
            if crop == side {
                resize_rgb_window(img.as_raw(), w, Rect::whole(w, h), (nw, nh), centre, &mut hwc);
            } else {
                // An image smaller than the crop: its centre crop is resized once more.
                let mut c = vec![0u8; crop as usize * crop as usize * 3];
                resize_rgb_window(img.as_raw(), w, Rect::whole(w, h), (nw, nh), centre, &mut c);
                resize_rgb_window(&c, crop, Rect::whole(crop, crop), (side, side), whole, &mut hwc);
            }
            false
        };
        if let (true, Some(j)) = (train, self.train.jitter) {
            // Jitter in [0, 1], rounded back to bytes (as torchvision's jitter of a PIL image).
            let mut v: Vec<f32> = hwc.iter().map(|&b| b as f32 / 255.0).collect();
            color_jitter(&mut v, j, rng);
            hwc = v.iter().map(|&x| (x * 255.0).round().clamp(0.0, 255.0) as u8).collect();
        }
        write_chw(&hwc, side as usize, side as usize, flip, out);
        Ok(())
    }
    fn normalize(&self) -> &Normalize {
        &self.normalize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(dir: &Path, w: u32, h: u32) -> PathBuf {
        let p = dir.join(format!("{w}x{h}.png"));
        image::GrayImage::from_pixel(w, h, image::Luma([100])).save(&p).unwrap();
        p
    }

    fn dataset(entries: Vec<ImageEntry>, resize: u32, crop: u32) -> ImageFileDataset {
        let eval = EvalTransform { resize, crop };
        let train = TrainTransform::standard(crop, None);
        ImageFileDataset::new(PathBuf::new(), entries, 1, train, eval, Normalize::imagenet())
    }

    /// The transforms as first written, on the `image` crate's resize of whole images: the
    /// windowed resize must give the same bytes.
    fn reference_load(ds: &ImageFileDataset, i: usize, train: bool, rng: &mut Rng) -> Vec<u8> {
        use image::imageops::{crop_imm, resize, FilterType::Triangle};
        let img = ds.decode(i).unwrap();
        let (w, h) = img.dimensions();
        let side = ds.train.size;
        let (img, flip) = if train {
            let t = &ds.train;
            let (top, left, ch, cw) = random_resized_crop_params(w, h, t.scale, t.ratio, rng);
            let view = crop_imm(&img, left, top, cw, ch).to_image();
            (resize(&view, side, side, Triangle), t.flip && rng.bernoulli(0.5))
        } else {
            let (nw, nh) = eval_resize_dims(w, h, ds.eval.resize).unwrap();
            let resized = resize(&img, nw, nh, Triangle);
            let crop = ds.eval.crop.min(nw).min(nh);
            let top = ((nh - crop) as f64 / 2.0).round() as u32;
            let left = ((nw - crop) as f64 / 2.0).round() as u32;
            let c = crop_imm(&resized, left, top, crop, crop).to_image();
            (if crop != side { resize(&c, side, side, Triangle) } else { c }, false)
        };
        let mut out = vec![0u8; ds.sample_len()];
        write_chw(img.as_raw(), side as usize, side as usize, flip, &mut out);
        out
    }

    #[test]
    fn the_transforms_give_the_bytes_of_the_image_crates_resize() {
        let dir = tempfile::tempdir().unwrap();
        let mut rng = Rng::new(4);
        let entries: Vec<ImageEntry> = [(500, 375), (375, 500), (64, 64), (20, 90), (7, 5)]
            .iter()
            .map(|&(w, h)| {
                let bytes = (0..w * h * 3).map(|_| rng.below(256) as u8).collect();
                let path = dir.path().join(format!("{w}x{h}.jpg"));
                RgbImage::from_raw(w, h, bytes).unwrap().save(&path).unwrap();
                ImageEntry { path, label: 0 }
            })
            .collect();
        let ds = dataset(entries, 36, 32);
        for i in 0..ds.len() {
            for (train, seed) in [(false, 0), (true, 1), (true, 2), (true, 3)] {
                let mut out = vec![0u8; ds.sample_len()];
                ds.load_bytes_into(i, train, &mut Rng::new(seed), &mut out).unwrap();
                assert_eq!(
                    out,
                    reference_load(&ds, i, train, &mut Rng::new(seed)),
                    "image {i}, train {train}"
                );
            }
        }
    }

    /// Found by the `folder` fuzz target: the evaluation transform of a 1 x 48,907 image with
    /// `resize` 251 allocated 9.2 GB (a 251 x 12,275,657 RGB image) before its centre crop.
    #[test]
    fn a_sliver_image_is_refused_by_the_eval_transform_instead_of_allocating_gigabytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = png(dir.path(), 1, 48_907);
        let ds = dataset(vec![ImageEntry { path: path.clone(), label: 0 }], 251, 8);
        let mut out = vec![0f32; ds.sample_len()];
        let err = ds.load_into(0, false, &mut Rng::new(0), &mut out).unwrap_err();
        assert!(matches!(err, DataError::ImageShape { .. }), "{err}");
        let msg = err.to_string();
        assert!(msg.contains("1x48907.png") && msg.contains("251x12275657 pixels"), "{msg}");
        // The training transform crops before it resizes: it stays within bounds.
        ds.load_into(0, true, &mut Rng::new(0), &mut out).unwrap();
    }

    #[test]
    fn eval_resize_dims_keep_the_aspect_ratio_and_refuse_what_cannot_fit() {
        assert_eq!(eval_resize_dims(500, 375, 256), Ok((341, 256)));
        assert_eq!(eval_resize_dims(375, 500, 256), Ok((256, 341)));
        assert_eq!(eval_resize_dims(300, 300, 32), Ok((32, 32)));
        // Aspect ratio 1,024 at 256 is exactly the limit; one more pixel is past it.
        assert_eq!(eval_resize_dims(1024, 1, 256), Ok((262_144, 256)));
        assert!(eval_resize_dims(1025, 1, 256).unwrap_err().contains("too extreme"));
        assert!(eval_resize_dims(u32::MAX, 1, u32::MAX).unwrap_err().contains("too extreme"));
        assert!(eval_resize_dims(0, 10, 256).unwrap_err().contains("no pixels"));
        assert_eq!(eval_resize_dims(10, 20, 0), Ok((0, 0)));
    }

    #[test]
    fn random_resized_crop_stays_inside_and_respects_ranges() {
        let mut rng = Rng::new(0);
        for _ in 0..500 {
            let (t, l, h, w) = random_resized_crop_params(300, 200, (0.08, 1.0), (0.75, 4.0 / 3.0), &mut rng);
            assert!(t + h <= 200 && l + w <= 300 && h > 0 && w > 0);
            let frac = (h * w) as f64 / 60000.0;
            assert!(frac <= 1.0 + 1e-9);
        }
        // A sliver image forces the fallback centre crop with a clamped ratio.
        let (t, l, h, w) = random_resized_crop_params(1000, 10, (0.9, 1.0), (0.75, 4.0 / 3.0), &mut rng);
        assert_eq!((h, t), (10, 0));
        assert_eq!(w, 13);
        assert_eq!(l, (1000 - 13) / 2);
    }
}
