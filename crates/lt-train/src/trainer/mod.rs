//! The stage-1 training loop: SGD, and for SWA runs a shared prefix followed by an SGD branch
//! and a SWA branch that collects SWAG statistics; checkpoints every epoch; resumable.
//!
//! A run with SWA trains `0..swa_start` with the prefix schedule and saves the state there
//! (`branch.safetensors`). The SGD branch continues from it with a cosine from `swa_lr` to 0 and
//! gives the SGD backbone; the SWA branch continues from the same state at the constant `swa_lr`,
//! collecting a model at the end of every epoch (or every `collect_every_steps` steps), and its
//! average, after batch-norm recalibration, is the SWA backbone. Both branches see the same
//! data order. Without SWA the run is plain SGD with a cosine to 0.

mod directory;
mod step;

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use candle_core::Device;
use lt_core::progress::Progress as Bar;
use lt_core::readback::{ReadBack, READ_EVERY};
use lt_core::Fingerprint;
use lt_data::loader::{EpochBatches, LoaderConfig};
use lt_data::{DataBundle, DataSpec, Sampler, SamplerKind};
use lt_metrics::Evaluation;
use lt_models::{Arch, Model};
use lt_swag::{ParamLayout, Swag};
use serde::{Deserialize, Serialize};

use crate::checkpoint::{self, Progress};
use crate::config::TrainConfig;
use crate::error::{io_err, Result, TrainError};
use crate::init::{InitWeights, ParamGroups};
use crate::run::RunDir;
use crate::schedule::{learning_rate, Phase};
use directory::check_directory;
use lt_core::optim::Sgd;
use step::{train_batch, EpochSums};

/// How to run.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Continue from the run directory's checkpoint.
    pub resume: bool,
    /// Device.
    pub device: Device,
    /// The description of the data, recorded in the run directory (for `lt extract`).
    pub data_spec: Option<DataSpec>,
    /// Run the training steps through candle's autograd instead of the taped executor, CUDA's
    /// default (`Model::set_taped`: the backward pass walked by hand; the same gradients). How a
    /// run computes, not what: not part of the configuration.
    pub autograd: bool,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self { resume: false, device: Device::Cpu, data_spec: None, autograd: false }
    }
}

/// One line of the per-epoch log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochLog {
    /// Phase name.
    pub phase: Phase,
    /// Epoch (0-based).
    pub epoch: usize,
    /// Global step at the end of the epoch.
    pub step: usize,
    /// Mean training loss.
    pub loss: f64,
    /// Training accuracy (augmented batches).
    pub accuracy: f64,
    /// Learning rate of the epoch's last step.
    pub lr: f64,
    /// Training throughput.
    pub images_per_sec: f64,
    /// Wall time of the epoch.
    pub seconds: f64,
    /// SWAG models collected so far (SWA phase).
    pub swag_models: usize,
    /// Resident memory at the end of the epoch, MiB (flat over epochs: nothing leaks).
    #[serde(default)]
    pub rss_mib: Option<f64>,
    /// Fraction of the epoch's wall time the training loop waited for the loader's next batch
    /// (large, with a small `loader_ahead`: the loader sets the pace, and more `workers` would
    /// help).
    #[serde(default)]
    pub data_wait: f64,
    /// Fraction of the loader workers' running time they waited for the loop to take their
    /// batches, their queues full: near 1 when the loader ran ahead of training, near 0 when
    /// the loop took every batch the moment it was made. On a GPU the loop queues up to
    /// [`READ_EVERY`] steps ahead, so it can wait for the loader while the GPU still runs the
    /// steps queued before: a large `data_wait` alone does not say that the loader sets the pace.
    #[serde(default)]
    pub loader_ahead: f64,
    /// Fraction of the epoch's wall time the training loop waited for the steps' values to be
    /// read back from the device (about 0 on the CPU, whose steps run as they are queued).
    #[serde(default)]
    pub device_wait: f64,
}

/// Test metrics of the stage-1 backbones.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainSummary {
    /// The SGD backbone.
    pub sgd: Evaluation,
    /// The SWA backbone (SWA runs).
    pub swa: Option<Evaluation>,
    /// Wall time of the whole run in this process (seconds).
    pub seconds: f64,
}

