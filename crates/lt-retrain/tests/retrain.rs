//! Every stage-2 method on a synthetic Gaussian long-tailed feature set, the validation selection,
//! the ensemble predictions, the losses against PyTorch, and the refusals of bad input.

mod common;

use std::path::Path;

use candle_core::{Device, Tensor};
use lt_core::formats::features::{Features, Split};
use lt_core::Artifact;
use lt_retrain::config::{KlDirection, Weighting};
use lt_retrain::outputs::Recorded;
use lt_retrain::{losses, retrain, Head, MethodKind, Objective, Predict, RetrainConfig, Teacher};

fn accuracies(o: &lt_retrain::Outcome) -> (f64, f64) {
    let c = common::COUNTS.len();
    let mut correct = vec![0usize; c];
    let mut total = vec![0usize; c];
    for (row, &y) in o.test_scores.chunks_exact(c).zip(&o.test_labels) {
        let pred = row.iter().enumerate().fold(0, |b, (k, &v)| if v > row[b] { k } else { b });
        total[y as usize] += 1;
        correct[y as usize] += (pred == y as usize) as usize;
    }
    let acc =
        |cs: &[usize]| cs.iter().map(|&k| correct[k] as f64 / total[k] as f64).sum::<f64>() / cs.len() as f64;
    // Few: classes with < 20 training samples (10 and 4).
    (acc(&[4, 5]), acc(&(0..c).collect::<Vec<_>>()))
}

fn cfg(method: MethodKind) -> RetrainConfig {
    RetrainConfig { epochs: 20, batch_size: 64, lr: 0.1, ..RetrainConfig::new(method) }
}

/// A features artifact (with a validation split when `val`) whose stage-1 head is a plainly
/// trained (CE, instance-balanced) head.
fn setup(dir: &Path, val: bool) -> Features {
    let c = common::COUNTS.len();
    let tmp = dir.join("bootstrap.safetensors");
    common::write(&tmp, (&vec![0.0; c * common::DIM], &vec![0.0; c]), 1, false);
    let plain = retrain(
        &Features::open(&tmp).unwrap(),
        &RetrainConfig { tau: Some(0.0), ..cfg(MethodKind::La) },
        &Device::Cpu,
    )
    .unwrap();
    let (w, b) = plain.head.linear_part();
    let (w, b) = (w.flatten_all().unwrap().to_vec1::<f32>().unwrap(), b.to_vec1::<f32>().unwrap());
    let path = dir.join(if val { "features-val.safetensors" } else { "features.safetensors" });
    common::write(&path, (&w, &b), 1, val);
    Features::open(&path).unwrap()
}

