//! Agreement with PyTorch (`scripts/make_golden.py`): eval-mode features and logits, eval-mode
//! gradients, one training-mode forward (logits, loss, running statistics) and its gradients, for
//! the CIFAR ResNet-32 (option A) and torchvision's ResNet-50, with both op backends. The checks
//! themselves live in `lt_models::golden` so that `lt selftest` can run them on a GPU.

use std::path::Path;

use candle_core::Device;
use lt_models::golden::check_fixture;
use lt_models::{Arch, Backend, Model};

fn run(fixture: &str, arch: &str, classes: usize, backend: Backend) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(fixture);
    let checks = check_fixture(&path, arch, classes, backend, &Device::Cpu).unwrap();
    assert!(checks.len() >= 20, "only {} checks", checks.len());
    let failed: Vec<String> = checks
        .iter()
        .filter(|c| !c.ok())
        .map(|c| match &c.error {
            Some(e) => format!("{}: {e}", c.what),
            None => format!("{}: {:.2e} > {:.1e}", c.what, c.relative_error, c.tolerance),
        })
        .collect();
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

#[test]
fn resnet32_matches_pytorch_fast_ops() {
    run("resnet32.safetensors", "resnet32", 10, Backend::Fast);
}

#[test]
fn resnet32_matches_pytorch_candle_ops() {
    run("resnet32.safetensors", "resnet32", 10, Backend::Candle);
}

#[test]
fn resnet50_matches_pytorch_fast_ops() {
    run("resnet50.safetensors", "resnet50", 1000, Backend::Fast);
}

#[test]
fn resnet50_matches_pytorch_candle_ops() {
    run("resnet50.safetensors", "resnet50", 1000, Backend::Candle);
}

#[test]
fn parameter_counts_match_the_references() {
    let n = |a: &str, c| Model::new(Arch::new(a, c, 3).unwrap(), 0, &Device::Cpu).unwrap().num_params();
    assert_eq!(n("resnet32", 10), 464_154);
    assert_eq!(n("resnet32", 100), 470_004);
    assert_eq!(n("resnet50", 1000), 25_557_032);
}
