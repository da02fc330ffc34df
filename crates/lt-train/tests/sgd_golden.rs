//! The optimizer against PyTorch's `torch.optim.SGD` (momentum, Nesterov, weight decay) over a
//! golden trajectory written by `scripts/make_golden_sgd.py`.

use candle_core::{Device, Tensor, Var};
use lt_core::Artifact;
use lt_train::optim::Sgd;

#[test]
fn sgd_follows_the_pytorch_trajectory() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/sgd_trajectory.safetensors");
    let g = Artifact::open_any(&path).unwrap();
    let dev = Device::Cpu;
    let names = ["b1", "b2", "w1", "w2"];
    let params: Vec<(String, Var)> = names
        .iter()
        .map(|n| (n.to_string(), Var::from_tensor(&g.tensor(&format!("init.{n}"), &dev).unwrap()).unwrap()))
        .collect();
    let p = |n: &str| params.iter().find(|(k, _)| k == n).unwrap().1.as_tensor().clone();
    let x = g.tensor("x", &dev).unwrap();
    let y = Tensor::new(g.i64("y").unwrap().iter().map(|&v| v as u32).collect::<Vec<_>>().as_slice(), &dev)
        .unwrap();
    let lrs = g.f32("lrs").unwrap();
    let mut opt = Sgd::new(0.9, true, 5e-4);
    for (step, &lr) in lrs.iter().enumerate() {
        let h = x.matmul(&p("w1").t().unwrap()).unwrap().broadcast_add(&p("b1")).unwrap().relu().unwrap();
        let logits = h.matmul(&p("w2").t().unwrap()).unwrap().broadcast_add(&p("b2")).unwrap();
        let loss = candle_nn::loss::cross_entropy(&logits, &y).unwrap();
        let grads = loss.backward().unwrap();
        opt.step(&params, &grads, lr as f64).unwrap();
        for n in names {
            let got = p(n).flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let want = g.f32(&format!("step{step}.{n}")).unwrap();
            for (a, b) in got.iter().zip(&want) {
                assert!((a - b).abs() <= 1e-6 * (1.0 + b.abs()), "step {step} {n}: {a} vs {b}");
            }
        }
    }
    // Momentum buffers are plain (graph-free) tensors.
    assert!(opt.buffers().values().all(|b| !b.track_op()));
}