fn host(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

#[test]
fn every_balancing_method_raises_few_shot_accuracy() {
    let dir = tempfile::tempdir().unwrap();
    let fs = setup(dir.path(), true);
    let plain = retrain(&fs, &cfg(MethodKind::None), &Device::Cpu).unwrap();
    let (few0, all0) = accuracies(&plain);
    assert!(few0 < 0.5, "the plain head should fail the tail: few {few0}");
    let mut srepr_b = cfg(MethodKind::Srepr);
    srepr_b.srepr.lambda = Some(0.0);
    let mut srepr = cfg(MethodKind::Srepr);
    srepr.select.tau_grid = vec![1.0];
    srepr.select.lambda_grid = vec![0.3, 1.0];
    srepr.select.temperature_grid = vec![1.0, 2.0];
    // Every method but the stage-1 head itself (a new one is held to it too), SRepr with small
    // grids and as its ablation (b).
    let mut configs: Vec<RetrainConfig> = MethodKind::ALL
        .iter()
        .filter(|m| !matches!(m, MethodKind::None | MethodKind::Srepr))
        .map(|&m| cfg(m))
        .collect();
    configs.extend([srepr, srepr_b]);
    for c in configs {
        let o = retrain(&fs, &c, &Device::Cpu).unwrap();
        let (few, all) = accuracies(&o);
        assert!(
            few > few0 + 0.1,
            "{}: few-shot {few:.3} vs plain {few0:.3} (all {all:.3} vs {all0:.3})",
            c.id()
        );
        // Deterministic from the seed.
        let again = retrain(&fs, &c, &Device::Cpu).unwrap();
        assert_eq!(again.test_scores, o.test_scores, "{} is not deterministic", c.id());
    }
}

#[test]
fn lws_changes_only_the_scales_and_tau_norm_records_its_choice() {
    let dir = tempfile::tempdir().unwrap();
    let fs = setup(dir.path(), true);
    let (w0, b0) = fs.head(lt_core::formats::features::SampleKind::Swa).unwrap();
    let o = retrain(&fs, &cfg(MethodKind::Lws), &Device::Cpu).unwrap();
    let Head::Linear { weight, bias, scales: Some(scales) } = &o.head else { panic!("LWS keeps its scales") };
    let (w, b, scales) = (host(weight), host(bias), host(scales));
    let c = common::COUNTS.len();
    for k in 0..c {
        for d in 0..common::DIM {
            assert!((w[k * common::DIM + d] - scales[k] * w0[k * common::DIM + d]).abs() < 1e-6);
        }
        assert!((b[k] - scales[k] * b0[k]).abs() < 1e-6);
    }
    assert!(scales.iter().any(|&s| (s - 1.0).abs() > 1e-3), "the scales trained");
    // Tail classes get larger scales than head classes.
    assert!(scales[5] > scales[0], "{scales:?}");
    let o = retrain(&fs, &cfg(MethodKind::TauNorm), &Device::Cpu).unwrap();
    let tau = o.facts["chosen"]["tau"].as_f64().unwrap();
    assert!((0.0..=2.0).contains(&tau));
    let search = &o.facts["selection"][0];
    assert_eq!((search["split"].as_str(), search["criterion"].as_str()), (Some("val"), Some("balanced-nll")));
    assert_eq!(search["trials"].as_array().unwrap().len(), 21);
    // The chosen tau has the lowest validation score of the sweep.
    let best = search["trials"]
        .as_array()
        .unwrap()
        .iter()
        .min_by(|a, b| a["score"].as_f64().unwrap().total_cmp(&b["score"].as_f64().unwrap()))
        .unwrap();
    assert_eq!(best["knobs"]["tau"].as_f64(), Some(tau));
    assert!(host(o.head.linear_part().1).iter().all(|&b| b == 0.0));
}

#[test]
fn without_a_validation_split_knobs_take_their_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let fs = setup(dir.path(), false);
    let o = retrain(&fs, &cfg(MethodKind::La), &Device::Cpu).unwrap();
    // Defaults, not knobs chosen on validation data.
    assert_eq!((o.facts["defaults"]["tau"].as_f64(), o.facts.get("chosen")), (Some(1.0), None));
    assert!(o.facts["selection"][0]["default"].as_str().unwrap().contains("no validation split"));
}

/// Without a validation split SRepr's open knobs take their defaults, but a knob given keeps its
/// value (the same head as with every knob given) and is recorded as fixed.
#[test]
fn without_a_validation_split_a_given_knob_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let fs = setup(dir.path(), false);
    let mut given = cfg(MethodKind::Srepr);
    given.epochs = 3;
    given.srepr.lambda = Some(0.3);
    let o = retrain(&fs, &given, &Device::Cpu).unwrap();
    assert_eq!(o.facts["fixed"], serde_json::json!({"lambda": 0.3}));
    assert_eq!(o.facts["defaults"], serde_json::json!({"tau": 1.0, "temperature": 1.0}));
    let mut all = given.clone();
    (all.tau, all.srepr.temperature) = (Some(1.0), Some(1.0));
    let every = retrain(&fs, &all, &Device::Cpu).unwrap();
    assert_eq!(host(o.head.linear_part().0), host(every.head.linear_part().0));
    // Balanced without LA, tau is no knob of the run.
    let mut ce = given.clone();
    ce.srepr.balance = lt_retrain::config::Balance::Ce;
    let o = retrain(&fs, &ce, &Device::Cpu).unwrap();
    assert!(
        lt_core::formats::facts::KINDS.iter().all(|k| o.facts.get(*k).is_none_or(|v| v.get("tau").is_none())),
        "{:?}",
        o.facts
    );
}

