//! The artifact formats exchanged between stages, one module per format.
//!
//! Each module owns its format's name and version, a metadata struct, a writer and a reader;
//! producers and consumers call these, never their own copies of the tensor names or metadata
//! keys. `docs/artifacts.md` documents each format and maps one-to-one onto these modules (the
//! split artifact, older than this module, lives in [`crate::split`]).
//!
//! - [`features`]: `lt.features`, the `[S, N, D]` representations of the SGD, SWA and SWAG-sampled
//!   backbones per split (written by `lt extract`, read by stage 2 and the report);
//! - [`head`]: `lt.head`, a re-trained classifier (written by `lt retrain`);
//! - [`predictions`]: `lt.predictions`, test scores and labels of one method (written by
//!   `lt retrain`, read by `lt eval` and `lt report`; anyone may write one).

pub mod features;
pub mod head;
pub mod predictions;
mod samples;

use serde::{Deserialize, Serialize};

use crate::artifact::{Artifact, ArtifactWriter, Result, KEY_DATASET, KEY_FINGERPRINT};

/// The keys of [`RunMeta::facts`] that say where a run's knobs came from; each holds an object
/// of knob names and values (`{"tau": 1.25}`).
pub mod facts {
    /// Knobs chosen on the validation split (the report's "knobs chosen" table).
    pub const CHOSEN: &str = "chosen";
    /// Knobs the configuration fixed (a value given, or a row's definition such as the (b)
    /// ablation's `lambda = 0`).
    pub const FIXED: &str = "fixed";
    /// Knobs left at their defaults because the features have no validation split.
    pub const DEFAULTS: &str = "defaults";
    /// The validation search: one record per choice (its split, criterion and trials).
    pub const SELECTION: &str = "selection";
    /// The kinds of knob (a knob is recorded under one of them).
    pub const KINDS: [&str; 3] = [CHOSEN, FIXED, DEFAULTS];
    /// Each kind as output says it before its knobs (`chose {"tau":1.25}`, `fixed ...`).
    pub const SAID: [(&str, &str); 3] =
        [(CHOSEN, "chose"), (FIXED, "fixed"), (DEFAULTS, "defaults (no validation split)")];

    /// The knob records of a run's facts: each kind it has, with its knobs.
    pub fn knobs(facts: &serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
        KINDS.iter().filter_map(|k| facts.get(*k).map(|v| (k.to_string(), v.clone()))).collect()
    }
}

/// The metadata shared by the head and predictions artifacts of one stage-2 run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RunMeta {
    /// The method (`none`, `crt`, ..., `srepr`).
    pub method: String,
    /// The row of the pipeline's plan this run fills (e.g. `swa-srepr-b`); orders the report.
    pub row: String,
    /// The report label (`cRT`, `SRepr`, ...).
    pub label: String,
    /// Backbone whose representations were used (`sgd`, `swa`).
    pub backbone: String,
    /// Seed of the run (`None` for predictions from elsewhere).
    pub seed: Option<u64>,
    /// The stage-2 configuration (JSON).
    pub config: serde_json::Value,
    /// What the run chose or measured: its knobs (under the keys of [`facts`]: chosen on the
    /// validation split, fixed by the configuration, or defaults for want of a validation split),
    /// the validation search, members, ...
    pub facts: serde_json::Value,
    /// Data set name.
    pub dataset: String,
    /// Fingerprint of this run (features and configuration).
    pub fingerprint: String,
    /// Fingerprint of the features artifact the run read.
    pub features_fingerprint: String,
}

const KEY_METHOD: &str = "method";
const KEY_ROW: &str = "row";
const KEY_LABEL: &str = "method_label";
const KEY_BACKBONE: &str = "backbone";
const KEY_SEED: &str = "seed";
const KEY_CONFIG: &str = "config";
const KEY_FACTS: &str = "facts";
const KEY_FEATURES_FINGERPRINT: &str = "features_fingerprint";

impl RunMeta {
    /// Writes the keys into an artifact's metadata.
    pub fn write_to(&self, w: &mut ArtifactWriter<'_>) {
        w.meta(KEY_METHOD, &self.method)
            .meta(KEY_ROW, &self.row)
            .meta(KEY_LABEL, &self.label)
            .meta(KEY_BACKBONE, &self.backbone)
            .meta_json(KEY_CONFIG, &self.config)
            .meta_json(KEY_FACTS, &self.facts)
            .meta(KEY_DATASET, &self.dataset)
            .meta(KEY_FINGERPRINT, &self.fingerprint)
            .meta(KEY_FEATURES_FINGERPRINT, &self.features_fingerprint);
        if let Some(s) = self.seed {
            w.meta(KEY_SEED, s.to_string());
        }
    }

    /// Reads the keys from an artifact; every key is optional (predictions written by other tools
    /// may carry none), except that a present key must parse.
    pub fn read_from(a: &Artifact) -> Result<Self> {
        let text = |k: &str| a.meta_opt(k).unwrap_or("").to_string();
        let json = |k: &str| -> Result<serde_json::Value> {
            if a.meta_opt(k).is_some() {
                a.meta_json(k)
            } else {
                Ok(serde_json::Value::Null)
            }
        };
        let seed = match a.meta_opt(KEY_SEED) {
            Some(_) => Some(a.meta_parse::<u64>(KEY_SEED)?),
            None => None,
        };
        let method = text(KEY_METHOD);
        let backbone = text(KEY_BACKBONE);
        // Artifacts from before the `row` key: the row is backbone and method.
        let row = match a.meta_opt(KEY_ROW) {
            Some(r) => r.to_string(),
            None if !method.is_empty() => format!("{backbone}-{method}"),
            None => String::new(),
        };
        Ok(Self {
            method,
            row,
            label: text(KEY_LABEL),
            backbone,
            seed,
            config: json(KEY_CONFIG)?,
            facts: json(KEY_FACTS)?,
            dataset: text(KEY_DATASET),
            fingerprint: text(KEY_FINGERPRINT),
            features_fingerprint: text(KEY_FEATURES_FINGERPRINT),
        })
    }
}
