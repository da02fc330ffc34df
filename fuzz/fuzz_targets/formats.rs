//! The typed readers of the stages' artifacts on arbitrary bytes: features (and every block and
//! head in it, then every stage-2 method on them), heads, predictions (evaluated as `lt eval` does), SWAG statistics (and a draw),
//! backbone artifacts, weight files and checkpoints for a small CIFAR ResNet. Never a panic,
//! never an allocation sized by a number the file claims but does not hold.
#![no_main]

use candle_core::Device;
use libfuzzer_sys::fuzz_target;
use lt_core::formats::features::{Features, SampleKind, Split};
use lt_core::formats::head::HeadArtifact;
use lt_core::optim::Sgd;
use lt_core::Rng;
use lt_metrics::classification::BinEdges;
use lt_metrics::predictions::{Predictions, PredictionsExt};
use lt_models::{Arch, Family, Model};
use lt_retrain::{MethodKind, RetrainConfig, SelectConfig};
use lt_swag::Swag;

fn named(e: &(impl std::fmt::Display + std::fmt::Debug)) {
    srepr_fuzz::assert_names_file(e, "f.safetensors");
}

fn features(path: &std::path::Path) {
    let f = match Features::open(path) {
        Ok(f) => f,
        Err(e) => return named(&e),
    };
    for split in Split::ALL.into_iter().filter(|&s| f.has_split(s)) {
        let n = f.len(split).expect("an opened split has a length");
        assert_eq!(f.labels(split).expect("checked on open").len(), n);
        for s in 0..f.samples().len() {
            if let Ok(rows) = f.all(split, s) {
                assert_eq!(rows.len(), n * f.dim());
            }
            let _ = f.all_half(split, s);
        }
    }
    for kind in [SampleKind::Sgd, SampleKind::Swa] {
        let _ = f.head(kind).map_err(|e| named(&e));
    }
    stage2(&f);
}

/// Every stage-2 method on features that opened, one short epoch and two candidates per knob:
/// an error is fine (rows with NaN, a missing backbone), a panic is not.
fn stage2(f: &Features) {
    let select = SelectConfig {
        tau_grid: vec![0.5, 1.0],
        tau_norm_grid: vec![0.0, 1.0],
        lambda_grid: vec![0.1, 1.0],
        convex_grid: vec![0.5],
        temperature_grid: vec![1.0, 2.0],
        ..SelectConfig::default()
    };
    for &method in MethodKind::ALL {
        let cfg =
            RetrainConfig { epochs: 1, batch_size: 8, select: select.clone(), ..RetrainConfig::new(method) };
        if let Ok(out) = lt_retrain::retrain(f, &cfg, &Device::Cpu) {
            assert_eq!(out.test_scores.len(), out.test_labels.len() * f.meta().num_classes);
        }
    }
}

fn predictions(path: &std::path::Path) {
    let p = match Predictions::read(path) {
        Ok(p) => p,
        Err(e) => return named(&e),
    };
    assert_eq!(p.scores.len(), p.labels.len() * p.classes);
    let (Ok(groups), Ok(scores)) = (p.groups(None), p.scores()) else { return };
    let _ = lt_metrics::evaluate(&scores, &groups, 15, BinEdges::Guo);
}

fuzz_target!(|data: &[u8]| {
    let path = srepr_fuzz::scratch_file("f.safetensors", data);
    features(&path);
    if let Ok(h) = HeadArtifact::read(&path).map_err(|e| named(&e)) {
        assert_eq!((h.weight.len(), h.bias.len()), (h.classes * h.dim, h.classes));
    }
    predictions(&path);
    match Swag::load(&path) {
        // A file of no collected model is legal; sampling it is refused.
        Ok(s) => match s.sample(0.5, &mut Rng::new(0)) {
            Ok(theta) => assert_eq!(theta.len(), s.layout().len()),
            Err(_) => assert_eq!(s.n_models(), 0),
        },
        Err(e) => named(&e),
    }
    let _ = Model::from_artifact(&path, &Device::Cpu).map_err(|e| named(&e));
    let small: Family = "cifar-resnet8x2".parse().expect("a family");
    let _ = Model::from_weights(small, &path, 10, &Device::Cpu).map_err(|e| named(&e));
    // The seeds' checkpoint: that network for 3 classes of 1 channel, fingerprint `fp`.
    let model =
        Model::new(Arch::new("cifar-resnet8x2", 3, 1).expect("arch"), 0, &Device::Cpu).expect("model");
    let _ = lt_train::checkpoint::load(&path, &model, &mut Sgd::new(0.9, false, 5e-4), "fp")
        .map_err(|e| named(&e));
});
