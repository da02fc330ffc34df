//! A synthetic Gaussian long-tailed features artifact in the `lt.features` format.
#![allow(dead_code)]

use std::path::Path;

use candle_core::{Device, Tensor};
use lt_core::formats::features::{write_values, FeaturesMeta, FeaturesWriter, SampleInfo, SampleKind, Split};
use lt_core::Rng;

pub const COUNTS: [usize; 6] = [300, 150, 60, 25, 10, 4];
pub const DIM: usize = 8;
pub const TEST_PER_CLASS: usize = 60;
pub const SWAG: usize = 3;

/// Class means on a ring, close enough to overlap; representations `mean + N(0, 1)`.
fn means(seed: u64) -> Vec<Vec<f32>> {
    let mut r = Rng::stream(seed, &[1]);
    (0..COUNTS.len())
        .map(|c| {
            let mut v = vec![0f32; DIM];
            r.fill_normal(&mut v, 0.0, 0.3);
            let a = c as f32 / COUNTS.len() as f32 * std::f32::consts::TAU;
            v[0] += 2.2 * a.cos();
            v[1] += 2.2 * a.sin();
            v
        })
        .collect()
}

fn draw(labels: &[u32], means: &[Vec<f32>], r: &mut Rng, noise: f32) -> Vec<f32> {
    let mut out = Vec::with_capacity(labels.len() * DIM);
    for &y in labels {
        let mut v = vec![0f32; DIM];
        r.fill_normal(&mut v, 0.0, noise);
        out.extend(v.iter().zip(&means[y as usize]).map(|(a, b)| a + b));
    }
    out
}

pub fn train_labels() -> Vec<u32> {
    COUNTS.iter().enumerate().flat_map(|(c, &n)| std::iter::repeat_n(c as u32, n)).collect()
}

pub fn test_labels() -> Vec<u32> {
    (0..COUNTS.len() as u32).flat_map(|c| std::iter::repeat_n(c, TEST_PER_CLASS)).collect()
}

pub fn val_labels() -> Vec<u32> {
    (0..COUNTS.len() as u32).flat_map(|c| std::iter::repeat_n(c, VAL_PER_CLASS)).collect()
}

pub const VAL_PER_CLASS: usize = 40;

/// Writes the artifact with the given stage-1 head (`[C x D]`, `[C]`) for both backbones.
/// Backbone 0 (sgd) and 1 (swa) see the same base draw plus small noise; SWAG samples add
/// larger perturbations, as stochastic representations do. With `val`, a balanced validation
/// split too.
pub fn write(path: &Path, head: (&[f32], &[f32]), seed: u64, val: bool) {
    write_as(path, head, seed, val, false)
}

/// [`write`], with the representations stored as f16 when `half`.
pub fn write_as(path: &Path, head: (&[f32], &[f32]), seed: u64, val: bool, half: bool) {
    let c = COUNTS.len();
    let m = means(0);
    let (tr, te, va) = (train_labels(), test_labels(), val_labels());
    let mut r = Rng::stream(seed, &[2]);
    let base_tr = draw(&tr, &m, &mut r, 1.0);
    let base_te = draw(&te, &m, &mut r, 1.0);
    let base_va = draw(&va, &m, &mut r, 1.0);
    let s = 2 + SWAG;
    let block = |base: &[f32], k: usize| -> Vec<f32> {
        let mut all = Vec::with_capacity(s * base.len());
        for b in 0..s {
            let noise = if b < 2 { 0.05 } else { 0.3 };
            let mut e = vec![0f32; base.len()];
            Rng::stream(seed, &[3, k as u64, b as u64]).fill_normal(&mut e, 0.0, noise);
            all.extend(base.iter().zip(&e).map(|(x, n)| x + n));
        }
        all
    };
    let (ftr, fte, fva) = (block(&base_tr, 0), block(&base_te, 1), block(&base_va, 2));
    let mut samples = vec![
        SampleInfo { kind: SampleKind::Sgd, seed: None, index: None },
        SampleInfo { kind: SampleKind::Swa, seed: None, index: None },
    ];
    samples.extend((0..SWAG).map(|i| SampleInfo { kind: SampleKind::Swag, seed: Some(0), index: Some(i) }));
    let meta = FeaturesMeta {
        num_classes: c,
        feature_dim: DIM,
        samples,
        scale: 0.5,
        half,
        dataset: "gaussian".into(),
        arch: "none".into(),
        class_names: Vec::new(),
        extract_config: serde_json::Value::Null,
        fingerprint: format!("gaussian-{seed}"),
        run_fingerprint: String::new(),
        split_fingerprint: String::new(),
    };
    let mut w = FeaturesWriter::new(meta, &COUNTS);
    w.split(Split::Train, &tr, move |o| write_values(o, &ftr, half));
    w.split(Split::Test, &te, move |o| write_values(o, &fte, half));
    if val {
        w.split(Split::Val, &va, move |o| write_values(o, &fva, half));
    }
    let dev = Device::Cpu;
    let hw = Tensor::from_slice(head.0, (c, DIM), &dev).unwrap();
    let hb = Tensor::from_slice(head.1, c, &dev).unwrap();
    w.head(SampleKind::Sgd, &hw, &hb).unwrap();
    w.head(SampleKind::Swa, &hw, &hb).unwrap();
    w.write(path).unwrap();
}
