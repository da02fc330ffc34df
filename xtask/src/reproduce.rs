//! `cargo xtask reproduce`: stage 1 (SGD, SWA/SWAG), stochastic representations, every stage-2
//! method and the report, for every seed of a preset; resumable and incremental.
//!
//! Each stage writes into its own directory and, when it succeeds, a `.stage-key` file holding
//! the fingerprint of everything it depends on: its command line, the preset sections it reads
//! and the keys of the stages it reads from. A stage whose key file matches is skipped, so a
//! second run does nothing, an interrupted run continues (stage 1 resumes from its checkpoint,
//! extraction from its part files), and changing one stage-2 knob re-runs only that stage.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

/// Options of a reproduction.
#[derive(Clone, Debug)]
pub struct Options {
    /// Embedded preset name (`presets/<name>.toml`), unless `preset_file` is given.
    pub preset: String,
    /// A preset file (overrides `preset`).
    pub preset_file: Option<PathBuf>,
    /// Override of the preset's seed count.
    pub seeds: Option<usize>,
    /// Override of the data root.
    pub data_root: Option<PathBuf>,
    /// Download missing data.
    pub download: bool,
    /// Where run directories go.
    pub runs_dir: PathBuf,
    /// Device (`cpu`, `cuda`, `cuda:N`).
    pub device: String,
    /// Print the plan only.
    pub dry_run: bool,
    /// The `lt` binary to run (built in release mode when `None`).
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

fn sha(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p.as_bytes());
    }
    hex::encode(h.finalize())
}

fn section(preset: &toml::Value, name: &str) -> String {
    preset.get(name).map(|v| serde_json::to_string(v).expect("json")).unwrap_or_default()
}

fn get<'a>(preset: &'a toml::Value, path: &[&str]) -> Option<&'a toml::Value> {
    let mut v = preset;
    for p in path {
        v = v.get(p)?;
    }
    Some(v)
}

fn num(preset: &toml::Value, path: &[&str]) -> Option<String> {
    get(preset, path).map(|v| match v {
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Float(f) => f.to_string(),
        other => other.to_string(),
    })
}

