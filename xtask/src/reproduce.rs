//! `cargo xtask reproduce`: stage 1 (SGD, SWA/SWAG), stochastic representations, every stage-2
//! method and the report, for every seed of a preset; resumable and incremental.
//!
//! Every stage is one `lt` command reading the resolved preset file (`--preset-file`) and the
//! seed; stage 2 runs one `lt retrain --row ID` per row of the plan, which the `lt` binary
//! declares (`lt retrain --list-rows`). Each stage writes into its own directory and, when it
//! succeeds, a `.stage-key` file holding the fingerprint of everything it depends on: the
//! preset sections it reads, for stage 1 the data themselves (`lt data fingerprint`) and the
//! pretrained weights' identity, its row's settings and the keys of the stages it reads from. A
//! stage whose key file matches is skipped, so a second run does nothing, an interrupted run
//! continues (stage 1 resumes from its checkpoint, only under the key it was started with,
//! `.stage-key.pending`; extraction from the part files `lt extract` recognises), and changing
//! one stage-2 knob re-runs only stage 2.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::pretrained;

mod data;
mod dry;
mod keys;
mod state;
pub use data::identity as data_identity;
use dry::print_plan;
use keys::{section, sha, stage1_key};
use state::{clear, key_file, outdated, pending_file, resumes, write_key};
pub use state::{is_done, lock_root, RootLock};

/// Options of a reproduction (the flags of `cargo xtask reproduce`).
#[derive(Clone, Debug, clap::Args)]
pub struct Options {
    /// Preset: synthetic, tiny, fmnist-lt, cifar10-lt, cifar100-lt, imagenet-lt, inat2018, folder.
    #[arg(long, default_value = "synthetic")]
    pub preset: String,
    /// A preset file (a copy of one under presets/, edited); overrides `--preset`.
    #[arg(long)]
    pub preset_file: Option<PathBuf>,
    /// Number of seeds (default: the preset's).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub seeds: Option<u64>,
    /// Where the data sets live.
    #[arg(long)]
    pub data_root: Option<PathBuf>,
    /// Download what is missing and can be downloaded.
    #[arg(long)]
    pub download: bool,
    /// Start stage 1 from pretrained weights: `hub:<org>/<name>[@revision][:file]` or a local
    /// safetensors file (replaces the preset's `[train] init`; `none` trains from scratch).
    #[arg(long)]
    pub init: Option<String>,
    /// Directory of the run directories.
    #[arg(long, default_value = "runs")]
    pub runs_dir: PathBuf,
    /// Device: cpu, cuda, cuda:N (cuda builds `lt` with --features cuda).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Print the plan (every stage, its command line, whether it is cached) and stop.
    #[arg(long)]
    pub dry_run: bool,
    /// Use this `lt` binary instead of building one.
    #[arg(long)]
    pub lt: Option<PathBuf>,
}

/// One stage of the plan.
#[derive(Clone, Debug)]
pub struct Stage {
    /// Human-readable name.
    pub name: String,
    /// Output directory (holds `.stage-key`).
    pub dir: PathBuf,
    /// `lt` arguments.
    pub args: Vec<String>,
    /// Fingerprint of everything the stage depends on.
    pub key: String,
    /// Whether stage 1 may resume from a checkpoint in `dir`.
    pub resumable: bool,
    /// Whether the stage reads the data set's images (stage 1 and the extraction).
    pub reads_data: bool,
}

/// What a reproduction did.
#[derive(Clone, Debug)]
pub struct Summary {
    /// Stages run.
    pub ran: Vec<String>,
    /// Stages skipped (up to date).
    pub skipped: Vec<String>,
    /// The report.
    pub report: PathBuf,
    /// Wall time.
    pub seconds: f64,
}

/// The features artifact `lt extract` writes into a stage-1 folder, which stage 2 reads
/// (`lt_core::layout::FEATURES_FILE`: xtask does not depend on the lt crates, and
/// `crates/lt-cli/tests/reproduce.rs` checks that the names agree).
pub const FEATURES_FILE: &str = "features.safetensors";
/// The checkpoint a stage-1 folder holds while `lt train` runs (`lt_core::layout::CHECKPOINT_FILE`).
pub const CHECKPOINT_FILE: &str = "checkpoint.safetensors";

