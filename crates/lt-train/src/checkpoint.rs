//! Checkpoints: model parameters and buffers, optimizer momentum, SWAG state and progress, in
//! one atomically written artifact.

use std::collections::BTreeMap;
use std::path::Path;

use lt_core::{Artifact, ArtifactWriter, Format};
use lt_models::Model;
use lt_swag::Swag;
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};
use crate::schedule::Phase;
use lt_core::optim::Sgd;

/// Artifact kind of a checkpoint.
pub const CHECKPOINT_FORMAT: Format = Format { name: "lt.checkpoint", version: 1 };

/// Where a run stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// Index of the current phase in the run's phase list.
    pub phase_index: usize,
    /// The current phase (`None` once every phase is done).
    pub phase: Option<Phase>,
    /// Next epoch to run within the phase.
    pub next_epoch: usize,
    /// Global steps done in the current phase's trajectory.
    pub step: usize,
}

/// Writes a checkpoint.
pub fn save(
    path: &Path,
    model: &Model,
    opt: &Sgd,
    swag: Option<&Swag>,
    progress: &Progress,
    fingerprint: &str,
) -> Result<()> {
    let mut w = ArtifactWriter::new(CHECKPOINT_FORMAT);
    w.meta(lt_core::artifact::KEY_FINGERPRINT, fingerprint).meta_json("progress", progress);
    w.meta("arch", model.arch().family.name());
    for (name, var) in model.store().named_params() {
        w.push_tensor(&format!("model.{name}"), &var.as_detached_tensor())?;
    }
    for (name, t) in model.store().named_buffers() {
        w.push_tensor(&format!("model.{name}"), &t)?;
    }
    for (name, t) in opt.buffers() {
        w.push_tensor(&format!("momentum.{name}"), t)?;
    }
    if let Some(s) = swag {
        w.meta("has_swag", "1");
        s.push_into(&mut w, "swag.");
    }
    Ok(w.write(path)?)
}

/// Fails unless the checkpoint at `path` was written by the run of `fingerprint`.
pub fn check_fingerprint(path: &Path, fingerprint: &str) -> Result<()> {
    same_run(&Artifact::open(path, CHECKPOINT_FORMAT)?, fingerprint)
}

fn same_run(a: &Artifact, fingerprint: &str) -> Result<()> {
    let found = a.meta(lt_core::artifact::KEY_FINGERPRINT)?;
    if found != fingerprint {
        return Err(TrainError::Mismatch(format!(
            "{} was written by a run with another configuration or data (fingerprint {}…, this run {}…); \
             use a fresh run directory or the original settings",
            a.path().display(),
            &found[..12.min(found.len())],
            &fingerprint[..12.min(fingerprint.len())]
        )));
    }
    Ok(())
}

/// Reads a checkpoint into `model` and `opt`; fails (leaving them untouched) when it was written
/// by a run with another fingerprint. Returns the progress and the SWAG state.
pub fn load(
    path: &Path,
    model: &Model,
    opt: &mut Sgd,
    fingerprint: &str,
) -> Result<(Progress, Option<Swag>)> {
    let a = Artifact::open(path, CHECKPOINT_FORMAT)?;
    same_run(&a, fingerprint)?;
    let progress: Progress = a.meta_json("progress")?;
    let dev = model.device().clone();
    let params = model.store().named_params();
    // Read everything first, then assign.
    let mut values = Vec::new();
    for (name, var) in &params {
        let key = format!("model.{name}");
        let want: Vec<Option<usize>> = var.dims().iter().map(|&d| Some(d)).collect();
        a.expect_shape(&key, &want)?;
        values.push((var.clone(), a.tensor(&key, &dev)?));
    }
    let mut buffers = Vec::new();
    for (name, t) in model.store().named_buffers() {
        let key = format!("model.{name}");
        let want: Vec<Option<usize>> = t.dims().iter().map(|&d| Some(d)).collect();
        a.expect_shape(&key, &want)?;
        buffers.push((name, a.tensor(&key, &dev)?));
    }
    let mut momentum = BTreeMap::new();
    for key in a.names().filter(|n| n.starts_with("momentum.")) {
        momentum.insert(key["momentum.".len()..].to_string(), a.tensor(key, &dev)?);
    }
    opt.set_buffers(momentum, &params)
        .map_err(|e| TrainError::Mismatch(format!("{}: {e}", path.display())))?;
    for (var, t) in values {
        var.set(&t)?;
    }
    for (name, t) in buffers {
        model.store().set_buffer(&name, t)?;
    }
    let swag =
        if a.meta_opt("has_swag") == Some("1") { Some(Swag::from_artifact(&a, "swag.")?) } else { None };
    Ok((progress, swag))
}
