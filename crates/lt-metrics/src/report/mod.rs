//! Run reports in the poster's layout: rows are (backbone, method), columns Many, Medium, Few,
//! All, NLL and ECE, each mean ± std over seeds with the number of seeds stated; the knobs each
//! row chose on validation data; the paper's numbers beside ours where the data set is one of
//! the paper's; plots.
//!
//! [`collect`] reads a reproduction's run directories; [`write()`] writes `report.md`,
//! `report.json` and the plots. Which rows exist, their order and which ones the per-class plot
//! shows come from the caller's [`ReportSpec`]: this crate knows no method names.

mod classes;
mod collect;
mod figures;
mod paper;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::aggregate::{mean_std, MeanStd};
use crate::classification::{Evaluation, ECE_BINS};
use crate::error::{MetricsError, Result};

pub use collect::{as_recorded, collect, Collected, SettingsView, LAYOUT};
pub use paper::{paper_table, PaperRow, IMAGENET_LT_PAPER};

/// One row: a backbone and a method, evaluated once per seed.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Row {
    /// Identifier (the plan's row id, e.g. `swa-srepr`).
    pub id: String,
    /// Backbone (`SGD`, `SWA`).
    pub backbone: String,
    /// Method label (`-`, `cRT`, `SRepr`, ...).
    pub method: String,
    /// The seeds evaluated, in order.
    pub seeds: Vec<u64>,
    /// One evaluation per seed.
    pub evaluations: Vec<Evaluation>,
    /// Per seed, the knobs chosen on validation data (`null` when none).
    pub chosen: Vec<serde_json::Value>,
    /// The knobs its runs did not choose, as the first seed recorded them (a row's seeds share
    /// their configuration): those given or set by the row's definition under `fixed`, those
    /// taken for want of a validation split under `defaults` (`null` when none).
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub not_chosen: serde_json::Value,
}

/// Aggregated numbers of a row.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RowSummary {
    /// Identifier.
    pub id: String,
    /// Backbone.
    pub backbone: String,
    /// Method label.
    pub method: String,
    /// Number of seeds.
    pub n: usize,
    /// Many-shot accuracy.
    pub many: Option<MeanStd>,
    /// Medium-shot accuracy.
    pub medium: Option<MeanStd>,
    /// Few-shot accuracy.
    pub few: Option<MeanStd>,
    /// Overall accuracy.
    pub all: Option<MeanStd>,
    /// Negative log-likelihood.
    pub nll: Option<MeanStd>,
    /// Expected calibration error.
    pub ece: Option<MeanStd>,
}

impl Row {
    /// A row evaluated on the given seeds.
    pub fn new(id: &str, backbone: &str, method: &str) -> Self {
        Self {
            id: id.into(),
            backbone: backbone.into(),
            method: method.into(),
            seeds: Vec::new(),
            evaluations: Vec::new(),
            chosen: Vec::new(),
            not_chosen: serde_json::Value::Null,
        }
    }

