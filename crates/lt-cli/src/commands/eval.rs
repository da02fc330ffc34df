//! `lt eval` (metrics of one prediction set) and `lt report` (a run's table, JSON and plots).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use lt_core::Artifact;
use lt_metrics::classification::{confidences, reliability, BinEdges};
use lt_metrics::plots::{self, Series};
use lt_metrics::report::{self, Row};
use lt_metrics::{evaluate, Evaluation, Predictions};

fn edges(name: &str) -> Result<BinEdges> {
    Ok(match name {
        "guo" => BinEdges::Guo,
        "lower-closed" | "torchmetrics" => BinEdges::LowerClosed,
        other => bail!("--bin-edges must be guo or lower-closed, got {other:?}"),
    })
}

/// `lt eval`
#[derive(Args)]
pub struct EvalArgs {
    /// Predictions artifact (`lt.predictions`: logits or probs, labels).
    #[arg(long)]
    predictions: PathBuf,
    /// Split artifact giving the shot groups (default: the class counts in the predictions).
    #[arg(long)]
    split_info: Option<PathBuf>,
    /// Directory for `<method>.json` and the reliability diagram.
    #[arg(long)]
    out: Option<PathBuf>,
    /// ECE bins.
    #[arg(long, default_value_t = 15)]
    bins: usize,
    /// Bin edges: guo ((lo, hi], the default) or lower-closed ([lo, hi), torchmetrics).
    #[arg(long, default_value = "guo")]
    bin_edges: String,
}

fn evaluate_file(
    path: &Path,
    split: Option<&Path>,
    bins: usize,
    e: BinEdges,
) -> Result<(Predictions, Evaluation)> {
    let p = Predictions::read(path).with_context(|| format!("reading {}", path.display()))?;
    let groups = p.groups(split)?;
    let ev =
        evaluate(&p.scores()?, &groups, bins, e).with_context(|| format!("evaluating {}", path.display()))?;
    Ok((p, ev))
}

fn pct(v: Option<f64>) -> String {
    v.map(|x| format!("{:.2}", 100.0 * x)).unwrap_or_else(|| "-".into())
}

/// Runs `lt eval`.
pub fn run_eval(a: EvalArgs) -> Result<()> {
    let e = edges(&a.bin_edges)?;
    let (p, ev) = evaluate_file(&a.predictions, a.split_info.as_deref(), a.bins, e)?;
    println!(
        "{:<28} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7}",
        "method", "Many", "Medium", "Few", "All", "NLL", "ECE"
    );
    let name = format!(
        "{} {}",
        p.backbone,
        if p.method_label.is_empty() { p.method.clone() } else { p.method_label.clone() }
    );
    println!(
        "{:<28} {:>7} {:>7} {:>7} {:>7.2} {:>7.3} {:>7.3}",
        name,
        pct(ev.many),
        pct(ev.medium),
        pct(ev.few),
        100.0 * ev.accuracy,
        ev.nll,
        ev.ece
    );
    if let Some(top5) = ev.top5 {
        println!("top-5 accuracy {:.2}", 100.0 * top5);
    }
    if let Some(out) = &a.out {
        std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
        let stem = if p.method.is_empty() {
            "predictions".to_string()
        } else {
            format!("{}-{}", p.backbone, p.method)
        };
        let json = out.join(format!("{stem}.json"));
        let body = serde_json::json!({"predictions": a.predictions, "method": p.method, "backbone": p.backbone, "seed": p.seed, "metrics": ev});
        lt_core::atomic::write_bytes_atomic(&json, serde_json::to_string_pretty(&body)?.as_bytes())?;
        let (c, ok) = confidences(&p.scores()?);
        plots::reliability_diagram(
            &reliability(&c, &ok, a.bins, e),
            &format!("{name}: reliability"),
            &out.join(format!("{stem}-reliability")),
        )?;
        println!("wrote {} and the reliability diagram", json.display());
    }
    Ok(())
}

/// `lt report`
#[derive(Args)]
pub struct ReportArgs {
    /// Directory holding `seed-*/stage2/*/predictions.safetensors` (and `seed-*/stage1/`).
    #[arg(long)]
    runs: PathBuf,
    /// Output directory (report.md, report.json, plots/).
    #[arg(long)]
    out: PathBuf,
    /// Title of the report.
    #[arg(long, default_value = "SRepr reproduction")]
    title: String,
    /// Paper table to show beside ours (imagenet-lt).
    #[arg(long)]
    paper: Option<String>,
}