/// The fingerprint of a stage-1 run: configuration, data split and, for a pretrained start, the
/// initial weights' identity (see [`InitWeights::identity`]). Every loader worker count (which
/// does not change the batches) fingerprints as the default, which runs before this rule had.
pub fn run_fingerprint(cfg: &TrainConfig, data: &DataBundle, init: Option<&InitWeights>) -> String {
    let f = Fingerprint::new().json("train_config", &fingerprinted(cfg)).part("split", &data.fingerprint());
    match init {
        Some(w) => f.part("init", &w.identity()).finish(),
        None => f.finish(),
    }
}

/// `cfg` as [`run_fingerprint`] sees it: the loader's worker count, which does not change the
/// batches, at its default.
fn fingerprinted(cfg: &TrainConfig) -> TrainConfig {
    TrainConfig { workers: crate::config::DEFAULT_WORKERS, ..cfg.clone() }
}

fn phases(cfg: &TrainConfig) -> Vec<Phase> {
    if cfg.swa.is_some() {
        vec![Phase::Prefix, Phase::SgdBranch, Phase::Swa]
    } else {
        vec![Phase::Sgd]
    }
}

fn epoch_range(cfg: &TrainConfig, phase: Phase) -> (usize, usize) {
    let s = cfg.swa.as_ref().map(|s| s.start).unwrap_or(0);
    match phase {
        Phase::Sgd => (0, cfg.epochs),
        Phase::Prefix => (0, s),
        Phase::SgdBranch | Phase::Swa => (s, cfg.epochs),
    }
}

struct Ctx<'a> {
    cfg: &'a TrainConfig,
    data: &'a DataBundle,
    dir: RunDir,
    fingerprint: String,
    device: Device,
    sampler: Sampler,
    steps_per_epoch: usize,
    last_checkpoint: Option<PathBuf>,
}

/// Trains the stage-1 backbones of `cfg` on `data` into `dir` (see the module docs).
///
/// Everything is checked before anything is written: a directory holding another run, or a
/// `--resume` of another configuration or of nothing, is refused and left as it was.
pub fn train(
    cfg: &TrainConfig,
    data: &DataBundle,
    dir: impl Into<PathBuf>,
    opts: &RunOptions,
) -> Result<TrainSummary> {
    cfg.validate()?;
    warn_empty_classes(data);
    let started = Instant::now();
    let dir = RunDir::new(dir);
    let init = cfg.init.as_deref().map(InitWeights::resolve).transpose()?;
    if let (Some(w), lt_data::DatasetName::ImagenetLt) = (&init, data.name) {
        tracing::warn!(
            "ImageNet-LT from {}: if these weights were trained on ImageNet-1k, they have seen every class's \
             whole training set (the long tail is gone), and ImageNet-LT's test images are ImageNet's validation \
             images; the paper's protocol trains from scratch (docs/datasets.md)",
            w.identity()
        );
    }
    let fingerprint = run_fingerprint(cfg, data, init.as_ref());
    // Checked before anything is created, then again under the lock (another command may have
    // written meanwhile); the lock is held until training ends. Pretrained weights are loaded
    // before the lock: weights that do not fit leave no trace.
    check_directory(&dir, &fingerprint, opts.resume, (cfg, data))?;
    let [channels, _, _] = data.train.sample_shape();
    let mut model = Model::new(Arch::new(&cfg.arch, data.num_classes(), channels)?, cfg.seed, &opts.device)?;
    model.set_precision(cfg.precision);
    if opts.autograd {
        model.set_taped(false);
    }
    if let (Some(w), false) = (&init, opts.resume) {
        w.apply(&model)?;
    }
    let _lock = lt_core::lock::RunLock::acquire_and_clean(dir.root())?;
    check_directory(&dir, &fingerprint, opts.resume, (cfg, data))?;
    record_run(&dir, cfg, data, opts.data_spec.as_ref())?;
    let mut opt = Sgd::new(cfg.momentum, cfg.nesterov, cfg.weight_decay);
    let sampler = Sampler::new(SamplerKind::Instance, data.train.labels(), data.num_classes(), cfg.seed)
        .map_err(|e| TrainError::Config(e.to_string()))?;
    let mut ctx = Ctx {
        cfg,
        data,
        dir,
        fingerprint,
        device: opts.device.clone(),
        sampler,
        steps_per_epoch: data.train.len().div_ceil(cfg.batch_size),
        last_checkpoint: None,
    };
    let (mut progress, mut swag) = if opts.resume {
        let (p, s) = checkpoint::load(&ctx.dir.checkpoint(), &model, &mut opt, &ctx.fingerprint)?;
        match p.phase {
            Some(phase) => tracing::info!(
                "resuming {} in phase {}, at epoch {}",
                ctx.dir.root().display(),
                phase.name(),
                p.next_epoch + 1
            ),
            None => tracing::info!("{}: every phase has finished", ctx.dir.root().display()),
        }
        ctx.last_checkpoint = Some(ctx.dir.checkpoint());
        (p, s)
    } else {
        (Progress { phase_index: 0, phase: Some(phases(cfg)[0]), next_epoch: 0, step: 0 }, None)
    };
    trim_log(&ctx, &progress)?;
    run_phases(&mut ctx, &model, &mut opt, &mut progress, &mut swag)?;
    summarize(&ctx, started)
}

