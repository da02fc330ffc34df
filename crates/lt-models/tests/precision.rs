//! Mixed precision (`Precision::Bf16`) on the CPU, where it runs candle's stock ops in `bf16`:
//! the same training step as `f32` within `bf16`'s rounding, with `f32` parameters, gradients,
//! batch-norm statistics, features and logits. (On CUDA the same executor runs through cuDNN,
//! checked by `scripts/gpu_check.sh`.)
//!
//! How close is close: at initialisation, with random labels, the gradients of the early layers
//! are differences of much larger terms at every batch norm, so `bf16`'s rounding (2^-9) grows
//! layer by layer. PyTorch's own `autocast(dtype=torch.bfloat16)` on a torchvision ResNet-18
//! (batch 4, 64x64, CPU) gives gradients 35% (median) to 46% (worst) off its `f32` ones and
//! logits 3.8% off. The bounds below are of that order for each parameter; the whole gradient
//! must still point the same way (cosine), and a gradient that is missing, zero or of the wrong
//! sign fails.

use candle_core::{DType, Device, Tensor};
use lt_models::{Arch, Model, Precision};

fn randn(shape: &[usize], seed: u64) -> Tensor {
    let n: usize = shape.iter().product();
    let mut v = vec![0f32; n];
    lt_core::Rng::new(seed).fill_normal(&mut v, 0.0, 1.0);
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// `|a - b| / |b|` over all values (Euclidean norms).
fn rel(a: &Tensor, b: &Tensor) -> f32 {
    let a = a.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let b = b.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let diff: f32 = a.iter().zip(&b).map(|(x, y)| (x - y) * (x - y)).sum::<f32>().sqrt();
    let norm: f32 = b.iter().map(|y| y * y).sum::<f32>().sqrt();
    diff / norm.max(1e-12)
}

/// The sum of `t`'s values.
fn sum(t: &Tensor) -> f64 {
    t.sum_all().unwrap().to_dtype(DType::F64).unwrap().to_vec0::<f64>().unwrap()
}

/// The most a parameter's gradient may differ from `f32` (see the module docs).
const GRAD_TOL: f32 = 0.6;

/// A training step and an evaluation of `arch` in `bf16` against the same model in `f32`: logits,
/// features and running statistics within `tol`, gradients as the module docs say.
fn bf16_tracks_f32(arch: &str, shape: [usize; 4], tol: f32) {
    let dev = Device::Cpu;
    let classes = 5;
    let reference = Model::new(Arch::new(arch, classes, shape[1]).unwrap(), 7, &dev).unwrap();
    let mut mixed = Model::new(Arch::new(arch, classes, shape[1]).unwrap(), 7, &dev).unwrap();
    mixed.set_precision(Precision::Bf16);
    assert_eq!(mixed.precision(), Precision::Bf16);
    let x = randn(&shape, 2);
    let y = Tensor::from_vec(
        (0..shape[0] as u32).map(|i| i % classes as u32).collect::<Vec<_>>(),
        shape[0],
        &dev,
    )
    .unwrap();
    let ce = |logits: &Tensor| candle_nn::loss::cross_entropy(logits, &y);
    let a = reference.train_step(&x, ce).unwrap();
    let b = mixed.train_step(&x, ce).unwrap();
    assert_eq!((b.logits.dtype(), b.loss.dtype()), (DType::F32, DType::F32), "{arch}: logits and loss");
    let e = rel(&b.logits, &a.logits);
    // Close to f32, and not f32 itself: the activations did go through bf16.
    assert!(e < tol && e > 1e-6, "{arch}: logits differ by {e}");
    let (mut dot, mut gg, mut rr) = (0f64, 0f64, 0f64);
    for (name, var) in mixed.store().named_params() {
        assert_eq!(var.dtype(), DType::F32, "{arch}: parameter {name} is not f32");
        let g = b.grads.get(var.as_tensor()).unwrap_or_else(|| panic!("{arch}: no gradient for {name}"));
        assert_eq!(g.dtype(), DType::F32, "{arch}: the gradient of {name} is not f32");
        let r = a.grads.get(reference.store().var(&name).unwrap().as_tensor()).unwrap();
        let e = rel(g, r);
        assert!(e < GRAD_TOL, "{arch}: gradient of {name} differs by {e}");
        dot += sum(&(g * r).unwrap());
        (gg, rr) = (gg + sum(&g.sqr().unwrap()), rr + sum(&r.sqr().unwrap()));
    }
    let cosine = dot / (gg * rr).sqrt();
    assert!(cosine > 0.9, "{arch}: the whole gradient turned (cosine {cosine})");
    for (name, t) in mixed.store().named_buffers() {
        if name.ends_with("num_batches_tracked") {
            continue;
        }
        assert_eq!(t.dtype(), DType::F32, "{arch}: buffer {name} is not f32");
        let e = rel(&t, &reference.store().buffer(&name).unwrap());
        assert!(e < tol, "{arch}: running statistic {name} differs by {e}");
    }
    let (fa, la) = reference.infer(&x).unwrap();
    let (fb, lb) = mixed.infer(&x).unwrap();
    assert_eq!((fb.dtype(), lb.dtype()), (DType::F32, DType::F32), "{arch}: features and logits");
    let (ef, el) = (rel(&fb, &fa), rel(&lb, &la));
    assert!(ef < tol && el < tol, "{arch}: evaluation differs by {ef} (features), {el} (logits)");
    // A snapshot keeps the precision.
    assert_eq!(
        mixed.freeze().unwrap().infer(&x).unwrap().1.to_vec2::<f32>().unwrap(),
        lb.to_vec2::<f32>().unwrap()
    );
}

#[test]
fn bf16_cifar_resnet_step_tracks_f32() {
    bf16_tracks_f32("resnet20", [4, 3, 16, 16], 0.05);
}

#[test]
fn bf16_torchvision_resnet_step_tracks_f32() {
    bf16_tracks_f32("resnet18", [4, 3, 64, 64], 0.05);
}
