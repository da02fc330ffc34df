//! Agreement with PyTorch (`scripts/make_golden.py`): eval-mode features and logits, one
//! training-mode forward (logits, loss, running statistics) and the gradients of the loss, for
//! the CIFAR ResNet-32 (option A) and torchvision's ResNet-50, with both op backends.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use lt_core::Artifact;
use lt_models::{Arch, Backend, Model};

const C: u64 = 0x9E37_79B9_7F4A_7C15;

fn fnv1a(name: &str) -> u64 {
    let mut h: u64 = 0xCBF2_9CE4_8422_2325;
    for b in name.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100_0000_01B3);
    }
    h
}

/// Mirror of `golden_unit` in the Python script.
fn golden_unit(name: &str, n: usize) -> Vec<f32> {
    let h = fnv1a(name);
    (0..n as u64)
        .map(|i| ((h.wrapping_add(i.wrapping_mul(C)) >> 40) as f64 / (1u64 << 23) as f64 - 1.0) as f32)
        .collect()
}

/// Mirror of `golden_fill`.
fn golden_fill(m: &Model) {
    let last = if m.head_names().0 == "linear.weight" { "bn2.weight" } else { "bn3.weight" };
    for (name, var) in m.store().named_params() {
        let dims = var.dims().to_vec();
        let u = golden_unit(&name, var.elem_count());
        let v: Vec<f32> = if dims.len() >= 2 {
            let fan_in = var.elem_count() / dims[0];
            let s = (3.0 / fan_in as f64).sqrt() as f32;
            u.iter().map(|x| x * s).collect()
        } else if name.ends_with(".bias") {
            u.iter().map(|x| 0.1 * x).collect()
        } else if name.starts_with("layer") && name.ends_with(last) {
            u.iter().map(|x| 0.2 + 0.05 * x).collect()
        } else {
            u.iter().map(|x| 1.0 + 0.1 * x).collect()
        };
        var.set(&Tensor::from_vec(v, dims, &Device::Cpu).unwrap()).unwrap();
    }
    for (name, t) in m.store().named_buffers() {
        let u = golden_unit(&name, t.elem_count());
        let v = if name.ends_with("running_var") {
            u.iter().map(|x| 1.0 + 0.25 * (x + 1.0)).collect()
        } else if name.ends_with("running_mean") {
            u.iter().map(|x| 0.1 * x).collect()
        } else {
            continue;
        };
        m.store().set_buffer(&name, Tensor::from_vec(v, t.dims(), &Device::Cpu).unwrap()).unwrap();
    }
}

fn close(got: &Tensor, want: &[f32], want_shape: &[usize], tol: f32, what: &str) {
    let rows = want_shape.first().copied().unwrap_or(1);
    let got = if got.dims().len() == want_shape.len() && got.dims() != want_shape {
        got.narrow(0, 0, rows).unwrap()
    } else {
        got.clone()
    };
    assert_eq!(got.dims(), want_shape, "{what}: shape");
    let got = got.flatten_all().unwrap().to_dtype(DType::F32).unwrap().to_vec1::<f32>().unwrap();
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
    let worst = got.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(worst <= tol * scale, "{what}: max abs error {worst} exceeds {tol} x {scale}");
}

fn run(fixture: &str, arch: &str, classes: usize, backend: Backend) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(fixture);
    let g = Artifact::open_any(&path).unwrap();
    // Reference values are float64 results; each carries max(1e-4, 3 x PyTorch's float32 error).
    let tolerances: std::collections::HashMap<String, f64> = g.meta_json("tolerances").unwrap();
    let want =
        |name: &str| (g.f32(name).unwrap(), g.info(name).unwrap().shape.clone(), tolerances[name] as f32);
    let dev = Device::Cpu;
    let x = g.tensor("input", &dev).unwrap();
    let labels: Vec<u32> = g.i64("labels").unwrap().iter().map(|&y| y as u32).collect();
    let labels = Tensor::new(labels.as_slice(), &dev).unwrap();

    let mut m = Model::new(Arch::new(arch, classes, 3).unwrap(), 0, &dev).unwrap();
    m.set_backend(backend);
    golden_fill(&m);
    let (f, l) = m.infer(&x).unwrap();
    let (v, s, t) = want("eval.features");
    close(&f, &v, &s, t, &format!("{arch} {backend:?} eval features"));
    let (v, s, t) = want("eval.logits");
    close(&l, &v, &s, t, &format!("{arch} {backend:?} eval logits"));

    let mut checked = 0;
    let mut check_grads = |prefix: &str, grads: &candle_core::backprop::GradStore| {
        for name in g.names().filter(|n| n.starts_with(prefix)) {
            let pname = &name[prefix.len()..];
            let var = m.store().var(pname).unwrap_or_else(|| panic!("no parameter {pname}"));
            let grad = grads.get(var.as_tensor()).unwrap_or_else(|| panic!("no gradient for {pname}"));
            let (v, s, t) = want(name);
            close(grad, &v, &s, t, &format!("{arch} {backend:?} {prefix}{pname}"));
            checked += 1;
        }
    };
    // Eval-mode gradients (batch norm with running statistics).
    let logits = m.forward_t(&x, false).unwrap();
    let grads = candle_nn::loss::cross_entropy(&logits, &labels).unwrap().backward().unwrap();
    check_grads("eval_grad.", &grads);

    // One training-mode forward: logits, loss, gradients and updated running statistics.
    let logits = m.forward_t(&x, true).unwrap();
    let (v, s, t) = want("train.logits");
    close(&logits, &v, &s, t, &format!("{arch} {backend:?} train logits"));
    let loss = candle_nn::loss::cross_entropy(&logits, &labels).unwrap();
    let (v, _, t) = want("train.loss");
    close(&loss.reshape(1).unwrap(), &v, &[1], t, &format!("{arch} {backend:?} loss"));
    let grads = loss.backward().unwrap();
    check_grads("grad.", &grads);
    assert!(checked >= 12, "only {checked} gradients checked");
    for name in g.names().filter(|n| n.starts_with("train.") && n.contains(".running_")) {
        let bname = &name["train.".len()..];
        let buf = m.store().buffer(bname).unwrap_or_else(|| panic!("no buffer {bname}"));
        let (v, s, t) = want(name);
        close(&buf, &v, &s, t, &format!("{arch} {backend:?} {bname} after one training step"));
    }
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
