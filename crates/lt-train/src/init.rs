//! Starting stage 1 from pretrained weights (`TrainConfig::init`), and the fine-tuning knobs that
//! go with it: a lower learning rate for the backbone than for the classifier, and frozen batch
//! norm.
//!
//! An init is `hub:<org>/<name>[@revision][:file]` (a Hugging Face hub model repository, file
//! `model.safetensors` and revision `main` by default, read from the standard cache and fetched
//! unless offline, see [`lt_models::hub`]) or the path of a local safetensors file (torchvision,
//! timm or transformers names, or an `lt` backbone artifact). Its identity (repository, the
//! commit the revision resolved to, file name and the file's SHA-256) is part of the run's
//! fingerprint, so that a run started from other weights is never taken for this one.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use candle_core::backprop::GradStore;
use candle_core::Var;
use lt_models::hub::{self, HubOptions};
use lt_models::{LoadReport, Model};
use serde::{Deserialize, Serialize};

use crate::error::{io_err, Result, TrainError};

/// The file a hub init reads when none is named.
pub const DEFAULT_HUB_FILE: &str = "model.safetensors";

/// Where pretrained weights come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InitSource {
    /// A hub model repository.
    Hub {
        /// `org/name`.
        repo: String,
        /// Branch, tag or commit (`None`: `main`).
        revision: Option<String>,
        /// File in the repository.
        file: String,
    },
    /// A local safetensors file.
    File(PathBuf),
}

fn bad(spec: &str, why: &str) -> TrainError {
    TrainError::Config(format!(
        "train.init {spec:?}: {why} (expected hub:<org>/<name>[@revision][:file] or a safetensors file)"
    ))
}

impl FromStr for InitSource {
    type Err = TrainError;
    fn from_str(spec: &str) -> Result<Self> {
        let Some(rest) = spec.strip_prefix("hub:") else {
            if spec.trim().is_empty() {
                return Err(bad(spec, "empty"));
            }
            return Ok(InitSource::File(PathBuf::from(spec)));
        };
        let (repo_rev, file) = match rest.split_once(':') {
            Some((r, f)) if !f.is_empty() => (r, f.to_string()),
            Some(_) => return Err(bad(spec, "the file after `:` is empty")),
            None => (rest, DEFAULT_HUB_FILE.to_string()),
        };
        let (repo, revision) = match repo_rev.split_once('@') {
            Some((r, v)) if !v.is_empty() => (r, Some(v.to_string())),
            Some(_) => return Err(bad(spec, "the revision after `@` is empty")),
            None => (repo_rev, None),
        };
        let parts: Vec<&str> = repo.split('/').collect();
        let name_ok =
            |p: &str| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        if parts.len() != 2 || !parts.iter().all(|p| name_ok(p)) {
            return Err(bad(spec, "the repository must be <org>/<name>"));
        }
        Ok(InitSource::Hub { repo: repo.to_string(), revision, file })
    }
}

/// Pretrained weights resolved to a local file, with their identity.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitWeights {
    /// The init as given.
    pub spec: String,
    /// The local file.
    pub path: PathBuf,
    /// Hub repository (`None` for a local file).
    pub repo: Option<String>,
    /// The commit the hub revision resolved to (the cache's snapshot directory).
    pub commit: Option<String>,
    /// SHA-256 of the file (hex).
    pub sha256: String,
}

impl InitWeights {
    /// Resolves `spec` (see the module docs): a hub file is read from the cache, or fetched
    /// unless offline (`HF_HUB_OFFLINE=1`); a local file must exist.
    pub fn resolve(spec: &str) -> Result<Self> {
        Self::resolve_with(spec, true)?.ok_or_else(|| bad(spec, "not fetched"))
    }

    /// [`InitWeights::resolve`] from the cache alone: `None` for a hub init the cache does not
    /// hold yet, never the network (for a plan that names what a run will train from).
    pub fn resolve_cached(spec: &str) -> Result<Option<Self>> {
        Self::resolve_with(spec, false)
    }

    fn resolve_with(spec: &str, fetch: bool) -> Result<Option<Self>> {
        let (path, repo) = match spec.parse::<InitSource>()? {
            InitSource::File(p) => {
                if !p.is_file() {
                    return Err(bad(spec, &format!("{} is not a file", p.display())));
                }
                (p, None)
            }
            InitSource::Hub { repo, revision, file } => {
                let opts = HubOptions { revision, ..Default::default() };
                let path = if fetch {
                    Some(hub::fetch(&repo, &file, &opts)?)
                } else {
                    hub::cached(&repo, &file, &opts)
                };
                let Some(path) = path else { return Ok(None) };
                (path, Some(repo))
            }
        };
        // The cache keeps a file at snapshots/<commit>/<file>.
        let commit = repo.as_ref().and_then(|_| {
            let parent = path.parent()?;
            let under_snapshots = parent.parent()?.file_name()? == "snapshots";
            under_snapshots.then(|| parent.file_name()?.to_str().map(str::to_string)).flatten()
        });
        Ok(Some(Self { spec: spec.to_string(), sha256: sha256_file(&path)?, path, repo, commit }))
    }

