//! Stage 2 on the edges of what a user's own data can be: a class without training images, one
//! class, one training row, no validation split. Every method either fits finite scores of the
//! right shape or refuses with an error that says what is missing; inputs that describe no
//! problem (no training rows, representations of dimension 0, an empty validation split) are
//! refused before any training, by name.

use candle_core::{Device, Tensor};
use lt_core::formats::features::{
    SampleKind::{Sgd, Swa, Swag},
    Split,
};
use lt_retrain::{retrain, Backbone, FeatureBank, MethodKind, Predict, RetrainConfig};

const TEST_ROWS: u32 = 12;

/// A bank of 4 backbones (SGD, SWA, 2 SWAG samples) of dimension `d` with Gaussian rows, the
/// training split of `counts`, `val` balanced validation rows (`None`: no validation split),
/// [`TEST_ROWS`] test rows and both stage-1 heads.
fn bank(counts: &[usize], d: usize, val: Option<u32>) -> lt_retrain::Result<FeatureBank> {
    let c = counts.len() as u32;
    let train: Vec<u32> = counts.iter().enumerate().flat_map(|(k, &n)| vec![k as u32; n]).collect();
    let balanced = |n: u32| (0..n).map(|i| i % c).collect::<Vec<u32>>();
    let z = |y: &[u32]| Tensor::randn(0f32, 1.0, (4, y.len(), d), &Device::Cpu).unwrap();
    let mut b = FeatureBank::new(vec![Sgd, Swa, Swag, Swag], counts.to_vec())?
        .with_split(Split::Train, z(&train), train.clone())?
        .with_split(Split::Test, z(&balanced(TEST_ROWS)), balanced(TEST_ROWS))?;
    if let Some(n) = val {
        b = b.with_split(Split::Val, z(&balanced(n)), balanced(n))?;
    }
    let head = |i: usize| (0..counts.len() * d).map(|j| ((i + j) % 7) as f32 / 7.0 - 0.4).collect();
    b.with_stage1_head(Backbone::Sgd, head(0), vec![0.0; counts.len()])?.with_stage1_head(
        Backbone::Swa,
        head(1),
        vec![0.1; counts.len()],
    )
}

fn config(method: MethodKind) -> RetrainConfig {
    RetrainConfig { epochs: 2, batch_size: 16, ..RetrainConfig::new(method) }
}

#[test]
fn every_method_fits_finite_scores_on_small_and_uneven_data() {
    for (case, counts, val) in [
        ("a class without training rows", vec![30, 0, 5], Some(30)),
        ("one class", vec![20], Some(6)),
        ("one training row", vec![1, 0], Some(4)),
        ("no validation split", vec![30, 10, 5], None),
    ] {
        let b = bank(&counts, 4, val).unwrap();
        for &m in MethodKind::ALL {
            let out = retrain(&b, &config(m), &Device::Cpu).unwrap_or_else(|e| panic!("{case}, {m}: {e}"));
            assert_eq!(out.test_scores.len(), TEST_ROWS as usize * counts.len(), "{case}, {m}");
            // A method trains (has epoch losses) exactly when it reads the optimiser's settings.
            assert_eq!(config(m).reads("epochs"), !out.epoch_losses.is_empty(), "{case}, {m}");
            // Two epochs of these few rows are too few steps for a head, and the outcome says so.
            let warned =
                out.warnings.iter().any(|w| w.contains("steps") && w.contains("raise retrain.min_steps"));
            assert_eq!(warned, !out.epoch_losses.is_empty(), "{case}, {m}: {:?}", out.warnings);
            assert!(out.test_scores.iter().all(|v| v.is_finite()), "{case}, {m}: non-finite scores");
            if val.is_none() && chooses(m) {
                let facts = serde_json::to_string(&out.facts).unwrap();
                assert!(facts.contains("no validation split"), "{case}, {m}: {facts}");
            }
        }
    }
}

/// Whether method `m` chooses a knob on the validation split: whether it reads the selection's
/// criterion (`RetrainConfig::reads`, the one place that says so).
fn chooses(m: MethodKind) -> bool {
    RetrainConfig::new(m).reads("select.criterion")
}

