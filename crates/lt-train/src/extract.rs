//! Stochastic representations: the features artifact of a stage-1 run.
//!
//! For every split (train, test, and val when the data set has one) the artifact holds the labels
//! and an `[S, N, D]` block of representations from `S = 2 + M` backbones: index 0 is the SGD
//! backbone, 1 the SWA backbone and `2..` are SWAG samples, each drawn with its own seed and
//! batch-norm recalibrated on the training set before its features are computed. Samples are
//! computed one at a time into part files beside the artifact (so extraction never holds two
//! samples in memory, and an interrupted extraction resumes where it stopped), then streamed
//! into the artifact.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::Device;
use lt_core::formats::features::{write_values, FeaturesMeta, FeaturesWriter, SampleInfo, SampleKind, Split};
use lt_core::rng::streams;
use lt_core::{check, Artifact, Fingerprint, Rng};
use lt_data::{DataBundle, Dataset};
use lt_models::{Model, BACKBONE_FORMAT};
use lt_swag::Swag;
use serde::{Deserialize, Serialize};

use crate::error::{io_err, Result, TrainError};
use crate::run::RunDir;

/// Metadata key of backbone and SWAG artifacts saying how batch norm was trained.
pub const KEY_BN: &str = "bn";
/// [`KEY_BN`]'s value when batch norm was frozen (`TrainConfig::freeze_bn`): SWAG samples keep
/// the SWA backbone's running statistics instead of being recalibrated.
pub const BN_FROZEN: &str = "frozen";

/// Extraction settings (defaults declared once, in [`Default`]; the `clap` feature derives the
/// flags of `lt extract` from them).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
pub struct ExtractConfig {
    /// SWAG samples M.
    #[cfg_attr(feature = "clap", arg(long, default_value_t = ExtractConfig::default().samples))]
    pub samples: usize,
    /// SWAG scale (0.5 in the reference; 0 reproduces SWA).
    #[cfg_attr(feature = "clap", arg(long, default_value_t = ExtractConfig::default().scale))]
    pub scale: f64,
    /// Seed of the SWAG draws and the recalibration passes.
    #[cfg_attr(feature = "clap", arg(long, default_value_t = ExtractConfig::default().seed))]
    pub seed: u64,
    /// Store features as f16.
    #[cfg_attr(feature = "clap", arg(long))]
    pub half: bool,
    /// Batch size of the passes.
    #[cfg_attr(feature = "clap", arg(long, default_value_t = ExtractConfig::default().batch_size))]
    pub batch_size: usize,
    /// Loader threads.
    #[cfg_attr(feature = "clap", arg(long, default_value_t = ExtractConfig::default().workers))]
    pub workers: usize,
}

impl Default for ExtractConfig {
    fn default() -> Self {
        Self {
            samples: 8,
            scale: 0.5,
            seed: 0,
            half: false,
            batch_size: 256,
            workers: crate::config::DEFAULT_WORKERS,
        }
    }
}

impl ExtractConfig {
    /// Checks every setting; the error names the field and what was expected.
    pub fn validate(&self) -> Result<()> {
        let numbers = || -> check::Result {
            check::non_negative("extract.scale", self.scale)?;
            check::non_zero("extract.batch_size", self.batch_size as u64)
        };
        numbers().map_err(|e| TrainError::Config(e.to_string()))
    }
}

/// The fingerprint of an extraction (run, split and settings).
pub fn extract_fingerprint(run_fingerprint: &str, cfg: &ExtractConfig) -> String {
    Fingerprint::new().part("run", run_fingerprint).json("extract", &what_features_depend_on(cfg)).finish()
}

/// The settings the features depend on: the loader's (workers, batch size) are zeroed.
fn what_features_depend_on(cfg: &ExtractConfig) -> ExtractConfig {
    ExtractConfig { workers: 0, batch_size: 0, ..cfg.clone() }
}

