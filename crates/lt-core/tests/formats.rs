//! The `lt.features` format through its owner, `lt_core::formats::features`: a written artifact
//! reads back with its metadata, rows and heads; inconsistent files are refused by name.

use std::path::Path;

use candle_core::{Device, Tensor};
use lt_core::formats::features::*;

fn meta(half: bool) -> FeaturesMeta {
    FeaturesMeta {
        num_classes: 2,
        feature_dim: 3,
        samples: vec![
            SampleInfo { kind: SampleKind::Sgd, seed: None, index: None },
            SampleInfo { kind: SampleKind::Swa, seed: None, index: None },
            SampleInfo { kind: SampleKind::Swag, seed: Some(4), index: Some(0) },
        ],
        scale: 0.5,
        half,
        dataset: "toy".into(),
        arch: "resnet32".into(),
        class_names: vec!["a".into(), "b".into()],
        extract_config: serde_json::json!({"samples": 1}),
        fingerprint: "f".into(),
        run_fingerprint: "r".into(),
        split_fingerprint: "s".into(),
    }
}

/// Writes 3 backbones x N rows x 3 dims per split, value `split * 100 + position`.
fn write(path: &Path, half: bool, counts: &[usize], train_labels: &[u32]) {
    let n = train_labels.len();
    let values =
        |split: f32, n: usize| -> Vec<f32> { (0..3 * n * 3).map(|i| split * 100.0 + i as f32).collect() };
    let (tr, te) = (values(0.0, n), values(1.0, 2));
    let mut w = FeaturesWriter::new(meta(half), counts);
    w.split(Split::Train, train_labels, move |out| write_values(out, &tr, half));
    w.split(Split::Test, &[1, 0], move |out| write_values(out, &te, half));
    let dev = Device::Cpu;
    let hw = Tensor::new(&[[1f32, 2., 3.], [4., 5., 6.]], &dev).unwrap();
    let hb = Tensor::new(&[0.5f32, -0.5], &dev).unwrap();
    w.head(SampleKind::Sgd, &hw, &hb).unwrap();
    w.head(SampleKind::Swa, &hw, &hb).unwrap();
    w.write(path).unwrap();
}

#[test]
fn roundtrip_rows_heads_and_metadata() {
    let dir = tempfile::tempdir().unwrap();
    for half in [false, true] {
        let p = dir.path().join(format!("f{half}.safetensors"));
        write(&p, half, &[1, 2], &[1, 0, 1]);
        let f = Features::open(&p).unwrap();
        assert_eq!(f.meta(), &meta(half));
        assert_eq!(f.class_counts(), &[1, 2]);
        assert_eq!(f.len(Split::Train).unwrap(), 3);
        assert_eq!(f.labels(Split::Test).unwrap(), vec![1, 0]);
        assert!(!f.has_split(Split::Val));
        assert_eq!((f.index_of(SampleKind::Swa).unwrap(), f.swag_indices()), (1, vec![2]));
        // Sample 2, rows 2 and 0 of train: values (2 * 3 + i) * 3 + j.
        assert_eq!(f.rows(Split::Train, 2, &[2, 0]).unwrap(), vec![24., 25., 26., 18., 19., 20.]);
        assert_eq!(f.rows(Split::Test, 0, &[1]).unwrap(), vec![103., 104., 105.]);
        assert_eq!(f.head(SampleKind::Swa).unwrap(), (vec![1., 2., 3., 4., 5., 6.], vec![0.5, -0.5]));
        let err = f.rows(Split::Train, 3, &[0]).unwrap_err().to_string();
        assert!(err.contains("train.features") && err.contains("backbone index 3 outside 0..3"), "{err}");
    }
}

#[test]
fn inconsistent_counts_are_refused_with_the_tensor_named() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("f.safetensors");
    write(&p, false, &[2, 1], &[1, 0, 1]);
    let err = Features::open(&p).unwrap_err().to_string();
    assert!(err.contains("class_counts") && err.contains("disagrees with `train.labels`"), "{err}");
}
