//! An embedded synthetic long-tailed image data set: no files, deterministic from a seed.
//!
//! Each class is a coloured, striped shape on a noisy background. Classes come in *twins*:
//! with `S = ceil(C/2)` shapes, class `c` has shape `c mod S`, and the classes sharing a shape
//! differ only by a small shift of hue and stripe orientation, blurred by per-image jitter. In
//! the long-tailed training set each tail class's twin is a more frequent class, so a plainly
//! trained classifier confuses tail images with their head twin: the long-tail failure that
//! re-balancing methods repair. Images are `3 x size x size` (32 by default).

use serde::{Deserialize, Serialize};

use lt_core::Rng;

use crate::dataset::ImageSet;

/// Parameters of the synthetic data set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SyntheticConfig {
    /// Number of classes.
    pub classes: usize,
    /// Images per class in the balanced training pool (the head class keeps all of them).
    pub n_max: usize,
    /// Balanced validation images per class.
    pub val_per_class: usize,
    /// Balanced test images per class.
    pub test_per_class: usize,
    /// Image side in pixels.
    pub size: usize,
    /// Hue difference between twin classes (fraction of the colour wheel).
    pub hue_gap: f32,
    /// Per-image hue jitter (standard deviation).
    pub hue_jitter: f32,
    /// Stripe orientation difference between twins, degrees.
    pub angle_gap: f32,
    /// Per-image orientation jitter, degrees.
    pub angle_jitter: f32,
    /// Pixel noise standard deviation (pixels in `[0, 1]`).
    pub noise: f32,
}

impl Default for SyntheticConfig {
    fn default() -> Self {
        Self {
            classes: 10,
            n_max: 500,
            val_per_class: 100,
            test_per_class: 100,
            size: 32,
            hue_gap: 0.07,
            hue_jitter: 0.045,
            angle_gap: 35.0,
            angle_jitter: 18.0,
            noise: 0.10,
        }
    }
}

/// The generated splits: a balanced training pool (class `i mod C` at index `i`), val and test.
#[derive(Clone, Debug)]
pub struct SyntheticSplits {
    /// Balanced training pool of `classes * n_max` images, labels interleaved.
    pub train_pool: ImageSet,
    /// Balanced validation set.
    pub val: ImageSet,
    /// Balanced test set.
    pub test: ImageSet,
}

#[derive(Clone, Copy)]
struct ClassStyle {
    shape: usize,
    hue: f32,
    angle: f32,
    freq: f32,
}

const SHAPES: usize = 7;

fn class_styles(cfg: &SyntheticConfig, seed: u64) -> Vec<ClassStyle> {
    let s = cfg.classes.div_ceil(2).max(1);
    let mut rng = Rng::stream(seed, &[lt_core::rng::streams::SYNTHETIC, 0]);
    let base: Vec<(f32, f32, f32)> = (0..s)
        .map(|k| {
            let hue = (k as f32 / s as f32 + 0.1 * rng.uniform_f32()) % 1.0;
            let angle = 180.0 * rng.uniform_f32();
            let freq = 0.12 + 0.10 * rng.uniform_f32();
            (hue, angle, freq)
        })
        .collect();
    (0..cfg.classes)
        .map(|c| {
            let k = c % s;
            let twin = (c / s) as f32;
            let (hue, angle, freq) = base[k];
            ClassStyle {
                shape: k % SHAPES,
                hue: (hue + twin * cfg.hue_gap).rem_euclid(1.0),
                angle: angle + twin * cfg.angle_gap,
                freq,
            }
        })
        .collect()
}

fn hsv_to_rgb(h: f32, s: f32, v: f32) -> [f32; 3] {
    let h = h.rem_euclid(1.0) * 6.0;
    let i = h.floor();
    let f = h - i;
    let (p, q, t) = (v * (1.0 - s), v * (1.0 - s * f), v * (1.0 - s * (1.0 - f)));
    match i as i32 {
        0 => [v, t, p],
        1 => [q, v, p],
        2 => [p, v, t],
        3 => [p, q, v],
        4 => [t, p, v],
        _ => [v, p, q],
    }
}

/// Signed "inside" test of shape `k` at local coordinates (unit radius).
fn inside(shape: usize, x: f32, y: f32) -> bool {
    match shape {
        0 => x * x + y * y <= 1.0,                                     // disk
        1 => x.abs() <= 0.8 && y.abs() <= 0.8,                         // square
        2 => (-0.9..=0.8).contains(&y) && x.abs() <= (y + 0.9) * 0.65, // triangle
        3 => {
            let r2 = x * x + y * y;
            (0.4..=1.0).contains(&r2)
        } // ring
        4 => (x.abs() <= 0.3 && y.abs() <= 1.0) || (y.abs() <= 0.3 && x.abs() <= 1.0), // cross
        5 => x.abs() + y.abs() <= 1.0,                                 // diamond
        _ => y.abs() <= 0.35 && x.abs() <= 1.0,                        // bar
    }
}