/// Enough steps (`min_steps`) leave the outcome without a warning.
#[test]
fn enough_steps_are_not_warned_about() {
    let b = bank(&[30, 10, 5], 4, Some(30)).unwrap();
    let cfg = RetrainConfig { min_steps: 100, ..config(MethodKind::Crt) };
    let out = retrain(&b, &cfg, &Device::Cpu).unwrap();
    assert!(out.warnings.is_empty() && !out.epoch_losses.is_empty(), "{:?}", out.warnings);
}

/// Every method predicts as the SWAG ensemble (its head's softmax averaged over the members),
/// also where it chooses a knob on the validation split, which then scores the ensemble (LA,
/// post-hoc LA and tau-norm refused it there: "ensemble predictions need SWAG samples").
#[test]
fn every_method_predicts_as_the_swag_ensemble_with_its_knobs_chosen_on_validation() {
    let counts = [30, 10, 5];
    let b = bank(&counts, 4, Some(30)).unwrap();
    for &m in MethodKind::ALL {
        let cfg = RetrainConfig { predict: Predict::Ensemble, ..config(m) };
        let out = retrain(&b, &cfg, &Device::Cpu).unwrap_or_else(|e| panic!("{m}: {e}"));
        assert!(out.probabilities, "{m}");
        for row in out.test_scores.chunks(counts.len()) {
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5, "{m}: {row:?}");
        }
        let search = out.facts.get("selection").map(|s| s.to_string()).unwrap_or_default();
        assert_eq!(chooses(m), search.contains("\"split\":\"val\""), "{m}: {search}");
    }
    // More members than the bank's 2 SWAG samples are refused, naming the setting (an ensemble
    // of another method than SRepr took the first 2).
    let mut cfg = RetrainConfig { predict: Predict::Ensemble, ..config(MethodKind::Crt) };
    cfg.srepr.members = Some(5);
    let err = retrain(&b, &cfg, &Device::Cpu).unwrap_err().to_string();
    assert!(
        err.contains("ensemble predictions: retrain.srepr.members = 5, the source has 2 SWAG samples"),
        "{err}"
    );
}

/// An empty test split is refused before anything trains (stage 2 predicts it).
#[test]
fn an_empty_test_split_is_refused() {
    let z = |n: usize| Tensor::randn(0f32, 1.0, (2, n, 3), &Device::Cpu).unwrap();
    let b = FeatureBank::new(vec![Sgd, Swa], vec![3, 1])
        .unwrap()
        .with_split(Split::Train, z(4), vec![0, 0, 0, 1])
        .unwrap()
        .with_split(Split::Test, z(0), vec![])
        .unwrap()
        .with_stage1_head(Backbone::Swa, vec![0.0; 6], vec![0.0; 2])
        .unwrap();
    for &m in MethodKind::ALL {
        let err = retrain(&b, &config(m), &Device::Cpu).unwrap_err().to_string();
        assert!(err.contains("the test split has no rows"), "{m}: {err}");
    }
}

#[test]
fn no_training_rows_is_refused_by_every_method() {
    let b = bank(&[0, 0], 4, Some(4)).unwrap();
    for &m in MethodKind::ALL {
        let err = retrain(&b, &config(m), &Device::Cpu).unwrap_err().to_string();
        assert!(err.contains("training split has no rows"), "{m}: {err}");
    }
}

#[test]
fn an_empty_validation_split_is_refused_where_a_knob_is_chosen() {
    let b = bank(&[30, 10, 5], 4, Some(0)).unwrap();
    for &m in MethodKind::ALL {
        match retrain(&b, &config(m), &Device::Cpu) {
            Ok(_) => assert!(!chooses(m), "{m} chose its knobs on no validation rows"),
            Err(e) => {
                let err = e.to_string();
                assert!(chooses(m) && err.contains("validation split has no rows"), "{m}: {err}");
            }
        }
    }
}

