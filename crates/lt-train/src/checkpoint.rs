//! Checkpoints: model parameters and buffers, optimizer momentum, SWAG state and progress, in
//! one atomically written artifact.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::Tensor;
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
            lt_core::fingerprint::short(found),
            lt_core::fingerprint::short(fingerprint)
        )));
    }
    Ok(())
}

/// Reads a checkpoint into `model` and `opt`; fails (leaving them untouched) when it was written
/// by a run with another fingerprint, or when a tensor's shape or element type, or the SWAG
/// statistics' parameters, differ from the model's. Returns the progress and the SWAG state.
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
    // Read everything first, then assign. Each tensor must have the shape and element type of
    // what it replaces.
    let like = |key: &str, model_side: &Tensor| -> Result<Tensor> {
        let want: Vec<Option<usize>> = model_side.dims().iter().map(|&d| Some(d)).collect();
        a.expect_shape(key, &want)?;
        let t = a.tensor(key, &dev)?;
        if t.dtype() != model_side.dtype() {
            let why = format!("is {:?}, the model's is {:?}", t.dtype(), model_side.dtype());
            return Err(a.bad_value(key, why).into());
        }
        Ok(t)
    };
    let mut values = Vec::new();
    for (name, var) in &params {
        values.push((var.clone(), like(&format!("model.{name}"), var.as_tensor())?));
    }
    let mut buffers = Vec::new();
    for (name, t) in model.store().named_buffers() {
        buffers.push((name.clone(), like(&format!("model.{name}"), &t)?));
    }
    // Their names, shapes and element types are checked by `set_buffers`, before it keeps any.
    let mut momentum = BTreeMap::new();
    for key in a.names().filter(|n| n.starts_with("momentum.")) {
        momentum.insert(key["momentum.".len()..].to_string(), a.tensor(key, &dev)?);
    }
    let swag =
        if a.meta_opt("has_swag") == Some("1") { Some(Swag::from_artifact(&a, "swag.")?) } else { None };
    if let Some(s) = &swag {
        s.layout()
            .check(model.store().varmap())
            .map_err(|e| TrainError::Mismatch(format!("{}: SWAG statistics: {e}", path.display())))?;
    }
    opt.set_buffers(momentum, &params)
        .map_err(|e| TrainError::Mismatch(format!("{}: {e}", path.display())))?;
    for (var, t) in values {
        var.set(&t)?;
    }
    for (name, t) in buffers {
        model.store().set_buffer(&name, t)?;
    }
    Ok((progress, swag))
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device};
    use lt_models::Arch;
    use lt_swag::ParamLayout;

    use std::path::PathBuf;

    use super::*;

    fn model(seed: u64) -> Model {
        Model::new(Arch::new("cifar-resnet8x2", 3, 1).unwrap(), seed, &Device::Cpu).unwrap()
    }

    fn values(m: &Model) -> Vec<Vec<f32>> {
        let t = m.store().named_params().into_iter().map(|(_, v)| v.as_detached_tensor());
        t.map(|t| t.flatten_all().unwrap().to_vec1::<f32>().unwrap()).collect()
    }

    /// A copy of checkpoint `a` with tensor `name` replaced (or added) by `t`, and the metadata
    /// `meta` replaced when given.
    fn altered(a: &Artifact, path: &Path, name: &str, t: &Tensor, meta: Option<(&str, &str)>) -> PathBuf {
        let mut w = ArtifactWriter::new(CHECKPOINT_FORMAT);
        for (k, v) in a.metadata().iter().filter(|(k, _)| !k.starts_with("format")) {
            let v = meta.filter(|(mk, _)| mk == k).map_or(v.as_str(), |(_, mv)| mv);
            w.meta(k, v.to_string());
        }
        for n in a.names().filter(|&n| n != name) {
            w.push_tensor(n, &a.tensor(n, &Device::Cpu).unwrap()).unwrap();
        }
        w.push_tensor(name, t).unwrap();
        let out = path.with_file_name(format!("{}.safetensors", name.replace('.', "-")));
        w.write(&out).unwrap();
        out
    }

    /// A checkpoint whose tensors have the model's shapes but another element type, a momentum
    /// buffer for no parameter, or SWAG statistics of other parameters is refused with the file
    /// and tensor named, and the model and optimiser are left as they were.
    #[test]
    fn tensors_of_another_type_or_parameter_are_refused_before_anything_changes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("checkpoint.safetensors");
        let src = model(1);
        let params = src.store().named_params();
        let mut opt = Sgd::new(0.9, false, 0.0);
        let zeros = params.iter().map(|(n, v)| (n.clone(), v.as_detached_tensor().zeros_like().unwrap()));
        opt.set_buffers(zeros.collect(), &params).unwrap();
        let layout = ParamLayout::of(src.store().varmap()).unwrap();
        let mut swag = Swag::new(layout, 2);
        swag.collect(&vec![0.5; swag.layout().len()]).unwrap();
        let progress = Progress { phase_index: 0, phase: None, next_epoch: 3, step: 7 };
        save(&p, &src, &opt, Some(&swag), &progress, "fp").unwrap();

        let dst = model(2);
        let before = values(&dst);
        let mut fresh = Sgd::new(0.9, false, 0.0);
        let (back, s) = load(&p, &model(3), &mut fresh, "fp").unwrap();
        assert_eq!((back, s.unwrap().n_models()), (progress, 1));

        let a = Artifact::open(&p, CHECKPOINT_FORMAT).unwrap();
        let w = a.tensor("model.conv1.weight", &Device::Cpu).unwrap();
        let stats = a.tensor("model.bn1.running_mean", &Device::Cpu).unwrap();
        let cases = [
            ("model.conv1.weight", w.to_dtype(DType::F16).unwrap(), "is F16, the model's is F32"),
            ("model.bn1.running_mean", stats.to_dtype(DType::F64).unwrap(), "is F64, the model's is F32"),
            ("momentum.conv1.weight", w.to_dtype(DType::BF16).unwrap(), "is BF16, the model's is F32"),
            ("momentum.fc.weight", w.clone(), "a parameter the model does not have"),
            ("swag.mean.conv1.weight", stats.clone(), "tensor `swag.mean.conv1.weight`"),
        ];
        let one = r#"{"names":["conv1.weight"],"shapes":[[2,1,3,3]]}"#;
        let cases = cases.into_iter().map(|(n, t, why)| (n, t, why, None)).chain([(
            "model.conv1.weight",
            w.clone(),
            "SWAG statistics: the model's parameters differ",
            Some(("swag.layout", one)),
        )]);
        for (name, t, why, meta) in cases {
            let bad = altered(&a, &p, name, &t, meta);
            let mut opt = Sgd::new(0.9, false, 0.0);
            let err = load(&bad, &dst, &mut opt, "fp").err().unwrap_or_else(|| panic!("{name}: accepted"));
            let err = err.to_string();
            assert!(err.contains(&*bad.to_string_lossy()) && err.contains(why), "{name}: {err}");
            assert!(opt.buffers().is_empty(), "{name}: the optimiser changed");
            assert_eq!(values(&dst), before, "{name}: the model changed");
        }
    }
}