/// Warns about classes without a training image ([`DataBundle::empty_classes_warning`]).
fn warn_empty_classes(data: &DataBundle) {
    if let Some(w) = data.empty_classes_warning() {
        tracing::warn!("{w}");
    }
}

/// Records the run's split, configuration and data description (after the checks).
fn record_run(dir: &RunDir, cfg: &TrainConfig, data: &DataBundle, spec: Option<&DataSpec>) -> Result<()> {
    std::fs::create_dir_all(dir.root()).map_err(io_err(dir.root()))?;
    data.split_info().write(&dir.split(), &data.fingerprint())?;
    let config = serde_json::to_string_pretty(cfg).map_err(|e| TrainError::Config(e.to_string()))?;
    lt_core::atomic::write_bytes_atomic(&dir.config(), config.as_bytes()).map_err(io_err(dir.config()))?;
    if let Some(spec) = spec {
        dir.write_data_spec(spec)?;
    }
    Ok(())
}

/// Runs every remaining phase, checkpointing after each epoch; both branches of a SWA run start
/// from the state at `swa_start`.
fn run_phases(
    ctx: &mut Ctx,
    model: &Model,
    opt: &mut Sgd,
    progress: &mut Progress,
    swag: &mut Option<Swag>,
) -> Result<()> {
    let (cfg, phase_list) = (ctx.cfg, phases(ctx.cfg));
    while let Some(phase) = progress.phase {
        let (_, end) = epoch_range(cfg, phase);
        if phase == Phase::Swa && swag.is_none() {
            let rank = cfg.swa.as_ref().map(|s| s.rank).unwrap_or(0);
            *swag = Some(Swag::new(ParamLayout::of(model.store().varmap())?, rank));
        }
        for epoch in progress.next_epoch..end {
            let log = run_epoch(ctx, model, opt, phase, epoch, &mut progress.step, swag.as_mut())?;
            append_log(ctx, &log)?;
            progress.next_epoch = epoch + 1;
            checkpoint::save(&ctx.dir.checkpoint(), model, opt, swag.as_ref(), progress, &ctx.fingerprint)?;
            ctx.last_checkpoint = Some(ctx.dir.checkpoint());
        }
        finish_phase(ctx, model, opt, phase, swag.as_ref())?;
        progress.phase_index += 1;
        progress.phase = phase_list.get(progress.phase_index).copied();
        if let Some(next) = progress.phase {
            progress.next_epoch = epoch_range(cfg, next).0;
            if matches!(next, Phase::SgdBranch | Phase::Swa) {
                let (p, _) = checkpoint::load(&ctx.dir.branch(), model, opt, &ctx.fingerprint)?;
                progress.step = p.step;
                *swag = None;
            }
        }
        checkpoint::save(&ctx.dir.checkpoint(), model, opt, swag.as_ref(), progress, &ctx.fingerprint)?;
    }
    Ok(())
}

