//! Builds the synthetic long-tailed set, prints its class counts and shot groups, and loads a few
//! augmented batches in the background: `cargo run --release -p lt-data --example long_tail_loader`.
use lt_data::longtail::shot_groups;
use lt_data::{load_bundle, DataOptions, DatasetName, EpochBatches, LoaderConfig, Sampler, SamplerKind};

fn main() -> anyhow::Result<()> {
    let bundle = load_bundle(DatasetName::Synthetic, &DataOptions::default())?;
    let counts = bundle.class_counts();
    println!("counts {counts:?}");
    println!("groups {:?}", shot_groups(&counts));
    let sampler = Sampler::new(
        SamplerKind::ClassBalanced { per_class: 4 },
        bundle.train.labels(),
        bundle.num_classes(),
        0,
    )?;
    let order = sampler.epoch(0, 512);
    let cfg = LoaderConfig { batch_size: 128, workers: 2, prefetch: 2, train: true, seed: 0 };
    for batch in EpochBatches::new(bundle.train.clone(), order, 0, cfg, candle_core::Device::Cpu) {
        let b = batch?;
        let mut per_class = vec![0usize; bundle.num_classes()];
        for &y in &b.label_vec {
            per_class[y as usize] += 1;
        }
        println!("batch {}: images {:?}, class-balanced labels {per_class:?}", b.number, b.images.dims());
    }
    Ok(())
}