    /// Each class's test accuracy, the mean over the seeds that have a value for it (`None`
    /// where none has).
    pub fn mean_per_class(&self) -> Vec<Option<f64>> {
        let classes = self.evaluations.iter().map(|e| e.per_class.len()).max().unwrap_or(0);
        (0..classes)
            .map(|k| {
                let v: Vec<f64> =
                    self.evaluations.iter().filter_map(|e| e.per_class.get(k).copied().flatten()).collect();
                (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
            })
            .collect()
    }

    /// Mean ± std of every column.
    pub fn summary(&self) -> RowSummary {
        let col = |f: &dyn Fn(&Evaluation) -> Option<f64>| {
            mean_std(&self.evaluations.iter().filter_map(f).collect::<Vec<_>>())
        };
        RowSummary {
            id: self.id.clone(),
            backbone: self.backbone.clone(),
            method: self.method.clone(),
            n: self.evaluations.len(),
            many: col(&|e| e.many),
            medium: col(&|e| e.medium),
            few: col(&|e| e.few),
            all: col(&|e| Some(e.accuracy)),
            nll: col(&|e| Some(e.nll)),
            ece: col(&|e| Some(e.ece)),
        }
    }
}

/// One table of the report: a title and row ids in order.
#[derive(Clone, Debug)]
pub struct TableSpec {
    /// Heading.
    pub title: String,
    /// Row ids, in order (ids without runs are skipped).
    pub rows: Vec<String>,
    /// A note printed under the table in report.md (what its labels mean); empty for none.
    pub note: String,
}

/// What the report shows.
#[derive(Clone, Debug)]
pub struct ReportSpec {
    /// Title.
    pub title: String,
    /// The tables in order; rows found in none of them go to a last table, "Other runs".
    pub tables: Vec<TableSpec>,
    /// Row ids whose per-class accuracy is plotted.
    pub per_class_rows: Vec<String>,
    /// The paper's table to show beside ours (by default the one of the data set, if any).
    pub paper: Option<&'static [PaperRow]>,
}

fn cell(v: &Option<MeanStd>, scale: f64, decimals: usize) -> String {
    match v {
        Some(m) if m.n == 1 => format!("{:.*}", decimals, m.mean * scale),
        Some(m) => m.format(scale, decimals),
        None => "-".into(),
    }
}

/// The columns of a results table, the Markdown one and the terminal's, one per [`cells`].
const COLUMNS: [&str; 9] = ["Backbone", "Method", "n", "Many", "Medium", "Few", "All", "NLL", "ECE"];

/// The cells of a row: backbone, method, n, Many, Medium, Few, All (percent), NLL, ECE.
fn cells(m: &RowSummary, seeds: usize) -> [String; 9] {
    let n = if m.n < seeds { format!("{} of {seeds}", m.n) } else { m.n.to_string() };
    [
        m.backbone.clone(),
        m.method.clone(),
        n,
        cell(&m.many, 100.0, 2),
        cell(&m.medium, 100.0, 2),
        cell(&m.few, 100.0, 2),
        cell(&m.all, 100.0, 2),
        cell(&m.nll, 1.0, 3),
        cell(&m.ece, 1.0, 3),
    ]
}

/// The title of the table of rows outside the spec's tables.
const OTHER_RUNS: &str = "Other runs";
/// The note under the table of rows outside the spec's tables.
const OTHER_RUNS_NOTE: &str = "Runs outside the plan, each under a name given to `lt retrain --name` or its \
                               configuration's own id; what they fixed is in the table of knobs not chosen.";

/// One table as the report shows it: its title, the note under it (empty for none) and its rows.
#[derive(Clone, Debug)]
pub struct Shown<'a> {
    /// Heading.
    pub title: String,
    /// What its labels mean (empty for none).
    pub note: String,
    /// Its rows that have runs, in order.
    pub rows: Vec<&'a Row>,
}

/// The rows of each table of `spec`, in order, with a last table ("Other runs") for the rest.
pub fn tables<'a>(spec: &ReportSpec, rows: &'a [Row]) -> Vec<Shown<'a>> {
    let mut out = Vec::new();
    let mut used = vec![false; rows.len()];
    for t in &spec.tables {
        let mut v = Vec::new();
        for id in &t.rows {
            if let Some(i) = rows.iter().position(|r| &r.id == id) {
                used[i] = true;
                v.push(&rows[i]);
            }
        }
        if !v.is_empty() {
            out.push(Shown { title: t.title.clone(), note: t.note.clone(), rows: v });
        }
    }
    let mut rest: Vec<&Row> = rows.iter().zip(&used).filter(|(_, u)| !**u).map(|(r, _)| r).collect();
    rest.sort_by(|a, b| natural_order(&a.id, &b.id));
    if !rest.is_empty() {
        out.push(Shown { title: OTHER_RUNS.into(), note: OTHER_RUNS_NOTE.into(), rows: rest });
    }
    out
}

/// Names in the order a reader expects, numbers by value (`lambda0.3`, `lambda1`, `lambda3`,
/// `lambda10`), the rest by text.
fn natural_order(a: &str, b: &str) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    // The name as runs of text and numbers (digits, with a fraction after a dot).
    fn parts(s: &str) -> Vec<Result<f64, &str>> {
        let (mut out, mut rest) = (Vec::new(), s);
        while !rest.is_empty() {
            let digits = |t: &str| t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
            let n = digits(rest);
            if n == 0 {
                let text = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
                out.push(Err(&rest[..text]));
                rest = &rest[text..];
                continue;
            }
            let frac = rest[n..].strip_prefix('.').map(digits).filter(|&f| f > 0).map_or(0, |f| f + 1);
            out.push(Ok(rest[..n + frac].parse().unwrap_or(f64::MAX)));
            rest = &rest[n + frac..];
        }
        out
    }
    let (x, y) = (parts(a), parts(b));
    for (p, q) in x.iter().zip(&y) {
        let o = match (p, q) {
            (Ok(u), Ok(v)) => u.total_cmp(v),
            (Err(s), Err(t)) => s.cmp(t),
            (Ok(_), Err(_)) => Ordering::Less,
            (Err(_), Ok(_)) => Ordering::Greater,
        };
        if o != Ordering::Equal {
            return o;
        }
    }
    x.len().cmp(&y.len()).then_with(|| a.cmp(b))
}

