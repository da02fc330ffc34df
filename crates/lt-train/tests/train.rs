//! Stage 1 on a tiny synthetic problem: artifacts, schedules, determinism, resume, refusals.

use lt_data::{load_bundle, DataOptions, DatasetName, SyntheticConfig};
use lt_train::{train, RunDir, RunOptions, SwaConfig, TrainConfig, TrainError};

fn tiny_data() -> lt_data::DataBundle {
    tiny_data_at(10.0)
}

/// The tiny synthetic set at imbalance ratio `rho`.
fn tiny_data_at(rho: f64) -> lt_data::DataBundle {
    let synthetic = SyntheticConfig {
        n_max: 40,
        val_per_class: 2,
        test_per_class: 10,
        size: 16,
        classes: 4,
        ..Default::default()
    };
    let opts = DataOptions { synthetic, imbalance: Some(rho), ..Default::default() };
    load_bundle(DatasetName::Synthetic, &opts).unwrap()
}

fn tiny_config() -> TrainConfig {
    TrainConfig {
        arch: "cifar-resnet8x8".into(),
        epochs: 5,
        batch_size: 16,
        lr: 0.05,
        momentum: 0.9,
        nesterov: true,
        weight_decay: 5e-4,
        warmup_epochs: 1,
        swa: Some(SwaConfig { start: 3, lr: 0.02, rank: 3, collect_every_steps: None }),
        seed: 1,
        workers: 2,
        init: None,
        backbone_lr_scale: 1.0,
        freeze_bn: false,
        precision: lt_models::Precision::F32,
    }
}

fn bytes(p: std::path::PathBuf) -> Vec<u8> {
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn swa_run_produces_every_artifact_and_is_deterministic() {
    let data = tiny_data();
    let cfg = tiny_config();
    let a = tempfile::tempdir().unwrap();
    let summary = train(&cfg, &data, a.path(), &RunOptions::default()).unwrap();
    let dir = RunDir::new(a.path());
    for p in
        [dir.sgd(), dir.swa(), dir.swag(), dir.split(), dir.branch(), dir.summary(), dir.log(), dir.config()]
    {
        assert!(p.exists(), "{} missing", p.display());
    }
    assert!(summary.swa.is_some());
    let swag = lt_swag::Swag::load(&dir.swag()).unwrap();
    assert_eq!(swag.n_models(), 2, "collected at the end of epochs 3 and 4");
    assert_eq!(swag.rank(), 2);
    // The log has the prefix (3 epochs), the SGD branch (2) and the SWA branch (2).
    let log = std::fs::read_to_string(dir.log()).unwrap();
    assert_eq!(log.lines().count(), 7, "{log}");
    // A second run with the same seed gives the same bytes, whatever the loader's worker count,
    // which is not part of the run's fingerprint either (the learning rate is).
    let b = tempfile::tempdir().unwrap();
    let five = TrainConfig { workers: 5, ..cfg.clone() };
    train(&five, &data, b.path(), &RunOptions::default()).unwrap();
    let fingerprint = |c: &TrainConfig| lt_train::trainer::run_fingerprint(c, &data, None);
    assert_eq!(fingerprint(&five), fingerprint(&cfg));
    assert_ne!(fingerprint(&TrainConfig { lr: 0.04, ..cfg.clone() }), fingerprint(&cfg));
    let other = RunDir::new(b.path());
    assert_eq!(bytes(dir.sgd()), bytes(other.sgd()));
    assert_eq!(bytes(dir.swag()), bytes(other.swag()));
    assert_eq!(bytes(dir.swa()), bytes(other.swa()));
    // Refusals: an existing run without --resume, a resume with another configuration, a resume
    // of nothing; each leaves the directory exactly as it found it.
    let before = snapshot(a.path());
    let err = train(&cfg, &data, a.path(), &RunOptions::default()).unwrap_err();
    assert!(err.to_string().contains("pass --resume"), "{err}");
    let mut other_cfg = cfg.clone();
    other_cfg.lr = 0.04;
    let err =
        train(&other_cfg, &data, a.path(), &RunOptions { resume: true, ..Default::default() }).unwrap_err();
    assert!(
        matches!(err, TrainError::Mismatch(_))
            && err.to_string().ends_with(&format!(
                ": the settings differ (train.lr: {} recorded, 0.04 now)",
                serde_json::json!(cfg.lr)
            )),
        "{err}"
    );
    // A setting the record leaves out at its default shows that default.
    let frozen = TrainConfig { freeze_bn: true, ..cfg.clone() };
    let err =
        train(&frozen, &data, a.path(), &RunOptions { resume: true, ..Default::default() }).unwrap_err();
    assert!(err.to_string().ends_with("(train.freeze_bn: false recorded, true now)"), "{err}");
    // Other data: the message says so, and that the settings are the same.
    let fewer = tiny_data_at(4.0);
    let err = train(&cfg, &fewer, a.path(), &RunOptions { resume: true, ..Default::default() }).unwrap_err();
    let err = err.to_string();
    assert!(
        err.contains(": the data differ (split fingerprint ") && !err.contains("settings differ"),
        "{err}"
    );
    assert!(snapshot(a.path()) == before, "a refused run changed the directory");
    let empty = tempfile::tempdir().unwrap();
    let err =
        train(&cfg, &data, empty.path(), &RunOptions { resume: true, ..Default::default() }).unwrap_err();
    assert!(err.to_string().contains("no checkpoint.safetensors to continue from"), "{err}");
    assert!(snapshot(empty.path()).is_empty());
}

/// Every file of a directory (recursively) with its bytes.
fn snapshot(dir: &std::path::Path) -> std::collections::BTreeMap<std::path::PathBuf, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(snapshot(&p));
        } else {
            out.insert(p.clone(), std::fs::read(&p).unwrap());
        }
    }
    out
}

