//! The dispersion of stochastic representations (poster Figure 3) against a reference written
//! out from its definition, on several inputs, members, classes and a head with a bias; and
//! `of_features`, which streams a features artifact in chunks, against the same reference on the
//! artifact's SWAG samples under its SWA head.

use candle_core::{Device, Tensor};
use lt_core::formats::features::{
    write_values, Features, FeaturesMeta, FeaturesWriter, SampleInfo, SampleKind, Split,
};
use lt_core::Rng;
use lt_metrics::dispersion::{dispersion, of_features, per_input};

/// `(representation, probability)` dispersion of input `i`, in f64 from the definition:
/// `mean_m ||z_m - z̄||² / ||z̄||²` and `mean_m KL(p_m || p̄)`, `p_m = softmax(W z_m + b)`.
fn reference(members: &[Vec<f32>], i: usize, dim: usize, w: &[f32], b: &[f32]) -> (f64, f64) {
    let m = members.len() as f64;
    let z: Vec<Vec<f64>> =
        members.iter().map(|s| s[i * dim..(i + 1) * dim].iter().map(|&v| v as f64).collect()).collect();
    let zbar: Vec<f64> = (0..dim).map(|d| z.iter().map(|r| r[d]).sum::<f64>() / m).collect();
    let sq = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>();
    let spread =
        z.iter().map(|r| sq(&r.iter().zip(&zbar).map(|(a, c)| a - c).collect::<Vec<_>>())).sum::<f64>() / m;
    let probs: Vec<Vec<f64>> = z
        .iter()
        .map(|r| {
            let logits: Vec<f64> = (0..b.len())
                .map(|c| b[c] as f64 + (0..dim).map(|d| w[c * dim + d] as f64 * r[d]).sum::<f64>())
                .collect();
            let total: f64 = logits.iter().map(|l| l.exp()).sum();
            logits.iter().map(|l| l.exp() / total).collect()
        })
        .collect();
    let pbar: Vec<f64> = (0..b.len()).map(|c| probs.iter().map(|p| p[c]).sum::<f64>() / m).collect();
    let kl = probs
        .iter()
        .map(|p| p.iter().zip(&pbar).map(|(a, q)| a * (a.ln() - q.ln())).sum::<f64>())
        .sum::<f64>()
        / m;
    (spread / sq(&zbar), kl)
}

fn normal(seed: u64, n: usize, std: f32) -> Vec<f32> {
    let mut v = vec![0f32; n];
    Rng::new(seed).fill_normal(&mut v, 0.0, std);
    v
}

/// Inputs around a common centre, members spread around each input.
fn members(seed: u64, count: usize, n: usize, dim: usize) -> Vec<Vec<f32>> {
    let centre: Vec<f32> = normal(seed, n * dim, 1.0).iter().map(|v| v + 1.5).collect();
    (0..count)
        .map(|k| centre.iter().zip(normal(seed + 1 + k as u64, n * dim, 0.4)).map(|(c, e)| c + e).collect())
        .collect()
}

fn assert_close(got: f64, want: f64, what: &str) {
    assert!((got - want).abs() <= 1e-5 * want.abs().max(1e-3), "{what}: {got} against {want}");
}

