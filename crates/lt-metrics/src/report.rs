//! Run reports in the poster's layout: rows are (backbone, method), columns Many, Medium, Few,
//! All, NLL and ECE, each mean ± std over seeds; the paper's numbers stand beside ours where the
//! data set is one of the paper's.

use serde::{Deserialize, Serialize};

use crate::aggregate::{mean_std, MeanStd};
use crate::classification::Evaluation;

/// One row: a backbone and a method, evaluated once per seed.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Row {
    /// Backbone (`SGD`, `SWA`).
    pub backbone: String,
    /// Method label (`-`, `cRT`, `SRepr`, ...).
    pub method: String,
    /// One evaluation per seed.
    pub evaluations: Vec<Evaluation>,
}

/// Aggregated numbers of a row.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RowSummary {
    /// Backbone.
    pub backbone: String,
    /// Method label.
    pub method: String,
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
    /// Mean ± std of every column.
    pub fn summary(&self) -> RowSummary {
        let col = |f: &dyn Fn(&Evaluation) -> Option<f64>| {
            mean_std(&self.evaluations.iter().filter_map(f).collect::<Vec<_>>())
        };
        RowSummary {
            backbone: self.backbone.clone(),
            method: self.method.clone(),
            many: col(&|e| e.many),
            medium: col(&|e| e.medium),
            few: col(&|e| e.few),
            all: col(&|e| Some(e.accuracy)),
            nll: col(&|e| Some(e.nll)),
            ece: col(&|e| Some(e.ece)),
        }
    }
}

/// A paper row: `[many, medium, few, all]` in percent and `[nll, ece]`, each `(mean, std)`.
#[derive(Clone, Copy, Debug)]
pub struct PaperRow {
    /// Backbone.
    pub backbone: &'static str,
    /// Method label.
    pub method: &'static str,
    /// Accuracies in percent.
    pub acc: [(f64, f64); 4],
    /// NLL and ECE.
    pub nll_ece: [(f64, f64); 2],
}

/// Table 2 of the seed poster (ImageNet-LT, ResNet-50).
pub const IMAGENET_LT_PAPER: [PaperRow; 11] = [
    PaperRow {
        backbone: "SGD",
        method: "-",
        acc: [(66.84, 0.26), (40.78, 0.24), (12.05, 0.23), (46.91, 0.22)],
        nll_ece: [(2.546, 0.009), (0.158, 0.003)],
    },
    PaperRow {
        backbone: "SGD",
        method: "cRT",
        acc: [(62.83, 0.23), (46.92, 0.26), (26.33, 0.16), (50.25, 0.18)],
        nll_ece: [(2.364, 0.008), (0.110, 0.001)],
    },
    PaperRow {
        backbone: "SGD",
        method: "LWS",
        acc: [(63.23, 0.26), (47.57, 0.24), (27.78, 0.23), (50.91, 0.15)],
        nll_ece: [(2.197, 0.007), (0.054, 0.001)],
    },
    PaperRow {
        backbone: "SGD",
        method: "LA",
        acc: [(60.79, 0.20), (48.11, 0.14), (33.20, 0.34), (50.97, 0.13)],
        nll_ece: [(2.231, 0.004), (0.063, 0.001)],
    },
    PaperRow {
        backbone: "SGD",
        method: "DisAlign",
        acc: [(61.63, 0.39), (48.68, 0.11), (32.71, 0.45), (51.49, 0.15)],
        nll_ece: [(2.596, 0.012), (0.202, 0.002)],
    },
    PaperRow {
        backbone: "SWA",
        method: "-",
        acc: [(67.71, 0.11), (40.74, 0.15), (11.01, 0.10), (47.08, 0.12)],
        nll_ece: [(2.631, 0.009), (0.187, 0.002)],
    },
    PaperRow {
        backbone: "SWA",
        method: "cRT",
        acc: [(63.54, 0.18), (47.68, 0.16), (26.85, 0.28), (50.95, 0.12)],
        nll_ece: [(2.353, 0.012), (0.120, 0.002)],
    },
    PaperRow {
        backbone: "SWA",
        method: "LWS",
        acc: [(63.51, 0.30), (48.53, 0.07), (28.66, 0.45), (51.60, 0.10)],
        nll_ece: [(2.189, 0.007), (0.077, 0.002)],
    },
    PaperRow {
        backbone: "SWA",
        method: "LA",
        acc: [(61.60, 0.07), (48.70, 0.03), (33.68, 0.34), (51.62, 0.05)],
        nll_ece: [(2.206, 0.009), (0.077, 0.002)],
    },
    PaperRow {
        backbone: "SWA",
        method: "DisAlign",
        acc: [(62.43, 0.20), (49.48, 0.15), (32.65, 0.43), (52.18, 0.11)],
        nll_ece: [(2.673, 0.014), (0.215, 0.002)],
    },
    PaperRow {
        backbone: "SWA",
        method: "SRepr",
        acc: [(62.52, 0.26), (49.44, 0.18), (32.14, 0.41), (52.12, 0.06)],
        nll_ece: [(2.130, 0.006), (0.037, 0.001)],
    },
];

