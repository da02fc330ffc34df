//! `lt eval` (metrics of one prediction set) and `lt report` (a reproduction's tables, JSON and
//! plots, built by `lt_metrics::report` from the plan's rows).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use lt_metrics::classification::{confidences, reliability, BinEdges, ECE_BINS};
use lt_metrics::predictions::{Predictions, PredictionsExt};
use lt_metrics::report::{self, ReportSpec, TableSpec};
use lt_metrics::{evaluate, plots};
use lt_retrain::rows::{Table, PER_CLASS_PLOT, ROWS};
use lt_retrain::RetrainConfig;

/// `lt eval`
#[derive(Args)]
pub struct EvalArgs {
    /// Predictions artifact (`lt.predictions`: logits or probs, labels).
    #[arg(long)]
    predictions: PathBuf,
    /// Split artifact giving the shot groups (default: the class counts in the predictions, which
    /// it must agree with where they are recorded).
    #[arg(long)]
    split_info: Option<PathBuf>,
    /// Directory for `<row>-seed-<s>.json` (the row and seed the predictions record) and the
    /// reliability diagram `<row>-seed-<s>-reliability.{png,svg}`.
    #[arg(long)]
    out: Option<PathBuf>,
    /// ECE bins.
    #[arg(long, default_value_t = ECE_BINS as u16, value_parser = clap::value_parser!(u16).range(1..))]
    bins: u16,
    /// Bin edges.
    #[arg(long, value_enum, default_value = "guo")]
    bin_edges: BinEdges,
}

