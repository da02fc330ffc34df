//! Every Rust snippet of `docs/library.md`, compiled and run on small inputs, with the few lines
//! of glue each needs (its inputs): `cargo run --release -p lt-cli --example library_tour`. A
//! tidy test (`xtask/tests/tidy.rs`) checks that each line of those snippets is a line of this
//! file, so the page shows code that builds. The hub snippet runs with `--hub` (it downloads
//! ResNet-50's weights, or reads them from the hub cache).

fn main() -> anyhow::Result<()> {
    let labels = backbones()?;
    swag(&labels)?;
    stage2()?;
    metrics()?;
    if std::env::args().any(|a| a == "--hub") {
        hub()?;
    }
    Ok(())
}

/// "Backbones (lt-models)": returns the batch's labels for the SWAG snippet.
fn backbones() -> anyhow::Result<candle_core::Tensor> {
    use candle_core::{Device, ModuleT, Tensor};
    use lt_models::{Arch, Model};

    let model = Model::new(Arch::new("resnet32", 100, 3)?, /* seed */ 0, &Device::Cpu)?;
    let x = Tensor::randn(0f32, 1.0, (8, 3, 32, 32), &Device::Cpu)?;
    let labels = Tensor::new(&[0u32, 1, 2, 3, 4, 5, 6, 7], &Device::Cpu)?;
    let logits = model.forward_t(&x, /* train */ true)?; // candle's ModuleT, autograd graph
    let grads = candle_nn::loss::cross_entropy(&logits, &labels)?.backward()?; // every parameter
    let step = model.train_step(&x, |l| candle_nn::loss::cross_entropy(l, &labels))?; // checked step
    let (features, logits) = model.infer(&x)?; // eval mode, no graph
    println!(
        "backbone: {} gradients; step loss {}; features {:?}, logits {:?}",
        grads.get_ids().count(),
        step.loss.to_scalar::<f32>()?,
        features.dims(),
        logits.dims()
    );
    let frozen = model.freeze()?; // a snapshot for serving:
    let (features, logits) = frozen.infer(&x)?; //   later changes don't reach it
    model.update_bn_stats(&x)?; // training-mode pass, no graph
    let (w, b) = model.head(); // the classifier, [C, D] and [C]
    println!(
        "frozen: features {:?}, logits {:?}; head {:?} {:?}",
        features.dims(),
        logits.dims(),
        w.dims(),
        b.dims()
    );
    Ok(labels)
}

/// "Hugging Face hub" (with `--hub`).
fn hub() -> anyhow::Result<()> {
    use candle_core::Device;
    use lt_models::{
        hub::{fetch, HubOptions},
        Model,
    };
    let path = fetch("timm/resnet50.tv_in1k", "model.safetensors", &HubOptions::default())?;
    let (model, report) = Model::from_weights("resnet50".parse()?, &path, 1000, &Device::Cpu)?;
    println!("hub: {} classes; {report:?}", model.head().1.dims()[0]);
    Ok(())
}

/// "SWAG for any candle model (lt-swag)", on a CIFAR ResNet-8 (`labels`: a batch's, for its size).
fn swag(labels: &candle_core::Tensor) -> anyhow::Result<()> {
    use candle_core::{Device, Tensor};
    use lt_swag::{ParamLayout, Swag};
    let model = lt_models::Model::new(lt_models::Arch::new("cifar-resnet8x8", 10, 3)?, 0, &Device::Cpu)?;
    let varmap = model.store().varmap().clone(); // shares its variables with the model
    let my_model = lt_train::bn::Recal(&model);
    let x = Tensor::randn(0f32, 1.0, (labels.dims()[0], 3, 32, 32), &Device::Cpu)?;
    let batches = [Ok(x.clone()), Ok(x)];
    let (seed, dir) = (7, tempfile::tempdir()?);
    let path = &dir.path().join("swag.safetensors");

    let layout = ParamLayout::of(&varmap)?; // sorted names, BN statistics excluded
    let mut swag = Swag::new(layout.clone(), 20); // rank K = 20 (0: diagonal only)
    swag.collect(&layout.flatten(&varmap)?)?; // once per epoch in the SWA phase
    let theta = swag.sample(0.5, &mut lt_core::Rng::new(seed))?;
    layout.write_into(&varmap, &theta)?;
    lt_swag::bn::recalibrate(&my_model, batches)?; // batches: lt_swag::Result<Tensor>s; implement lt_swag::bn::BatchNormModel
    swag.save(path, &[("arch", "...".into())])?;
    println!("swag: {} parameters, saved to {}", layout.len(), path.display());
    Ok(())
}

