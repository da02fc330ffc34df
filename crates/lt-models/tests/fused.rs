//! The fused training path computes what candle's autograd over the per-op graph computes.

use candle_core::{Device, Tensor};
use lt_models::{Arch, Model};

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

fn compare(arch: &str, classes: usize, shape: [usize; 4]) {
    let dev = Device::Cpu;
    let a = Model::new(Arch::new(arch, classes, shape[1]).unwrap(), 3, &dev).unwrap();
    let b = Model::new(Arch::new(arch, classes, shape[1]).unwrap(), 3, &dev).unwrap();
    let x = randn(&shape, 1);
    let y = Tensor::from_vec(
        (0..shape[0] as u32).map(|i| i % classes as u32).collect::<Vec<_>>(),
        shape[0],
        &dev,
    )
    .unwrap();
    for step in 0..2 {
        let pass = a.train_forward(&x).unwrap();
        let loss_a = candle_nn::loss::cross_entropy(&pass.logits, &y).unwrap();
        let ga = pass.backward(&loss_a).unwrap();
        let logits_b = b.forward_t(&x, true).unwrap();
        let loss_b = candle_nn::loss::cross_entropy(&logits_b, &y).unwrap();
        let gb = loss_b.backward().unwrap();
        assert!(max_rel(&pass.logits, &logits_b) < 1e-5, "{arch} step {step}: logits differ");
        for (name, var) in a.store().named_params() {
            let vb = b.store().var(&name).unwrap();
            let da = ga
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("{arch}: fused pass gave no gradient for {name}"));
            let db = gb.get(vb.as_tensor()).unwrap();
            let e = max_rel(da, db);
            assert!(e < 2e-4, "{arch} step {step}: gradient of {name} differs by {e}");
        }
        for (name, t) in a.store().named_buffers() {
            let tb = b.store().buffer(&name).unwrap();
            if name.ends_with("num_batches_tracked") {
                assert_eq!(t.to_vec0::<i64>().unwrap(), tb.to_vec0::<i64>().unwrap());
            } else {
                assert!(max_rel(&t, &tb) < 1e-5, "{arch}: buffer {name} differs");
            }
        }
    }
    let (fa, la) = a.infer(&x).unwrap();
    let (fb, lb) = b.infer(&x).unwrap();
    assert!(max_rel(&fa, &fb) < 1e-6 && max_rel(&la, &lb) < 1e-6, "{arch}: inference differs");
    let fe = b.features(&x, false).unwrap();
    assert!(max_rel(&fa, &fe) < 1e-5, "{arch}: fused inference differs from the per-op graph");
}

#[test]
fn fused_cifar_resnet_matches_autograd() {
    compare("resnet20", 10, [6, 3, 16, 16]);
    compare("cifar-resnet8x8", 5, [3, 1, 12, 12]);
}

#[test]
fn fused_torchvision_resnets_match_autograd() {
    compare("resnet18", 7, [2, 3, 40, 40]);
    compare("resnet50", 4, [2, 3, 48, 48]);
}
