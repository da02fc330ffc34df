//! The pre-flight of `cargo xtask reproduce --dry-run`: for each stage, the time it should take
//! on this machine and the disk it will use.
//!
//! Time comes from short measured steps of the `lt` binary: `lt bench backbone` (a few training
//! and inference steps of the preset's architecture at its batch and image size) gives images per
//! second, scaled by the images each stage passes over (stage 1: every epoch of every phase, the
//! test evaluations and the SWA recalibration; extraction: every split for each of the `2 + M`
//! backbones, plus a recalibration pass per SWAG sample); stage 2 scales one measured epoch of
//! `lt bench retrain` by the problem's size. The loader runs beside the compute on its own threads,
//! so a pass goes at the slower of the two: `lt bench loader` times the data set's own files with
//! the preset's workers (decoding JPEGs sets the pace of an ImageNet-size pass on a GPU). Disk
//! comes from the architecture's parameter count (`lt backbone info`) and the features'
//! `S x N x D`.

use std::path::Path;

use anyhow::{Context, Result};

/// What the estimate is built from.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Inputs {
    /// Training, validation and test images.
    pub images: [usize; 3],
    /// Classes.
    pub classes: usize,
    /// Image side.
    pub size: usize,
    /// Trainable parameters.
    pub params: usize,
    /// Dimension of the representation.
    pub dim: usize,
    /// Images per second of a training step.
    pub train_ips: f64,
    /// Images per second of inference.
    pub eval_ips: f64,
    /// Images per second the loader makes with the training transform (stage 1's workers).
    pub loader_train_ips: f64,
    /// Images per second the loader makes with the evaluation transform (extraction's workers).
    pub loader_eval_ips: f64,
    /// Seconds per epoch of a stage-2 fit, scaled to this problem.
    pub retrain_epoch_s: f64,
}

/// The recipe numbers of the preset that the estimate needs.
#[derive(Clone, Debug, PartialEq)]
pub struct Recipe {
    /// Stage-1 epochs.
    pub epochs: usize,
    /// First SWA epoch and the SWAG deviation columns the run keeps: the rank `K`, or fewer where
    /// the SWA phase collects fewer snapshots (`None`: no SWA).
    pub swa: Option<(usize, usize)>,
    /// SWAG samples M.
    pub samples: usize,
    /// Whether features are stored as f16.
    pub half: bool,
    /// Stage-2 epochs, and the least steps and the batch size that may add more
    /// (`lt_retrain::RetrainConfig::epochs_run`).
    pub retrain_epochs: usize,
    /// Stage-2 `min_steps`.
    pub retrain_min_steps: usize,
    /// Stage-2 batch size.
    pub retrain_batch: usize,
    /// Batch norm frozen (no recalibration passes).
    pub freeze_bn: bool,
}

/// Images per second of each kind of pass: the compute's rate, or the loader's where it is slower.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rates {
    /// Training steps (training transform).
    pub train: f64,
    /// Inference passes over a split (evaluation transform).
    pub eval: f64,
    /// Batch-norm recalibration: inference on training batches (training transform).
    pub recalibration: f64,
}

impl Inputs {
    /// The rate of each kind of pass, and whether the loader sets it (see the module docs).
    pub fn rates(&self) -> Rates {
        Rates {
            train: self.train_ips.min(self.loader_train_ips),
            eval: self.eval_ips.min(self.loader_eval_ips),
            recalibration: self.eval_ips.min(self.loader_train_ips),
        }
    }
}

/// Seconds and bytes of one stage.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Cost {
    /// Estimated wall time.
    pub seconds: f64,
    /// Disk the stage's outputs take.
    pub bytes: f64,
}