#[test]
fn tau_norm_and_post_hoc_la_follow_their_formulas() {
    let dir = tempfile::tempdir().unwrap();
    let fs = setup(dir.path(), false);
    let (w0, b0) = fs.head(lt_core::formats::features::SampleKind::Swa).unwrap();
    let d = common::DIM;
    // tau-norm: w_c / ||w_c||^tau, no bias.
    for tau in [0.0, 0.7, 2.0] {
        let o = retrain(&fs, &RetrainConfig { tau: Some(tau), ..cfg(MethodKind::TauNorm) }, &Device::Cpu)
            .unwrap();
        assert_eq!((o.facts["fixed"]["tau"].as_f64(), o.facts.get("chosen")), (Some(tau), None));
        let (w, b) = o.head.linear_part();
        for (k, (row, out)) in w0.chunks_exact(d).zip(host(w).chunks_exact(d)).enumerate() {
            let norm = row.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt();
            for (&w, &got) in row.iter().zip(out) {
                let (want, got) = (w as f64 / norm.powf(tau), got as f64);
                assert!(
                    (got - want).abs() < 1e-5 * want.abs().max(1.0),
                    "tau {tau} class {k}: {got} vs {want}"
                );
            }
        }
        assert!(host(b).iter().all(|&b| b == 0.0));
    }
    // Post-hoc LA: b_c - tau * log pi_c with pi_c = n_c / N, the stage-1 weights unchanged.
    let n: usize = common::COUNTS.iter().sum();
    let o =
        retrain(&fs, &RetrainConfig { tau: Some(0.5), ..cfg(MethodKind::LaPosthoc) }, &Device::Cpu).unwrap();
    let (w, b) = o.head.linear_part();
    assert_eq!(host(w), w0);
    for (k, (&b, &got)) in b0.iter().zip(&host(b)).enumerate() {
        let want = b as f64 - 0.5 * (common::COUNTS[k] as f64 / n as f64).ln();
        assert!((got as f64 - want).abs() < 1e-5, "class {k}: {got} vs {want}");
    }
}

#[test]
fn the_selection_never_reads_the_test_split() {
    let dir = tempfile::tempdir().unwrap();
    let fs = setup(dir.path(), true);
    // The same artifact with the test representations replaced by noise.
    let src = Artifact::open_any(fs.path()).unwrap();
    let poisoned = dir.path().join("poisoned.safetensors");
    let mut w = lt_core::ArtifactWriter::new(lt_core::formats::features::FORMAT);
    for (k, v) in src.metadata() {
        if k != "format" && k != "format_version" {
            w.meta(k, v.clone());
        }
    }
    for name in src.names() {
        let shape = src.info(name).unwrap().shape.clone();
        if name.ends_with(".labels") || name == "class_counts" {
            w.push_i64(name, &shape, src.i64(name).unwrap());
        } else {
            let mut v = src.f32(name).unwrap();
            if name == "test.features" {
                let mut r = lt_core::Rng::new(9);
                r.fill_normal(&mut v, 0.0, 5.0);
            }
            w.push_f32(name, &shape, v);
        }
    }
    w.write(&poisoned).unwrap();
    let bad = Features::open(&poisoned).unwrap();
    let mut srepr = cfg(MethodKind::Srepr);
    srepr.select.lambda_grid = vec![0.3, 3.0];
    srepr.select.temperature_grid = vec![1.0, 4.0];
    for c in [cfg(MethodKind::La), cfg(MethodKind::TauNorm), srepr] {
        let a = retrain(&fs, &c, &Device::Cpu).unwrap();
        let b = retrain(&bad, &c, &Device::Cpu).unwrap();
        assert_eq!(a.facts["chosen"], b.facts["chosen"], "{}", c.id());
        assert_eq!(a.facts["selection"], b.facts["selection"], "{}", c.id());
        assert_ne!(a.test_scores, b.test_scores, "the test split differs");
    }
}

