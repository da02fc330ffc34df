//! Stage 1 from pretrained weights: what loads, what is re-initialised, the fine-tuning knobs
//! (backbone learning-rate scale, frozen batch norm), the fingerprint and the refusals.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use lt_data::{load_bundle, DataOptions, DatasetName, SyntheticConfig};
use lt_models::{Arch, Model};
use lt_train::init::InitWeights;
use lt_train::trainer::run_fingerprint;
use lt_train::{train, RunDir, RunOptions, SwaConfig, TrainConfig};

fn tiny_data() -> lt_data::DataBundle {
    let synthetic = SyntheticConfig {
        n_max: 24,
        val_per_class: 2,
        test_per_class: 4,
        size: 8,
        classes: 4,
        ..Default::default()
    };
    load_bundle(
        DatasetName::Synthetic,
        &DataOptions { synthetic, imbalance: Some(4.0), ..Default::default() },
    )
    .unwrap()
}

fn config(init: &Path) -> TrainConfig {
    TrainConfig {
        arch: "cifar-resnet8x4".into(),
        epochs: 3,
        batch_size: 16,
        lr: 0.05,
        warmup_epochs: 1,
        swa: Some(SwaConfig { start: 2, lr: 0.02, rank: 2, collect_every_steps: None }),
        seed: 3,
        init: Some(init.display().to_string()),
        ..TrainConfig::cifar_lt()
    }
}

/// A "pretrained" file in the torchvision/timm layout (plain safetensors, no `lt` metadata, no
/// `num_batches_tracked`) for `arch` with `classes` classes.
fn pretrained(path: &Path, arch: &str, classes: usize, seed: u64) -> HashMap<String, Tensor> {
    let m = Model::new(Arch::new(arch, classes, 3).unwrap(), seed, &Device::Cpu).unwrap();
    let mut t: HashMap<String, Tensor> =
        m.store().named_params().into_iter().map(|(n, v)| (n, v.as_tensor().clone())).collect();
    for (n, b) in m.store().named_buffers() {
        if !n.ends_with("num_batches_tracked") {
            // Distinct running statistics, so that a frozen batch norm is visible.
            let b = if n.ends_with("running_var") { (b + 0.5).unwrap() } else { (b + 0.25).unwrap() };
            t.insert(n, b);
        }
    }
    candle_core::safetensors::save(&t, path).unwrap();
    t
}

fn artifact(path: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu).unwrap()
}

fn same(a: &Tensor, b: &Tensor) -> bool {
    a.flatten_all().unwrap().to_vec1::<f32>().unwrap() == b.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

#[test]
fn a_pretrained_start_loads_the_backbone_reinitialises_another_head_and_honours_the_knobs() {
    let data = tiny_data();
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("pretrained.safetensors");
    let weights = pretrained(&file, "cifar-resnet8x4", 7, 11);
    // Backbone learning rate 0 and frozen batch norm: the SGD and SWA backbones keep the file's
    // backbone exactly (weights and running statistics); the head, re-initialised for 4 classes,
    // trains.
    let cfg = TrainConfig { backbone_lr_scale: 0.0, freeze_bn: true, ..config(&file) };
    let run = tmp.path().join("run");
    train(&cfg, &data, &run, &RunOptions::default()).unwrap();
    let dir = RunDir::new(&run);
    for backbone in [dir.sgd(), dir.swa()] {
        let got = artifact(&backbone);
        for (name, t) in &weights {
            if name.starts_with("linear.") {
                assert_eq!(got[name].dims()[0], 4, "{name}: the head is for the data's 4 classes");
            } else {
                assert!(same(&got[name], t), "{}: {name} moved", backbone.display());
            }
        }
    }
    // The run's fingerprint names the weights: the same config with other weights is another
    // run, and a --resume with the file changed is refused.
    let init = InitWeights::resolve(&file.display().to_string()).unwrap();
    let fp = run_fingerprint(&cfg, &data, Some(&init));
    assert_eq!(Model::artifact_fingerprint(&dir.sgd()).unwrap().as_deref(), Some(fp.as_str()));
    assert_ne!(fp, run_fingerprint(&cfg, &data, None));
    pretrained(&file, "cifar-resnet8x4", 7, 12);
    let other = InitWeights::resolve(&file.display().to_string()).unwrap();
    assert_ne!(run_fingerprint(&cfg, &data, Some(&other)), fp);
    std::fs::remove_file(dir.sgd()).unwrap();
    let opts = RunOptions { resume: true, ..Default::default() };
    let err = train(&cfg, &data, &run, &opts).unwrap_err().to_string();
    assert!(
        err.ends_with(&format!(
            "so the initial weights differ: `{}` now gives other weights",
            file.display()
        )),
        "{err}"
    );
}

#[test]
fn with_a_lower_backbone_rate_the_backbone_moves_less_and_batch_norm_trains_when_not_frozen() {
    let data = tiny_data();
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("p.safetensors");
    let weights = pretrained(&file, "cifar-resnet8x4", 4, 5);
    let moved = |scale: f64| -> f64 {
        let cfg = TrainConfig { backbone_lr_scale: scale, swa: None, ..config(&file) };
        let run = tmp.path().join(format!("run-{scale}"));
        train(&cfg, &data, &run, &RunOptions::default()).unwrap();
        let got = artifact(&RunDir::new(&run).sgd());
        let d = (&got["conv1.weight"] - &weights["conv1.weight"]).unwrap();
        let bn_moved = !same(&got["bn1.running_mean"], &weights["bn1.running_mean"]);
        assert!(bn_moved, "batch norm statistics update when not frozen");
        d.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap().sqrt() as f64
    };
    let (full, tenth) = (moved(1.0), moved(0.1));
    assert!(tenth > 0.0 && tenth < full / 2.0, "scale 0.1 moved {tenth}, scale 1 {full}");
}

#[test]
fn weights_that_do_not_fit_the_backbone_are_refused_naming_the_tensor_before_anything_is_written() {
    let data = tiny_data();
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("wide.safetensors");
    pretrained(&file, "cifar-resnet8x8", 4, 1);
    let run = tmp.path().join("run");
    let err = train(&config(&file), &data, &run, &RunOptions::default()).unwrap_err().to_string();
    assert!(err.contains("wide.safetensors: tensor `") && err.contains("expected [4"), "{err}");
    assert!(!run.exists(), "nothing written");
    let missing = tmp.path().join("nope.safetensors");
    let err = train(&config(&missing), &data, &run, &RunOptions::default()).unwrap_err().to_string();
    assert!(err.contains("nope.safetensors is not a file"), "{err}");
}
