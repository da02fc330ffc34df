//! The seed poster's numbers, shown beside ours where the data set is one of the paper's.

/// A paper row: `[many, medium, few, all]` in percent and `[nll, ece]`, each `(mean, std)`.
#[derive(Clone, Copy, Debug)]
pub struct PaperRow {
    /// The id of the plan's row it stands beside (`lt_retrain::rows::ROWS`: `swa-srepr`, ...).
    pub id: &'static str,
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
        id: "sgd-none",
        backbone: "SGD",
        method: "-",
        acc: [(66.84, 0.26), (40.78, 0.24), (12.05, 0.23), (46.91, 0.22)],
        nll_ece: [(2.546, 0.009), (0.158, 0.003)],
    },
    PaperRow {
        id: "sgd-crt",
        backbone: "SGD",
        method: "cRT",
        acc: [(62.83, 0.23), (46.92, 0.26), (26.33, 0.16), (50.25, 0.18)],
        nll_ece: [(2.364, 0.008), (0.110, 0.001)],
    },
    PaperRow {
        id: "sgd-lws",
        backbone: "SGD",
        method: "LWS",
        acc: [(63.23, 0.26), (47.57, 0.24), (27.78, 0.23), (50.91, 0.15)],
        nll_ece: [(2.197, 0.007), (0.054, 0.001)],
    },
    PaperRow {
        id: "sgd-la",
        backbone: "SGD",
        method: "LA",
        acc: [(60.79, 0.20), (48.11, 0.14), (33.20, 0.34), (50.97, 0.13)],
        nll_ece: [(2.231, 0.004), (0.063, 0.001)],
    },
    PaperRow {
        id: "sgd-disalign",
        backbone: "SGD",
        method: "DisAlign",
        acc: [(61.63, 0.39), (48.68, 0.11), (32.71, 0.45), (51.49, 0.15)],
        nll_ece: [(2.596, 0.012), (0.202, 0.002)],
    },
    PaperRow {
        id: "swa-none",
        backbone: "SWA",
        method: "-",
        acc: [(67.71, 0.11), (40.74, 0.15), (11.01, 0.10), (47.08, 0.12)],
        nll_ece: [(2.631, 0.009), (0.187, 0.002)],
    },
    PaperRow {
        id: "swa-crt",
        backbone: "SWA",
        method: "cRT",
        acc: [(63.54, 0.18), (47.68, 0.16), (26.85, 0.28), (50.95, 0.12)],
        nll_ece: [(2.353, 0.012), (0.120, 0.002)],
    },
    PaperRow {
        id: "swa-lws",
        backbone: "SWA",
        method: "LWS",
        acc: [(63.51, 0.30), (48.53, 0.07), (28.66, 0.45), (51.60, 0.10)],
        nll_ece: [(2.189, 0.007), (0.077, 0.002)],
    },
    PaperRow {
        id: "swa-la",
        backbone: "SWA",
        method: "LA",
        acc: [(61.60, 0.07), (48.70, 0.03), (33.68, 0.34), (51.62, 0.05)],
        nll_ece: [(2.206, 0.009), (0.077, 0.002)],
    },
    PaperRow {
        id: "swa-disalign",
        backbone: "SWA",
        method: "DisAlign",
        acc: [(62.43, 0.20), (49.48, 0.15), (32.65, 0.43), (52.18, 0.11)],
        nll_ece: [(2.673, 0.014), (0.215, 0.002)],
    },
    PaperRow {
        id: "swa-srepr",
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