fn render(style: &ClassStyle, cfg: &SyntheticConfig, rng: &mut Rng, out: &mut [u8]) {
    let n = cfg.size;
    let nf = n as f32;
    // Background: grey level, gradient, noise.
    let g0 = rng.uniform_range(0.25, 0.6) as f32;
    let gdir = rng.uniform_f32() * std::f32::consts::TAU;
    let gamp = rng.uniform_range(0.0, 0.2) as f32;
    let tint = [rng.uniform_f32() * 0.1, rng.uniform_f32() * 0.1, rng.uniform_f32() * 0.1];
    // Foreground geometry.
    let scale = nf * rng.uniform_range(0.22, 0.34) as f32;
    let cx = nf / 2.0 + rng.uniform_range(-0.15, 0.15) as f32 * nf;
    let cy = nf / 2.0 + rng.uniform_range(-0.15, 0.15) as f32 * nf;
    let rot = if style.shape == 0 { 0.0 } else { rng.uniform_range(-0.6, 0.6) as f32 };
    let (rs, rc) = rot.sin_cos();
    // Foreground colour and stripes (the class-distinguishing attributes, jittered).
    let hue = style.hue + cfg.hue_jitter * rng.normal() as f32;
    let sat = rng.uniform_range(0.55, 0.95) as f32;
    let val = rng.uniform_range(0.65, 1.0) as f32;
    let rgb = hsv_to_rgb(hue, sat, val);
    let angle = (style.angle + cfg.angle_jitter * rng.normal() as f32).to_radians();
    let (sa, ca) = angle.sin_cos();
    let phase = rng.uniform_f32() * std::f32::consts::TAU;
    let freq = style.freq * std::f32::consts::TAU;
    let mut noise = vec![0f32; 3 * n * n];
    rng.fill_normal(&mut noise, 0.0, cfg.noise);
    for y in 0..n {
        for x in 0..n {
            let (fx, fy) = (x as f32 + 0.5, y as f32 + 0.5);
            let bg = g0 + gamp * ((fx / nf - 0.5) * gdir.cos() + (fy / nf - 0.5) * gdir.sin());
            let lx = ((fx - cx) * rc + (fy - cy) * rs) / scale;
            let ly = (-(fx - cx) * rs + (fy - cy) * rc) / scale;
            let fg = inside(style.shape, lx, ly);
            let stripe = 0.7 + 0.3 * (freq * (fx * ca + fy * sa) + phase).sin();
            for ch in 0..3 {
                let v = if fg { rgb[ch] * stripe } else { bg + tint[ch] };
                let v = v + noise[ch * n * n + y * n + x];
                out[ch * n * n + y * n + x] = (v.clamp(0.0, 1.0) * 255.0).round() as u8;
            }
        }
    }
}

fn generate(
    cfg: &SyntheticConfig,
    seed: u64,
    split: u64,
    per_class: usize,
    styles: &[ClassStyle],
) -> ImageSet {
    let c = cfg.classes;
    let len = 3 * cfg.size * cfg.size;
    let total = c * per_class;
    let mut pixels = vec![0u8; total * len];
    let mut labels = Vec::with_capacity(total);
    for i in 0..total {
        labels.push((i % c) as u32);
    }
    use rayon::prelude::*;
    pixels.par_chunks_mut(len).enumerate().for_each(|(i, out)| {
        let mut rng = Rng::stream(seed, &[lt_core::rng::streams::SYNTHETIC, 1 + split, i as u64]);
        render(&styles[i % c], cfg, &mut rng, out);
    });
    ImageSet {
        channels: 3,
        height: cfg.size,
        width: cfg.size,
        pixels,
        labels,
        num_classes: c,
        class_names: (0..c).map(|k| format!("synthetic_{k}")).collect(),
    }
}

/// Generates the three splits from `seed` (same seed, same images, on any machine).
pub fn generate_splits(cfg: &SyntheticConfig, seed: u64) -> SyntheticSplits {
    let styles = class_styles(cfg, seed);
    SyntheticSplits {
        train_pool: generate(cfg, seed, 0, cfg.n_max, &styles),
        val: generate(cfg, seed, 1, cfg.val_per_class, &styles),
        test: generate(cfg, seed, 2, cfg.test_per_class, &styles),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The default synthetic split's fingerprint, which runs record and `cargo xtask reproduce`
    /// keys stage 1 by: pinned, since any change to it trains every synthetic run again.
    #[test]
    fn the_default_splits_fingerprint_is_pinned() {
        let b = crate::load_bundle(crate::DatasetName::Synthetic, &crate::DataOptions::default()).unwrap();
        assert_eq!(b.fingerprint(), "a937d121d4ac3f2f707fa9c5673141fceec31e41e46433ce103af1504f9c6a2a");
    }

    #[test]
    fn deterministic_balanced_and_seed_dependent() {
        let cfg = SyntheticConfig { n_max: 6, val_per_class: 1, test_per_class: 2, ..Default::default() };
        let a = generate_splits(&cfg, 3);
        let b = generate_splits(&cfg, 3);
        let c = generate_splits(&cfg, 4);
        assert_eq!(a.train_pool.pixels, b.train_pool.pixels);
        assert_ne!(a.train_pool.pixels, c.train_pool.pixels);
        assert_eq!(a.train_pool.len(), 60);
        assert_eq!(a.test.len(), 20);
        assert_eq!(crate::longtail::class_counts(&a.train_pool.labels, 10), vec![6; 10]);
        // Images are not constant.
        let img = a.train_pool.image(0);
        assert!(img.iter().max().unwrap() - img.iter().min().unwrap() > 100);
    }

    #[test]
    fn twins_share_shape_and_differ_by_the_configured_gaps() {
        let cfg = SyntheticConfig::default();
        let s = class_styles(&cfg, 0);
        assert_eq!(s[0].shape, s[5].shape);
        assert!(((s[5].hue - s[0].hue).rem_euclid(1.0) - cfg.hue_gap).abs() < 1e-5);
        assert!((s[5].angle - s[0].angle - cfg.angle_gap).abs() < 1e-4);
        assert_ne!(s[0].shape, s[1].shape);
    }
}