/// Refuses to replace the features `dir` holds with those of another extraction (other settings,
/// or another run's backbones; `fingerprint` is this one's): stage-2 runs trained on them would
/// be left behind, and an extraction can take hours. The same extraction is written again.
fn check_replace(dir: &RunDir, cfg: &ExtractConfig, fingerprint: &str) -> Result<()> {
    let path = dir.features();
    if !path.exists() {
        return Ok(());
    }
    let held = match lt_core::formats::features::Features::open(&path) {
        Ok(f) => f,
        Err(e) => {
            return Err(TrainError::Mismatch(format!(
                "{} cannot be read to tell whose features it holds ({e}); give --replace to replace it",
                path.display()
            )))
        }
    };
    if held.meta().fingerprint == fingerprint {
        return Ok(());
    }
    let differ = lt_core::diff::of_configs("extract", &held.meta().extract_config, cfg, |c| {
        serde_json::to_value(what_features_depend_on(c))
    })
    .map_err(|e| TrainError::Config(e.to_string()))?;
    let why = if differ.is_empty() {
        "the same settings, for other backbones: another run's features copied in, or this run trained again since"
            .to_string()
    } else {
        lt_core::diff::summary(&differ)
    };
    Err(TrainError::Mismatch(format!(
        "{} holds the features of another extraction ({why}); the stage-2 runs trained on them would be left \
         behind: give --replace to replace them",
        path.display()
    )))
}

fn splits(data: &DataBundle) -> Vec<(Split, Arc<dyn Dataset>)> {
    let mut v = vec![(Split::Train, data.train.clone()), (Split::Test, data.test.clone())];
    if let Some(val) = &data.val {
        v.push((Split::Val, val.clone()));
    }
    v
}

/// The run's fingerprints `(split, run)`, after checking that the run has what extraction needs
/// and that `data`, the SWA backbone and the SWAG statistics all belong to it.
fn check_run(dir: &RunDir, data: &DataBundle, cfg: &ExtractConfig) -> Result<(String, String)> {
    for p in [dir.sgd(), dir.swa()] {
        if !p.exists() {
            let how = if dir.checkpoint().exists() && !dir.summary().exists() {
                "its training has not finished: continue it with `lt train --resume` (the same settings and --out)"
            } else {
                "train it with SWA first"
            };
            return Err(TrainError::Mismatch(format!(
                "{} is missing: the run in {} has no SGD and SWA backbones ({how})",
                p.display(),
                dir.root().display()
            )));
        }
    }
    if cfg.samples > 0 && !dir.swag().exists() {
        return Err(TrainError::Mismatch(format!(
            "{} has no SWAG statistics ({}); train with SWA or extract with --samples 0",
            dir.root().display(),
            dir.swag().display()
        )));
    }
    let fingerprint_of = |path: &Path, format| -> Result<String> {
        Ok(Artifact::open(path, format)?.meta(lt_core::artifact::KEY_FINGERPRINT)?.to_string())
    };
    let (_, split_fp) = lt_core::split::SplitInfo::recorded(&dir.split())?;
    if split_fp != data.fingerprint() {
        return Err(TrainError::Mismatch(format!(
            "the data loaded from {} are not those {} was trained on (split fingerprints differ): the data \
             root holds other data (if the data have moved, point --data-root at them), an image folder's \
             files were added, removed or changed since, the data options differ from stage 1's, or the rule \
             that splits the data changed (an image folder's validation counts are per class since \
             2026-12-07); to use the data as they are, train stage 1 again (remove {} and rerun)",
            data.source,
            dir.root().display(),
            dir.root().display()
        )));
    }
    // Every backbone artifact must come from this run (a file copied in from another run is
    // refused, naming both fingerprints).
    let run_fp = fingerprint_of(&dir.sgd(), BACKBONE_FORMAT)?;
    let mut others = vec![(dir.swa(), fingerprint_of(&dir.swa(), BACKBONE_FORMAT)?)];
    if cfg.samples > 0 {
        others.push((dir.swag(), fingerprint_of(&dir.swag(), lt_swag::SWAG_FORMAT)?));
    }
    for (path, fp) in others {
        if fp != run_fp {
            return Err(TrainError::Mismatch(format!(
                "{} belongs to another run (fingerprint {fp}) than {} ({run_fp})",
                path.display(),
                dir.sgd().display()
            )));
        }
    }
    Ok((split_fp, run_fp))
}

/// What extracting one backbone needs.
struct Extraction<'a> {
    dir: &'a RunDir,
    data: &'a DataBundle,
    cfg: &'a ExtractConfig,
    swag: Option<&'a Swag>,
    device: &'a Device,
}