/// Stage 1: SGD (and SWA/SWAG) training, evaluation and recalibration; disk: the SGD and SWA
/// backbones, the branch state and the rolling checkpoint (weights and momentum), and SWAG's mean,
/// second moment and `K` deviations.
pub fn stage1(i: &Inputs, r: &Recipe) -> Cost {
    let [train, _, test] = i.images;
    let rates = i.rates();
    let (epochs, recal, swag_rows) = match r.swa {
        Some((start, rank)) => (start + 2 * r.epochs.saturating_sub(start), !r.freeze_bn, 2 + rank),
        None => (r.epochs, false, 0),
    };
    let backbones = if r.swa.is_some() { 2 } else { 1 };
    let mut seconds = (epochs * train) as f64 / rates.train + (backbones * test) as f64 / rates.eval;
    if recal {
        seconds += train as f64 / rates.recalibration;
    }
    let p = 4.0 * i.params as f64;
    let files = backbones as f64 + 2.0 * 2.0 + 2.0 * swag_rows as f64;
    Cost { seconds, bytes: p * files }
}

/// Extraction: `2 + M` backbones over every split, a recalibration pass per SWAG sample; disk:
/// the `S x N x D` features.
pub fn extract(i: &Inputs, r: &Recipe) -> Cost {
    let n: usize = i.images.iter().sum();
    let s = 2 + r.samples;
    let rates = i.rates();
    let mut seconds = (s * n) as f64 / rates.eval;
    if !r.freeze_bn {
        seconds += (r.samples * i.images[0]) as f64 / rates.recalibration;
    }
    let width = if r.half { 2.0 } else { 4.0 };
    Cost { seconds, bytes: (s * n * i.dim) as f64 * width }
}

/// One stage-2 row: its epochs (a validation search multiplies them); disk: the head and the
/// test predictions.
pub fn retrain_row(i: &Inputs, r: &Recipe) -> Cost {
    let bytes = 4.0 * (i.classes * (i.dim + 1) + i.images[2] * i.classes) as f64;
    // An epoch is floor(N / batch) steps; min_steps adds epochs (lt-retrain's epochs_run).
    let n = i.images[0];
    let steps = (n / r.retrain_batch.min(n).max(1)).max(1);
    let epochs = r.retrain_epochs.max(r.retrain_min_steps.div_ceil(steps));
    Cost { seconds: epochs as f64 * i.retrain_epoch_s, bytes }
}

/// `1.2 GB`, `340 MB`, `12 kB`.
pub fn format_bytes(b: f64) -> String {
    match b {
        b if b >= 1e9 => format!("{:.1} GB", b / 1e9),
        b if b >= 1e6 => format!("{:.0} MB", b / 1e6),
        b => format!("{:.0} kB", (b / 1e3).ceil()),
    }
}

/// `45 s`, `12 min`, `3.1 h`.
pub fn format_seconds(s: f64) -> String {
    match s {
        s if s >= 5400.0 => format!("{:.1} h", s / 3600.0),
        s if s >= 90.0 => format!("{:.0} min", s / 60.0),
        s => format!("{:.0} s", s.max(1.0)),
    }
}

/// The value after `key` on the line that starts with `prefix`, as a number.
fn field(text: &str, prefix: &str, key: &str) -> Option<f64> {
    let line = text.lines().find(|l| l.trim_start().starts_with(prefix))?;
    let rest = &line[line.find(key)? + key.len()..];
    let num: String = rest.trim_start().chars().take_while(|c| c.is_ascii_digit() || *c == '.').collect();
    num.parse().ok()
}

/// The number `key` of what `lt ARGS` printed as JSON.
fn json_number<S: AsRef<std::ffi::OsStr>>(lt: &Path, args: &[S], key: &str) -> Result<f64> {
    crate::lt_json(lt, args, false)?[key].as_f64().with_context(|| format!("lt bench printed no `{key}`"))
}