/// Runs `lt eval`.
pub fn run_eval(a: EvalArgs) -> Result<()> {
    let (bins, edges) = (usize::from(a.bins), a.bin_edges);
    let p =
        Predictions::read(&a.predictions).with_context(|| format!("reading {}", a.predictions.display()))?;
    let groups = p
        .groups(a.split_info.as_deref())
        .with_context(|| format!("grouping the classes of {}", a.predictions.display()))?;
    let scores = p.scores().with_context(|| format!("reading {}", a.predictions.display()))?;
    let ev = evaluate(&scores, &groups, bins, edges)
        .with_context(|| format!("evaluating {}", a.predictions.display()))?;
    let name = format!(
        "{} {}",
        p.meta.backbone,
        if p.meta.label.is_empty() { p.meta.method.clone() } else { p.meta.label.clone() }
    );
    let pct = |v: Option<f64>| v.map(|x| format!("{:.2}", 100.0 * x)).unwrap_or_else(|| "-".into());
    println!(
        "{:<28} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7}",
        "method", "Many", "Medium", "Few", "All", "NLL", "ECE"
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
    // The knobs, as `lt retrain` said them (a foreign artifact may record none).
    let knobs = super::knobs_said(&p.meta.facts);
    if let Some(said) = knobs.strip_prefix(", ") {
        println!("knobs: {said}");
    }
    if let Some(out) = &a.out {
        let _lock = lt_core::lock::RunLock::acquire_and_clean(out)?;
        let stem = file_stem(&p.meta.row, p.meta.seed);
        let json = out.join(format!("{stem}.json"));
        let knobs = lt_core::formats::facts::knobs(&p.meta.facts);
        let body = serde_json::json!({"predictions": a.predictions, "row": p.meta.row, "method": p.meta.method, "backbone": p.meta.backbone, "seed": p.meta.seed, "knobs": knobs, "metrics": ev});
        lt_core::atomic::write_bytes_atomic(&json, serde_json::to_string_pretty(&body)?.as_bytes())?;
        let (c, ok) = confidences(&scores);
        plots::reliability_diagram(
            &reliability(&c, &ok, bins, edges)?,
            &format!("{name}: reliability ({} test images)", p.labels.len()),
            &out.join(format!("{stem}-reliability")),
        )?;
        println!("wrote {} and the reliability diagram", json.display());
    }
    Ok(())
}

/// The name `lt eval --out` gives a run's files: its row and seed, so that the runs of several
/// seeds (or rows) go side by side, made a plain file name whatever a foreign artifact records
/// (no separators, no leading dot).
fn file_stem(row: &str, seed: Option<u64>) -> String {
    let row = lt_core::layout::row_file_name(row);
    match seed {
        Some(s) => format!("{row}-seed-{s}"),
        None => row.to_string(),
    }
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
    /// Paper table to show beside ours (default: the data set's, if the poster has one).
    #[arg(long)]
    paper: Option<String>,
}

/// A recorded stage-2 configuration as its settings with the defaults filled in
/// ([`RetrainConfig::settings`]), for `lt report` to compare a row's seeds; a record that no
/// longer reads as a configuration is compared as it stands.
fn retrain_settings(recorded: &serde_json::Value) -> serde_json::Value {
    serde_json::from_value::<RetrainConfig>(recorded.clone())
        .ok()
        .and_then(|c| c.settings().ok())
        .unwrap_or_else(|| recorded.clone())
}

/// The report's layout: the plan's rows in order, in their tables.
fn spec(title: &str, paper: Option<&'static [report::PaperRow]>) -> ReportSpec {
    let ids = |t: Table| ROWS.iter().filter(|r| r.table == t).map(|r| r.id.to_string()).collect();
    ReportSpec {
        title: title.to_string(),
        tables: Table::ALL
            .iter()
            .map(|&t| TableSpec { title: t.title().into(), rows: ids(t), note: t.note().into() })
            .collect(),
        per_class_rows: PER_CLASS_PLOT.iter().map(|s| s.to_string()).collect(),
        paper,
    }
}

/// Runs `lt report`: prints the tables, writes report.md, report.json and the plots.
pub fn run_report(a: ReportArgs) -> Result<PathBuf> {
    let c = report::collect(&a.runs, retrain_settings)?;
    let paper = match &a.paper {
        Some(name) => match report::paper_table(name) {
            Some(t) => Some(t),
            None => bail!("no paper table for {name:?} (the poster has imagenet-lt)"),
        },
        None => report::paper_table(&c.dataset),
    };
    let spec = spec(&a.title, paper);
    let _lock = lt_core::lock::RunLock::acquire_and_clean(&a.out)?;
    let md = report::write(&a.out, &spec, &c)?;
    print!("{}", report::text_table(&spec, &c.rows));
    // The dispersion plots are drawn from the first stage 1's features, when they are there.
    match c.first_stage1() {
        Some((_, stage1)) if !stage1.join(report::LAYOUT.features).exists() => {
            println!("no dispersion plots: {} is not there", stage1.join(report::LAYOUT.features).display())
        }
        Some(_) => {}
        None => println!(
            "no per-class or dispersion plots: no seed's stage-1 directory is under {}",
            a.runs.display()
        ),
    }
    println!("report: {}", md.display());
    Ok(md)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `lt report` compares a row's seeds as settings: a record that leaves out a setting at its
    /// default is the same run as one that writes it; another value is not; a record that does
    /// not read as a configuration stands as it is.
    #[test]
    fn a_recorded_configuration_is_compared_with_its_defaults_filled_in() {
        let full = serde_json::to_value(RetrainConfig::default()).unwrap();
        let mut short = full.clone();
        let epochs = short.as_object_mut().unwrap().remove("epochs");
        assert!(epochs.is_some());
        assert_eq!(retrain_settings(&short), retrain_settings(&full));
        assert_ne!(short, full);
        let other = serde_json::json!({"epochs": 1234});
        assert_ne!(retrain_settings(&other), retrain_settings(&full));
        let foreign = serde_json::json!({"method": "nope"});
        assert_eq!(retrain_settings(&foreign), foreign);
    }

    #[test]
    fn a_runs_files_are_named_by_row_and_seed_inside_the_folder() {
        assert_eq!(file_stem("swa-srepr", Some(2)), "swa-srepr-seed-2");
        assert_eq!(file_stem("", None), "predictions");
        assert_eq!(file_stem("../../etc/x", Some(0)), "_.._etc_x-seed-0");
        assert_eq!(file_stem("..", None), "predictions");
    }

    /// Each of the poster's rows names a row of the plan on its backbone, and the report prints it
    /// right below that row (matched by id: renaming a label cannot drop it).
    #[test]
    fn every_paper_row_stands_below_its_plan_row() {
        let paper = &report::IMAGENET_LT_PAPER;
        let rows: Vec<report::Row> =
            ROWS.iter().map(|r| report::Row::new(r.id, &r.backbone.name().to_uppercase(), r.label)).collect();
        let md = report::markdown(&spec("ImageNet-LT", Some(paper)), "", &rows);
        let lines: Vec<&str> = md.lines().collect();
        for p in paper {
            let plan = ROWS.iter().find(|r| r.id == p.id).unwrap_or_else(|| panic!("{}: no such row", p.id));
            assert_eq!(plan.backbone.name().to_uppercase(), p.backbone, "{}", p.id);
            let ours = format!("| {} | {} |", p.backbone, plan.label);
            let at =
                lines.iter().position(|l| l.starts_with(&ours)).unwrap_or_else(|| panic!("{ours}: {md}"));
            let below = format!("| *paper* | *{}* |", p.method);
            assert!(lines[at + 1].starts_with(&below), "{}: {}", p.id, lines[at + 1]);
        }
        assert_eq!(md.matches("| *paper* |").count(), paper.len(), "{md}");
    }
}