#[test]
fn invalid_configurations_are_refused() {
    let mut cfg = tiny_config();
    cfg.swa.as_mut().unwrap().start = 9;
    assert!(cfg.validate().unwrap_err().to_string().contains("train.swa.start (--swa-start) 9 must lie"));
    let mut cfg = tiny_config();
    cfg.arch = "resnet33".into();
    assert!(cfg.validate().is_err());
}

#[test]
fn a_nan_loss_stops_the_run_naming_the_step() {
    let data = tiny_data();
    let mut cfg = tiny_config();
    cfg.lr = 1e30;
    cfg.swa = None;
    cfg.warmup_epochs = 0;
    let d = tempfile::tempdir().unwrap();
    let err = train(&cfg, &data, d.path(), &RunOptions::default()).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, TrainError::NonFinite { .. }), "{msg}");
    assert!(msg.contains("at step"), "{msg}");
}

#[test]
fn extraction_writes_every_backbone_sample_deterministically() {
    use lt_core::formats::features::FORMAT as FEATURES_FORMAT;
    use lt_train::extract::{extract, ExtractConfig};
    let data = tiny_data();
    let cfg = tiny_config();
    let d = tempfile::tempdir().unwrap();
    train(&cfg, &data, d.path(), &RunOptions::default()).unwrap();
    let dir = RunDir::new(d.path());
    let ecfg = ExtractConfig { samples: 2, scale: 0.5, seed: 3, half: false, batch_size: 32, workers: 2 };
    let p = extract(&dir, &data, &ecfg, &candle_core::Device::Cpu).unwrap();
    let first = std::fs::read(&p).unwrap();
    let a = lt_core::Artifact::open(&p, FEATURES_FORMAT).unwrap();
    let dim = 32; // cifar-resnet8x8: 4 * 8
    assert_eq!(a.info("train.features").unwrap().shape, vec![4, data.train.len(), dim]);
    assert_eq!(a.info("test.features").unwrap().shape, vec![4, data.test.len(), dim]);
    assert_eq!(a.info("val.features").unwrap().shape, vec![4, 8, dim]);
    assert_eq!(a.indices("test.labels", 4).unwrap().len(), data.test.len());
    assert_eq!(a.info("head.swa.weight").unwrap().shape, vec![4, dim]);
    // The SGD slice equals the SGD backbone's features; SWAG samples differ from SWA.
    let f = a.f32("test.features").unwrap();
    let n = data.test.len() * dim;
    let sgd = lt_models::Model::from_artifact(&dir.sgd(), &candle_core::Device::Cpu).unwrap();
    let (want, _) = lt_train::evaluate::predict(&sgd, &data.test, 32, 1, &candle_core::Device::Cpu).unwrap();
    assert_eq!(&f[..n], want.as_slice());
    assert_ne!(&f[n..2 * n], &f[2 * n..3 * n]);
    assert_ne!(&f[2 * n..3 * n], &f[3 * n..4 * n]);
    let parts = |d: &std::path::Path| {
        std::fs::read_dir(d)
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().contains("part"))
            .count()
    };
    assert_eq!(parts(d.path()), 0);
    // Again: same bytes, and the parts an interrupted extraction of more samples left are gone.
    // With f16: half the feature bytes.
    for stray in ["features.part-7.bin", "features.part-7.fingerprint"] {
        std::fs::write(d.path().join(stray), "left by an interrupted extraction of 8 samples").unwrap();
    }
    let p = extract(&dir, &data, &ecfg, &candle_core::Device::Cpu).unwrap();
    assert_eq!(std::fs::read(&p).unwrap(), first);
    assert_eq!(parts(d.path()), 0);
    // Another extraction's features are replaced only when asked to.
    let half = ExtractConfig { half: true, ..ecfg.clone() };
    let err = extract(&dir, &data, &half, &candle_core::Device::Cpu).unwrap_err().to_string();
    assert!(
        err.contains("holds the features of another extraction (extract.half: false recorded, true now)"),
        "{err}"
    );
    assert_eq!(std::fs::read(&p).unwrap(), first, "the refused extraction left the features as they were");
    let p =
        lt_train::extract::extract_replacing(&dir, &data, &half, &candle_core::Device::Cpu, true).unwrap();
    let a = lt_core::Artifact::open(&p, FEATURES_FORMAT).unwrap();
    assert_eq!(a.info("train.features").unwrap().dtype, lt_core::artifact::ElemType::F16);

    // Refusals: another data set, a run without SWAG.
    let other = load_bundle(
        DatasetName::Synthetic,
        &DataOptions {
            seed: 9,
            ..DataOptions {
                synthetic: SyntheticConfig { n_max: 40, classes: 4, size: 16, ..Default::default() },
                imbalance: Some(10.0),
                ..Default::default()
            }
        },
    )
    .unwrap();
    let err = extract(&dir, &other, &ecfg, &candle_core::Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("are not those") && err.contains("split fingerprints differ"), "{err}");
    std::fs::remove_file(dir.swag()).unwrap();
    let err = extract(&dir, &data, &ecfg, &candle_core::Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("no SWAG statistics"), "{err}");
}

