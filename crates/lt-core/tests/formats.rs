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

/// 3 backbones x `n` rows x 3 dims of a split, value `split * 100 + position`.
fn values(split: f32, n: usize) -> Vec<f32> {
    (0..3 * n * 3).map(|i| split * 100.0 + i as f32).collect()
}

/// Writes 3 backbones x N rows x 3 dims per split ([`values`]).
fn write(path: &Path, half: bool, counts: &[usize], train_labels: &[u32]) {
    write_train(path, half, counts, train_labels, values(0.0, train_labels.len()));
}

/// [`write`] with the training split's values `tr`.
fn write_train(path: &Path, half: bool, counts: &[usize], train_labels: &[u32], tr: Vec<f32>) {
    let te = values(1.0, 2);
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
        // The stored f16 values, which widen to the rows; an f32 artifact has none.
        match f.all_half(Split::Train, 2) {
            Ok(v) => {
                assert!(half);
                let wide: Vec<f32> = v.iter().map(|x| x.to_f32()).collect();
                assert_eq!(wide, f.all(Split::Train, 2).unwrap());
                assert_eq!(wide[..3], [18., 19., 20.]);
            }
            Err(e) => assert!(!half && e.to_string().contains("stored as f32, not f16"), "{e}"),
        }
    }
}

#[test]
fn a_non_finite_value_is_refused_with_its_backbone_and_row() {
    let dir = tempfile::tempdir().unwrap();
    for half in [false, true] {
        let p = dir.path().join(format!("nan{half}.safetensors"));
        let mut v = values(0.0, 3);
        v[(3 + 2) * 3 + 1] = f32::INFINITY; // backbone 1 (swa), row 2
        write_train(&p, half, &[1, 2], &[1, 0, 1], v);
        let f = Features::open(&p).unwrap();
        assert!(f.rows(Split::Train, 1, &[0, 1]).is_ok());
        let want = "backbone 1 (swa) row 2 holds NaN or infinite values";
        let err = f.rows(Split::Train, 1, &[0, 2]).unwrap_err().to_string();
        assert!(err.contains(want), "{err}");
        if half {
            let err = f.all_half(Split::Train, 1).unwrap_err().to_string();
            assert!(err.contains(want), "{err}");
            assert!(f.all_half(Split::Train, 2).is_ok());
        }
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

/// Rewrites metadata `key` of the safetensors file at `path` to `value` (the header is JSON after
/// its 8-byte length; tensor offsets count from the end of the header, so they stay right).
fn set_meta(path: &Path, key: &str, value: &str) {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    header["__metadata__"][key] = serde_json::Value::String(value.into());
    let header = serde_json::to_vec(&header).unwrap();
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&header);
    out.extend_from_slice(&bytes[8 + n..]);
    std::fs::write(path, out).unwrap();
}

#[test]
fn metadata_that_describes_no_problem_is_refused_by_key() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("f.safetensors");
    write(&p, false, &[1, 2], &[1, 0, 1]);
    Features::open(&p).unwrap();
    for (key, value, expected) in [
        ("num_classes", "0", "at least one class"),
        ("feature_dim", "0", "dimension of at least 1"),
        ("samples", "[]", "at least one backbone"),
        ("scale", "NaN", "expected a finite number >= 0 (the SWAG sampling scale)"),
        ("scale", "inf", "expected a finite number >= 0 (the SWAG sampling scale)"),
        ("scale", "-0.5", "expected a finite number >= 0 (the SWAG sampling scale)"),
    ] {
        write(&p, false, &[1, 2], &[1, 0, 1]);
        set_meta(&p, key, value);
        let err = Features::open(&p).unwrap_err().to_string();
        assert!(err.contains("f.safetensors") && err.contains(key) && err.contains(expected), "{key}: {err}");
    }
}
