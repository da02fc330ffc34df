//! The typed readers of the stages' artifacts on arbitrary bytes: features (and every block and
//! head in it), heads, predictions (evaluated as `lt eval` does), SWAG statistics (and a draw),
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
use lt_swag::Swag;

fn named(e: &impl std::fmt::Display) {
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
        Ok(s) => assert_eq!(s.sample(0.5, &mut Rng::new(0)).len(), s.layout().len()),
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