#[test]
fn ensemble_predictions_are_the_mean_of_member_softmaxes() {
    let dir = tempfile::tempdir().unwrap();
    let fs = setup(dir.path(), true);
    let mut c = cfg(MethodKind::Srepr);
    (c.tau, c.srepr.lambda, c.predict) = (Some(1.0), Some(0.0), Predict::Ensemble);
    let o = retrain(&fs, &c, &Device::Cpu).unwrap();
    assert!(o.probabilities);
    let dev = Device::Cpu;
    let classes = common::COUNTS.len();
    let n = o.test_labels.len();
    let mut want = vec![0f64; n * classes];
    for m in fs.swag_indices() {
        let z = Tensor::from_vec(fs.all(Split::Test, m).unwrap(), (n, common::DIM), &dev).unwrap();
        let logits = host(&o.head.logits(&z).unwrap());
        for (row, out) in logits.chunks_exact(classes).zip(want.chunks_exact_mut(classes)) {
            let max = row.iter().fold(f32::MIN, |a, &b| a.max(b)) as f64;
            let sum: f64 = row.iter().map(|&v| (v as f64 - max).exp()).sum();
            for (o, &v) in out.iter_mut().zip(row) {
                *o += (v as f64 - max).exp() / sum / common::SWAG as f64;
            }
        }
    }
    for (got, want) in o.test_scores.iter().zip(&want) {
        assert!((*got as f64 - want).abs() < 1e-5, "{got} vs {want}");
    }
    // The same head predicts with the SWA representation alone in the single mode.
    c.predict = Predict::Single;
    let single = retrain(&fs, &c, &Device::Cpu).unwrap();
    assert_eq!(host(single.head.linear_part().0), host(o.head.linear_part().0));
}

#[test]
fn srepr_variants_run_and_record_their_choices() {
    let dir = tempfile::tempdir().unwrap();
    let fs = setup(dir.path(), true);
    let base = {
        let mut c = cfg(MethodKind::Srepr);
        c.select.tau_grid = vec![0.75, 1.0];
        c.select.lambda_grid = vec![0.3, 1.0];
        c.select.convex_grid = vec![0.3, 0.7];
        c.select.temperature_grid = vec![2.0];
        c
    };
    type Variant = fn(&mut RetrainConfig);
    let variants: [(&str, Variant); 6] = [
        ("online", |_| {}),
        ("frozen", |c| c.srepr.teacher = Teacher::Frozen),
        ("convex", |c| c.srepr.objective = Objective::Convex),
        ("entropy", |c| c.srepr.weighting = Weighting::Entropy),
        ("disagreement", |c| c.srepr.weighting = Weighting::Disagreement),
        ("student", |c| c.srepr.student_balance = true),
    ];
    for (name, apply) in variants {
        let mut c = base.clone();
        apply(&mut c);
        let o = retrain(&fs, &c, &Device::Cpu).unwrap();
        let chosen = &o.facts["chosen"];
        assert!([0.75, 1.0].contains(&chosen["tau"].as_f64().unwrap()), "{name}: {chosen}");
        let lambdas = if name == "convex" { [0.3, 0.7] } else { [0.3, 1.0] };
        assert!(lambdas.contains(&chosen["lambda"].as_f64().unwrap()), "{name}: {chosen}");
        // A grid of one: fitted, not chosen.
        assert_eq!(
            (chosen.get("temperature"), o.facts["fixed"]["temperature"].as_f64()),
            (None, Some(2.0)),
            "{name}"
        );
        // Two searches: tau with lambda = 0, then (lambda, T).
        let sel = o.facts["selection"].as_array().unwrap();
        assert_eq!((sel.len(), sel[1]["trials"].as_array().unwrap().len()), (2, 2), "{name}");
        assert_eq!(o.facts["members"].as_u64(), Some(common::SWAG as u64));
    }
}

