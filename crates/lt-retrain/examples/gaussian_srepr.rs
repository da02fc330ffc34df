//! SRepr on your own representations, no file: a long-tailed Gaussian feature bank (the SWA
//! backbone and four "SWAG samples" as noisier copies), LA and SRepr side by side, with each
//! method's knobs chosen on the validation split:
//! `cargo run --release -p lt-retrain --example gaussian_srepr`.
use candle_core::{Device, Tensor};
use lt_core::formats::features::{
    SampleKind::{Swa, Swag},
    Split,
};
use lt_retrain::{retrain, select, Criterion, FeatureBank, MethodKind, RetrainConfig};

fn main() -> anyhow::Result<()> {
    let (dev, counts, d) = (Device::Cpu, vec![400usize, 150, 50, 15, 5], 6);
    let balanced = |k: usize| -> Vec<u32> { (0..counts.len() as u32).flat_map(|c| vec![c; k]).collect() };
    let train: Vec<u32> = counts.iter().enumerate().flat_map(|(c, &k)| vec![c as u32; k]).collect();
    // Class c sits at 2 e_c; backbone s adds noise of scale 1 (SWA) or 1.1 (SWAG samples).
    let draw = |y: &[u32]| -> anyhow::Result<Tensor> {
        let mut centres = vec![0f32; y.len() * d];
        y.iter().enumerate().for_each(|(i, &c)| centres[i * d + c as usize] = 2.0);
        let centres = Tensor::from_vec(centres, (1, y.len(), d), &dev)?;
        let scale = Tensor::new(&[1.0f32, 1.1, 1.1, 1.1, 1.1], &dev)?.reshape((5, 1, 1))?;
        Ok(centres.broadcast_add(&Tensor::randn(0f32, 1.0, (5, y.len(), d), &dev)?.broadcast_mul(&scale)?)?)
    };
    let bank = FeatureBank::new(vec![Swa, Swag, Swag, Swag, Swag], counts.clone())?
        .with_split(Split::Train, draw(&train)?, train.clone())?
        .with_split(Split::Val, draw(&balanced(40))?, balanced(40))?
        .with_split(Split::Test, draw(&balanced(100))?, balanced(100))?;
    for method in [MethodKind::La, MethodKind::Srepr] {
        let out = retrain(&bank, &RetrainConfig { epochs: 20, ..RetrainConfig::new(method) }, &dev)?;
        let (s, p, y) = (&out.test_scores, out.probabilities, &out.test_labels);
        let acc = 1.0 - select::criterion_value(Criterion::BalancedError, s, p, y, counts.len());
        let nll = select::criterion_value(Criterion::BalancedNll, s, p, y, counts.len());
        println!(
            "{method:>6}: test accuracy {:.1}%, NLL {nll:.3}, chose {}",
            100.0 * acc,
            out.facts["chosen"]
        );
    }
    Ok(())
}
