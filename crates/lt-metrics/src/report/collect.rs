//! Reading a reproduction's run directories: `seed-<k>/stage1/{split,features}.safetensors` and
//! `seed-<k>/stage2/<row>/predictions.safetensors` (the layout `cargo xtask reproduce` writes).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use lt_core::formats::predictions::Predictions;
use lt_core::split::SplitInfo;

use super::Row;
use crate::classification::{evaluate, BinEdges, ECE_BINS};
use crate::error::{MetricsError, Result};
use crate::predictions::PredictionsExt;

/// The names of a reproduction's layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Prefix of a seed's directory (followed by the seed number).
    pub seed_prefix: &'static str,
    /// A seed's stage-1 directory (split, backbones, features).
    pub stage1: &'static str,
    /// A seed's stage-2 directory (one sub-directory per row).
    pub stage2: &'static str,
    /// The split artifact in the stage-1 directory.
    pub split: &'static str,
    /// The features artifact in the stage-1 directory.
    pub features: &'static str,
    /// The predictions artifact in a row's directory.
    pub predictions: &'static str,
}

/// The layout `cargo xtask reproduce` writes and `lt report` reads.
pub const LAYOUT: Layout = Layout {
    seed_prefix: "seed-",
    stage1: "stage1",
    stage2: "stage2",
    split: lt_core::layout::SPLIT_FILE,
    features: lt_core::layout::FEATURES_FILE,
    predictions: lt_core::layout::PREDICTIONS_FILE,
};

impl Layout {
    /// The stage-1 directory of `seed` under `runs`.
    pub fn stage1_dir(&self, runs: &Path, seed: u64) -> PathBuf {
        runs.join(format!("{}{seed}", self.seed_prefix)).join(self.stage1)
    }

    /// The directory of row `row` of `seed` under `runs`.
    pub fn row_dir(&self, runs: &Path, seed: u64, row: &str) -> PathBuf {
        runs.join(format!("{}{seed}", self.seed_prefix)).join(self.stage2).join(row)
    }
}

/// Everything a report is made of.
#[derive(Clone, Debug)]
pub struct Collected {
    /// The directory read.
    pub runs: PathBuf,
    /// Data set name (from the predictions' metadata).
    pub dataset: String,
    /// The seeds found, in order.
    pub seeds: Vec<u64>,
    /// Every row found (in the order of their ids; the spec orders them for display).
    pub rows: Vec<Row>,
    /// Per seed, the row ids and the predictions file of each (for plots).
    pub files: BTreeMap<u64, BTreeMap<String, PathBuf>>,
}

impl Collected {
    /// The first seed whose stage-1 directory is there, and that directory (its split and
    /// features give the per-class plots and table).
    pub fn first_stage1(&self) -> Option<(u64, PathBuf)> {
        self.seeds.iter().map(|&s| (s, LAYOUT.stage1_dir(&self.runs, s))).find(|(_, d)| d.is_dir())
    }
}

fn seeds_in(runs: &Path) -> Result<Vec<u64>> {
    let io = |error| MetricsError::Io { path: runs.to_path_buf(), error };
    let mut seeds = Vec::new();
    for e in std::fs::read_dir(runs).map_err(io)? {
        let e = e.map_err(io)?;
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(k) = name.strip_prefix(LAYOUT.seed_prefix) {
            // One name per seed (`seed-01` beside `seed-1` would be read as the same seed).
            let seed = k.parse::<u64>().ok().filter(|s| s.to_string() == k).ok_or_else(|| {
                MetricsError::Invalid(format!(
                    "{}: `{name}` is not a seed directory (expected {}<number>, without leading zeros)",
                    runs.display(),
                    LAYOUT.seed_prefix
                ))
            })?;
            if e.path().is_dir() {
                seeds.push(seed);
            }
        }
    }
    seeds.sort_unstable();
    Ok(seeds)
}

/// What a seed's stage-1 directory gives its rows: the split artifact (its path and contents)
/// and the features artifact's path and fingerprint, each when there is one.
#[derive(Clone, Copy)]
struct Stage1<'a> {
    split: Option<(&'a Path, &'a SplitInfo)>,
    features: Option<(&'a Path, &'a str)>,
}