/// SRepr's first step is the (b) model's own search: lambda 0 over the tau grid, with the same
/// scores as the ablation `--lambda 0` (each tau fitted with that tau, the distillation's
/// settings without effect); a frozen teacher with
/// tau given fits its (b) teacher all the same; and balance `crt` changes only the sampler.
#[test]
fn srepr_steps_fit_what_they_say() {
    let dir = tempfile::tempdir().unwrap();
    let fs = setup(dir.path(), true);
    let mut base = cfg(MethodKind::Srepr);
    (base.select.tau_grid, base.select.lambda_grid, base.select.temperature_grid) =
        (vec![0.5, 1.5], vec![1.0], vec![1.0]);
    let ablation = retrain(
        &fs,
        &RetrainConfig {
            srepr: lt_retrain::SreprConfig { lambda: Some(0.0), ..base.srepr.clone() },
            ..base.clone()
        },
        &Device::Cpu,
    )
    .unwrap();
    let full = retrain(&fs, &base, &Device::Cpu).unwrap();
    let trials = |o: &lt_retrain::Outcome| o.facts["selection"][0]["trials"].clone();
    assert_eq!(trials(&full), trials(&ablation), "step 1 is the (b) model's search");
    // At lambda 0 the distillation's settings change nothing: the (b) model ignores them.
    let mut reverse = base.clone();
    (reverse.srepr.lambda, reverse.srepr.kl) = (Some(0.0), KlDirection::Reverse);
    let reverse = retrain(&fs, &reverse, &Device::Cpu).unwrap();
    assert_eq!(host(reverse.head.linear_part().0), host(ablation.head.linear_part().0));
    let scores: Vec<f64> =
        trials(&ablation).as_array().unwrap().iter().map(|t| t["score"].as_f64().unwrap()).collect();
    assert_ne!(scores[0], scores[1], "each tau is fitted with its own tau");

    let mut frozen = RetrainConfig { tau: Some(1.5), ..base.clone() };
    frozen.srepr.teacher = Teacher::Frozen;
    let o = retrain(&fs, &frozen, &Device::Cpu).unwrap();
    // Tau given, lambda and T each a grid of one: nothing was chosen on validation data.
    assert_eq!(o.facts["fixed"], serde_json::json!({"tau": 1.5, "lambda": 1.0, "temperature": 1.0}));
    assert!(o.facts.get("chosen").is_none(), "{:?}", o.facts);
    // The (b) ablation: lambda fixed at 0 by its configuration, tau chosen.
    assert_eq!(ablation.facts["fixed"], serde_json::json!({"lambda": 0.0}));
    assert!([0.5, 1.5].contains(&ablation.facts["chosen"]["tau"].as_f64().unwrap()), "{:?}", ablation.facts);
    // The full run: tau chosen in step 1, lambda and T (grids of one) fixed.
    assert_eq!(full.facts["chosen"], serde_json::json!({"tau": ablation.facts["chosen"]["tau"]}));
    assert_eq!(full.facts["fixed"], serde_json::json!({"lambda": 1.0, "temperature": 1.0}));

    let head = |balance| {
        let mut c = RetrainConfig { tau: Some(1.0), ..base.clone() };
        (c.srepr.lambda, c.srepr.balance) = (Some(0.0), balance);
        host(retrain(&fs, &c, &Device::Cpu).unwrap().head.linear_part().0)
    };
    // The same loss (plain cross-entropy); crt draws its batches class-balanced.
    assert_ne!(head(lt_retrain::config::Balance::Crt), head(lt_retrain::config::Balance::Ce));
}

#[test]
fn averaging_the_loss_over_members_has_the_gradient_of_the_kl_to_their_mean() {
    // The mean over members of CE(p_m, p_S) is CE(p_T, p_S) = KL(p_T || p_S) + H(p_T): the two
    // differ by a constant of the student, so their gradients agree (no option needed for it).
    let dev = Device::Cpu;
    let members: Vec<Tensor> = (0..4)
        .map(|k| Tensor::randn(0f32, 1.0, (5, 3), &dev).unwrap().affine(1.0, k as f64 * 0.1).unwrap())
        .collect();
    let student = candle_core::Var::from_tensor(&Tensor::randn(0f32, 1.0, (5, 3), &dev).unwrap()).unwrap();
    let kl = losses::distillation(&members, student.as_tensor(), 1.0, KlDirection::Forward, Weighting::None)
        .unwrap();
    let log_ps = candle_nn::ops::log_softmax(student.as_tensor(), 1).unwrap();
    let mut ce = Tensor::zeros((), candle_core::DType::F32, &dev).unwrap();
    for m in &members {
        let p = candle_nn::ops::softmax(m, 1).unwrap().detach();
        ce = (ce + (p * &log_ps).unwrap().sum_all().unwrap().neg().unwrap()).unwrap();
    }
    let ce = (ce / (4.0 * 5.0)).unwrap();
    let g1 = kl.backward().unwrap().get(student.as_tensor()).unwrap().clone();
    let g2 = ce.backward().unwrap().get(student.as_tensor()).unwrap().clone();
    for (a, b) in host(&g1).iter().zip(host(&g2)) {
        assert!((a - b).abs() < 1e-6, "{a} vs {b}");
    }
}

