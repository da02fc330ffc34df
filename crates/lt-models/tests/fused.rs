//! The fused CPU pass computes what candle's autograd over the per-op graph computes: logits,
//! every parameter's gradient (through a plain `loss.backward()` too), running statistics, and
//! eval-mode values and gradients.

use candle_core::backprop::GradStore;
use candle_core::{Device, ModuleT, Tensor};
use lt_models::{Arch, Backend, Model};

fn randn(shape: &[usize], seed: u64) -> Tensor {
    let n: usize = shape.iter().product();
    let mut v = vec![0f32; n];
    lt_core::Rng::new(seed).fill_normal(&mut v, 0.0, 1.0);
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn max_rel(a: &Tensor, b: &Tensor) -> f32 {
    let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
    a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max) / scale
}

/// Every parameter of `a` has a gradient in `ga` close to `b`'s in `gb`.
fn same_grads(what: &str, a: &Model, ga: &GradStore, b: &Model, gb: &GradStore, tol: f32) {
    for (name, var) in a.store().named_params() {
        let vb = b.store().var(&name).unwrap();
        let da = ga
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("{what}: the fused pass gave no gradient for {name}"));
        let db = gb.get(vb.as_tensor()).unwrap();
        let e = max_rel(da, db);
        assert!(e < tol, "{what}: gradient of {name} differs by {e}");
    }
}

fn compare(arch: &str, classes: usize, shape: [usize; 4]) {
    compare_with(arch, classes, shape, Backend::Fast)
}

/// [`compare`] against the per-op graph on `reference`'s ops: the project's own (which share
/// the fused pass's kernels) or candle's stock ones (which share none of them).
fn compare_with(arch: &str, classes: usize, shape: [usize; 4], reference: Backend) {
    let dev = Device::Cpu;
    let a = Model::new(Arch::new(arch, classes, shape[1]).unwrap(), 3, &dev).unwrap();
    let mut b = Model::new(Arch::new(arch, classes, shape[1]).unwrap(), 3, &dev).unwrap();
    b.set_fused(false);
    b.set_backend(reference);
    let x = randn(&shape, 1);
    let labels: Vec<u32> = (0..shape[0] as u32).map(|i| i % classes as u32).collect();
    let y = Tensor::from_vec(labels, shape[0], &dev).unwrap();
    let ce = |logits: &Tensor| candle_nn::loss::cross_entropy(logits, &y);
    for step in 0..2 {
        let sa = a.train_step(&x, ce).unwrap();
        let logits_b = b.forward_t(&x, true).unwrap();
        let gb = ce(&logits_b).unwrap().backward().unwrap();
        assert!(max_rel(&sa.logits, &logits_b) < 1e-5, "{arch} step {step}: logits differ");
        same_grads(&format!("{arch} step {step}"), &a, &sa.grads, &b, &gb, 2e-4);
        for (name, t) in a.store().named_buffers() {
            let tb = b.store().buffer(&name).unwrap();
            if name.ends_with("num_batches_tracked") {
                assert_eq!(t.to_vec0::<i64>().unwrap(), tb.to_vec0::<i64>().unwrap());
            } else {
                assert!(max_rel(&t, &tb) < 1e-5, "{arch}: buffer {name} differs");
            }
        }
    }
    // A plain `loss.backward()` on the fused path reaches every parameter, in both modes.
    for train in [true, false] {
        let ga = ce(&a.forward_t(&x, train).unwrap()).unwrap().backward().unwrap();
        let gb = ce(&b.forward_t(&x, train).unwrap()).unwrap().backward().unwrap();
        same_grads(&format!("{arch} loss.backward() train={train}"), &a, &ga, &b, &gb, 2e-4);
    }
    let (fa, la) = a.infer(&x).unwrap();
    let (fb, lb) = b.infer(&x).unwrap();
    assert!(max_rel(&fa, &fb) < 1e-5 && max_rel(&la, &lb) < 1e-5, "{arch}: inference differs");
}

#[test]
fn fused_cifar_resnet_matches_autograd() {
    compare("resnet20", 10, [6, 3, 16, 16]);
    compare("cifar-resnet8x8", 5, [3, 1, 12, 12]);
}

#[test]
fn fused_winograd_layers_match_candles_stock_ops() {
    // A 64-channel first stage on 16x16 images: its 3x3 layers' forward passes and input
    // gradients run by Winograd F(2x2, 3x3) with every kernel set (`winograd::pays`), in the
    // fused pass and in the project's per-op graph alike; candle's ops are the independent
    // reference.
    compare_with("cifar-resnet8x64", 5, [2, 3, 16, 16], Backend::Candle);
}

#[test]
fn fused_torchvision_resnets_match_autograd() {
    compare("resnet18", 7, [2, 3, 40, 40]);
    compare("resnet50", 4, [2, 3, 48, 48]);
}

#[test]
fn a_gradient_for_the_input_image_takes_the_per_op_path() {
    let dev = Device::Cpu;
    let m = Model::new(Arch::new("cifar-resnet8x8", 3, 3).unwrap(), 0, &dev).unwrap();
    let x = candle_core::Var::from_tensor(&randn(&[2, 3, 8, 8], 4)).unwrap();
    let g = m.forward_t(x.as_tensor(), true).unwrap().sum_all().unwrap().backward().unwrap();
    let dx = g.get(x.as_tensor()).expect("the input's gradient");
    assert_eq!(dx.dims(), &[2, 3, 8, 8]);
}