/// What the collection has found so far.
struct Collector {
    /// How configurations are compared across seeds.
    settings: SettingsView,
    rows: BTreeMap<String, Row>,
    files: BTreeMap<u64, BTreeMap<String, PathBuf>>,
    dataset: String,
    test_labels: Option<(Vec<u32>, PathBuf)>,
    /// Each row's configuration (its seed left out) and the file it was first read from.
    configs: BTreeMap<String, (serde_json::Value, PathBuf)>,
    /// Each features fingerprint and the seed whose runs were trained on it.
    features: BTreeMap<String, (u64, PathBuf)>,
    /// Each run's fingerprint (its features and settings), the row it fills and its file.
    runs: BTreeMap<String, (String, PathBuf)>,
}

/// How [`collect`] compares the configurations a row's seeds recorded: each as it stands
/// ([`as_recorded`]), or seen through its settings with the defaults filled in (`lt report`'s,
/// through the stage-2 configuration's type), so that a setting an older record leaves out at its
/// default is the same setting as a newer record's default.
pub type SettingsView = fn(&serde_json::Value) -> serde_json::Value;

/// The [`SettingsView`] that compares configurations as they were recorded.
pub fn as_recorded(config: &serde_json::Value) -> serde_json::Value {
    config.clone()
}

/// A configuration as JSON without its seed: what the seeds of one row share.
fn without_seed(config: &serde_json::Value) -> serde_json::Value {
    let mut c = config.clone();
    if let Some(o) = c.as_object_mut() {
        o.remove("seed");
    }
    c
}

impl Collector {
    /// Nothing found yet; configurations compared through `settings`.
    fn new(settings: SettingsView) -> Self {
        Collector {
            settings,
            rows: BTreeMap::new(),
            files: BTreeMap::new(),
            dataset: String::new(),
            test_labels: None,
            configs: BTreeMap::new(),
            features: BTreeMap::new(),
            runs: BTreeMap::new(),
        }
    }

    /// Evaluates the predictions in `file` (row directory `dir`) as seed `seed`, with what its
    /// stage-1 directory gives (the split's shot groups; the features they must be trained on).
    fn add(&mut self, seed: u64, dir: &Path, file: &Path, stage1: &Stage1<'_>) -> Result<()> {
        let Stage1 { split, features } = *stage1;
        let p = Predictions::read(file)?;
        if let Some(features) = features {
            check_current_features(file, &p.meta.features_fingerprint, features)?;
        }
        match &self.test_labels {
            Some((labels, first)) if *labels != p.labels => {
                return Err(MetricsError::Invalid(format!(
                    "{} and {} were evaluated on different test sets",
                    first.display(),
                    file.display()
                )))
            }
            Some(_) => {}
            None => self.test_labels = Some((p.labels.clone(), file.to_path_buf())),
        }
        let id = if p.meta.row.is_empty() {
            dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
        } else {
            p.meta.row.clone()
        };
        self.check_one_file_per_row(seed, &id, file, &p)?;
        self.files.entry(seed).or_default().insert(id.clone(), file.to_path_buf());
        self.check_runs_agree(seed, &id, file, &p)?;
        let groups =
            p.groups_of(split).map_err(|e| MetricsError::Invalid(format!("{}: {e}", file.display())))?;
        let ev = evaluate(&p.scores()?, &groups, ECE_BINS, BinEdges::Guo)
            .map_err(|e| MetricsError::Invalid(format!("{}: {e}", file.display())))?;
        if self.dataset.is_empty() {
            self.dataset = p.meta.dataset.clone();
        }
        let row = self.rows.entry(id.clone()).or_insert_with(|| {
            let label = if p.meta.label.is_empty() { p.meta.method.clone() } else { p.meta.label.clone() };
            Row::new(&id, &p.meta.backbone.to_uppercase(), &label)
        });
        row.seeds.push(seed);
        row.evaluations.push(ev);
        use lt_core::formats::facts;
        let chosen = p.meta.facts.get(facts::CHOSEN).cloned();
        row.chosen.push(chosen.unwrap_or(serde_json::Value::Null));
        if row.not_chosen.is_null() {
            let mut kept = facts::knobs(&p.meta.facts);
            kept.remove(facts::CHOSEN);
            if !kept.is_empty() {
                row.not_chosen = serde_json::Value::Object(kept);
            }
        }
        Ok(())
    }
}

