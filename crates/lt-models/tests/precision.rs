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

#[test]
fn a_frozen_snapshot_keeps_the_precision() {
    use candle_core::Tensor;
    use lt_models::{Arch, Model, Precision};
    let dev = Device::Cpu;
    let mut m = Model::new(Arch::new("resnet20", 5, 3).unwrap(), 1, &dev).unwrap();
    m.set_precision(Precision::Bf16);
    let x = Tensor::randn(0f32, 1.0, (2, 3, 16, 16), &dev).unwrap();
    let frozen = m.freeze().unwrap();
    let (a, b) = (m.infer(&x).unwrap().1, frozen.infer(&x).unwrap().1);
    assert_eq!(a.to_vec2::<f32>().unwrap(), b.to_vec2::<f32>().unwrap());
    m.set_precision(Precision::F32);
    // The f32 model differs from the bf16 snapshot: the snapshot did not fall back to f32.
    assert_ne!(m.infer(&x).unwrap().1.to_vec2::<f32>().unwrap(), b.to_vec2::<f32>().unwrap());
}