#[test]
fn train_step_refuses_a_loss_that_leaves_parameters_without_gradients() {
    let dev = Device::Cpu;
    let m = Model::new(Arch::new("cifar-resnet8x8", 3, 3).unwrap(), 0, &dev).unwrap();
    let x = randn(&[2, 3, 8, 8], 5);
    // Only the head's bias reaches the loss: every other parameter lacks a gradient.
    let bias = m.head().1.as_tensor().clone();
    let err =
        m.train_step(&x, |logits| logits.detach().sum_all()? + bias.sum_all()?).err().expect("an error");
    assert!(matches!(err, lt_models::ModelError::MissingGradient(_)), "{err}");
}

#[test]
fn evaluation_sees_weights_changed_in_place_after_an_earlier_evaluation() {
    let dev = Device::Cpu;
    let arch = || Arch::new("cifar-resnet8x8", 3, 3).unwrap();
    let a = Model::new(arch(), 2, &dev).unwrap();
    let mut b = Model::new(arch(), 2, &dev).unwrap();
    b.set_fused(false);
    let x = randn(&[2, 3, 8, 8], 6);
    let before = a.infer(&x).unwrap().0;
    // Change every convolution weight in place, in both models, after the fused evaluation
    // packed them.
    let mut changed = 0;
    for m in [&a, &b] {
        for (name, var) in m.store().named_params() {
            if var.as_tensor().rank() == 4 {
                var.set(&(var.as_tensor() * -0.5).unwrap()).unwrap();
                changed += usize::from(name.contains("conv"));
            }
        }
    }
    assert!(changed > 0, "no convolution weight was changed");
    let (fa, la) = a.infer(&x).unwrap();
    let (fb, lb) = b.infer(&x).unwrap();
    assert!(max_rel(&fa, &before) > 1e-2, "the features did not change with the weights");
    assert!(max_rel(&fa, &fb) < 1e-5 && max_rel(&la, &lb) < 1e-5, "stale packed weights");
}

#[test]
fn a_training_step_gives_the_same_bits_on_any_thread_count() {
    // Batch statistics (per image row), the strip pass's moments, the pixel groups of the weight
    // gradients and every other reduction have a fixed order, so the logits, every gradient and
    // the running statistics do not depend on how many threads ran them.
    let step = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| {
            let m = Model::new(Arch::new("resnet20", 10, 3).unwrap(), 3, &Device::Cpu).unwrap();
            let x = randn(&[4, 3, 16, 16], 1);
            let y = Tensor::from_vec((0..4u32).collect::<Vec<_>>(), 4, &Device::Cpu).unwrap();
            let s = m.train_step(&x, |logits| candle_nn::loss::cross_entropy(logits, &y)).unwrap();
            let bits = |t: &Tensor| -> Vec<u32> {
                t.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|v| v.to_bits()).collect()
            };
            let mut all = bits(&s.logits);
            for (_, var) in m.store().named_params() {
                all.extend(bits(s.grads.get(var.as_tensor()).unwrap()));
            }
            for (name, t) in m.store().named_buffers() {
                if !name.ends_with("num_batches_tracked") {
                    all.extend(bits(&t));
                }
            }
            all
        })
    };
    let one = step(1);
    for threads in [2, 3] {
        assert!(one == step(threads), "{threads} threads differ from one");
    }
}

#[test]
fn an_empty_batch_evaluates_to_empty_features_and_logits() {
    // Its 64-channel 16x16 stage runs by Winograd, its stem on the gather pass: neither may
    // divide its work by zero tiles or pixels.
    let dev = Device::Cpu;
    let m = Model::new(Arch::new("cifar-resnet8x64", 5, 3).unwrap(), 3, &dev).unwrap();
    let x = Tensor::zeros((0, 3, 16, 16), candle_core::DType::F32, &dev).unwrap();
    let (features, logits) = m.infer(&x).expect("an empty batch");
    assert_eq!((features.dims(), logits.dims()), (&[0, 256][..], &[0, 5][..]));
}

/// ResNet-50's first stage at 32x32 after the stem, batch 2: 2,048 pixels, where its expanding
/// pointwise convolutions (64 -> 256, the third of each block and the first block's shortcut)
/// take both gradients in one pass over the output gradient (`conv::fuses_gradients`). The
/// smaller images of `fused_torchvision_resnets_match_autograd` never reach that path; training at
/// 224x224 takes it. (Its `accumulate` mode, unused by these networks, is checked in the ops'
/// tests.)
#[test]
fn fused_pointwise_gradients_match_autograd() {
    let (dev, shape, classes) = (Device::Cpu, [2, 3, 128, 128], 4);
    let a = Model::new(Arch::new("resnet50", classes, 3).unwrap(), 3, &dev).unwrap();
    let mut b = Model::new(Arch::new("resnet50", classes, 3).unwrap(), 3, &dev).unwrap();
    b.set_fused(false);
    let x = randn(&shape, 2);
    let y = Tensor::from_vec(vec![1u32, 3], 2, &dev).unwrap();
    let ce = |logits: &Tensor| candle_nn::loss::cross_entropy(logits, &y);
    lt_models::profile::set_enabled(true);
    let sa = a.train_step(&x, ce).unwrap();
    let fused_path = lt_models::profile::totals()
        .iter()
        .any(|(op, calls, _)| *op == "conv backward (weight + input, pointwise)" && *calls > 0);
    lt_models::profile::set_enabled(false);
    assert!(fused_path, "the step did not compute both pointwise gradients in one pass");
    let logits_b = b.forward_t(&x, true).unwrap();
    let gb = ce(&logits_b).unwrap().backward().unwrap();
    assert!(max_rel(&sa.logits, &logits_b) < 1e-5, "logits differ");
    same_grads("resnet50 at 128x128", &a, &sa.grads, &b, &gb, 2e-4);
}