/// Test metrics of the backbones, written to `train_summary.json`.
fn summarize(ctx: &Ctx, started: Instant) -> Result<TrainSummary> {
    let (cfg, data) = (ctx.cfg, ctx.data);
    let groups = data.split_info().groups();
    let eval = |path: &std::path::Path| -> Result<Evaluation> {
        let m = Model::from_artifact(path, &ctx.device)?;
        crate::evaluate::evaluate(&m, &data.test, &groups, cfg.batch_size.max(256), cfg.workers, &ctx.device)
    };
    let sgd = eval(&ctx.dir.sgd())?;
    let swa = if cfg.swa.is_some() { Some(eval(&ctx.dir.swa())?) } else { None };
    let summary = TrainSummary { sgd, swa, seconds: started.elapsed().as_secs_f64() };
    let text = serde_json::to_string_pretty(&summary).map_err(|e| TrainError::Config(e.to_string()))?;
    lt_core::atomic::write_bytes_atomic(&ctx.dir.summary(), text.as_bytes())
        .map_err(io_err(ctx.dir.summary()))?;
    Ok(summary)
}

fn run_epoch(
    ctx: &Ctx,
    model: &Model,
    opt: &mut Sgd,
    phase: Phase,
    epoch: usize,
    step: &mut usize,
    mut swag: Option<&mut Swag>,
) -> Result<EpochLog> {
    let cfg = ctx.cfg;
    let started = Instant::now();
    let order = ctx.sampler.epoch(epoch, ctx.sampler.len());
    let loader_cfg = LoaderConfig {
        batch_size: cfg.batch_size,
        workers: cfg.workers,
        train: true,
        seed: cfg.seed,
        ..LoaderConfig::default()
    };
    let stream = lt_data::loader::Stream::Epoch(epoch as u64).key();
    let mut batches =
        EpochBatches::new(ctx.data.train.clone(), order, stream, loader_cfg, ctx.device.clone());
    let groups = ParamGroups::new(model, cfg.backbone_lr_scale);
    let mut bar =
        Bar::new(format!("{} epoch {}/{}", phase.name(), epoch + 1, cfg.epochs), batches.len() as u64);
    let mut sums = EpochSums::default();
    let mut lr = 0.0;
    let collect_every = cfg.swa.as_ref().and_then(|s| s.collect_every_steps);
    let mut unread = ReadBack::new(READ_EVERY);
    loop {
        let asked = Instant::now();
        let Some(batch) = batches.next() else { break };
        sums.waited += asked.elapsed().as_secs_f64();
        let batch = batch?;
        lr = learning_rate(cfg, phase, *step, ctx.steps_per_epoch);
        let done = train_batch(ctx, model, (opt, &groups), &batch, (lr, *step, epoch))?;
        // Read several steps at a time: on a GPU one wait for the device per READ_EVERY steps.
        sums.take(&mut unread, Some(done), ctx)?;
        *step += 1;
        if let (Some(k), Some(s)) = (collect_every, swag.as_deref_mut()) {
            if (*step).is_multiple_of(k) {
                s.collect(&s.layout().flatten(model.store().varmap())?)?;
            }
        }
        bar.inc(1);
        // The running loss once the first steps are read.
        match sums.seen {
            0 => bar.set_message(&format!("lr {lr:.4}")),
            seen => bar.set_message(&format!("loss {:.4} lr {lr:.4}", sums.loss / seen as f64)),
        }
    }
    sums.take(&mut unread, None, ctx)?;
    let loader_ahead = batches.finish();
    if let (None, Some(s)) = (collect_every, swag.as_deref_mut()) {
        s.collect(&s.layout().flatten(model.store().varmap())?)?;
    }
    let seconds = started.elapsed().as_secs_f64();
    let log = EpochLog {
        phase,
        epoch,
        step: *step,
        loss: sums.loss / sums.seen.max(1) as f64,
        accuracy: sums.correct as f64 / sums.seen.max(1) as f64,
        lr,
        images_per_sec: sums.seen as f64 / seconds,
        seconds,
        swag_models: swag.map(|s| s.n_models()).unwrap_or(0),
        rss_mib: lt_core::memory::rss_mib(),
        data_wait: (sums.waited / seconds).min(1.0),
        loader_ahead,
        device_wait: (sums.device_waited / seconds).min(1.0),
    };
    crate::eta::log_epoch(cfg, &log);
    Ok(log)
}