/// Measures [`Inputs`] with the `lt` binary: the data set's sizes (`lt data describe`), the
/// architecture (`lt backbone info`), short timed steps (`lt bench`; training steps in stage
/// 1's precision, inference in f32 as extraction and evaluation run) and the loader on the data
/// set's files with stage 1's and extraction's loader threads, all as `setup` says.
pub fn measure(lt: &Path, preset_path: &Path, setup: &Setup, device: &str) -> Result<Inputs> {
    let Setup { arch, precision, batch, workers } = setup;
    let (arch, batch) = (arch.as_str(), *batch);
    let p = preset_path.display().to_string();
    let d = crate::lt_output(lt, &["data", "describe", "--preset-file", &p], false)?;
    let images = [
        field(&d, "images", "train").unwrap_or(0.0) as usize,
        field(&d, "images", "val").unwrap_or(0.0) as usize,
        field(&d, "images", "test").unwrap_or(0.0) as usize,
    ];
    let classes =
        field(&d, "classes", "classes").context("lt data describe printed no class count")? as usize;
    let size = field(&d, "sample", "x").context("lt data describe printed no sample shape")? as usize;
    let classes_text = classes.to_string();
    let b = crate::lt_output(lt, &["backbone", "info", "--arch", arch, "--classes", &classes_text], false)?;
    let params =
        field(&b, "parameters:", "parameters:").context("lt backbone info printed no count")? as usize;
    let dim = field(&b, "", "feature dimension").context("lt backbone info printed no dimension")? as usize;
    let bench = |mode: &str| {
        let p = if mode == "train" { precision.as_str() } else { "f32" };
        backbone_rate(lt, (arch, batch, size, classes), (mode, p), device)
    };
    let (train_ips, eval_ips) = (bench("train")?, bench("eval")?);
    let loader = |eval: bool, workers: usize| loader_rate(lt, preset_path, (batch, workers, eval), device);
    let (loader_train_ips, loader_eval_ips) = (loader(false, workers[0])?, loader(true, workers[1])?);
    let tmp = std::env::temp_dir().join("lt-estimate");
    let tmp = tmp.display().to_string();
    // The benchmark's problem: 12,406 x 64 features, 100 classes, M = 8.
    let scale = (images[0] * dim * classes) as f64 / (12_406.0 * 64.0 * 100.0);
    let retrain_args = ["bench", "retrain", "--dir", &tmp, "--device", device];
    let retrain_epoch_s = json_number(lt, &retrain_args, "seconds_per_epoch")? * scale;
    Ok(Inputs {
        images,
        classes,
        size,
        params,
        dim,
        train_ips,
        eval_ips,
        loader_train_ips,
        loader_eval_ips,
        retrain_epoch_s,
    })
}

/// Images per second of `lt bench backbone` (`mode` in `precision`, a batch of at most 32).
fn backbone_rate(
    lt: &Path,
    (arch, batch, size, classes): (&str, usize, usize, usize),
    (mode, precision): (&str, &str),
    device: &str,
) -> Result<f64> {
    let (batch, size, classes) = (batch.min(32).to_string(), size.to_string(), classes.to_string());
    let args = [
        "bench",
        "backbone",
        "--arch",
        arch,
        "--mode",
        mode,
        "--batch",
        &batch,
        "--size",
        &size,
        "--classes",
        &classes,
        "--steps",
        "2",
        "--warmup",
        "1",
        "--device",
        device,
        "--precision",
        precision,
    ];
    json_number(lt, &args, "images_per_sec")
}

/// Batches the loader's estimate times after its first. The loader's queue already holds a few
/// batches when the clock starts (4 per loader), which 4 timed batches measured alone: their
/// rate swung tenfold between runs.
const LOADER_BATCHES: &str = "24";

/// Images per second of the loader on the preset's data set (`lt bench loader`,
/// [`LOADER_BATCHES`] batches of at most 128): training transform, or evaluation transform when
/// `eval`; `workers` threads.
fn loader_rate(
    lt: &Path,
    preset_path: &Path,
    (batch, workers, eval): (usize, usize, bool),
    device: &str,
) -> Result<f64> {
    let mut args: Vec<String> =
        vec!["bench".into(), "loader".into(), "--batch".into(), batch.min(128).to_string()];
    args.extend([
        "--batches".into(),
        LOADER_BATCHES.into(),
        "--preset-file".into(),
        preset_path.display().to_string(),
    ]);
    args.extend(["--device".into(), device.into(), "--workers".into(), workers.to_string()]);
    if eval {
        args.push("--eval".into());
    }
    json_number(lt, &args, "images_per_sec")
}