/// The paper table for a data set name, if the poster has one.
pub fn paper_table(dataset: &str) -> Option<&'static [PaperRow]> {
    (dataset == "imagenet-lt").then_some(&IMAGENET_LT_PAPER[..])
}

fn cell(v: &Option<MeanStd>, scale: f64, decimals: usize) -> String {
    v.map(|m| m.format(scale, decimals)).unwrap_or_else(|| "-".into())
}

/// The eight cells of a row: backbone, method, Many, Medium, Few, All (percent), NLL, ECE.
fn cells(m: &RowSummary) -> [String; 8] {
    [
        m.backbone.clone(),
        m.method.clone(),
        cell(&m.many, 100.0, 2),
        cell(&m.medium, 100.0, 2),
        cell(&m.few, 100.0, 2),
        cell(&m.all, 100.0, 2),
        cell(&m.nll, 1.0, 3),
        cell(&m.ece, 1.0, 3),
    ]
}

/// The report as Markdown: a title, a description and the table (paper rows in italics below
/// the matching rows when `paper` is given).
pub fn markdown(title: &str, description: &str, rows: &[Row], paper: Option<&[PaperRow]>) -> String {
    let mut s = format!("# {title}\n\n{description}\n\n");
    s.push_str(
        "| Backbone | Method | Many | Medium | Few | All | NLL | ECE |\n|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let m = r.summary();
        s.push_str(&format!("| {} |\n", cells(&m).join(" | ")));
        if let Some(p) =
            paper.and_then(|p| p.iter().find(|p| p.backbone == m.backbone && p.method == m.method))
        {
            let f = |(a, b): (f64, f64), d: usize| format!("*{a:.d$} ± {b:.d$}*");
            s.push_str(&format!(
                "| *paper* | *{}* | {} | {} | {} | {} | {} | {} |\n",
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
    let seeds = rows.iter().map(|r| r.evaluations.len()).max().unwrap_or(0);
    s.push_str(&format!(
        "\nAccuracies in percent (Many: > 100 training images, Medium: 20-100, Few: < 20; each the mean of its classes' accuracies), \
         NLL and ECE (15 bins), mean ± sample std over {seeds} seed(s).\n"
    ));
    s
}

/// The same table as aligned plain text for a terminal.
pub fn text_table(rows: &[Row]) -> String {
    let mut out = format!(
        "{:<8} {:<26} {:>15} {:>15} {:>15} {:>15} {:>15} {:>15}\n",
        "Backbone", "Method", "Many", "Medium", "Few", "All", "NLL", "ECE"
    );
    for r in rows {
        let c = cells(&r.summary());
        out.push_str(&format!(
            "{:<8} {:<26} {:>15} {:>15} {:>15} {:>15} {:>15} {:>15}\n",
            c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]
        ));
    }
    out
}
