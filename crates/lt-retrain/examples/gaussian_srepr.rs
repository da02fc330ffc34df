//! Stage 2 on a generated long-tailed Gaussian features artifact: the plain head against LA and
//! SRepr, Few-shot accuracy printed: `cargo run --release -p lt-retrain --example gaussian_srepr`.
use candle_core::Device;
use lt_core::{ArtifactWriter, Rng};
use lt_retrain::features::FEATURES_FORMAT;
use lt_retrain::{retrain, FeatureSet, Method, RetrainConfig, SreprConfig};

fn main() -> anyhow::Result<()> {
    let (counts, d, members) = ([400usize, 150, 50, 15, 5], 6usize, 4usize);
    let c = counts.len();
    let train: Vec<u32> =
        counts.iter().enumerate().flat_map(|(k, &n)| std::iter::repeat_n(k as u32, n)).collect();
    let test: Vec<u32> = (0..c as u32).flat_map(|k| std::iter::repeat_n(k, 100)).collect();
    let mut rng = Rng::new(0);
    let mut draw = |labels: &[u32], noise: f32| -> Vec<f32> {
        let mut out = Vec::new();
        for &y in labels {
            let mut v = vec![0f32; d];
            rng.fill_normal(&mut v, 0.0, noise);
            v[y as usize] += 2.0;
            out.extend(v);
        }
        out
    };
    let s = 2 + members;
    let (mut ftr, mut fte) = (Vec::new(), Vec::new());
    for b in 0..s {
        let noise = if b < 2 { 1.0 } else { 1.1 };
        ftr.extend(draw(&train, noise));
        fte.extend(draw(&test, noise));
    }
    let path = std::env::temp_dir().join("lt-retrain-example.safetensors");
    let mut w = ArtifactWriter::new(FEATURES_FORMAT);
    let mut samples = vec![serde_json::json!({"kind": "sgd"}), serde_json::json!({"kind": "swa"})];
    samples.extend((0..members).map(|i| serde_json::json!({"kind": "swag", "seed": 0, "index": i})));
    w.meta("num_classes", c.to_string()).meta("feature_dim", d.to_string()).meta_json("samples", &samples);
    w.push_i64("class_counts", &[c], counts.iter().map(|&n| n as i64).collect::<Vec<_>>())
        .push_u32("train.labels", &[train.len()], train.clone())
        .push_f32("train.features", &[s, train.len(), d], ftr)
        .push_u32("test.labels", &[test.len()], test.clone())
        .push_f32("test.features", &[s, test.len(), d], fte);
    for k in ["sgd", "swa"] {
        w.push_f32(&format!("head.{k}.weight"), &[c, d], vec![0f32; c * d]).push_f32(
            &format!("head.{k}.bias"),
            &[c],
            vec![0f32; c],
        );
    }
    w.write(&path)?;
    let fs = FeatureSet::open(&path)?;
    for (name, method) in [
        ("plain CE", Method::La { tau: 0.0 }),
        ("LA", Method::La { tau: 1.0 }),
        ("SRepr", Method::Srepr(SreprConfig::default())),
    ] {
        let o = retrain(
            &fs,
            &RetrainConfig { epochs: 20, batch_size: 64, ..RetrainConfig::new(method) },
            &Device::Cpu,
        )?;
        let few: Vec<bool> = o
            .test_logits
            .chunks(c)
            .zip(&o.test_labels)
            .filter(|(_, &y)| y >= 3)
            .map(|(r, &y)| {
                r.iter().enumerate().fold(0, |b, (k, &v)| if v > r[b] { k } else { b }) == y as usize
            })
            .collect();
        println!(
            "{name:>9}: Few-shot accuracy {:.1}%",
            100.0 * few.iter().filter(|&&x| x).count() as f64 / few.len() as f64
        );
    }
    Ok(())
}