impl Collector {
    /// Refuses a second file for row `id` of `seed` (a copy, or a variant that needs a name of
    /// its own), and a run that fills another row already (the same fingerprint under two names).
    fn check_one_file_per_row(&mut self, seed: u64, id: &str, file: &Path, p: &Predictions) -> Result<()> {
        if let Some(other) = self.files.get(&seed).and_then(|f| f.get(id)) {
            // A copy is the same run: the same fingerprint (features and settings).
            let copy = !p.meta.fingerprint.is_empty()
                && self.runs.get(&p.meta.fingerprint).is_some_and(|(i, f)| i == id && f == other);
            let fix = if copy {
                "as the same run (the same features and settings): one is a copy; remove it"
            } else {
                "from other settings or features: remove one, or, to keep both, run one again with a row name of \
                 its own (`lt retrain --name`) on every seed"
            };
            return Err(MetricsError::Invalid(format!(
                "{} and {} both hold row `{id}` of seed {seed} {fix}",
                other.display(),
                file.display()
            )));
        }
        if p.meta.fingerprint.is_empty() {
            return Ok(());
        }
        match self.runs.get(&p.meta.fingerprint) {
            Some((other_id, other)) if other_id != id => Err(MetricsError::Invalid(format!(
                "{} (row `{id}`) and {} (row `{other_id}`) are the same run, on the same features with the same \
                 settings: one row would repeat the other; remove one",
                file.display(),
                other.display()
            ))),
            _ => {
                self.runs.insert(p.meta.fingerprint.clone(), (id.to_string(), file.to_path_buf()));
                Ok(())
            }
        }
    }

    /// Refuses runs that would make a mean over seeds lie: a row whose seeds ran with other
    /// settings, or two seeds trained on the same features (a seed's directory copied as another
    /// seed's), naming both files.
    fn check_runs_agree(&mut self, seed: u64, id: &str, file: &Path, p: &Predictions) -> Result<()> {
        let config = without_seed(&(self.settings)(&p.meta.config));
        match self.configs.get(id) {
            Some((first, other)) if *first != config => {
                let differ = lt_core::diff::between("retrain", (first, "there"), (&config, "here"));
                return Err(MetricsError::Invalid(format!(
                    "row `{id}` ran with other settings in {} than in {} ({}): a mean over seeds needs one \
                     configuration; rerun one of them, or give the other settings a row name of their own (`lt retrain \
                     --name`) on every seed",
                    file.display(),
                    other.display(),
                    lt_core::diff::summary(&differ)
                )));
            }
            Some(_) => {}
            None => {
                self.configs.insert(id.to_string(), (config, file.to_path_buf()));
            }
        }
        let fp = &p.meta.features_fingerprint;
        if fp.is_empty() {
            return Ok(());
        }
        match self.features.get(fp) {
            Some((other_seed, other)) if *other_seed != seed => Err(MetricsError::Invalid(format!(
                "{} (seed {seed}) and {} (seed {other_seed}) were trained on the same features ({}…): one seed's \
                 runs copied as another's would count twice; remove the copy",
                file.display(),
                other.display(),
                lt_core::fingerprint::short(fp)
            ))),
            Some(_) => Ok(()),
            None => {
                self.features.insert(fp.clone(), (seed, file.to_path_buf()));
                Ok(())
            }
        }
    }
}

/// The fingerprint of the features artifact at `path`, when there is one (its header only).
fn features_fingerprint(path: &Path) -> Result<Option<String>> {
    if !path.exists() {
        return Ok(None);
    }
    let a = lt_core::Artifact::open(path, lt_core::formats::features::FORMAT)?;
    Ok(Some(a.meta(lt_core::artifact::KEY_FINGERPRINT)?.to_string()))
}

/// Refuses predictions trained on other features than the seed's stage-1 directory holds now
/// (`(path, fingerprint)`; another seed's or run's, or features extracted again since): they
/// would be reported as this seed's, beside plots of its features.
fn check_current_features(file: &Path, trained_on: &str, (features, now): (&Path, &str)) -> Result<()> {
    if !trained_on.is_empty() && now != trained_on {
        return Err(MetricsError::Invalid(format!(
            "{} was trained on other features ({}…) than {} holds now ({}…): another seed's or run's, or \
             features extracted again since; run that row again on this seed's features, or remove it",
            file.display(),
            lt_core::fingerprint::short(trained_on),
            features.display(),
            lt_core::fingerprint::short(now)
        )));
    }
    Ok(())
}