/// The resolved preset a run root holds, which every stage reads.
pub const PRESET_FILE: &str = "preset.toml";

/// The seeds of a preset ([`load_preset`] refuses a preset without a `seeds` of at least 1).
fn seeds(preset: &toml::Value) -> u64 {
    get(preset, &["seeds"]).and_then(|v| v.as_integer()).unwrap_or(1).max(1) as u64
}

/// The folder of one seed's stages in a run root.
fn seed_dir(run_root: &Path, seed: u64) -> PathBuf {
    run_root.join(format!("seed-{seed}"))
}

/// Stage 1's folder of one seed.
fn stage1_dir(run_root: &Path, seed: u64) -> PathBuf {
    seed_dir(run_root, seed).join("stage1")
}

fn get<'a>(preset: &'a toml::Value, path: &[&str]) -> Option<&'a toml::Value> {
    let mut v = preset;
    for p in path {
        v = v.get(p)?;
    }
    Some(v)
}

/// The preset file a reproduction reads: `--preset-file`, or the shipped preset named.
fn preset_source(root: &Path, opts: &Options) -> PathBuf {
    match &opts.preset_file {
        Some(p) => p.clone(),
        None => root.join("presets").join(format!("{}.toml", opts.preset)),
    }
}

/// Reads and resolves the preset (overrides applied), returning `(name, TOML text, value)`. A
/// data root stays as given: stage 1's key holds it as written, and `lt train` records it
/// absolute for the stages after it.
pub fn load_preset(root: &Path, opts: &Options) -> Result<(String, String, toml::Value)> {
    let path = preset_source(root, opts);
    let text = std::fs::read_to_string(&path).with_context(|| {
        let mut known: Vec<String> = std::fs::read_dir(root.join("presets"))
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "toml"))
                    .map(|p| p.file_stem().unwrap_or_default().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        known.sort();
        format!("reading preset {} (known presets: {})", path.display(), known.join(", "))
    })?;
    let mut value: toml::Value =
        toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let table = value.as_table_mut().context("a preset is a TOML table")?;
    if let Some(s) = opts.seeds {
        let s = i64::try_from(s).context("--seeds is too large")?;
        table.insert("seeds".into(), toml::Value::Integer(s));
    }
    let data = table
        .entry("data")
        .or_insert(toml::Value::Table(Default::default()))
        .as_table_mut()
        .context("[data] is a table")?;
    if let Some(r) = &opts.data_root {
        data.insert("data_root".into(), toml::Value::String(r.display().to_string()));
    }
    if opts.download {
        data.insert("download".into(), toml::Value::Boolean(true));
    }
    if let Some(init) = &opts.init {
        let train = table
            .entry("train")
            .or_insert(toml::Value::Table(Default::default()))
            .as_table_mut()
            .context("[train] is a table")?;
        match init.as_str() {
            "none" => train.remove("init"),
            _ => train.insert("init".into(), toml::Value::String(init.clone())),
        };
    }
    match value.get("seeds") {
        Some(toml::Value::Integer(n)) if *n >= 1 => {}
        other => bail!(
            "preset {}: `seeds` (the number of seeds the pipeline runs) must be an integer >= 1, got {}",
            path.display(),
            other.map_or("none".to_string(), |v| v.to_string())
        ),
    }
    let name = value.get("name").and_then(|v| v.as_str()).unwrap_or(&opts.preset).to_string();
    let resolved = toml::to_string_pretty(&value)?;
    Ok((name, resolved, value))
}

/// One row of stage 2, as the `lt` binary declares it.
#[derive(Clone, Debug, PartialEq)]
pub struct PlanRow {
    /// Identifier (the row's directory).
    pub id: String,
    /// Label in the report.
    pub label: String,
    /// The row's settings on the defaults (JSON; part of the stage key).
    pub settings: String,
}