/// Sort key of a method in the table (the poster's order, then the rest).
fn method_rank(method: &str, label: &str) -> (usize, String) {
    let order =
        ["none", "crt", "lws", "tau-norm", "la", "la-posthoc", "balanced-softmax", "disalign", "srepr"];
    let r = order.iter().position(|m| *m == method).unwrap_or(order.len());
    // The (b) ablation (no distillation) sits before SRepr.
    let sub = if label.contains("(b)") { 0 } else { 1 };
    (r * 2 + sub, label.to_string())
}

/// Everything the report found: rows and, per seed, the predictions files.
pub struct Collected {
    /// Table rows in order.
    pub rows: Vec<Row>,
    /// Data set name (from the predictions' metadata).
    pub dataset: String,
}

/// Evaluates every `seed-*/stage2/*/predictions.safetensors` under `runs`.
pub fn collect(runs: &Path) -> Result<Collected> {
    let mut seeds: Vec<PathBuf> = std::fs::read_dir(runs)
        .with_context(|| format!("reading {}", runs.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir() && p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("seed-")))
        .collect();
    seeds.sort();
    if seeds.is_empty() {
        bail!("{} holds no seed-* run directories", runs.display());
    }
    let mut rows: BTreeMap<(usize, (usize, String)), Row> = BTreeMap::new();
    let mut dataset = String::new();
    for seed in &seeds {
        let stage2 = seed.join("stage2");
        let Ok(entries) = std::fs::read_dir(&stage2) else { continue };
        let mut dirs: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        dirs.sort();
        for d in dirs {
            let file = d.join("predictions.safetensors");
            if !file.exists() {
                continue;
            }
            let split = seed.join("stage1/split.safetensors");
            let (p, ev) = evaluate_file(&file, split.exists().then_some(split.as_path()), 15, BinEdges::Guo)?;
            if dataset.is_empty() {
                dataset = Artifact::open_any(&file)?.meta_opt("dataset").unwrap_or("").to_string();
            }
            let backbone = p.backbone.to_uppercase();
            let key = (usize::from(backbone != "SGD"), method_rank(&p.method, &p.method_label));
            rows.entry(key)
                .or_insert_with(|| Row {
                    backbone: backbone.clone(),
                    method: p.method_label.clone(),
                    evaluations: Vec::new(),
                })
                .evaluations
                .push(ev);
        }
    }
    if rows.is_empty() {
        bail!("no predictions under {}/seed-*/stage2/", runs.display());
    }
    Ok(Collected { rows: rows.into_values().collect(), dataset })
}

/// Runs `lt report`: prints the table, writes report.md, report.json and the plots.
pub fn run_report(a: ReportArgs) -> Result<PathBuf> {
    let c = collect(&a.runs)?;
    let paper = a.paper.as_deref().or(Some(c.dataset.as_str())).and_then(report::paper_table);
    std::fs::create_dir_all(a.out.join("plots")).with_context(|| format!("creating {}", a.out.display()))?;
    let description = format!("Data set `{}`; runs in `{}`.", c.dataset, a.runs.display());
    let md = report::markdown(&a.title, &description, &c.rows, paper);
    let md_path = a.out.join("report.md");
    lt_core::atomic::write_bytes_atomic(&md_path, md.as_bytes())?;
    let summaries: Vec<_> = c.rows.iter().map(|r| r.summary()).collect();
    let json = serde_json::json!({"dataset": c.dataset, "rows": summaries, "per_seed": c.rows});
    lt_core::atomic::write_bytes_atomic(
        &a.out.join("report.json"),
        serde_json::to_string_pretty(&json)?.as_bytes(),
    )?;
    plots_for(&a.runs, &a.out.join("plots"), &c)?;
    print!("{}", report::text_table(&c.rows));
    println!("report: {}", md_path.display());
    Ok(md_path)
}