/// Evaluates every `seed-*/stage2/*/predictions.safetensors` under `runs`, refusing what would
/// make the table lie: two directories of one seed filling the same row, test sets that differ
/// between prediction files, a row whose seeds ran with other settings, one seed's runs copied
/// as another's, or predictions trained on features extracted again since. `settings` says how
/// a row's configurations are compared across seeds.
pub fn collect(runs: &Path, settings: SettingsView) -> Result<Collected> {
    let seeds = seeds_in(runs)?;
    if seeds.is_empty() {
        return Err(MetricsError::Invalid(format!(
            "{} holds no seed-* run directories (expected seed-<n>/stage2/<row>/predictions.safetensors, \
             as cargo xtask reproduce lays them out)",
            runs.display()
        )));
    }
    let mut c = Collector::new(settings);
    for &seed in &seeds {
        let stage2 = runs.join(format!("{}{seed}", LAYOUT.seed_prefix)).join(LAYOUT.stage2);
        let Ok(entries) = std::fs::read_dir(&stage2) else { continue };
        let mut dirs: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        dirs.sort();
        let stage1 = LAYOUT.stage1_dir(runs, seed);
        let split = stage1.join(LAYOUT.split);
        let info = if split.exists() { Some(SplitInfo::read(&split)?) } else { None };
        // Read once for the seed's rows.
        let features = stage1.join(LAYOUT.features);
        let current = features_fingerprint(&features)?;
        let given = Stage1 {
            split: info.as_ref().map(|i| (split.as_path(), i)),
            features: current.as_deref().map(|fp| (features.as_path(), fp)),
        };
        for dir in dirs {
            let file = dir.join(LAYOUT.predictions);
            if file.exists() {
                c.add(seed, &dir, &file, &given)?;
            }
        }
    }
    if c.rows.is_empty() {
        return Err(MetricsError::Invalid(format!("no predictions under {}/seed-*/stage2/", runs.display())));
    }
    Ok(Collected {
        runs: runs.to_path_buf(),
        dataset: c.dataset,
        seeds,
        rows: c.rows.into_values().collect(),
        files: c.files,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn predictions(config: Value) -> Predictions {
        Predictions {
            scores: vec![0.0; 2],
            probabilities: false,
            labels: vec![0],
            classes: 2,
            class_counts: None,
            class_names: None,
            meta: lt_core::formats::RunMeta { config, ..Default::default() },
        }
    }

    /// A row's seeds agree when their configurations are the same settings as the view sees
    /// them: a record that leaves a setting out at its default agrees with one that writes it.
    #[test]
    fn seeds_configurations_are_compared_through_the_settings_view() {
        fn filled(c: &Value) -> Value {
            let mut c = c.clone();
            c.as_object_mut().unwrap().entry("epochs").or_insert(10.into());
            c
        }
        let old = predictions(json!({"seed": 0, "lr": 0.1}));
        let new = predictions(json!({"seed": 1, "lr": 0.1, "epochs": 10}));
        let other = predictions(json!({"seed": 2, "lr": 0.1, "epochs": 11}));
        let run = |view: SettingsView, runs: &[&Predictions]| -> Result<()> {
            let mut c = Collector::new(view);
            for (seed, p) in runs.iter().enumerate() {
                c.check_runs_agree(seed as u64, "r", Path::new(&format!("s{seed}")), p)?;
            }
            Ok(())
        };
        run(filled, &[&old, &new]).unwrap();
        let err = run(as_recorded, &[&old, &new]).unwrap_err().to_string();
        assert!(err.contains("retrain.epochs: none there, 10 here"), "{err}");
        let err = run(filled, &[&old, &new, &other]).unwrap_err().to_string();
        assert!(
            err.contains(
                "row `r` ran with other settings in s2 than in s0 (retrain.epochs: 10 there, 11 here)"
            ),
            "{err}"
        );
    }
}
