//! Every stage-2 method on a synthetic Gaussian long-tailed feature set, the losses against
//! PyTorch, and the refusals of bad input.

mod common;

use candle_core::{Device, Tensor};
use lt_core::Artifact;
use lt_retrain::losses;
use lt_retrain::{retrain, FeatureSet, Method, RetrainConfig, SreprConfig};

fn few_accuracy(o: &lt_retrain::Outcome) -> (f64, f64) {
    let c = common::COUNTS.len();
    let mut correct = vec![0usize; c];
    let mut total = vec![0usize; c];
    for (row, &y) in o.test_logits.chunks_exact(c).zip(&o.test_labels) {
        let pred = row.iter().enumerate().fold(0, |b, (k, &v)| if v > row[b] { k } else { b });
        total[y as usize] += 1;
        correct[y as usize] += (pred == y as usize) as usize;
    }
    let acc =
        |cs: &[usize]| cs.iter().map(|&k| correct[k] as f64 / total[k] as f64).sum::<f64>() / cs.len() as f64;
    // Few: classes with < 20 training samples (10 and 4).
    (acc(&[4, 5]), acc(&(0..c).collect::<Vec<_>>()))
}

fn cfg(method: Method) -> RetrainConfig {
    RetrainConfig { epochs: 20, batch_size: 64, lr: 0.1, ..RetrainConfig::new(method) }
}

/// A features artifact whose stage-1 head is a plainly trained (CE, instance-balanced) head.
fn setup(dir: &std::path::Path) -> FeatureSet {
    let c = common::COUNTS.len();
    let tmp = dir.join("bootstrap.safetensors");
    common::write(&tmp, (&vec![0.0; c * common::DIM], &vec![0.0; c]), 1);
    let plain =
        retrain(&FeatureSet::open(&tmp).unwrap(), &cfg(Method::La { tau: 0.0 }), &Device::Cpu).unwrap();
    let path = dir.join("features.safetensors");
    common::write(&path, (&plain.weight, &plain.bias), 1);
    FeatureSet::open(&path).unwrap()
}

#[test]
fn every_balancing_method_raises_few_shot_accuracy() {
    let dir = tempfile::tempdir().unwrap();
    let fs = setup(dir.path());
    let plain = retrain(&fs, &cfg(Method::None), &Device::Cpu).unwrap();
    let (few0, all0) = few_accuracy(&plain);
    assert!(few0 < 0.5, "the plain head should fail the tail: few {few0}");
    let methods = [
        Method::Crt,
        Method::Lws,
        Method::TauNorm { tau: None },
        Method::La { tau: 1.0 },
        Method::LaPosthoc { tau: 1.0 },
        Method::BalancedSoftmax,
        Method::Disalign { rho: 1.2 },
        Method::Srepr(SreprConfig::default()),
        Method::Srepr(SreprConfig { lambda: 0.0, ..Default::default() }),
    ];
    for m in methods {
        let o = retrain(&fs, &cfg(m.clone()), &Device::Cpu).unwrap();
        let (few, all) = few_accuracy(&o);
        assert!(
            few > few0 + 0.1,
            "{}: few-shot {few:.3} vs plain {few0:.3} (all {all:.3} vs {all0:.3})",
            m.name()
        );
        // Deterministic from the seed.
        let again = retrain(&fs, &cfg(m.clone()), &Device::Cpu).unwrap();
        assert_eq!(again.test_logits, o.test_logits, "{} is not deterministic", m.name());
    }
}

#[test]
fn lws_changes_only_the_scales_and_tau_norm_records_tau() {
    let dir = tempfile::tempdir().unwrap();
    let fs = setup(dir.path());
    let (w0, b0) = fs.head("swa").unwrap();
    let o = retrain(&fs, &cfg(Method::Lws), &Device::Cpu).unwrap();
    let (_, scales, _) = o.extra.iter().find(|(n, _, _)| n == "scales").unwrap();
    let c = common::COUNTS.len();
    for k in 0..c {
        for d in 0..common::DIM {
            assert!((o.weight[k * common::DIM + d] - scales[k] * w0[k * common::DIM + d]).abs() < 1e-6);
        }
        assert!((o.bias[k] - scales[k] * b0[k]).abs() < 1e-6);
    }
    assert!(scales.iter().any(|&s| (s - 1.0).abs() > 1e-3), "the scales trained");
    // Tail classes get larger scales than head classes.
    assert!(scales[5] > scales[0], "{scales:?}");
    let o = retrain(&fs, &cfg(Method::TauNorm { tau: None }), &Device::Cpu).unwrap();
    let tau = o.facts["tau"].as_f64().unwrap();
    assert!((0.0..=2.0).contains(&tau));
    assert_eq!(o.facts["tau_sweep_split"], "train");
    assert!(o.bias.iter().all(|&b| b == 0.0));
}