/// A row's knobs not chosen on validation, in words (`fixed: lambda 0.0; defaults (no
/// validation split): tau 1.0`), or nothing.
fn not_chosen(r: &Row) -> String {
    // The words output uses for each kind; not_chosen holds no `chosen`.
    let said: Vec<String> = lt_core::formats::facts::SAID
        .iter()
        .filter_map(|(key, how)| {
            r.not_chosen.get(key).map(knobs).filter(|k| k != "-").map(|k| format!("{how}: {k}"))
        })
        .collect();
    said.join("; ")
}

/// The chosen knobs of one seed in words (`tau 1.25, lambda 0.3`), or `-`.
fn knobs(v: &serde_json::Value) -> String {
    match v.as_object() {
        Some(o) if !o.is_empty() => o.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", "),
        _ => "-".into(),
    }
}

/// The report as Markdown: title, description, each table (paper rows in italics below the
/// matching rows when `spec.paper` is given), the knobs chosen on validation data, and a note on
/// the columns.
pub fn markdown(spec: &ReportSpec, description: &str, rows: &[Row]) -> String {
    let seeds = rows.iter().map(|r| r.evaluations.len()).max().unwrap_or(0);
    let mut s = format!("# {}\n\n{description}\n", spec.title);
    let shown = tables(spec, rows);
    for t in &shown {
        s.push_str(&format!(
            "\n## {}\n\n| {} |\n{}|\n",
            t.title,
            COLUMNS.join(" | "),
            "|---".repeat(COLUMNS.len())
        ));
        for r in &t.rows {
            let m = r.summary();
            s.push_str(&format!("| {} |\n", cells(&m, seeds).join(" | ")));
            if let Some(p) = spec.paper.and_then(|p| p.iter().find(|p| p.id == m.id)) {
                let f = |(a, b): (f64, f64), d: usize| format!("*{a:.d$} ± {b:.d$}*");
                s.push_str(&format!(
                    "| *paper* | *{}* | | {} | {} | {} | {} | {} | {} |\n",
                    p.method,
                    f(p.acc[0], 2),
                    f(p.acc[1], 2),
                    f(p.acc[2], 2),
                    f(p.acc[3], 2),
                    f(p.nll_ece[0], 3),
                    f(p.nll_ece[1], 3)
                ));
            }
        }
        if !t.note.is_empty() {
            s.push_str(&format!("\n{}\n", t.note));
        }
    }
    let all = || shown.iter().flat_map(|t| t.rows.iter().copied());
    let chosen: Vec<&Row> = all().filter(|r| r.chosen.iter().any(|c| knobs(c) != "-")).collect();
    if !chosen.is_empty() {
        s.push_str("\n## Knobs chosen on the validation split\n\n| Backbone | Method | seed: knobs |\n|---|---|---|\n");
        for r in chosen {
            let per_seed: Vec<String> =
                r.seeds.iter().zip(&r.chosen).map(|(sd, c)| format!("{sd}: {}", knobs(c))).collect();
            s.push_str(&format!("| {} | {} | {} |\n", r.backbone, r.method, per_seed.join("; ")));
        }
    }
    let unchosen: Vec<(&Row, String)> =
        all().map(|r| (r, not_chosen(r))).filter(|(_, said)| !said.is_empty()).collect();
    if !unchosen.is_empty() {
        s.push_str("\n## Knobs not chosen on validation\n\n| Backbone | Method | knobs |\n|---|---|---|\n");
        for (r, said) in unchosen {
            s.push_str(&format!("| {} | {} | {said} |\n", r.backbone, r.method));
        }
    }
    s.push_str(&format!(
        "\nAccuracies in percent (Many: > 100 training images, Medium: 20-100, Few: < 20; each the mean of its classes' accuracies), \
         NLL and ECE ({ECE_BINS} bins), mean ± sample std over the n seeds of each row ({seeds} seed(s) in all; a single seed shows its value alone).\n"
    ));
    s
}

/// The report's plots, each file with what it shows (and what could not be drawn, and why).
fn plots_section(drawn: &[figures::Drawn]) -> String {
    let mut s = String::from("\n## Plots\n\n");
    for (files, what) in drawn {
        s.push_str(&format!("- {files}: {what}\n"));
    }
    s
}