/// A setting of a preset as `lt preset` resolved it (every setting present, JSON pointer
/// `path`), read as a `T`, or an error naming it.
pub fn setting<T: serde::de::DeserializeOwned>(resolved: &serde_json::Value, path: &str) -> Result<T> {
    let v = resolved.pointer(path).with_context(|| format!("`lt preset` gave no {path}"))?;
    serde_json::from_value(v.clone()).with_context(|| format!("`lt preset` gave {path} = {v}"))
}

/// What the estimates measure with.
#[derive(Clone, Debug, PartialEq)]
pub struct Setup {
    /// Backbone architecture.
    pub arch: String,
    /// Arithmetic of the training step (`f32`, `bf16`).
    pub precision: String,
    /// Training batch size.
    pub batch: usize,
    /// Loader threads of training and of extraction (at least 1: the loader runs one for 0).
    pub workers: [usize; 2],
}

/// The [`Setup`] of a preset as `lt preset` resolved it.
pub fn setup(resolved: &serde_json::Value) -> Result<Setup> {
    let workers = |path: &str| -> Result<usize> { Ok(setting::<usize>(resolved, path)?.max(1)) };
    Ok(Setup {
        arch: setting(resolved, "/train/arch")?,
        precision: setting(resolved, "/train/precision")?,
        batch: setting(resolved, "/train/batch_size")?,
        workers: [workers("/train/workers")?, workers("/extract/workers")?],
    })
}

