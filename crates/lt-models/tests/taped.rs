//! The taped executor (`Model::set_taped`, the backward pass walked by hand) on the CPU's host
//! kernels: the same logits, gradients and running statistics as candle's autograd over the same
//! ops, bit for bit, for both families (option-A shortcuts; max pooling and projection
//! shortcuts) and for frozen batch norm. `lt selftest --device cuda` runs the same checks
//! through cuDNN, in `f32` and `bf16`.

use candle_core::{Device, Tensor};
use lt_models::golden::taped::check_taped;
use lt_models::{Arch, Model, Precision};

fn exact(arch: &str, shape: [usize; 4]) {
    let checks = check_taped(arch, 5, shape, &Device::Cpu, Precision::F32).unwrap();
    assert_eq!(checks.len(), 5, "{arch}: {checks:?}");
    for c in &checks {
        assert!(c.ok(), "{}: {} > {} ({:?})", c.what, c.relative_error, c.tolerance, c.error);
        assert_eq!(c.relative_error, 0.0, "{}: not bit for bit", c.what);
    }
}

#[test]
fn taped_cifar_resnets_match_autograd() {
    exact("resnet20", [3, 3, 16, 16]);
    exact("cifar-resnet8x8", [2, 3, 9, 9]);
}

#[test]
fn taped_torchvision_resnets_match_autograd() {
    exact("resnet18", [2, 3, 40, 40]);
    exact("resnet50", [2, 3, 48, 48]);
}

#[test]
fn the_fused_pass_or_another_route_turns_the_taped_executor_off() {
    let dev = Device::Cpu;
    let mut m = Model::new(Arch::new("resnet20", 3, 3).unwrap(), 0, &dev).unwrap();
    assert!(!m.taped(), "off by default on the CPU");
    m.set_taped(true);
    assert!(!m.taped_active(), "the fused CPU pass takes precedence");
    m.set_fused(false);
    assert!(m.taped_active());
    // bf16 on the CPU runs candle's stock ops, which have no explicit backward passes.
    m.set_precision(Precision::Bf16);
    assert!(!m.taped_active());
    let checks = check_taped("resnet20", 3, [2, 3, 8, 8], &dev, Precision::Bf16).unwrap();
    let ran = checks.last().unwrap();
    assert!(!ran.ok() && ran.error.is_some(), "{ran:?}");
}

#[test]
fn a_taped_step_refuses_a_loss_that_leaves_parameters_without_gradients() {
    let dev = Device::Cpu;
    let mut m = Model::new(Arch::new("cifar-resnet8x8", 3, 3).unwrap(), 0, &dev).unwrap();
    m.set_fused(false);
    m.set_taped(true);
    let x = Tensor::randn(0f32, 1.0, (2, 3, 8, 8), &dev).unwrap();
    let bias = m.head().1.as_tensor().clone();
    let err =
        m.train_step(&x, |logits| logits.detach().sum_all()? + bias.sum_all()?).err().expect("an error");
    assert!(matches!(err, lt_models::ModelError::MissingGradient(_)), "{err}");
}