/// Reads and resolves the preset (overrides applied), returning `(name, TOML text, value)`.
pub fn load_preset(root: &Path, opts: &Options) -> Result<(String, String, toml::Value)> {
    let path = match &opts.preset_file {
        Some(p) => p.clone(),
        None => root.join("presets").join(format!("{}.toml", opts.preset)),
    };
    let text = std::fs::read_to_string(&path).with_context(|| {
        let known: Vec<String> = std::fs::read_dir(root.join("presets"))
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.path().file_stem().unwrap_or_default().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        format!("reading preset {} (known presets: {})", path.display(), known.join(", "))
    })?;
    let mut value: toml::Value =
        toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let table = value.as_table_mut().context("a preset is a TOML table")?;
    if let Some(s) = opts.seeds {
        table.insert("seeds".into(), toml::Value::Integer(s as i64));
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
    let name = value.get("name").and_then(|v| v.as_str()).unwrap_or(&opts.preset).to_string();
    let resolved = toml::to_string_pretty(&value)?;
    Ok((name, resolved, value))
}

/// The stage-2 runs of every seed: `(id, arguments)`.
pub fn stage2_methods() -> Vec<(String, Vec<String>)> {
    let mut v = Vec::new();
    for backbone in ["sgd", "swa"] {
        for m in ["none", "crt", "lws", "tau-norm", "la", "la-posthoc", "balanced-softmax", "disalign"] {
            v.push((
                format!("{backbone}-{m}"),
                vec!["--backbone".into(), backbone.into(), "--method".into(), m.into()],
            ));
        }
    }
    v.push((
        "swa-srepr-lambda0".into(),
        vec![
            "--backbone".into(),
            "swa".into(),
            "--method".into(),
            "srepr".into(),
            "--lambda".into(),
            "0".into(),
        ],
    ));
    v.push(("swa-srepr".into(), vec!["--backbone".into(), "swa".into(), "--method".into(), "srepr".into()]));
    v
}

/// Builds the plan of a preset.
pub fn plan(run_root: &Path, preset_path: &Path, preset: &toml::Value, device: &str) -> Result<Vec<Stage>> {
    let seeds = get(preset, &["seeds"]).and_then(|v| v.as_integer()).unwrap_or(1).max(1) as u64;
    let data = section(preset, "data");
    let train = section(preset, "train");
    let extract = section(preset, "extract");
    let retrain = section(preset, "retrain");
    let samples = num(preset, &["extract", "samples"]).unwrap_or_else(|| "8".into());
    let scale = num(preset, &["extract", "scale"]).unwrap_or_else(|| "0.5".into());
    let half = get(preset, &["extract", "half"]).and_then(|v| v.as_bool()).unwrap_or(false);
    let mut common2 = Vec::new();
    for (flag, key) in [
        ("--epochs", "epochs"),
        ("--batch-size", "batch_size"),
        ("--lr", "lr"),
        ("--weight-decay", "weight_decay"),
    ] {
        if let Some(v) = num(preset, &["retrain", key]) {
            common2.push(flag.to_string());
            common2.push(v);
        }
    }
    let mut stages = Vec::new();
    let p = preset_path.display().to_string();
    for seed in 0..seeds {
        let sdir = run_root.join(format!("seed-{seed}"));
        let s1 = sdir.join("stage1");
        let s1key = sha(&["stage1", &data, &train, &seed.to_string()]);
        stages.push(Stage {
            name: format!("seed {seed}: stage 1 (SGD, SWA/SWAG)"),
            dir: s1.clone(),
            args: vec![
                "train".into(),
                "--preset-file".into(),
                p.clone(),
                "--seed".into(),
                seed.to_string(),
                "--out".into(),
                s1.display().to_string(),
                "--device".into(),
                device.into(),
            ],
            key: s1key.clone(),
            resumable: true,
        });
        let mut ex_args = vec![
            "extract".into(),
            "--run".into(),
            s1.display().to_string(),
            "--samples".into(),
            samples.clone(),
            "--scale".into(),
            scale.clone(),
            "--seed".into(),
            seed.to_string(),
            "--device".into(),
            device.into(),
        ];
        if half {
            ex_args.push("--half".into());
        }
        let exkey = sha(&["extract", &s1key, &extract, &seed.to_string()]);
        stages.push(Stage {
            name: format!("seed {seed}: {samples} SWAG samples, features"),
            dir: s1.join("extract"),
            args: ex_args,
            key: exkey.clone(),
            resumable: false,
        });
        for (id, margs) in stage2_methods() {
            let out = sdir.join("stage2").join(&id);
            let mut args = vec![
                "retrain".into(),
                "--features".into(),
                s1.join("features.safetensors").display().to_string(),
            ];
            args.extend(margs.iter().cloned());
            args.extend(common2.iter().cloned());
            args.extend([
                "--seed".into(),
                seed.to_string(),
                "--out".into(),
                out.display().to_string(),
                "--device".into(),
                device.into(),
            ]);
            let key = sha(&["retrain", &exkey, &retrain, &margs.join(" "), &seed.to_string()]);
            stages.push(Stage {
                name: format!("seed {seed}: stage 2 {id}"),
                dir: out,
                args,
                key,
                resumable: false,
            });
        }
    }
    Ok(stages)
}

fn key_file(dir: &Path) -> PathBuf {
    dir.join(".stage-key")
}

/// Whether a stage is up to date.
pub fn is_done(stage: &Stage) -> bool {
    std::fs::read_to_string(key_file(&stage.dir)).map(|k| k.trim() == stage.key).unwrap_or(false)
}

fn run_lt(lt: &Path, args: &[String]) -> Result<()> {
    let status = Command::new(lt).args(args).status().with_context(|| format!("running {}", lt.display()))?;
    if !status.success() {
        bail!("`lt {}` failed ({status})", args.join(" "));
    }
    Ok(())
}

/// Runs a reproduction (see the module docs).
pub fn run(root: &Path, opts: &Options) -> Result<Summary> {
    let started = Instant::now();
    let (name, resolved, preset) = load_preset(root, opts)?;
    let run_root = opts.runs_dir.join(&name);
    let preset_path = run_root.join("preset.toml");
    let stages = plan(&run_root, &preset_path, &preset, &opts.device)?;
    if opts.dry_run {
        println!("preset {name}: {} stages into {}", stages.len() + 1, run_root.display());
        for s in &stages {
            let state = if is_done(s) {
                "cached"
            } else if s.resumable && s.dir.join("checkpoint.safetensors").exists() {
                "resumes"
            } else {
                "runs"
            };
            println!("[{state:>7}] {}\n          lt {}", s.name, s.args.join(" "));
        }
        println!(
            "[   runs] report\n          lt report --runs {} --out {}",
            run_root.display(),
            run_root.join("report").display()
        );
        return Ok(Summary {
            ran: vec![],
            skipped: vec![],
            report: run_root.join("report/report.md"),
            seconds: 0.0,
        });
    }
    std::fs::create_dir_all(&run_root).with_context(|| format!("creating {}", run_root.display()))?;
    // The resolved preset is what `lt train` reads; rewrite it only when it changed.
    if std::fs::read_to_string(&preset_path).ok().as_deref() != Some(resolved.as_str()) {
        std::fs::write(&preset_path, &resolved)
            .with_context(|| format!("writing {}", preset_path.display()))?;
    }
    let features: Vec<&str> = if opts.device.starts_with("cuda") { vec!["cuda"] } else { vec![] };
    let lt = match &opts.lt {
        Some(p) => p.clone(),
        None => crate::build_lt(root, &features)?,
    };
    let (mut ran, mut skipped) = (Vec::new(), Vec::new());
    let total = stages.len();
    for (i, s) in stages.iter().enumerate() {
        if is_done(s) {
            println!("[{}/{total}] {} (up to date)", i + 1, s.name);
            skipped.push(s.name.clone());
            continue;
        }
        // A stage whose inputs changed starts afresh; one that was interrupted resumes.
        if key_file(&s.dir).exists() {
            std::fs::remove_dir_all(&s.dir)
                .with_context(|| format!("clearing the outdated {}", s.dir.display()))?;
        }
        let mut args = s.args.clone();
        if s.resumable && s.dir.join("checkpoint.safetensors").exists() {
            args.push("--resume".into());
        }
        println!("[{}/{total}] {}", i + 1, s.name);
        let t = Instant::now();
        std::fs::create_dir_all(&s.dir)?;
        run_lt(&lt, &args)?;
        std::fs::write(key_file(&s.dir), &s.key)?;
        println!("[{}/{total}] {} done in {:.1} s", i + 1, s.name, t.elapsed().as_secs_f64());
        ran.push(s.name.clone());
    }
    let report_dir = run_root.join("report");
    let mut args: Vec<String> = vec![
        "report".into(),
        "--runs".into(),
        run_root.display().to_string(),
        "--out".into(),
        report_dir.display().to_string(),
    ];
    args.extend(["--title".into(), format!("SRepr reproduction: preset {name}")]);
    if let Some(p) = get(&preset, &["report", "paper"]).and_then(|v| v.as_str()) {
        args.extend(["--paper".into(), p.into()]);
    }
    println!("report of {} seed(s):", get(&preset, &["seeds"]).and_then(|v| v.as_integer()).unwrap_or(1));
    run_lt(&lt, &args)?;
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "plots: {}\n{} stage(s) run, {} up to date, {:.0} s",
        report_dir.join("plots").display(),
        ran.len(),
        skipped.len(),
        seconds
    );
    Ok(Summary { ran, skipped, report: report_dir.join("report.md"), seconds })
}