#[test]
fn bn_recalibration_matches_full_data_statistics() {
    use candle_core::{Device, Tensor};
    use lt_models::{Arch, Model};
    let dev = Device::Cpu;
    let m = Model::new(Arch::new("cifar-resnet8x8", 3, 3).unwrap(), 0, &dev).unwrap();
    let x = Tensor::randn(0.3f32, 1.5, (24, 3, 8, 8), &dev).unwrap();
    // The first batch norm's input is conv1's output.
    let w = m.store().var("conv1.weight").unwrap().as_detached_tensor();
    let z = x.conv2d(&w, 1, 1, 1, 1).unwrap(); // [N, C, H, W]
    let per_channel = |t: &Tensor| t.permute((1, 0, 2, 3)).unwrap().flatten_from(1).unwrap();
    let zc = per_channel(&z);
    let count = zc.dim(1).unwrap() as f64;
    let mean = zc.mean(1).unwrap();
    let var = zc
        .broadcast_sub(&mean.unsqueeze(1).unwrap())
        .unwrap()
        .sqr()
        .unwrap()
        .sum(1)
        .unwrap()
        .affine(1.0 / (count - 1.0), 0.0)
        .unwrap();
    let close = |a: &Tensor, b: &Tensor| {
        let d = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_vec0::<f32>().unwrap();
        assert!(d < 1e-4, "differs by {d}");
    };
    // One batch holding all the data: exactly the full-data mean and unbiased variance.
    lt_swag::bn::recalibrate(&lt_train::bn::Recal(&m), [Ok(x.clone())]).unwrap();
    close(&m.store().buffer("bn1.running_mean").unwrap(), &mean);
    close(&m.store().buffer("bn1.running_var").unwrap(), &var);
    // Three batches of 8: the mean is still exact; the variance is the sample-weighted mean of
    // the batches' unbiased variances.
    let batches: Vec<_> = (0..3).map(|i| Ok(x.narrow(0, 8 * i, 8).unwrap())).collect();
    lt_swag::bn::recalibrate(&lt_train::bn::Recal(&m), batches).unwrap();
    close(&m.store().buffer("bn1.running_mean").unwrap(), &mean);
    let mut vars = Vec::new();
    for i in 0..3 {
        let zb = per_channel(&z.narrow(0, 8 * i, 8).unwrap());
        let nb = zb.dim(1).unwrap() as f64;
        let mb = zb.mean(1).unwrap();
        vars.push(
            zb.broadcast_sub(&mb.unsqueeze(1).unwrap())
                .unwrap()
                .sqr()
                .unwrap()
                .sum(1)
                .unwrap()
                .affine(1.0 / (nb - 1.0), 0.0)
                .unwrap(),
        );
    }
    let avg = ((&vars[0] + &vars[1]).unwrap() + &vars[2]).unwrap().affine(1.0 / 3.0, 0.0).unwrap();
    close(&m.store().buffer("bn1.running_var").unwrap(), &avg);
    // The momentum mode is restored afterwards.
    assert_eq!(m.store().bn_update(), lt_models::BnUpdate::Momentum(0.1));
}