#[test]
fn losses_match_pytorch() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/losses.safetensors");
    let g = Artifact::open_any(&path).unwrap();
    let dev = Device::Cpu;
    let logits = g.tensor("logits", &dev).unwrap();
    let labels =
        Tensor::new(g.i64("labels").unwrap().iter().map(|&v| v as u32).collect::<Vec<_>>().as_slice(), &dev)
            .unwrap();
    let counts: Vec<f32> = g.f32("counts").unwrap();
    let n: f32 = counts.iter().sum();
    let tau: f64 = g.meta_parse("tau").unwrap();
    let rho: f64 = g.meta_parse("rho").unwrap();
    let t: f64 = g.meta_parse("temperature").unwrap();
    let lp = Tensor::new(counts.iter().map(|c| (c / n).ln()).collect::<Vec<_>>().as_slice(), &dev).unwrap();
    let lc = Tensor::new(counts.iter().map(|c| c.ln()).collect::<Vec<_>>().as_slice(), &dev).unwrap();
    let close = |got: Tensor, name: &str| {
        let want = g.f32(name).unwrap()[0];
        let got = got.to_vec0::<f32>().unwrap();
        assert!((got - want).abs() < 1e-5 * (1.0 + want.abs()), "{name}: {got} vs {want}");
    };
    close(losses::logit_adjusted(&logits, &labels, &lp, tau).unwrap(), "la");
    close(losses::balanced_softmax(&logits, &labels, &lc).unwrap(), "balanced_softmax");
    let w = losses::disalign_weights(&counts.iter().map(|&c| c as usize).collect::<Vec<_>>(), rho);
    for (a, b) in w.iter().zip(g.f32("disalign_weights").unwrap()) {
        assert!((a - b).abs() < 1e-5);
    }
    let cw = Tensor::new(w.as_slice(), &dev).unwrap();
    close(losses::weighted_cross_entropy(&logits, &labels, &cw).unwrap(), "disalign_loss");
    let teachers = g.tensor("teachers", &dev).unwrap();
    let members: Vec<Tensor> = (0..teachers.dim(0).unwrap()).map(|m| teachers.get(m).unwrap()).collect();
    let student = g.tensor("student", &dev).unwrap();
    close(
        losses::distillation(&members, &student, t, KlDirection::Forward, Weighting::None).unwrap(),
        "distillation",
    );
}

#[test]
fn bad_input_is_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let fs = setup(dir.path(), false);
    let err = "focal".parse::<MethodKind>().unwrap_err().to_string();
    assert!(err.contains("unknown MethodKind \"focal\""), "{err}");
    // SRepr on the SGD backbone.
    let mut c = cfg(MethodKind::Srepr);
    c.backbone = lt_retrain::Backbone::Sgd;
    assert!(retrain(&fs, &c, &Device::Cpu).unwrap_err().to_string().contains("needs backbone swa"));
    // Too many members.
    let mut c = cfg(MethodKind::Srepr);
    c.srepr.members = Some(9);
    assert!(retrain(&fs, &c, &Device::Cpu)
        .unwrap_err()
        .to_string()
        .contains("SRepr: retrain.srepr.members = 9"));
    // As many as there are is fine.
    c.srepr.members = Some(common::SWAG);
    assert_eq!(retrain(&fs, &c, &Device::Cpu).unwrap().facts["members"].as_u64(), Some(common::SWAG as u64));
    // A split that does not exist.
    assert!(fs.labels(Split::Val).unwrap_err().to_string().contains("val.labels"));

    // Labels and features of different lengths, a head of the wrong shape, NaN features.
    let p = dir.path().join("bad.safetensors");
    let src = Artifact::open_any(fs.path()).unwrap();
    let rewrite = |drop_rows: bool, nan: bool, wrong_head: bool| {
        let mut w = lt_core::ArtifactWriter::new(lt_core::formats::features::FORMAT);
        for (k, v) in src.metadata() {
            if k != "format" && k != "format_version" {
                w.meta(k, v.clone());
            }
        }
        for name in src.names() {
            let mut shape = src.info(name).unwrap().shape.clone();
            if name.ends_with(".labels") || name == "class_counts" {
                let mut v = src.i64(name).unwrap();
                if drop_rows && name == "test.labels" {
                    v.pop();
                    shape[0] -= 1;
                }
                w.push_i64(name, &shape, v);
            } else {
                let mut v = src.f32(name).unwrap();
                if nan && name == "train.features" {
                    // Row 3 of the SWA block (backbone 1).
                    let n = common::COUNTS.iter().sum::<usize>();
                    v[(n + 3) * common::DIM + 1] = f32::NAN;
                }
                if wrong_head && name == "head.swa.weight" {
                    v.truncate(v.len() - common::DIM);
                    shape[0] -= 1;
                }
                w.push_f32(name, &shape, v);
            }
        }
        w.write(&p).unwrap();
    };
    rewrite(true, false, false);
    let err = Features::open(&p).unwrap_err().to_string();
    assert!(err.contains("test.labels") && err.contains("for 360 feature rows"), "{err}");
    rewrite(false, false, true);
    let err = Features::open(&p).unwrap_err().to_string();
    assert!(err.contains("head.swa.weight") && err.contains("expected [6, 8]"), "{err}");
    rewrite(false, true, false);
    let fs = Features::open(&p).unwrap();
    let Err(err) = retrain(&fs, &cfg(MethodKind::Crt), &Device::Cpu) else {
        panic!("NaN features are refused")
    };
    let err = err.to_string();
    assert!(err.contains("train.features") && err.contains("(swa) row 3") && err.contains("NaN"), "{err}");
}