/// The [`Recipe`] of a preset as `lt preset` resolved it (the defaults are the binary's own).
pub fn recipe(resolved: &serde_json::Value) -> Result<Recipe> {
    let epochs: usize = setting(resolved, "/train/epochs")?;
    let swa = if setting::<serde_json::Value>(resolved, "/train/swa")?.is_null() {
        None
    } else {
        let (start, rank): (usize, usize) =
            (setting(resolved, "/train/swa/start")?, setting(resolved, "/train/swa/rank")?);
        // One snapshot per SWA epoch unless collected every N steps (then up to K).
        let per_epoch = setting::<serde_json::Value>(resolved, "/train/swa/collect_every_steps")?.is_null();
        let columns = if per_epoch { rank.min(epochs.saturating_sub(start)) } else { rank };
        Some((start, columns))
    };
    Ok(Recipe {
        epochs,
        swa,
        samples: setting(resolved, "/extract/samples")?,
        half: setting(resolved, "/extract/half")?,
        retrain_epochs: setting(resolved, "/retrain/epochs")?,
        retrain_min_steps: setting(resolved, "/retrain/min_steps")?,
        retrain_batch: setting(resolved, "/retrain/batch_size")?,
        freeze_bn: setting(resolved, "/train/freeze_bn")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recipe10() -> Recipe {
        Recipe {
            epochs: 10,
            swa: Some((6, 20)),
            samples: 8,
            half: false,
            retrain_epochs: 4,
            retrain_min_steps: 0,
            retrain_batch: 128,
            freeze_bn: false,
        }
    }

    fn inputs() -> Inputs {
        Inputs {
            images: [10_000, 1_000, 5_000],
            classes: 10,
            size: 32,
            params: 1_000_000,
            dim: 64,
            train_ips: 1_000.0,
            eval_ips: 4_000.0,
            // Far faster than the compute: in-memory images.
            loader_train_ips: 1e6,
            loader_eval_ips: 1e6,
            retrain_epoch_s: 0.5,
        }
    }

    #[test]
    fn stage_costs_follow_the_recipe() {
        let r = recipe10();
        let s1 = stage1(&inputs(), &r);
        // 6 + 2 x 4 epochs of 10,000 images at 1,000/s, 2 x 5,000 test and 10,000 recalibration at 4,000/s.
        assert!((s1.seconds - (140.0 + 2.5 + 2.5)).abs() < 1e-9, "{s1:?}");
        assert_eq!(s1.bytes, 4e6 * (2.0 + 4.0 + 44.0));
        let ex = extract(&inputs(), &r);
        assert!((ex.seconds - (10.0 * 16_000.0 / 4_000.0 + 8.0 * 2.5)).abs() < 1e-9, "{ex:?}");
        assert_eq!(ex.bytes, 10.0 * 16_000.0 * 64.0 * 4.0);
        let frozen = Recipe { freeze_bn: true, half: true, ..r.clone() };
        assert_eq!(extract(&inputs(), &frozen).bytes, ex.bytes / 2.0);
        assert!(extract(&inputs(), &frozen).seconds < ex.seconds);
        assert_eq!(retrain_row(&inputs(), &r).seconds, 2.0);
        // 10,000 rows at batch 128 are 78 steps an epoch: 500 steps need 7 epochs, not 4.
        let long = Recipe { retrain_min_steps: 500, ..r.clone() };
        assert_eq!(retrain_row(&inputs(), &long).seconds, 3.5);
    }

    #[test]
    fn a_loader_slower_than_the_compute_sets_the_pace_of_its_passes() {
        let r = recipe10();
        // Decoding at 500 images/s with the training transform, 2,000 with the evaluation one.
        let slow = Inputs { loader_train_ips: 500.0, loader_eval_ips: 2_000.0, ..inputs() };
        assert_eq!(slow.rates(), Rates { train: 500.0, eval: 2_000.0, recalibration: 500.0 });
        let s1 = stage1(&slow, &r);
        // 14 epochs of 10,000 at 500/s, 2 x 5,000 test at 2,000/s, 10,000 recalibration at 500/s.
        assert!((s1.seconds - (280.0 + 5.0 + 20.0)).abs() < 1e-9, "{s1:?}");
        let ex = extract(&slow, &r);
        // 10 backbones x 16,000 images at 2,000/s, 8 recalibrations of 10,000 at 500/s.
        assert!((ex.seconds - (80.0 + 160.0)).abs() < 1e-9, "{ex:?}");
        // A faster loader changes nothing: the compute sets the pace.
        assert_eq!(inputs().rates(), Rates { train: 1_000.0, eval: 4_000.0, recalibration: 4_000.0 });
    }

    #[test]
    fn the_recipe_is_read_from_the_resolved_preset() {
        let resolved = serde_json::json!({
            "train": {"epochs": 30, "freeze_bn": true, "swa": {"start": 24, "rank": 20, "collect_every_steps": null}},
            "extract": {"samples": 8, "half": true},
            "retrain": {"epochs": 30, "min_steps": 0, "batch_size": 256},
        });
        let r = recipe(&resolved).unwrap();
        let want = Recipe {
            epochs: 30,
            // 6 SWA epochs collect 6 snapshots: SWAG keeps 6 of its 20 columns.
            swa: Some((24, 6)),
            samples: 8,
            half: true,
            retrain_epochs: 30,
            retrain_min_steps: 0,
            retrain_batch: 256,
            freeze_bn: true,
        };
        assert_eq!(r, want);
        let mut every_step = resolved.clone();
        every_step["train"]["swa"]["collect_every_steps"] = 10.into();
        assert_eq!(recipe(&every_step).unwrap().swa, Some((24, 20)));
        let mut plain = resolved.clone();
        plain["train"]["swa"] = serde_json::Value::Null;
        assert_eq!(recipe(&plain).unwrap().swa, None);
        // No defaults here: a setting `lt preset` did not give is an error naming it.
        let mut short = resolved;
        short["extract"].as_object_mut().unwrap().remove("samples");
        assert!(recipe(&short).unwrap_err().to_string().contains("/extract/samples"));
    }

    #[test]
    fn the_describe_and_info_lines_parse() {
        let d = "classes   4\nimages    train 64 (of 70), val 8, test 80\nsample    3x28x28\n";
        assert_eq!(field(d, "images", "train"), Some(64.0));
        assert_eq!(field(d, "images", "val"), Some(8.0));
        assert_eq!(field(d, "images", "test"), Some(80.0));
        assert_eq!(field(d, "sample", "x"), Some(28.0));
        let b = "resnet50: 1000 classes, 3 input channels, feature dimension 2048\nparameters: 25557032\n";
        assert_eq!(field(b, "parameters:", "parameters:"), Some(25_557_032.0));
        assert_eq!(field(b, "resnet50", "feature dimension"), Some(2048.0));
        assert_eq!(format_bytes(1.5e9), "1.5 GB");
        assert_eq!(format_seconds(7200.0), "2.0 h");
    }
}