/// The stage-2 rows the `lt` binary declares (`lt retrain --list-rows`).
pub fn stage2_rows(lt: &Path) -> Result<Vec<PlanRow>> {
    crate::lt_output(lt, &["retrain", "--list-rows"], false)?
        .lines()
        .map(|l| {
            let mut f = l.splitn(3, '\t');
            match (f.next(), f.next(), f.next()) {
                (Some(id), Some(label), Some(settings)) => {
                    Ok(PlanRow { id: id.into(), label: label.into(), settings: settings.into() })
                }
                _ => bail!("`lt retrain --list-rows` printed {l:?}, expected id, label and settings"),
            }
        })
        .collect()
}

/// Builds the plan of a preset: per seed, stage 1, the extraction, and one stage per row.
/// `data_id` is the identity of the preset's data ([`data_identity`]; any text for data not at
/// hand, which no finished stage 1 holds).
pub fn plan(
    lt: &Path,
    run_root: &Path,
    preset_path: &Path,
    preset: &toml::Value,
    device: &str,
    rows: &[PlanRow],
    data_id: &str,
) -> Result<Vec<Stage>> {
    let [data, train, extract, retrain] = ["data", "train", "extract", "retrain"].map(|s| section(preset, s));
    // The pretrained start's identity (file content), so that other weights re-run stage 1.
    let init = get(preset, &["train", "init"])
        .and_then(|v| v.as_str())
        .map(|spec| pretrained::identity(lt, spec))
        .transpose()?;
    let samples =
        get(preset, &["extract", "samples"]).map(|v| v.to_string()).unwrap_or_else(|| "the default".into());
    let p = preset_path.display().to_string();
    let common = |cmd: &str, seed: u64| -> Vec<String> {
        [cmd, "--preset-file", &p, "--seed", &seed.to_string(), "--device", device].map(String::from).to_vec()
    };
    let mut stages = Vec::new();
    for seed in 0..seeds(preset) {
        let (sdir, s1) = (seed_dir(run_root, seed), stage1_dir(run_root, seed));
        let s1key = stage1_key(&data, data_id, &train, seed, init.as_deref());
        let mut args = common("train", seed);
        args.extend(["--out".into(), s1.display().to_string()]);
        stages.push(Stage {
            name: format!("seed {seed}: stage 1 (SGD, SWA/SWAG)"),
            dir: s1.clone(),
            args,
            key: s1key.clone(),
            resumable: true,
            reads_data: true,
        });
        let mut args = common("extract", seed);
        // The stage's key says when the features are outdated (stage 2 is keyed by it too).
        args.extend(["--run".into(), s1.display().to_string(), "--replace".into()]);
        let exkey = sha(&["extract", &s1key, &extract, &seed.to_string()]);
        stages.push(Stage {
            name: format!("seed {seed}: {samples} SWAG samples, features"),
            dir: s1.join("extract"),
            args,
            key: exkey.clone(),
            resumable: false,
            reads_data: true,
        });
        for row in rows {
            let out = sdir.join("stage2").join(&row.id);
            let mut args = common("retrain", seed);
            args.extend([
                "--features".into(),
                s1.join(FEATURES_FILE).display().to_string(),
                "--row".into(),
                row.id.clone(),
                "--out".into(),
                out.display().to_string(),
            ]);
            let key = sha(&["retrain", &exkey, &retrain, &row.id, &row.settings, &seed.to_string()]);
            stages.push(Stage {
                name: format!("seed {seed}: stage 2 {}", row.id),
                dir: out,
                args,
                key,
                resumable: false,
                reads_data: false,
            });
        }
    }
    Ok(stages)
}

/// Runs `f` on the resolved preset `resolved` written to a temporary file, removed after: for the
/// `lt` commands that read a preset file before the run root holds it.
fn with_preset_file<T>(resolved: &str, f: impl FnOnce(&Path) -> Result<T>) -> Result<T> {
    let tmp = std::env::temp_dir().join(format!("lt-preset-{}.toml", std::process::id()));
    std::fs::write(&tmp, resolved).with_context(|| format!("writing {}", tmp.display()))?;
    let out = f(&tmp);
    let _ = std::fs::remove_file(&tmp);
    out
}

