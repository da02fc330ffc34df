//! A generated features artifact for the stage-2 benchmark (Gaussian class clusters with a long
//! tail), written streaming so that even the ImageNet-LT size never sits in memory.

use std::io::Write;
use std::path::Path;

use anyhow::Result;
use lt_core::formats::features::{write_values, FeaturesMeta, FeaturesWriter, SampleInfo, SampleKind, Split};
use lt_core::Rng;

/// Writes `n` training rows (`s = 2 + m` backbones) and a small test split.
pub fn write(path: &Path, n: usize, d: usize, c: usize, m: usize, half: bool) -> Result<()> {
    let counts = lt_data::exponential_profile(n, c, 100.0)?;
    let total: usize = counts.iter().sum();
    let scale = n as f64 / total as f64;
    let mut counts: Vec<usize> = counts.iter().map(|&k| ((k as f64 * scale) as usize).max(1)).collect();
    let diff = n as isize - counts.iter().sum::<usize>() as isize;
    counts[0] = (counts[0] as isize + diff) as usize;
    let labels: Vec<u32> =
        counts.iter().enumerate().flat_map(|(k, &cnt)| std::iter::repeat_n(k as u32, cnt)).collect();
    let test_labels: Vec<u32> = (0..c as u32).flat_map(|k| std::iter::repeat_n(k, 5)).collect();
    let s = 2 + m;
    let samples = SampleInfo::standard(m, 0);
    let meta = FeaturesMeta {
        num_classes: c,
        feature_dim: d,
        samples,
        scale: 0.5,
        half,
        dataset: "bench".into(),
        arch: "none".into(),
        class_names: Vec::new(),
        extract_config: serde_json::Value::Null,
        fingerprint: format!("bench-{n}-{d}-{c}-{m}"),
        run_fingerprint: String::new(),
        split_fingerprint: String::new(),
    };
    let mut w = FeaturesWriter::new(meta, &counts);
    let gen = move |labels: Vec<u32>, seed: u64| {
        move |out: &mut dyn Write| -> std::io::Result<()> {
            let mut buf = vec![0f32; d];
            for b in 0..s {
                let mut r = Rng::stream(seed, &[b as u64]);
                for &y in &labels {
                    r.fill_normal(&mut buf, 0.0, 1.0);
                    buf[y as usize % d] += 3.0;
                    write_values(out, &buf, half)?;
                }
            }
            Ok(())
        }
    };
    w.split(Split::Train, &labels, gen(labels.clone(), 1));
    w.split(Split::Test, &test_labels, gen(test_labels.clone(), 2));
    let dev = candle_core::Device::Cpu;
    let (zw, zb) = (
        candle_core::Tensor::zeros((c, d), candle_core::DType::F32, &dev)?,
        candle_core::Tensor::zeros(c, candle_core::DType::F32, &dev)?,
    );
    w.head(SampleKind::Sgd, &zw, &zb)?;
    w.head(SampleKind::Swa, &zw, &zb)?;
    w.write(path)?;
    Ok(())
}