/// The tables as aligned plain text for a terminal.
pub fn text_table(spec: &ReportSpec, rows: &[Row]) -> String {
    let seeds = rows.iter().map(|r| r.evaluations.len()).max().unwrap_or(0);
    let mut out = String::new();
    for t in tables(spec, rows) {
        let body: Vec<[String; 9]> = t.rows.iter().map(|r| cells(&r.summary(), seeds)).collect();
        // Each column as wide as its widest cell (in characters: labels may not be ASCII).
        let head = COLUMNS.map(String::from);
        let width = |i: usize| body.iter().chain([&head]).map(|c| c[i].chars().count()).max().unwrap_or(0);
        let widths: Vec<usize> = (0..head.len()).map(width).collect();
        let line = |c: &[String; 9]| {
            let padded: Vec<String> = c
                .iter()
                .zip(&widths)
                .enumerate()
                .map(|(i, (text, &w))| if i < 2 { format!("{text:<w$}") } else { format!("{text:>w$}") })
                .collect();
            padded.join("  ") + "\n"
        };
        out.push_str(&format!("{}\n", t.title));
        out.push_str(&line(&head));
        for c in &body {
            out.push_str(&line(c));
        }
        out.push('\n');
    }
    out
}

/// Writes `report.md`, `report.json` and the plots (`plots/`) of `c` into `out`; returns the
/// Markdown file's path.
pub fn write(out: &Path, spec: &ReportSpec, c: &Collected) -> Result<PathBuf> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |error| MetricsError::Io { path, error }
    };
    // Everything is rendered into a staging directory first; only a complete report is moved
    // into place, report.md last (a failure leaves the previous report as it was).
    let stage = lt_core::atomic::temp_sibling(&out.join("report"));
    std::fs::create_dir_all(stage.join("plots")).map_err(io(&stage))?;
    let staged = render(&stage, spec, c).and_then(|files| {
        std::fs::create_dir_all(out.join("plots")).map_err(io(out))?;
        for rel in &files {
            let to = out.join(rel);
            std::fs::rename(stage.join(rel), &to).map_err(io(&to))?;
        }
        remove_stale_plots(&out.join("plots"), &files);
        Ok(())
    });
    let _ = std::fs::remove_dir_all(&stage);
    staged.map(|()| out.join("report.md"))
}

/// Removes from `plots` the plot files (`*.png`, `*.svg`, `dispersion.json`) of an earlier report
/// that this one (`files`, relative to the report's folder) did not draw, so that the folder
/// holds what report.md lists; anything else there stays.
fn remove_stale_plots(plots: &Path, files: &[PathBuf]) {
    let Ok(entries) = std::fs::read_dir(plots) else { return };
    for e in entries.flatten() {
        let path = e.path();
        let ours = matches!(path.extension().and_then(|x| x.to_str()), Some("png" | "svg"))
            || e.file_name() == "dispersion.json";
        if ours && !files.iter().any(|f| f.file_name() == Some(&e.file_name())) {
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// Writes the report's files under `dir`; returns their paths relative to it, report.md last.
fn render(dir: &Path, spec: &ReportSpec, c: &Collected) -> Result<Vec<PathBuf>> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |error| MetricsError::Io { path, error }
    };
    let plots = dir.join("plots");
    let drawn = figures::write_all(&plots, spec, c)?;
    let mut files = Vec::new();
    for e in std::fs::read_dir(&plots).map_err(io(&plots))? {
        files.push(Path::new("plots").join(e.map_err(io(&plots))?.file_name()));
    }
    files.sort();
    let summaries: Vec<_> = c.rows.iter().map(|r| r.summary()).collect();
    let json =
        serde_json::json!({"dataset": c.dataset, "seeds": c.seeds, "rows": summaries, "per_seed": c.rows});
    let text = serde_json::to_string_pretty(&json).map_err(|e| MetricsError::Invalid(e.to_string()))?;
    std::fs::write(dir.join("report.json"), text).map_err(io(&dir.join("report.json")))?;
    files.push("report.json".into());
    let description = format!(
        "Data set `{}`; runs in `{}`; {} seed(s): {}.",
        c.dataset,
        c.runs.display(),
        c.seeds.len(),
        c.seeds.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(", ")
    );
    let md = dir.join("report.md");
    let text = markdown(spec, &description, &c.rows) + &classes::table(spec, c) + &plots_section(&drawn);
    std::fs::write(&md, text).map_err(io(&md))?;
    files.push("report.md".into());
    Ok(files)
}

#[cfg(test)]
mod tests;