/// Checks the preset as the command line completes it (`--data-root`, `--download`, `--seeds`,
/// `--init`) before the run writes it: a `--data-root` for the synthetic set, say, is refused
/// here rather than by the first stage, with the run root already holding it.
fn check_resolved(lt: &Path, source: &Path, resolved: &str) -> Result<()> {
    with_preset_file(resolved, |tmp| {
        crate::lt_output(lt, &["preset".as_ref(), "--preset-file".as_ref(), tmp.as_os_str()], false).map(drop)
    })
    .with_context(|| {
        format!(
            "the preset {} with this command's --data-root, --download, --seeds and --init",
            source.display()
        )
    })
}

/// Runs a reproduction (see the module docs).
pub fn run(root: &Path, opts: &Options) -> Result<Summary> {
    let started = Instant::now();
    let (name, resolved, preset) = load_preset(root, opts)?;
    let run_root = opts.runs_dir.join(&name);
    let preset_path = run_root.join(PRESET_FILE);
    let lt = match &opts.lt {
        Some(p) => p.clone(),
        None => crate::build_lt(root, crate::lt_features(&opts.device), true)?,
    };
    // Every setting of the preset as given, checked first, so that an error names the file and
    // line the user wrote (not the resolved copy), before anything is locked, fetched or written.
    let source = preset_source(root, opts);
    crate::lt_output(&lt, &["preset".as_ref(), "--preset-file".as_ref(), source.as_os_str()], false)?;
    check_resolved(&lt, &source, &resolved)?;
    data::check_same_data(&preset_path, &preset)?;
    let rows = stage2_rows(&lt)?;
    let report = run_root.join("report");
    let stage1_dirs: Vec<PathBuf> = (0..seeds(&preset)).map(|seed| stage1_dir(&run_root, seed)).collect();
    if opts.dry_run {
        let plan_with = |id: &str| plan(&lt, &run_root, &preset_path, &preset, &opts.device, &rows, id);
        let download = get(&preset, &["data", "download"]).and_then(|v| v.as_bool()).unwrap_or(false);
        let (stages, costs) =
            dry::plan_and_costs(&lt, &resolved, (&opts.device, download), &stage1_dirs, plan_with)?;
        print_plan(&name, &stages, &run_root, &report, costs.as_ref());
        if let Some(spec) = get(&preset, &["train", "init"]).and_then(|v| v.as_str()) {
            pretrained::tell_if_not_cached(&lt, spec)?;
        }
        return Ok(Summary { ran: vec![], skipped: vec![], report: report.join("report.md"), seconds: 0.0 });
    }
    let _lock = lock_root(&run_root)?;
    fetch_init(&lt, &preset)?;
    // The resolved preset is what every stage reads; rewrite it only when it changed.
    if std::fs::read_to_string(&preset_path).ok().as_deref() != Some(resolved.as_str()) {
        crate::write_atomic(&preset_path, &resolved)?;
    }
    let download = get(&preset, &["data", "download"]).and_then(|v| v.as_bool()).unwrap_or(false);
    let data = data::find(&lt, &preset_path, download, &stage1_dirs)?;
    let stages = plan(&lt, &run_root, &preset_path, &preset, &opts.device, &rows, data.id())?;
    let (ran, skipped) = run_stages(&lt, &stages, &data, &preset_path)?;
    println!("report of {} seed(s):", seeds(&preset));
    crate::lt_run(&lt, &report_args(&name, &preset, &run_root, &report))?;
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "plots: {}\n{} stage(s) run, {} up to date, {:.0} s",
        report.join("plots").display(),
        ran.len(),
        skipped.len(),
        seconds
    );
    Ok(Summary { ran, skipped, report: report.join("report.md"), seconds })
}