impl Extraction<'_> {
    /// The backbone of `info`: the SGD or SWA backbone, or a SWAG draw around SWA with its batch
    /// norms recalibrated on the training set.
    fn model(&self, info: &SampleInfo) -> Result<Model> {
        let (dir, cfg) = (self.dir, self.cfg);
        match (info.kind, info.index, self.swag) {
            (SampleKind::Sgd, _, _) => Ok(Model::from_artifact(&dir.sgd(), self.device)?),
            (SampleKind::Swa, _, _) => Ok(Model::from_artifact(&dir.swa(), self.device)?),
            (SampleKind::Swag, Some(m), Some(swag)) => {
                let model = Model::from_artifact(&dir.swa(), self.device)?;
                let theta =
                    swag.sample(cfg.scale, &mut Rng::stream(cfg.seed, &[streams::SWAG_SAMPLE, m as u64]))?;
                swag.layout().write_into(model.store().varmap(), &theta)?;
                let swa = Artifact::open(&dir.swa(), BACKBONE_FORMAT)?;
                if swa.meta_opt(KEY_BN) == Some(BN_FROZEN) {
                    return Ok(model);
                }
                let stream = lt_data::loader::Stream::Recalibration { sample: m as u64 };
                crate::bn::recalibrate(
                    &model,
                    &self.data.train,
                    cfg.batch_size,
                    cfg.workers,
                    cfg.seed,
                    stream,
                    self.device,
                )?;
                Ok(model)
            }
            (SampleKind::Swag, _, _) => {
                Err(TrainError::Mismatch("a SWAG sample needs its index and the SWAG statistics".into()))
            }
        }
    }

    /// Writes the representations of backbone `s` for every split into `part` (atomically).
    fn write_part(&self, s: usize, info: &SampleInfo, part: &Path) -> Result<()> {
        let model = self.model(info)?;
        lt_core::atomic::write_atomic(part, |w| {
            for (_, set) in &splits(self.data) {
                let (f, _) =
                    crate::evaluate::predict(&model, set, self.cfg.batch_size, self.cfg.workers, self.device)
                        .map_err(std::io::Error::other)?;
                if f.iter().any(|v| !v.is_finite()) {
                    return Err(std::io::Error::other(format!(
                        "sample {s} ({}) produced non-finite features",
                        info.kind.as_str()
                    )));
                }
                write_values(w, &f, self.cfg.half)?;
            }
            Ok(())
        })
        .map_err(io_err(part))
    }
}

/// Writes `features.safetensors` for the run in `dir` (see the module docs); `data` must be the
/// data set the run was trained on. Returns the artifact's path. Features of another extraction
/// already there are refused ([`extract_replacing`] replaces them).
pub fn extract(dir: &RunDir, data: &DataBundle, cfg: &ExtractConfig, device: &Device) -> Result<PathBuf> {
    extract_replacing(dir, data, cfg, device, false)
}

