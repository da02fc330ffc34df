//! A synthetic Gaussian long-tailed features artifact in the `lt.features` format.
#![allow(dead_code)]

use std::path::Path;

use lt_core::{ArtifactWriter, Rng};

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

/// Writes the artifact with the given stage-1 head (`[C x D]`, `[C]`) for both backbones.
/// Backbone 0 (sgd) and 1 (swa) see the same base draw plus small noise; SWAG samples add
/// larger perturbations, as stochastic representations do.
pub fn write(path: &Path, head: (&[f32], &[f32]), seed: u64) {
    let c = COUNTS.len();
    let m = means(0);
    let tr = train_labels();
    let te = test_labels();
    let mut r = Rng::stream(seed, &[2]);
    let base_tr = draw(&tr, &m, &mut r, 1.0);
    let base_te = draw(&te, &m, &mut r, 1.0);
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
    let ftr = block(&base_tr, 0);
    let fte = block(&base_te, 1);
    let mut w = ArtifactWriter::new(lt_retrain::features::FEATURES_FORMAT);
    let samples = serde_json::json!([{"kind": "sgd"}, {"kind": "swa"}, {"kind": "swag", "seed": 0, "index": 0}, {"kind": "swag", "seed": 0, "index": 1}, {"kind": "swag", "seed": 0, "index": 2}]);
    w.meta("num_classes", c.to_string())
        .meta("feature_dim", DIM.to_string())
        .meta("samples", samples.to_string())
        .meta("dataset", "gaussian")
        .meta("fingerprint", format!("gaussian-{seed}"));
    let counts: Vec<i64> = COUNTS.iter().map(|&x| x as i64).collect();
    w.push_i64("class_counts", &[c], counts)
        .push_u32("train.labels", &[tr.len()], tr.clone())
        .push_f32("train.features", &[s, tr.len(), DIM], ftr)
        .push_u32("test.labels", &[te.len()], te.clone())
        .push_f32("test.features", &[s, te.len(), DIM], fte);
    for k in ["sgd", "swa"] {
        w.push_f32(&format!("head.{k}.weight"), &[c, DIM], head.0.to_vec()).push_f32(
            &format!("head.{k}.bias"),
            &[c],
            head.1.to_vec(),
        );
    }
    w.write(path).unwrap();
}
