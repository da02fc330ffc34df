//! Metrics by hand, against numpy/torchmetrics, plots and bad input.

use lt_core::split::ShotGroup;
use lt_core::Artifact;
use lt_metrics::classification::{self, ece_from, BinEdges};
use lt_metrics::plots::{self, Series};
use lt_metrics::{evaluate, Scores};

#[test]
fn ece_test_vectors_and_calibrated_sets() {
    assert!((ece_from(&[0.95, 1.0], &[true, false], 15, BinEdges::Guo).unwrap() - 0.475).abs() < 1e-12);
    assert!(
        (ece_from(&[0.95, 1.0], &[true, false], 15, BinEdges::LowerClosed).unwrap() - 0.525).abs() < 1e-12
    );
    // All correct and fully confident: no calibration error.
    let logits = vec![50.0f32, 0.0, 0.0, 0.0, 50.0, 0.0, 0.0, 0.0, 50.0];
    let s = Scores::logits(&logits, &[0, 1, 2], 3).unwrap();
    assert!(classification::ece(&s, 15, BinEdges::Guo).unwrap() < 1e-12);
    // Every label at probability 1: an NLL of +0 (printed `0.000`, not `-0.000`).
    let sure = Scores::probs(&[1.0, 0.0, 0.0, 1.0], &[0, 1], 2).unwrap();
    assert!(classification::nll(&sure) == 0.0 && classification::nll(&sure).is_sign_positive());
}

#[test]
fn accuracy_groups_and_nll_by_hand() {
    // 4 classes: groups Many, Medium, Few, Few. Predictions: argmax of each row.
    let logits = vec![
        3.0f32, 0.0, 0.0, 0.0, // y0 -> 0 correct
        0.0, 3.0, 0.0, 0.0, // y0 -> 1 wrong
        0.0, 3.0, 0.0, 0.0, // y1 -> 1 correct
        0.0, 0.0, 3.0, 0.0, // y2 -> 2 correct
        0.0, 0.0, 0.0, 3.0, // y3 -> 3 correct
        3.0, 0.0, 0.0, 0.0, // y3 -> 0 wrong
    ];
    let labels = [0, 0, 1, 2, 3, 3];
    let s = Scores::logits(&logits, &labels, 4).unwrap();
    let groups = [ShotGroup::Many, ShotGroup::Medium, ShotGroup::Few, ShotGroup::Few];
    let e = evaluate(&s, &groups, 15, BinEdges::Guo).unwrap();
    assert!((e.accuracy - 4.0 / 6.0).abs() < 1e-12);
    assert_eq!(e.per_class, vec![Some(0.5), Some(1.0), Some(1.0), Some(0.5)]);
    assert_eq!((e.many, e.medium, e.few), (Some(0.5), Some(1.0), Some(0.75)));
    let p_hit = (3f64).exp() / ((3f64).exp() + 3.0);
    let p_miss = 1.0 / ((3f64).exp() + 3.0);
    let nll = -(4.0 * p_hit.ln() + 2.0 * p_miss.ln()) / 6.0;
    assert!((e.nll - nll).abs() < 1e-9);
    assert!(e.top5.is_none(), "top-5 only beyond 10 classes");
    // Permutation invariance: shuffling samples changes nothing.
    let order = [5, 2, 0, 4, 1, 3];
    let pl: Vec<f32> = order.iter().flat_map(|&i| logits[i * 4..i * 4 + 4].to_vec()).collect();
    let py: Vec<u32> = order.iter().map(|&i| labels[i]).collect();
    let e2 = evaluate(&Scores::logits(&pl, &py, 4).unwrap(), &groups, 15, BinEdges::Guo).unwrap();
    assert_eq!(
        (e.accuracy, e.many, e.medium, e.few, &e.per_class),
        (e2.accuracy, e2.many, e2.medium, e2.few, &e2.per_class)
    );
    assert!((e.nll - e2.nll).abs() < 1e-12 && (e.ece - e2.ece).abs() < 1e-12);
    // A group without classes is None.
    let e3 = evaluate(&s, &[ShotGroup::Many; 4], 15, BinEdges::Guo).unwrap();
    assert_eq!((e3.medium, e3.few), (None, None));
}

#[test]
fn agrees_with_numpy_and_torchmetrics() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/metrics.safetensors");
    let g = Artifact::open_any(&path).unwrap();
    let logits = g.f32("logits").unwrap();
    let labels: Vec<u32> = g.i64("labels").unwrap().iter().map(|&y| y as u32).collect();
    let s = Scores::logits(&logits, &labels, 12).unwrap();
    let one = |k: &str| g.f32(k).unwrap()[0] as f64;
    let e = evaluate(&s, &[ShotGroup::Many; 12], 15, BinEdges::Guo).unwrap();
    // The golden values are float64 stored as float32.
    assert!((e.accuracy - one("accuracy")).abs() < 1e-6);
    for (a, b) in e.per_class.iter().zip(g.f32("per_class").unwrap()) {
        assert!((a.unwrap() - b as f64).abs() < 1e-6);
    }
    assert!((e.top5.unwrap() - one("top5")).abs() < 1e-6);
    assert!((e.nll - one("nll")).abs() < 1e-5, "{} vs {}", e.nll, one("nll"));
    assert!((e.ece - one("ece_guo")).abs() < 1e-5);
    let tm = classification::ece(&s, 15, BinEdges::LowerClosed).unwrap();
    assert!((tm - one("ece_torchmetrics")).abs() < 1e-5, "{tm} vs {}", one("ece_torchmetrics"));
}