/// [`extract`], replacing features of another extraction when `replace` (`lt extract
/// --replace`).
pub fn extract_replacing(
    dir: &RunDir,
    data: &DataBundle,
    cfg: &ExtractConfig,
    device: &Device,
    replace: bool,
) -> Result<PathBuf> {
    cfg.validate()?;
    // Checked under the lock, held until the end (a run directory the lock had to create is
    // removed again when the check refuses it).
    let _lock = lt_core::lock::RunLock::acquire_and_clean(dir.root())?;
    let (split_fp, run_fp) = check_run(dir, data, cfg)?;
    let fingerprint = extract_fingerprint(&run_fp, cfg);
    if !replace {
        check_replace(dir, cfg, &fingerprint)?;
    }
    let swa = Model::from_artifact(&dir.swa(), device)?;
    let swag = match cfg.samples {
        0 => None,
        _ => {
            let s = Swag::load(&dir.swag())?;
            s.layout()
                .check(swa.store().varmap())
                .map_err(|e| TrainError::Mismatch(format!("{}: {e}", dir.swag().display())))?;
            Some(s)
        }
    };
    let job = Extraction { dir, data, cfg, swag: swag.as_ref(), device };
    // The backbones of the `S` axis: SGD, SWA, then `cfg.samples` SWAG draws.
    let infos = SampleInfo::standard(cfg.samples, cfg.seed);
    let mut parts = Vec::new();
    for (s, info) in infos.iter().enumerate() {
        let (part, tag) = part_files(dir, s);
        let part_fp =
            Fingerprint::new().part("extract", &fingerprint).part("sample", &s.to_string()).finish();
        parts.push(part.clone());
        if part.exists() && std::fs::read_to_string(&tag).ok().as_deref() == Some(part_fp.as_str()) {
            tracing::info!("sample {}/{} ({}) already extracted", s + 1, infos.len(), info.kind.as_str());
            continue;
        }
        let started = std::time::Instant::now();
        job.write_part(s, info, &part)?;
        lt_core::atomic::write_bytes_atomic(&tag, part_fp.as_bytes()).map_err(io_err(&tag))?;
        let secs = started.elapsed().as_secs_f64();
        let images: usize = splits(data).iter().map(|(_, d)| d.len()).sum();
        tracing::info!(
            "sample {}/{} ({}) extracted in {secs:.1}s ({:.0} img/s), {}",
            s + 1,
            infos.len(),
            info.kind.as_str(),
            images as f64 / secs.max(1e-9),
            crate::eta::left(infos.len() - s - 1, secs)
        );
    }
    let meta = FeaturesMeta {
        num_classes: data.num_classes(),
        feature_dim: swa.feature_dim(),
        samples: infos,
        scale: cfg.scale,
        half: cfg.half,
        dataset: data.name.to_string(),
        arch: swa.arch().family.name(),
        class_names: data.class_names.clone(),
        extract_config: serde_json::to_value(cfg).map_err(|e| TrainError::Config(e.to_string()))?,
        fingerprint,
        run_fingerprint: run_fp,
        split_fingerprint: split_fp,
    };
    let sgd = Model::from_artifact(&dir.sgd(), device)?;
    let path = assemble(dir, data, meta, &parts, [&sgd, &swa])?;
    remove_parts(dir);
    Ok(path)
}

/// How the names of the part files begin.
const PART_PREFIX: &str = "features.part-";

/// The part file of backbone `s` and the file holding its fingerprint.
fn part_files(dir: &RunDir, s: usize) -> (PathBuf, PathBuf) {
    (
        dir.root().join(format!("{PART_PREFIX}{s}.bin")),
        dir.root().join(format!("{PART_PREFIX}{s}.fingerprint")),
    )
}

/// Removes the run directory's part files: this extraction's, and those an interrupted one of
/// more samples left.
fn remove_parts(dir: &RunDir) {
    let Ok(entries) = std::fs::read_dir(dir.root()) else { return };
    for e in entries.flatten() {
        if e.file_name().to_string_lossy().starts_with(PART_PREFIX) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Writes the artifact, streaming each split's block from the part files; `heads` are the SGD
/// and SWA backbones.
fn assemble(
    dir: &RunDir,
    data: &DataBundle,
    meta: FeaturesMeta,
    parts: &[PathBuf],
    heads: [&Model; 2],
) -> Result<PathBuf> {
    let (dim, elem) = (meta.feature_dim, meta.elem());
    let mut w = FeaturesWriter::new(meta, &data.class_counts());
    let mut offset = 0usize;
    for (split, set) in splits(data) {
        let bytes_per = set.len() * dim * elem.size();
        let (parts, start) = (parts.to_vec(), offset);
        w.split(split, set.labels(), move |out: &mut dyn Write| {
            for p in &parts {
                copy_range(p, start as u64, bytes_per as u64, out)?;
            }
            Ok(())
        });
        offset += bytes_per;
    }
    for (kind, m) in [SampleKind::Sgd, SampleKind::Swa].into_iter().zip(heads) {
        let (wt, b) = m.head();
        w.head(kind, &wt.as_detached_tensor(), &b.as_detached_tensor())?;
    }
    let path = dir.features();
    w.write(&path)?;
    Ok(path)
}

fn copy_range(path: &Path, start: u64, len: u64, out: &mut dyn Write) -> std::io::Result<()> {
    use std::io::Seek;
    let mut f = std::fs::File::open(path)?;
    f.seek(std::io::SeekFrom::Start(start))?;
    let copied = std::io::copy(&mut f.take(len), out)?;
    if copied != len {
        return Err(std::io::Error::other(format!("{}: {copied} of {len} bytes", path.display())));
    }
    Ok(())
}
