//! Mixed precision (`Precision::Bf16`) on the CPU, where it runs candle's stock ops in `bf16`:
//! the same training step and evaluation as `f32` within the bounds of
//! `lt_models::golden::mixed` (taken from PyTorch's own bf16 autocast), with `f32` parameters,
//! gradients, batch-norm statistics, features and logits. `lt selftest --device cuda` runs the
//! same checks through cuDNN.

use candle_core::Device;
use lt_models::golden::mixed::check_mixed_precision;

fn all_pass(arch: &str, shape: [usize; 4]) {
    let checks = check_mixed_precision(arch, 5, shape, &Device::Cpu).unwrap();
    assert_eq!(checks.len(), 7, "{arch}: {checks:?}");
    for c in &checks {
        assert!(c.ok(), "{}: {} > {} ({:?})", c.what, c.relative_error, c.tolerance, c.error);
    }
}

#[test]
fn bf16_cifar_resnet_tracks_f32() {
    all_pass("resnet20", [4, 3, 16, 16]);
}

#[test]
fn bf16_torchvision_resnet_tracks_f32() {
    all_pass("resnet18", [4, 3, 64, 64]);
}