#[test]
fn bad_input_is_refused() {
    let err = Scores::logits(&[0.0, f32::NAN], &[0], 2).unwrap_err().to_string();
    assert!(err.contains("sample 0 class 1 is NaN"), "{err}");
    let err = Scores::logits(&[0.0, 1.0], &[2], 2).unwrap_err().to_string();
    assert!(err.contains("label 2 of sample 0 is outside 0..2"), "{err}");
    assert!(Scores::logits(&[], &[], 2).unwrap_err().to_string().contains("empty"));
    assert!(Scores::logits(&[0.0; 3], &[0], 2).unwrap_err().to_string().contains("3 scores for 1 labels"));
    let s = Scores::logits(&[0.0, 1.0], &[1], 2).unwrap();
    let err = evaluate(&s, &[ShotGroup::Many], 15, BinEdges::Guo).unwrap_err().to_string();
    assert!(err.contains("1 shot groups for 2 classes"), "{err}");
    assert!(Scores::probs(&[0.2, 0.2], &[1], 2).is_err());
}

fn png_size(bytes: &[u8]) -> (u32, u32) {
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    (
        u32::from_be_bytes(bytes[16..20].try_into().unwrap()),
        u32::from_be_bytes(bytes[20..24].try_into().unwrap()),
    )
}

#[test]
fn plots_are_written_with_the_expected_size() {
    let dir = tempfile::tempdir().unwrap();
    let conf = [0.3, 0.55, 0.9, 0.97, 0.6];
    let ok = [false, true, true, true, false];
    let bins = classification::reliability(&conf, &ok, 15, BinEdges::Guo).unwrap();
    let files = plots::reliability_diagram(&bins, "reliability", &dir.path().join("rel")).unwrap();
    // A stem with a dot keeps it (a row such as `swa-srepr-lambda0.3` beside `...lambda0.5`).
    let dotted = plots::reliability_diagram(&bins, "r", &dir.path().join("rel-lambda0.3")).unwrap();
    let names: Vec<_> =
        dotted.iter().map(|f| f.file_name().unwrap().to_string_lossy().into_owned()).collect();
    assert_eq!(names, ["rel-lambda0.3.png", "rel-lambda0.3.svg"]);
    let files2 = plots::per_class(
        &[
            Series { label: "SGD".into(), values: vec![Some(0.9), Some(0.5), None, Some(0.1)] },
            Series { label: "SRepr".into(), values: vec![Some(0.8), Some(0.6), Some(0.4), Some(0.3)] },
        ],
        &[500, 100, 20, 5],
        "per-class accuracy",
        "accuracy",
        1.0,
        &dir.path().join("sub/acc"),
    )
    .unwrap();
    for f in files.iter().chain(&files2) {
        let bytes = std::fs::read(f).unwrap();
        assert!(bytes.len() > 1000, "{} is nearly empty", f.display());
        if f.extension().unwrap() == "png" {
            assert_eq!(png_size(&bytes), plots::SIZE);
        } else {
            let text = String::from_utf8(bytes).unwrap();
            assert!(text.contains("width=\"800\"") && text.contains("height=\"500\""), "{}", &text[..200]);
            assert!(text.contains("<text") || text.contains("<path"));
        }
    }
}

/// The shot groups of a prediction set come from a split of the same classes and, where the
/// predictions record their training counts, the same counts: the split of another run would
/// group the classes wrongly and is refused, naming the split and the first class that differs.
#[test]
fn groups_come_from_a_split_that_agrees_with_the_predictions() {
    use lt_core::split::SplitInfo;
    use lt_metrics::{Predictions, PredictionsExt};
    let split = |train_labels: Vec<u32>| SplitInfo {
        dataset: "toy".into(),
        class_names: vec!["a".into(), "b".into()],
        train_indices: (0..train_labels.len()).collect(),
        train_labels,
        test_labels: vec![0, 1],
        val_labels: None,
        val_indices: None,
        imbalance: None,
        original_train_len: 200,
    };
    let p = Predictions {
        scores: vec![1.0, 0.0, 0.0, 1.0],
        probabilities: false,
        labels: vec![0, 1],
        classes: 2,
        class_counts: Some(vec![150, 10]),
        class_names: None,
        meta: Default::default(),
    };
    let path = std::path::Path::new("split.safetensors");
    let same = split([vec![0; 150], vec![1; 10]].concat());
    assert_eq!(p.groups_of(Some((path, &same))).unwrap(), vec![ShotGroup::Many, ShotGroup::Few]);
    assert_eq!(p.groups_of(None).unwrap(), vec![ShotGroup::Many, ShotGroup::Few]);
    let other = split([vec![0; 150], vec![1; 50]].concat());
    let err = p.groups_of(Some((path, &other))).unwrap_err().to_string();
    assert!(
        err.contains(
            "split.safetensors has 50 training images of class 1, the predictions were made with 10"
        ),
        "{err}"
    );
    let unrecorded = Predictions { class_counts: None, ..p.clone() };
    assert_eq!(unrecorded.groups_of(Some((path, &other))).unwrap(), vec![ShotGroup::Many, ShotGroup::Medium]);
    assert!(unrecorded.groups_of(None).unwrap_err().to_string().contains("pass the split artifact"));
    let three = Predictions { classes: 3, class_counts: None, scores: vec![0.0; 6], ..p };
    let err = three.groups_of(Some((path, &same))).unwrap_err().to_string();
    assert!(err.contains("split.safetensors has 2 classes, the predictions 3"), "{err}");
}