    /// The identity that enters the run's fingerprint (everything but the local path, which may
    /// move without changing the weights).
    pub fn identity(&self) -> String {
        format!(
            "{} repo={} commit={} sha256={}",
            self.spec,
            self.repo.as_deref().unwrap_or("-"),
            self.commit.as_deref().unwrap_or("-"),
            self.sha256
        )
    }

    /// Loads the weights into `model` (its classifier re-initialised when the file's does not
    /// fit, see [`Model::load_pretrained`]) and logs what happened.
    pub fn apply(&self, model: &Model) -> Result<LoadReport> {
        let report = model.load_pretrained(&self.path)?;
        tracing::info!(
            "initialised {} from {} ({} tensors, sha256 {}…{})",
            model.arch().family.name(),
            self.spec,
            report.loaded,
            &self.sha256[..8],
            match &self.commit {
                Some(c) => format!(", commit {c}"),
                None => String::new(),
            }
        );
        if let Some(why) = &report.head_reinitialised {
            tracing::warn!("classifier re-initialised for {} classes: {why}", model.arch().num_classes);
        }
        if !report.ignored.is_empty() {
            tracing::info!(
                "{} tensor(s) of the file unused, e.g. {}",
                report.ignored.len(),
                report.ignored.iter().take(3).cloned().collect::<Vec<_>>().join(", ")
            );
        }
        Ok(report)
    }
}

/// SHA-256 of a file, read in 1 MiB blocks.
pub fn sha256_file(path: &Path) -> Result<String> {
    lt_core::fingerprint::file_digest::<sha2::Sha256>(path).map_err(io_err(path))
}

/// The model's parameters in two groups: the backbone's, stepped at `lr * backbone_lr_scale`,
/// and the classifier's, stepped at `lr`.
pub struct ParamGroups {
    backbone: Vec<(String, Var)>,
    head: Vec<(String, Var)>,
    scale: f64,
}

impl ParamGroups {
    /// The groups of `model`.
    pub fn new(model: &Model, backbone_lr_scale: f64) -> Self {
        let (w, b) = model.head_names();
        let (head, backbone): (Vec<_>, Vec<_>) =
            model.store().named_params().into_iter().partition(|(n, _)| n == w || n == b);
        Self { backbone, head, scale: backbone_lr_scale }
    }

    /// One SGD step at classifier rate `lr` (one call when both rates are equal: the update is
    /// then exactly the single-group one).
    pub fn step(&self, opt: &mut lt_core::optim::Sgd, grads: &GradStore, lr: f64) -> Result<()> {
        if self.scale == 1.0 {
            let all: Vec<(String, Var)> = self.backbone.iter().chain(&self.head).cloned().collect();
            return Ok(opt.step(&all, grads, lr)?);
        }
        opt.step(&self.backbone, grads, lr * self.scale)?;
        Ok(opt.step(&self.head, grads, lr)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_specs_parse_or_are_refused_with_the_expected_form() {
        let hub = |repo: &str, revision: Option<&str>, file: &str| InitSource::Hub {
            repo: repo.into(),
            revision: revision.map(str::to_string),
            file: file.into(),
        };
        let p = |s: &str| s.parse::<InitSource>();
        assert_eq!(
            p("hub:timm/resnet50.a1_in1k").unwrap(),
            hub("timm/resnet50.a1_in1k", None, "model.safetensors")
        );
        assert_eq!(p("hub:a/b@v2:w.safetensors").unwrap(), hub("a/b", Some("v2"), "w.safetensors"));
        assert_eq!(p("hub:a/b:sub/w.safetensors").unwrap(), hub("a/b", None, "sub/w.safetensors"));
        assert_eq!(p("w/x.safetensors").unwrap(), InitSource::File("w/x.safetensors".into()));
        for (spec, why) in [
            ("hub:timm", "<org>/<name>"),
            ("hub:a/b/c", "<org>/<name>"),
            ("hub:/b", "<org>/<name>"),
            ("hub:a/b@", "revision"),
            ("hub:a/b:", "file"),
            ("", "empty"),
        ] {
            let err = p(spec).unwrap_err().to_string();
            assert!(err.contains(why) && err.contains("hub:<org>/<name>"), "{spec}: {err}");
        }
    }

    #[test]
    fn a_missing_local_file_is_named() {
        let err = InitWeights::resolve("/nonexistent/w.safetensors").unwrap_err().to_string();
        assert!(err.contains("/nonexistent/w.safetensors is not a file"), "{err}");
    }
}