/// Runs the stages not up to date, in order; returns the names of those run and of those skipped.
/// A stage that reads the data stops the reproduction, before anything is cleared, when the data
/// are not at hand.
fn run_stages(
    lt: &Path,
    stages: &[Stage],
    data: &data::Data,
    preset_path: &Path,
) -> Result<(Vec<String>, Vec<String>)> {
    let (mut ran, mut skipped) = (Vec::new(), Vec::new());
    let total = stages.len();
    for (i, s) in stages.iter().enumerate() {
        if is_done(s) {
            println!("[{}/{total}] {} (up to date)", i + 1, s.name);
            skipped.push(s.name.clone());
            continue;
        }
        if s.reads_data && !matches!(data, data::Data::Found(_)) {
            // Stop before clearing anything: the stage would fail for want of the images.
            let why = data::why_absent(lt, preset_path).map_or(String::new(), |e| format!(": {e}"));
            bail!("{} must run and reads the data, which are not at hand{why}", s.name);
        }
        println!("[{}/{total}] {}", i + 1, s.name);
        let t = Instant::now();
        run_stage(lt, s)?;
        println!("[{}/{total}] {} done in {:.1} s", i + 1, s.name, t.elapsed().as_secs_f64());
        ran.push(s.name.clone());
    }
    Ok((ran, skipped))
}

/// Fetches a hub init into the cache unless it is there, so that the plan names the file it
/// trains from.
fn fetch_init(lt: &Path, preset: &toml::Value) -> Result<()> {
    match get(preset, &["train", "init"]).and_then(|v| v.as_str()) {
        Some(spec) if spec.starts_with("hub:") => pretrained::fetch(lt, spec),
        _ => Ok(()),
    }
}

/// Runs one stage: a stage whose inputs changed starts afresh, one that was interrupted resumes;
/// the key is written when the stage succeeded.
fn run_stage(lt: &Path, s: &Stage) -> Result<()> {
    let mut args = s.args.clone();
    if resumes(s) {
        args.push("--resume".into());
    } else if outdated(s) {
        clear(&s.dir)?;
    }
    std::fs::create_dir_all(&s.dir)?;
    write_key(&pending_file(&s.dir), &s.key)?;
    crate::lt_run(lt, &args)?;
    write_key(&key_file(&s.dir), &s.key)?;
    std::fs::remove_file(pending_file(&s.dir))?;
    Ok(())
}

/// The `lt report` command line of a reproduction.
fn report_args(name: &str, preset: &toml::Value, run_root: &Path, report: &Path) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "report".into(),
        "--runs".into(),
        run_root.display().to_string(),
        "--out".into(),
        report.display().to_string(),
        "--title".into(),
        format!("SRepr reproduction: preset {name}"),
    ];
    if let Some(p) = get(preset, &["report", "paper"]).and_then(|v| v.as_str()) {
        args.extend(["--paper".into(), p.into()]);
    }
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A preset's `seeds` below 1 (or missing) is refused, naming the file and the field, where
    /// it was taken as 1.
    #[test]
    fn a_preset_without_a_seed_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root = crate::workspace_root();
        let text = std::fs::read_to_string(root.join("presets/tiny.toml")).unwrap();
        for (seeds, found) in [("seeds = 0", "got 0"), ("seeds = -3", "got -3"), ("", "got none")] {
            let file = dir.path().join("p.toml");
            let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with("seeds")).collect();
            std::fs::write(&file, format!("{seeds}\n{}", lines.join("\n"))).unwrap();
            let opts = Options {
                preset: "tiny".into(),
                preset_file: Some(file.clone()),
                seeds: None,
                data_root: None,
                download: false,
                init: None,
                runs_dir: dir.path().to_path_buf(),
                device: "cpu".into(),
                dry_run: true,
                lt: None,
            };
            let err = format!("{:#}", load_preset(&root, &opts).unwrap_err());
            assert!(
                err.contains(&file.display().to_string()) && err.contains("`seeds`") && err.contains(found),
                "{err}"
            );
            // The command line's --seeds replaces it.
            assert!(load_preset(&root, &Options { seeds: Some(2), ..opts }).is_ok());
        }
    }
}