fn plots_for(runs: &Path, dir: &Path, c: &Collected) -> Result<()> {
    // The first seed's artifacts give the per-class plots.
    let seed0 = {
        let mut v: Vec<PathBuf> = std::fs::read_dir(runs)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.join("stage2").is_dir())
            .collect();
        v.sort();
        v.into_iter().next()
    };
    let Some(seed0) = seed0 else { return Ok(()) };
    let split = seed0.join("stage1/split.safetensors");
    let counts: Option<Vec<usize>> = lt_core::split::SplitInfo::read(&split).ok().map(|s| s.class_counts());
    // Per-class accuracy of a few rows against class index, with the training counts.
    let wanted = [("SGD", "-"), ("SWA", "-"), ("SWA", "LA"), ("SWA", "SRepr")];
    let series: Vec<Series> = wanted
        .iter()
        .filter_map(|(b, m)| c.rows.iter().find(|r| r.backbone == *b && r.method == *m))
        .map(|r| Series {
            label: format!("{} {}", r.backbone, r.method),
            values: r.evaluations[0].per_class.clone(),
        })
        .collect();
    if let (Some(counts), false) = (&counts, series.is_empty()) {
        plots::per_class(
            &series,
            counts,
            "Per-class test accuracy (first seed)",
            "accuracy",
            1.0,
            &dir.join("per_class_accuracy"),
        )?;
    }
    // Reliability diagrams of every row (first seed).
    for entry in std::fs::read_dir(seed0.join("stage2"))?.filter_map(|e| e.ok()) {
        let file = entry.path().join("predictions.safetensors");
        if let Ok(p) = Predictions::read(&file) {
            let (conf, ok) = confidences(&p.scores()?);
            let name = entry.file_name().to_string_lossy().into_owned();
            plots::reliability_diagram(
                &reliability(&conf, &ok, 15, BinEdges::Guo),
                &format!("{name}: reliability"),
                &dir.join(format!("reliability-{name}")),
            )?;
        }
    }
    // Per-class dispersion of the stochastic representations (poster Figure 3).
    let features = seed0.join("stage1/features.safetensors");
    if let (Some(counts), true) = (&counts, features.exists()) {
        if let Some(d) = dispersion_of(&features)? {
            let series =
                vec![Series { label: "representation space".into(), values: d.class_representation.clone() }];
            let ymax = d.class_representation.iter().flatten().fold(0f64, |m, &v| m.max(v)) * 1.1 + 1e-12;
            plots::per_class(
                &series,
                counts,
                "Dispersion of stochastic representations (test)",
                "dispersion",
                ymax,
                &dir.join("dispersion_representation"),
            )?;
            let series =
                vec![Series { label: "probability space".into(), values: d.class_probability.clone() }];
            let ymax = d.class_probability.iter().flatten().fold(0f64, |m, &v| m.max(v)) * 1.1 + 1e-12;
            plots::per_class(
                &series,
                counts,
                "Dispersion in probability space (test)",
                "mutual information",
                ymax,
                &dir.join("dispersion_probability"),
            )?;
            lt_core::atomic::write_bytes_atomic(
                &dir.join("dispersion.json"),
                serde_json::to_string_pretty(&d)?.as_bytes(),
            )?;
        }
    }
    Ok(())
}

/// Dispersion of the SWAG samples of a features artifact's test split under its SWA head.
pub fn dispersion_of(features: &Path) -> Result<Option<lt_metrics::dispersion::Dispersion>> {
    let a = Artifact::open(features, lt_core::Format { name: "lt.features", version: 1 })?;
    let kinds: Vec<serde_json::Value> = a.meta_json("samples")?;
    let swag: Vec<usize> =
        kinds.iter().enumerate().filter(|(_, k)| k["kind"] == "swag").map(|(i, _)| i).collect();
    if swag.len() < 2 {
        return Ok(None);
    }
    let info = a.info("test.features")?.clone();
    let (n, d) = (info.shape[1], info.shape[2]);
    let all = a.f32("test.features")?;
    let members: Vec<&[f32]> = swag.iter().map(|&s| &all[s * n * d..(s + 1) * n * d]).collect();
    let classes: usize = a.meta_parse("num_classes")?;
    let labels: Vec<u32> = a.indices("test.labels", classes)?.into_iter().map(|y| y as u32).collect();
    let w = a.f32("head.swa.weight")?;
    let b = a.f32("head.swa.bias")?;
    Ok(Some(lt_metrics::dispersion::dispersion(&members, d, &w, &b, &labels)?))
}