#[test]
fn per_input_dispersion_and_class_means_follow_the_definition() {
    let (n, dim, classes) = (6, 4, 3);
    let zs = members(7, 3, n, dim);
    let w = normal(100, classes * dim, 0.8);
    let b = [0.3f32, -0.2, 0.5];
    let labels = [0u32, 2, 0, 2, 2, 0];
    let refs: Vec<&[f32]> = zs.iter().map(|z| z.as_slice()).collect();
    let d = dispersion(&refs, dim, &w, &b, &labels).unwrap();
    for i in 0..n {
        let (rep, prob) = reference(&zs, i, dim, &w, &b);
        assert!(rep > 1e-3 && prob > 1e-4, "input {i}: the test needs spread ({rep}, {prob})");
        assert_close(d.representation[i], rep, &format!("representation of input {i}"));
        assert_close(d.probability[i], prob, &format!("probability of input {i}"));
    }
    let mean = |v: &[f64], class: u32| {
        let of: Vec<f64> = labels.iter().zip(v).filter(|(&y, _)| y == class).map(|(_, &x)| x).collect();
        of.iter().sum::<f64>() / of.len() as f64
    };
    for (class, want) in [(0, Some(())), (1, None), (2, Some(()))] {
        match want {
            Some(()) => {
                assert_close(
                    d.class_representation[class].unwrap(),
                    mean(&d.representation, class as u32),
                    "class mean",
                );
                assert_close(
                    d.class_probability[class].unwrap(),
                    mean(&d.probability, class as u32),
                    "class mean",
                );
            }
            None => assert_eq!((d.class_representation[class], d.class_probability[class]), (None, None)),
        }
    }
    // Shapes that do not fit are refused, not read past.
    assert!(per_input(&refs, n, dim, &w[..classes * dim - 1], &b).is_err());
    assert!(per_input(&refs, n + 1, dim, &w, &b).is_err());
    assert!(dispersion(&refs, dim, &w, &b, &[0, 1, 2, 3, 0, 0]).is_err(), "label 3 of 3 classes");
}

/// More inputs than one chunk (1,024 rows), so that the streaming joins its chunks in order.
#[test]
fn of_features_reads_the_swag_samples_under_the_swa_head_chunk_by_chunk() {
    let (n, dim, classes, swag) = (1030, 3, 3, 3);
    let zs = members(11, 2 + swag, n, dim);
    let labels: Vec<u32> = (0..n as u32).map(|i| i % 2).collect();
    let (w_sgd, w_swa) = (normal(200, classes * dim, 0.8), normal(300, classes * dim, 0.8));
    let (b_sgd, b_swa) = ([0.0f32, 0.1, 0.2], [0.4f32, -0.3, 0.0]);
    let mut samples = vec![
        SampleInfo { kind: SampleKind::Sgd, seed: None, index: None },
        SampleInfo { kind: SampleKind::Swa, seed: None, index: None },
    ];
    samples.extend((0..swag).map(|i| SampleInfo { kind: SampleKind::Swag, seed: Some(0), index: Some(i) }));
    let meta = FeaturesMeta {
        num_classes: classes,
        feature_dim: dim,
        samples,
        scale: 0.5,
        half: false,
        dataset: "test".into(),
        arch: "none".into(),
        class_names: Vec::new(),
        extract_config: serde_json::Value::Null,
        fingerprint: "f".into(),
        run_fingerprint: String::new(),
        split_fingerprint: String::new(),
    };
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("features.safetensors");
    let block: Vec<f32> = zs.concat();
    let mut writer = FeaturesWriter::new(meta, &[n / 2, n / 2, 0]);
    let train = block.clone();
    writer.split(Split::Train, &labels, move |o| write_values(o, &train, false));
    writer.split(Split::Test, &labels, move |o| write_values(o, &block, false));
    let t = |v: &[f32], shape: &[usize]| Tensor::from_slice(v, shape, &Device::Cpu).unwrap();
    writer.head(SampleKind::Sgd, &t(&w_sgd, &[classes, dim]), &t(&b_sgd, &[classes])).unwrap();
    writer.head(SampleKind::Swa, &t(&w_swa, &[classes, dim]), &t(&b_swa, &[classes])).unwrap();
    writer.write(&path).unwrap();

    let d = of_features(&Features::open(&path).unwrap(), Split::Test).unwrap().expect("3 SWAG samples");
    assert_eq!(d.representation.len(), n);
    for i in [0, 1, 1023, 1024, 1029] {
        let (rep, prob) = reference(&zs[2..], i, dim, &w_swa, &b_swa);
        assert_close(d.representation[i], rep, &format!("representation of input {i}"));
        assert_close(d.probability[i], prob, &format!("probability of input {i}"));
    }
    assert_eq!(d.class_representation[2], None, "class 2 has no test input");
}