#[test]
fn an_epoch_is_floor_n_over_batch_steps_on_a_cosine_to_zero() {
    use candle_core::Var;
    // Loss = p, so each plain SGD step (no momentum, no decay) subtracts that step's rate.
    let p = Var::from_tensor(&Tensor::new(0f32, &Device::Cpu).unwrap()).unwrap();
    let params = vec![("p".to_string(), p.clone())];
    let labels: Vec<u32> = (0..1000).map(|i| (i % 5) as u32).collect();
    let cfg = RetrainConfig {
        epochs: 3,
        batch_size: 64,
        lr: 0.2,
        momentum: 0.0,
        weight_decay: 0.0,
        ..cfg(MethodKind::Crt)
    };
    let mut batches = Vec::new();
    let losses = lt_retrain::fit(&params, &cfg, &labels, 5, lt_core::sampler::SamplerKind::Instance, |idx| {
        batches.push(idx.len());
        Ok(p.as_tensor().clone())
    })
    .unwrap();
    assert_eq!(losses.len(), 3);
    // floor(1000 / 64) = 15 full batches per epoch, the remainder dropped.
    assert_eq!(batches, vec![64; 45]);
    let total = 45.0;
    let lr_sum: f64 =
        (0..45).map(|t| 0.5 * 0.2 * (1.0 + (std::f64::consts::PI * t as f64 / total).cos())).sum();
    let got = p.as_tensor().to_vec0::<f32>().unwrap() as f64;
    assert!((got + lr_sum).abs() < 1e-4, "{got} vs {}", -lr_sum);
}

