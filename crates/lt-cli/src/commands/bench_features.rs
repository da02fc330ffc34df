//! A generated features artifact for the stage-2 benchmark (Gaussian class clusters with a long
//! tail), written streaming so that even the ImageNet-LT size never sits in memory.

use std::io::Write;
use std::path::Path;

use anyhow::Result;
use half::f16;
use lt_core::artifact::ElemType;
use lt_core::{ArtifactWriter, Format, Rng};

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
    let elem = if half { ElemType::F16 } else { ElemType::F32 };
    let mut w = ArtifactWriter::new(Format { name: "lt.features", version: 1 });
    let mut samples = vec![serde_json::json!({"kind": "sgd"}), serde_json::json!({"kind": "swa"})];
    samples.extend((0..m).map(|i| serde_json::json!({"kind": "swag", "seed": 0, "index": i})));
    w.meta("num_classes", c.to_string())
        .meta("feature_dim", d.to_string())
        .meta_json("samples", &samples)
        .meta("dataset", "bench")
        .meta("fingerprint", format!("bench-{n}-{d}-{c}-{m}"));
    let cc: Vec<i64> = counts.iter().map(|&k| k as i64).collect();
    w.push_i64("class_counts", &[c], cc);
    let gen = move |labels: Vec<u32>, seed: u64| {
        move |out: &mut dyn Write| -> std::io::Result<()> {
            let mut buf = vec![0f32; d];
            for b in 0..s {
                let mut r = Rng::stream(seed, &[b as u64]);
                for &y in &labels {
                    r.fill_normal(&mut buf, 0.0, 1.0);
                    buf[y as usize % d] += 3.0;
                    for v in &buf {
                        if half {
                            out.write_all(&f16::from_f32(*v).to_le_bytes())?;
                        } else {
                            out.write_all(&v.to_le_bytes())?;
                        }
                    }
                }
            }
            Ok(())
        }
    };
    w.push_u32("train.labels", &[labels.len()], labels.clone());
    w.push_lazy("train.features", elem, &[s, labels.len(), d], gen(labels.clone(), 1));
    w.push_u32("test.labels", &[test_labels.len()], test_labels.clone());
    w.push_lazy("test.features", elem, &[s, test_labels.len(), d], gen(test_labels, 2));
    let zeros_w = vec![0f32; c * d];
    w.push_f32("head.sgd.weight", &[c, d], zeros_w.clone()).push_f32("head.sgd.bias", &[c], vec![0f32; c]);
    w.push_f32("head.swa.weight", &[c, d], zeros_w).push_f32("head.swa.bias", &[c], vec![0f32; c]);
    w.write(path)?;
    Ok(())
}
