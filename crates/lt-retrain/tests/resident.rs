//! Rows kept on the device (`Resident`) give every method the results of rows read from the
//! source, bit for bit (here on the CPU, where `retrain` itself does not keep them), in f32 and
//! f16; bad requests are refused as the source refuses them; and a feature bank built from a view
//! serves the view's rows.

mod common;

use candle_core::{DType, Device, Tensor};
use lt_core::formats::features::{Features, SampleKind, Split};
use lt_retrain::bank::{FeatureBank, FeatureSource};
use lt_retrain::config::Weighting;
use lt_retrain::resident::Resident;
use lt_retrain::{retrain, MethodKind, Predict, RetrainConfig};

/// A features artifact with a validation split and a stage-1 head (the class means' direction).
fn features(dir: &std::path::Path, half: bool) -> Features {
    let c = common::COUNTS.len();
    let w: Vec<f32> = (0..c * common::DIM).map(|i| ((i * 7) % 11) as f32 / 11.0 - 0.5).collect();
    let path = dir.join(format!("features-{half}.safetensors"));
    common::write_as(&path, (&w, &vec![0.0; c]), 3, true, half);
    Features::open(&path).unwrap()
}

/// Every method's configuration, and SRepr's ensemble prediction and uncertainty weighting.
fn configs() -> Vec<(String, RetrainConfig)> {
    let base = |m| RetrainConfig { epochs: 3, batch_size: 64, lr: 0.1, ..RetrainConfig::new(m) };
    let mut all: Vec<_> = MethodKind::ALL.iter().map(|&m| (m.to_string(), base(m))).collect();
    let mut ensemble = base(MethodKind::Srepr);
    ensemble.predict = Predict::Ensemble;
    all.push(("srepr ensemble".into(), ensemble));
    for w in [Weighting::Entropy, Weighting::Disagreement] {
        let mut c = base(MethodKind::Srepr);
        c.srepr.weighting = w;
        all.push((format!("srepr {w:?}"), c));
    }
    all
}

#[test]
fn every_method_gives_the_same_bits_with_rows_kept_on_the_device() {
    let dir = tempfile::tempdir().unwrap();
    let dev = Device::Cpu;
    for half in [false, true] {
        let fs = features(dir.path(), half);
        let stored = fs.stored(Split::Train, 2, &dev).unwrap();
        assert_eq!(stored.dtype(), if half { DType::F16 } else { DType::F32 });
        let wide = stored.to_dtype(DType::F32).unwrap().flatten_all().unwrap();
        assert_eq!(wide.to_vec1::<f32>().unwrap(), fs.all(Split::Train, 2).unwrap());
        let kept = Resident::new(&fs, &dev);
        assert!(kept.resident_on(&dev) && !fs.resident_on(&dev));
        for (name, cfg) in configs() {
            let (a, b) = (retrain(&fs, &cfg, &dev).unwrap(), retrain(&kept, &cfg, &dev).unwrap());
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&a.test_scores), bits(&b.test_scores), "{name}, half {half}");
            assert_eq!(a.epoch_losses, b.epoch_losses, "{name}, half {half}");
            assert_eq!(a.facts, b.facts, "{name}, half {half}");
        }
    }
}

#[test]
fn a_block_that_does_not_fit_sends_every_row_back_to_the_source_with_the_same_bits() {
    let dir = tempfile::tempdir().unwrap();
    let dev = Device::Cpu;
    let fs = features(dir.path(), true);
    let mut cfg =
        RetrainConfig { epochs: 2, batch_size: 64, lr: 0.1, ..RetrainConfig::new(MethodKind::Srepr) };
    (cfg.srepr.lambda, cfg.srepr.temperature) = (Some(1.0), Some(1.0));
    let want = retrain(&fs, &cfg, &dev).unwrap().test_scores;
    // SRepr reads the training split of the SWA backbone and of 3 SWAG samples, and the
    // validation (its tau) and test splits of the SWA backbone: 6 blocks of N x 8 f16 values.
    let block = |split| fs.len(split).unwrap() * common::DIM * 2;
    let unlimited = Resident::new(&fs, &dev);
    assert_eq!(retrain(&unlimited, &cfg, &dev).unwrap().test_scores, want);
    let all = 4 * block(Split::Train) + block(Split::Val) + block(Split::Test);
    assert_eq!(unlimited.kept_bytes(), all);
    let block = block(Split::Train);
    for limit in [0, block, 2 * block + 1, all - 1] {
        let kept = Resident::new(&fs, &dev).with_limit(limit);
        assert_eq!(retrain(&kept, &cfg, &dev).unwrap().test_scores, want, "limit {limit}");
        assert_eq!(kept.kept_bytes(), 0, "limit {limit}");
        assert!(!kept.resident_on(&dev));
        let (a, b) = (kept.stored(Split::Train, 3, &dev).unwrap(), fs.stored(Split::Train, 3, &dev).unwrap());
        let wide =
            |t: Tensor| t.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(wide(a), wide(b), "limit {limit}");
    }
}

#[test]
fn kept_rows_are_the_source_rows_and_bad_requests_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let dev = Device::Cpu;
    let fs = features(dir.path(), true);
    let kept = Resident::new(&fs, &dev);
    let idx = [5, 0, 548, 5];
    for sample in [0, 1, 4] {
        let a = FeatureSource::rows(&fs, Split::Train, sample, &idx, &dev);
        let b = kept.rows(Split::Train, sample, &idx, &dev);
        let (a, b) = (a.unwrap().to_vec2::<f32>().unwrap(), b.unwrap().to_vec2::<f32>().unwrap());
        assert_eq!(a, b, "backbone {sample}");
        assert_eq!(b[0], b[3]);
        let all = kept.all(Split::Val, sample, &dev).unwrap();
        assert_eq!(all.dtype(), DType::F32);
        assert_eq!(all.flatten_all().unwrap().to_vec1::<f32>().unwrap(), fs.all(Split::Val, sample).unwrap());
    }
    let n = fs.len(Split::Train).unwrap();
    let err = kept.rows(Split::Train, 0, &[0, n], &dev).unwrap_err().to_string();
    assert!(err.contains(&format!("train split: row {n} outside 0..{n}")), "{err}");
    let err = kept.rows(Split::Train, 9, &[0], &dev).unwrap_err().to_string();
    assert!(err.contains("backbone index 9 outside 0..5"), "{err}");
}

#[test]
fn a_bank_of_a_view_serves_its_rows() {
    let dev = Device::Cpu;
    // [D, N, S] transposed to [S, N, D]: a view whose rows are not contiguous.
    let z = Tensor::arange(0f32, 12.0, &dev).unwrap().reshape((2, 3, 2)).unwrap().transpose(0, 2).unwrap();
    assert!(!z.is_contiguous());
    let bank = FeatureBank::new(vec![SampleKind::Swa, SampleKind::Swag], vec![2, 1])
        .unwrap()
        .with_split(Split::Train, z.clone(), vec![0, 1, 0])
        .unwrap();
    let rows = bank.rows(Split::Train, 1, &[2, 0], &dev).unwrap().to_vec2::<f32>().unwrap();
    let want = z.get(1).unwrap().to_vec2::<f32>().unwrap();
    assert_eq!(rows, [want[2].clone(), want[0].clone()]);
    let err = bank.rows(Split::Train, 1, &[0, 3], &dev).unwrap_err().to_string();
    assert!(err.contains("feature bank: row 3 outside 0..3"), "{err}");
    assert!(bank.resident_on(&dev));
}