/// An output directory takes the same run again, and refuses another run's outputs, naming each
/// setting that differs (a default the record leaves out with its value) and other features.
#[test]
fn an_output_directory_refuses_another_runs_outputs() {
    let tmp = tempfile::tempdir().unwrap();
    let features = setup(tmp.path(), true);
    let run = RetrainConfig { tau: Some(1.0), ..RetrainConfig::new(MethodKind::LaPosthoc) };
    let out = tmp.path().join("out");
    lt_retrain::outputs::check_dir(&out, &features, &run, Recorded::Inferred).unwrap();
    let outcome = retrain(&features, &run, &Device::Cpu).unwrap();
    lt_retrain::outputs::write(&outcome, &features, Recorded::Inferred, &out).unwrap();
    // Features without class names give predictions without them (not an empty list).
    let preds =
        lt_core::formats::predictions::Predictions::read(&out.join("predictions.safetensors")).unwrap();
    assert!(features.meta().class_names.is_empty() && preds.class_names.is_none());
    lt_retrain::outputs::check_dir(&out, &features, &run, Recorded::Inferred).unwrap();
    // Without a row given, the run is recorded as the plan row it is a run of, or else by its id:
    // ensemble predictions are no plan row of post-hoc LA.
    // A plan row or a name given is recorded whatever the settings.
    let meta = |outcome, recorded| {
        let m = lt_retrain::outputs::run_meta(outcome, &features, recorded);
        (m.row, m.label)
    };
    assert_eq!(meta(&outcome, Recorded::Inferred), ("swa-la-posthoc".into(), "LA (post-hoc)".into()));
    let la = lt_retrain::rows::row("swa-la").unwrap();
    assert_eq!(meta(&outcome, Recorded::Row(la)), ("swa-la".into(), "LA".into()));
    assert_eq!(meta(&outcome, Recorded::Named("mine")), ("mine".into(), "mine".into()));
    let ensemble = RetrainConfig { predict: Predict::Ensemble, ..run.clone() };
    let outcome = retrain(&features, &ensemble, &Device::Cpu).unwrap();
    assert_eq!(meta(&outcome, Recorded::Inferred), (ensemble.id(), ensemble.id()));
    assert_ne!(ensemble.id(), "swa-la-posthoc");
    // The same run under another row or name would change what the directory holds.
    let err = lt_retrain::outputs::check_dir(&out, &features, &run, Recorded::Named("mine")).unwrap_err();
    assert!(
        err.to_string().contains(
            "holds the outputs of another stage-2 run (the row: swa-la-posthoc recorded, mine now)"
        ),
        "{err}"
    );
    let other = RetrainConfig { tau: Some(2.0), min_steps: 300, ..run.clone() };
    let err =
        lt_retrain::outputs::check_dir(&out, &features, &other, Recorded::Inferred).unwrap_err().to_string();
    assert!(
        err.contains("holds the outputs of another stage-2 run (row ")
            && err.contains("retrain.min_steps: 0 recorded, 300 now; retrain.tau: 1.0 recorded, 2.0 now)"),
        "{err}"
    );
    let path = tmp.path().join("other-features.safetensors");
    let c = common::COUNTS.len();
    common::write(&path, (&vec![0.0; c * common::DIM], &vec![0.0; c]), 2, true);
    let err = lt_retrain::outputs::check_dir(&out, &Features::open(&path).unwrap(), &run, Recorded::Inferred)
        .unwrap_err();
    assert!(
        err.to_string().contains("(row swa-la-posthoc; the features: gaussian-1… recorded, gaussian-2… now)"),
        "{err}"
    );
}

/// Every SRepr setting away from its default shows in the identifier, each differently.
#[test]
fn srepr_identifiers_name_each_setting_that_differs() {
    use lt_retrain::{Balance, KdLogits, SreprConfig};
    let base = RetrainConfig::new(MethodKind::Srepr);
    let with = |f: &dyn Fn(&mut SreprConfig)| {
        let mut c = base.clone();
        f(&mut c.srepr);
        c.id()
    };
    assert_eq!(base.id(), "swa-srepr");
    assert_eq!(
        with(&|s| {
            s.lambda = Some(0.5);
            s.temperature = Some(2.0);
            s.members = Some(4);
        }),
        "swa-srepr-lambda0.5-t2-m4"
    );
    let d = SreprConfig::default();
    let mut ids = vec![base.id(), with(&|s| s.lambda = Some(1.0)), with(&|s| s.temperature = Some(1.0))];
    ids.push(with(&|s| s.members = Some(2)));
    ids.push(with(&|s| s.student_balance = true));
    ids.extend(Balance::ALL.iter().filter(|&&v| v != d.balance).map(|&v| with(&|s| s.balance = v)));
    ids.extend(KlDirection::ALL.iter().filter(|&&v| v != d.kl).map(|&v| with(&|s| s.kl = v)));
    ids.extend(Teacher::ALL.iter().filter(|&&v| v != d.teacher).map(|&v| with(&|s| s.teacher = v)));
    ids.extend(Objective::ALL.iter().filter(|&&v| v != d.objective).map(|&v| with(&|s| s.objective = v)));
    ids.extend(Weighting::ALL.iter().filter(|&&v| v != d.weighting).map(|&v| with(&|s| s.weighting = v)));
    ids.extend(KdLogits::ALL.iter().filter(|&&v| v != d.kd_logits).map(|&v| with(&|s| s.kd_logits = v)));
    let ensemble = RetrainConfig { predict: Predict::Ensemble, ..base.clone() };
    ids.push(ensemble.id());
    let distinct: std::collections::BTreeSet<_> = ids.iter().collect();
    assert_eq!(distinct.len(), ids.len(), "two settings give one identifier: {ids:?}");
    assert!(ids.iter().all(|i| i.starts_with("swa-srepr")), "{ids:?}");
    // Another method's identifier shows no SRepr setting.
    let la =
        RetrainConfig { srepr: SreprConfig { lambda: Some(0.5), ..d }, ..RetrainConfig::new(MethodKind::La) };
    assert_eq!(la.id(), "swa-la");
}