/// A data set whose every sample takes `delay` to load: a loader slower than the training step.
struct Slow {
    inner: std::sync::Arc<dyn lt_data::Dataset>,
    delay: std::time::Duration,
}

impl lt_data::Dataset for Slow {
    fn len(&self) -> usize {
        self.inner.len()
    }
    fn labels(&self) -> &[u32] {
        self.inner.labels()
    }
    fn num_classes(&self) -> usize {
        self.inner.num_classes()
    }
    fn sample_shape(&self) -> [usize; 3] {
        self.inner.sample_shape()
    }
    fn load_bytes_into(
        &self,
        i: usize,
        train: bool,
        rng: &mut lt_core::Rng,
        out: &mut [u8],
    ) -> lt_data::Result<()> {
        std::thread::sleep(self.delay);
        self.inner.load_bytes_into(i, train, rng, out)
    }
    fn normalize(&self) -> &lt_data::transform::Normalize {
        self.inner.normalize()
    }
}

/// The epochs' `(data_wait, loader_ahead, device_wait)` of a run directory's log.
fn data_waits(dir: &std::path::Path) -> Vec<(f64, f64, f64)> {
    let log = std::fs::read_to_string(RunDir::new(dir).log()).unwrap();
    let epoch = |l: &str| serde_json::from_str::<lt_train::trainer::EpochLog>(l).unwrap();
    log.lines().map(epoch).map(|e| (e.data_wait, e.loader_ahead, e.device_wait)).collect()
}

#[test]
fn the_epoch_log_says_how_long_the_steps_waited_for_the_loader() {
    let data = tiny_data();
    let cfg = TrainConfig { swa: None, epochs: 2, workers: 1, ..tiny_config() };
    // Loading as fast as memory: the steps hardly wait.
    let fast = tempfile::tempdir().unwrap();
    train(&cfg, &data, fast.path(), &RunOptions::default()).unwrap();
    let waits = data_waits(fast.path());
    assert_eq!(waits.len(), 2);
    assert!(waits.iter().all(|&(w, _, _)| (0.0..0.5).contains(&w)), "{waits:?}");
    // The worker made its batches faster than the steps took them: mostly waiting for room.
    assert!(waits.iter().all(|&(_, ahead, _)| ahead > 0.5 && ahead <= 1.0), "{waits:?}");
    // 20 ms a sample, 320 ms a batch of 16, on one worker: the loader sets the pace.
    let delay = std::time::Duration::from_millis(20);
    let slow =
        lt_data::DataBundle { train: std::sync::Arc::new(Slow { inner: data.train.clone(), delay }), ..data };
    let dir = tempfile::tempdir().unwrap();
    train(&cfg, &slow, dir.path(), &RunOptions::default()).unwrap();
    let waits = data_waits(dir.path());
    assert!(waits.iter().all(|&(w, _, _)| w > 0.5 && w <= 1.0), "{waits:?}");
    // Each batch was taken the moment it was made; and on the CPU a step runs as it is queued,
    // so reading its values back waits for nothing.
    assert!(waits.iter().all(|&(w, ahead, device)| ahead < 0.1 && device < w / 4.0), "{waits:?}");
}