/// "Stage 2 (lt-retrain)", on Gaussian representations (five classes, long-tailed).
fn stage2() -> anyhow::Result<()> {
    use candle_core::Tensor;
    use lt_core::formats::features::{
        SampleKind::{Swa, Swag},
        Split,
    };
    use lt_retrain::{retrain, FeatureBank, MethodKind, RetrainConfig};
    let counts = vec![60usize, 30, 15, 8, 4];
    let labels = |per_class: &dyn Fn(usize) -> usize| -> Vec<u32> {
        (0..counts.len()).flat_map(|c| vec![c as u32; per_class(c)]).collect()
    };
    let draw = |y: &[u32]| -> anyhow::Result<Tensor> {
        let centres: Vec<f32> =
            y.iter().flat_map(|&c| (0..5).map(move |d| 2.0 * (d == c) as u8 as f32)).collect();
        let centres = Tensor::from_vec(centres, (1, y.len(), 5), &candle_core::Device::Cpu)?;
        Ok(centres.broadcast_add(&Tensor::randn(0f32, 1.0, (5, y.len(), 5), &candle_core::Device::Cpu)?)?)
    };
    let (y_train, y_val, y_test) = (labels(&|c| counts[c]), labels(&|_| 10), labels(&|_| 20));
    let (z_train, z_val, z_test) = (draw(&y_train)?, draw(&y_val)?, draw(&y_test)?);

    // z_*: [S, N, D] tensors (S = the SWA backbone and M SWAG samples), y_*: labels, counts: per class.
    let bank = FeatureBank::new(vec![Swa, Swag, Swag, Swag, Swag], counts)?
        .with_split(Split::Train, z_train, y_train)?
        .with_split(Split::Val, z_val, y_val)? // knobs are chosen here
        .with_split(Split::Test, z_test, y_test)?;
    let out = retrain(&bank, &RetrainConfig::new(MethodKind::Srepr), &candle_core::Device::Cpu)?;
    let chosen = out.facts.get("chosen").map_or("none (no val split)".into(), |c| c.to_string());
    println!("{:?} chose {chosen}", &out.test_scores[..10]);
    Ok(())
}

/// "Metrics (lt-metrics)", on logits of a head-biased classifier.
fn metrics() -> anyhow::Result<()> {
    use lt_metrics::{evaluate, BinEdges, Scores};
    let (classes, train_counts) = (3, vec![200usize, 50, 5]);
    let dir = tempfile::tempdir()?;
    let dir = dir.path();
    let labels: Vec<u32> = (0..30).map(|i| i % 3).collect();
    let logits: Vec<f32> =
        labels.iter().flat_map(|&y| [1.0, 0.5 * (y == 1) as u8 as f32, y as f32]).collect();

    // Row-major slices (from a tensor: `.flatten_all()?.to_vec1::<f32>()?`).
    let s = Scores::logits(&logits, &labels, classes)?; // or Scores::probs for ensembles
    let e = evaluate(&s, &lt_core::split::shot_groups(&train_counts), 15, BinEdges::Guo)?;
    let (conf, correct) = lt_metrics::classification::confidences(&s);
    let bins = lt_metrics::classification::reliability(&conf, &correct, 15, BinEdges::Guo)?;
    lt_metrics::plots::reliability_diagram(&bins, "my model", &dir.join("reliability"))?; // .png and .svg
    println!("metrics: all {:.3}, NLL {:.3}, ECE {:.3}", e.accuracy, e.nll, e.ece);
    Ok(())
}
