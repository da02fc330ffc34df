//! SWA and SWAG on a tiny candle model (linear regression with SGD): collect the iterates of the
//! constant-rate phase, then compare the SWA mean with SWAG samples.
//! `cargo run --release -p lt-swag --example swag_linear_regression`
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use lt_core::Rng;
use lt_swag::{ParamLayout, Swag};

fn main() -> anyhow::Result<()> {
    let dev = Device::Cpu;
    let mut rng = Rng::new(0);
    let mut xs = vec![0f32; 256 * 3];
    rng.fill_normal(&mut xs, 0.0, 1.0);
    let x = Tensor::from_vec(xs, (256, 3), &dev)?;
    let w_true = Tensor::new(&[[1.5f32], [-2.0], [0.5]], &dev)?;
    let mut noise = vec![0f32; 256];
    rng.fill_normal(&mut noise, 0.0, 0.3);
    let y = (x.matmul(&w_true)? + Tensor::from_vec(noise, (256, 1), &dev)?)?;

    let vm = VarMap::new();
    let w = Var::from_tensor(&Tensor::zeros((3, 1), DType::F32, &dev)?)?;
    vm.data().lock().unwrap().insert("w".into(), w.clone());
    let layout = ParamLayout::of(&vm)?;
    let mut swag = Swag::new(layout.clone(), 10);
    for step in 0..400 {
        // Mini-batches of 32 rows; a constant learning rate after step 200 (the SWA phase).
        let start = (step * 32) % 256;
        let (xb, yb) = (x.narrow(0, start, 32)?, y.narrow(0, start, 32)?);
        let loss = (xb.matmul(w.as_tensor())? - &yb)?.sqr()?.mean_all()?;
        let grads = loss.backward()?;
        let lr = if step < 200 { 0.1 } else { 0.05 };
        w.set(&(w.as_tensor() - (grads.get(w.as_tensor()).unwrap() * lr)?)?)?;
        if step >= 200 && step % 10 == 0 {
            swag.collect(&layout.flatten(&vm)?)?;
        }
    }
    println!("SWA mean of {} models: {:?}", swag.n_models(), swag.mean());
    println!("diagonal std: {:?}", swag.variance().iter().map(|v| v.sqrt()).collect::<Vec<_>>());
    for k in 0..3 {
        println!("SWAG sample {k}: {:?}", swag.sample(0.5, &mut Rng::stream(1, &[k]))?);
    }
    Ok(())
}