#[test]
fn tau_norm_and_post_hoc_la_follow_their_formulas() {
    let dir = tempfile::tempdir().unwrap();
    let fs = setup(dir.path());
    let (w0, b0) = fs.head("swa").unwrap();
    let d = common::DIM;
    // tau-norm: w_c / ||w_c||^tau, no bias.
    for tau in [0.0, 0.7, 2.0] {
        let o = retrain(&fs, &cfg(Method::TauNorm { tau: Some(tau) }), &Device::Cpu).unwrap();
        assert_eq!(o.facts["tau"].as_f64(), Some(tau));
        for (k, (row, out)) in w0.chunks_exact(d).zip(o.weight.chunks_exact(d)).enumerate() {
            let norm = row.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt();
            for (&w, &got) in row.iter().zip(out) {
                let (want, got) = (w as f64 / norm.powf(tau), got as f64);
                assert!(
                    (got - want).abs() < 1e-5 * want.abs().max(1.0),
                    "tau {tau} class {k}: {got} vs {want}"
                );
            }
        }
        assert!(o.bias.iter().all(|&b| b == 0.0));
    }
    // Post-hoc LA: b_c - tau * log pi_c with pi_c = n_c / N, the stage-1 weights unchanged.
    let n: usize = common::COUNTS.iter().sum();
    let o = retrain(&fs, &cfg(Method::LaPosthoc { tau: 0.5 }), &Device::Cpu).unwrap();
    assert_eq!(o.weight, w0);
    for (k, (&b, &got)) in b0.iter().zip(&o.bias).enumerate() {
        let want = b as f64 - 0.5 * (common::COUNTS[k] as f64 / n as f64).ln();
        assert!((got as f64 - want).abs() < 1e-5, "class {k}: {got} vs {want}");
    }
}

#[test]
fn srepr_teacher_is_the_mean_of_member_predictions() {
    // With the per-member cross-entropy, the distillation term is linear in the members'
    // probabilities, so it equals the cross-entropy against their average: the teacher of the
    // KL form.
    let dev = Device::Cpu;
    let members: Vec<Tensor> = (0..4)
        .map(|k| Tensor::randn(0f32, 1.0, (5, 3), &dev).unwrap().affine(1.0, k as f64 * 0.1).unwrap())
        .collect();
    let student = Tensor::randn(0f32, 1.0, (5, 3), &dev).unwrap();
    let per_member =
        losses::distillation(&members, &student, 1.0, losses::KlDirection::Forward, true).unwrap();
    let probs: Vec<Tensor> = members.iter().map(|m| candle_nn::ops::softmax(m, 1).unwrap()).collect();
    let mean = (probs.iter().skip(1).fold(probs[0].clone(), |a, p| (a + p).unwrap()) / 4.0).unwrap();
    let kl = losses::distillation(&members, &student, 1.0, losses::KlDirection::Forward, false).unwrap();
    // KL(p_T || p_S) = CE(p_T, p_S) - H(p_T)
    let entropy = (mean.clone() * mean.log().unwrap())
        .unwrap()
        .sum_all()
        .unwrap()
        .neg()
        .unwrap()
        .affine(1.0 / 5.0, 0.0)
        .unwrap();
    let lhs = per_member.to_vec0::<f32>().unwrap();
    let rhs = (kl + entropy).unwrap().to_vec0::<f32>().unwrap();
    assert!((lhs - rhs).abs() < 1e-5, "{lhs} vs {rhs}");
}

#[test]
fn losses_match_pytorch() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/losses.safetensors");
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
        losses::distillation(&members, &student, t, losses::KlDirection::Forward, false).unwrap(),
        "distillation",
    );
}

#[test]
fn bad_input_is_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let fs = setup(dir.path());
    // Unknown method.
    let err = Method::parse("focal").unwrap_err().to_string();
    assert!(err.contains("unknown method \"focal\""), "{err}");
    // SRepr on the SGD backbone.
    let mut c = cfg(Method::Srepr(SreprConfig::default()));
    c.backbone = "sgd".into();
    assert!(retrain(&fs, &c, &Device::Cpu).unwrap_err().to_string().contains("--backbone swa"));
    // Too many members.
    let c = cfg(Method::Srepr(SreprConfig { members: Some(9), ..Default::default() }));
    assert!(retrain(&fs, &c, &Device::Cpu).unwrap_err().to_string().contains("9 members"));
    // A requested validation split that does not exist.
    assert!(fs.labels("val").unwrap_err().to_string().contains("`val` split was requested"));

    // Labels and features of different lengths.
    let p = dir.path().join("bad.safetensors");
    let src = Artifact::open_any(&dir.path().join("features.safetensors")).unwrap();
    let rewrite = |drop_rows: bool, nan: bool, wrong_head: bool| {
        let mut w = lt_core::ArtifactWriter::new(lt_retrain::features::FEATURES_FORMAT);
        for (k, v) in src.metadata() {
            if k != "format" && k != "format_version" {
                w.meta(k, v.clone());
            }
        }
        for name in src.names() {
            let info = src.info(name).unwrap().clone();
            let mut shape = info.shape.clone();
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
    let err = FeatureSet::open(&p).err().unwrap().to_string();
    assert!(err.contains("test.labels") && err.contains("for 360 feature rows"), "{err}");
    rewrite(false, false, true);
    let err = FeatureSet::open(&p).err().unwrap().to_string();
    assert!(err.contains("head.swa.weight") && err.contains("expected [6, 8]"), "{err}");
    rewrite(false, true, false);
    let fs = FeatureSet::open(&p).unwrap();
    let Err(err) = retrain(&fs, &cfg(Method::Crt), &Device::Cpu) else { panic!("NaN features are refused") };
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
        ..cfg(Method::Crt)
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