fn finish_phase(ctx: &Ctx, model: &Model, opt: &mut Sgd, phase: Phase, swag: Option<&Swag>) -> Result<()> {
    let fp = ctx.fingerprint.as_str();
    let meta = |kind: &str| {
        let mut m = vec![
            ("kind", kind.to_string()),
            (lt_core::artifact::KEY_FINGERPRINT, fp.to_string()),
            (lt_core::artifact::KEY_DATASET, ctx.data.name.to_string()),
        ];
        if ctx.cfg.freeze_bn {
            m.push((crate::extract::KEY_BN, crate::extract::BN_FROZEN.to_string()));
        }
        m
    };
    match phase {
        Phase::Prefix => {
            let (start, _) = epoch_range(ctx.cfg, Phase::SgdBranch);
            let p = Progress {
                phase_index: 1,
                phase: Some(Phase::SgdBranch),
                next_epoch: start,
                step: start * ctx.steps_per_epoch,
            };
            checkpoint::save(&ctx.dir.branch(), model, opt, None, &p, fp)?;
        }
        Phase::Sgd | Phase::SgdBranch => model.save(&ctx.dir.sgd(), &meta("sgd"))?,
        Phase::Swa => {
            let swag =
                swag.ok_or_else(|| TrainError::Mismatch("the SWA phase collected no statistics".into()))?;
            if swag.n_models() == 0 {
                return Err(TrainError::Mismatch("the SWA phase collected no model".into()));
            }
            swag.layout().write_into(model.store().varmap(), swag.mean())?;
            recalibrate_swa(ctx, model, swag.n_models())?;
            let mut m = meta("swa");
            m.push(("swag_models", swag.n_models().to_string()));
            model.save(&ctx.dir.swa(), &m)?;
            let mut sm = meta("swag");
            sm.push(("arch", model.arch().family.name()));
            sm.push(("num_classes", model.arch().num_classes.to_string()));
            sm.push(("in_channels", model.arch().in_channels.to_string()));
            swag.save(&ctx.dir.swag(), &sm)?;
        }
    }
    Ok(())
}

/// Batch-norm recalibration of the SWA average, unless batch norm is frozen (its running
/// statistics, the pretrained ones, are then the ones every collected model trained with).
fn recalibrate_swa(ctx: &Ctx, model: &Model, models: usize) -> Result<()> {
    if ctx.cfg.freeze_bn {
        tracing::info!("SWA of {models} models; batch norm frozen: running statistics kept");
        return Ok(());
    }
    let seen = crate::bn::recalibrate(
        model,
        &ctx.data.train,
        ctx.cfg.batch_size,
        ctx.cfg.workers,
        ctx.cfg.seed,
        lt_data::loader::Stream::SwaRecalibration { epochs: ctx.cfg.epochs as u64 },
        &ctx.device,
    )?;
    tracing::info!("SWA of {models} models; batch norm recalibrated on {seen} images");
    Ok(())
}

fn append_log(ctx: &Ctx, log: &EpochLog) -> Result<()> {
    let path = ctx.dir.log();
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&path).map_err(io_err(&path))?;
    writeln!(f, "{}", serde_json::to_string(log).expect("json")).map_err(io_err(&path))
}

/// Drops log lines of epochs that will run again after a resume.
fn trim_log(ctx: &Ctx, progress: &Progress) -> Result<()> {
    let path = ctx.dir.log();
    let Ok(text) = std::fs::read_to_string(&path) else { return Ok(()) };
    let order = |p: Phase| phases(ctx.cfg).iter().position(|&q| q == p).unwrap_or(usize::MAX);
    let keep: Vec<&str> = text
        .lines()
        .filter(|l| match serde_json::from_str::<EpochLog>(l) {
            Ok(e) => match progress.phase {
                None => true,
                Some(p) => order(e.phase) < order(p) || (e.phase == p && e.epoch < progress.next_epoch),
            },
            Err(_) => false,
        })
        .collect();
    let mut out = keep.join("\n");
    if !out.is_empty() {
        out.push('\n');
    }
    lt_core::atomic::write_bytes_atomic(&path, out.as_bytes()).map_err(io_err(&path))
}