#[test]
fn banks_that_describe_no_problem_are_refused_by_name() {
    let err = bank(&[3, 2], 0, None).unwrap_err().to_string();
    assert!(err.contains("train split") && err.contains("dimension 0"), "{err}");
    let z = Tensor::zeros((1, 2, 3), candle_core::DType::F32, &Device::Cpu).unwrap();
    let empty = FeatureBank::new(vec![Swa], vec![1, 1]).unwrap();
    let err = empty.clone().with_stage1_head(Backbone::Swa, vec![], vec![0.0; 2]).unwrap_err().to_string();
    assert!(err.contains("add a split before a head"), "{err}");
    let b = empty.with_split(Split::Train, z.clone(), vec![0, 1]).unwrap();
    let mut w = vec![0.0; 6];
    w[4] = f32::NAN;
    let err = b.clone().with_stage1_head(Backbone::Swa, w, vec![0.0; 2]).unwrap_err().to_string();
    assert!(err.contains("swa head has NaN or infinite values"), "{err}");
    let other = Tensor::zeros((1, 2, 5), candle_core::DType::F32, &Device::Cpu).unwrap();
    let err = b.clone().with_split(Split::Test, other, vec![0, 1]).unwrap_err().to_string();
    assert!(err.contains("dimension 5, other splits have 3"), "{err}");
    // A forgotten S axis, and labels beyond the class counts.
    let flat = Tensor::zeros((2, 3), candle_core::DType::F32, &Device::Cpu).unwrap();
    let err = b.clone().with_split(Split::Test, flat, vec![0, 1]).unwrap_err().to_string();
    assert!(
        err.contains("test split: z must be [S, N, D] (backbones, rows, dimension), got [2, 3]"),
        "{err}"
    );
    let err = b.with_split(Split::Test, z, vec![0, 2]).unwrap_err().to_string();
    assert!(err.contains("label 2 outside 0..2 (the bank has 2 classes, one per class count)"), "{err}");
}

/// The rest of a bank's checks, each naming what is wrong: no backbone or no class, backbones or
/// labels that do not match the tensor, training labels that disagree with the class counts,
/// non-finite representations, a head of the wrong size, and requests for a backbone the bank
/// does not have.
#[test]
fn a_bank_refuses_what_does_not_fit_it_by_name() {
    use lt_retrain::bank::FeatureSource;
    let zeros =
        |dims: (usize, usize, usize)| Tensor::zeros(dims, candle_core::DType::F32, &Device::Cpu).unwrap();
    let err = |r: lt_retrain::Result<FeatureBank>| r.unwrap_err().to_string();
    assert!(err(FeatureBank::new(vec![], vec![1])).contains("at least one backbone and one class"));
    assert!(err(FeatureBank::new(vec![Swa], vec![])).contains("at least one backbone and one class"));
    let empty = FeatureBank::new(vec![Swa, Swag], vec![2, 1]).unwrap();
    let e = err(empty.clone().with_split(Split::Train, zeros((3, 3, 2)), vec![0, 0, 1]));
    assert!(e.contains("train split: 3 backbones, the bank has 2"), "{e}");
    let e = err(empty.clone().with_split(Split::Train, zeros((2, 3, 2)), vec![0, 1]));
    assert!(e.contains("train split: 3 rows and 2 labels"), "{e}");
    let e = err(empty.clone().with_split(Split::Train, zeros((2, 3, 2)), vec![0, 1, 1]));
    assert!(e.contains("labels count [1, 2], the class counts are [2, 1]"), "{e}");
    let mut v = vec![0f32; 12];
    v[7] = f32::INFINITY;
    let inf = Tensor::from_vec(v, (2, 3, 2), &Device::Cpu).unwrap();
    let e = err(empty.clone().with_split(Split::Train, inf, vec![0, 0, 1]));
    assert!(e.contains("train split: NaN or infinite representations"), "{e}");
    let b = empty.with_split(Split::Train, zeros((2, 3, 2)), vec![0, 0, 1]).unwrap();
    let e = err(b.clone().with_stage1_head(Backbone::Swa, vec![0.0; 4], vec![0.0; 3]));
    assert!(e.contains("a head needs 2 x 2 weights and 2 biases, got 4 and 3"), "{e}");
    let e = b.rows(Split::Train, 2, &[0], &Device::Cpu).unwrap_err().to_string();
    assert!(e.contains("backbone 2 outside 0..2"), "{e}");
    let e = b.rows(Split::Train, 1, &[3], &Device::Cpu).unwrap_err().to_string();
    assert!(e.contains("row 3 outside 0..3"), "{e}");
    let e = b.index_of(Sgd).unwrap_err().to_string();
    assert!(e.contains("no `sgd` backbone"), "{e}");
    let e = b.labels(Split::Val).unwrap_err().to_string();
    assert!(e.contains("no val split"), "{e}");
}
