//! The plots of a report: per-class accuracy of chosen rows against class index with the
//! training counts (the mean over each row's seeds), a reliability diagram per row (its seeds'
//! test predictions pooled), and the per-class dispersion of the first seed's stochastic
//! representations (poster Figure 3). Each is listed, with what it shows, in report.md.

use std::path::Path;

use lt_core::formats::features::{Features, Split};
use lt_core::formats::predictions::Predictions;

use super::{Collected, ReportSpec, LAYOUT};
use crate::classification::{confidences, reliability, BinEdges, ECE_BINS};
use crate::dispersion;
use crate::error::{MetricsError, Result};
use crate::plots::{self, Series};
use crate::predictions::PredictionsExt;

/// Head-room above the largest value of a plot's y axis.
const Y_HEADROOM: f64 = 1.1;

/// The upper end of a y axis showing `values` (at least a tiny positive range).
fn y_max(values: &[Option<f64>]) -> f64 {
    (values.iter().flatten().fold(0f64, |m, &v| m.max(v)) * Y_HEADROOM).max(1e-12)
}

/// A file written under `plots/`, as report.md names it (`` `plots/x.png` (`.svg`) ``), and what
/// it shows.
pub(super) type Drawn = (String, String);

/// A plot's entry: both files of `stem`, and `what`.
fn plot(stem: &str, what: String) -> Drawn {
    (format!("`plots/{stem}.png` (`.svg`)"), what)
}

/// A reliability diagram per row, its seeds' test predictions pooled; in the order of the
/// report's tables. Two ids that make the same file name (`a/b`, `a_b`, read from foreign
/// predictions) get `-2`, `-3`, ... on the later one's, so that neither overwrites the other.
fn reliability_diagrams(dir: &Path, spec: &ReportSpec, c: &Collected) -> Result<Vec<Drawn>> {
    let (mut drawn, mut stems) = (Vec::new(), std::collections::HashSet::new());
    for r in super::tables(spec, &c.rows).into_iter().flat_map(|t| t.rows) {
        let (mut conf, mut ok, mut seeds) = (Vec::new(), Vec::new(), Vec::new());
        for (seed, files) in &c.files {
            if let Some(file) = files.get(&r.id) {
                let (cf, k) = confidences(&Predictions::read(file)?.scores()?);
                conf.extend(cf);
                ok.extend(k);
                seeds.push(seed.to_string());
            }
        }
        let label = format!("{} {}", r.backbone, r.method);
        let what = format!("seed(s) {}, {} test predictions pooled", seeds.join(", "), conf.len());
        let first = format!("reliability-{}", lt_core::layout::row_file_name(&r.id));
        let stem = (1..)
            .map(|n| if n == 1 { first.clone() } else { format!("{first}-{n}") })
            .find(|s| !stems.contains(s))
            .unwrap_or(first);
        stems.insert(stem.clone());
        let bins = reliability(&conf, &ok, ECE_BINS, BinEdges::Guo)?;
        plots::reliability_diagram(&bins, &format!("{label}: reliability ({what})"), &dir.join(&stem))?;
        drawn.push(plot(&stem, format!("reliability diagram of {label} ({what}, {ECE_BINS} bins)")));
    }
    Ok(drawn)
}

/// Writes every plot of the report into `dir`: the per-class plots first, then one reliability
/// diagram per row; returns what it drew, and what it could not.
pub(super) fn write_all(dir: &Path, spec: &ReportSpec, c: &Collected) -> Result<Vec<Drawn>> {
    let mut drawn = per_class_plots(dir, spec, c)?;
    drawn.extend(reliability_diagrams(dir, spec, c)?);
    Ok(drawn)
}

/// The per-class accuracy and dispersion plots, which need a split (the training counts): the
/// first seed's that has its stage 1.
fn per_class_plots(dir: &Path, spec: &ReportSpec, c: &Collected) -> Result<Vec<Drawn>> {
    let mut drawn = Vec::new();
    let Some((seed, stage1)) = c.first_stage1() else {
        drawn.push((
            "not drawn".into(),
            format!(
                "per-class accuracy and dispersion: no seed's `{}` directory is under the runs",
                LAYOUT.stage1
            ),
        ));
        return Ok(drawn);
    };
    let split = stage1.join(LAYOUT.split);
    let counts =
        if split.exists() { Some(lt_core::split::SplitInfo::read(&split)?.class_counts()) } else { None };
    let shown: Vec<&super::Row> =
        spec.per_class_rows.iter().filter_map(|id| c.rows.iter().find(|r| &r.id == id)).collect();
    let series: Vec<Series> = shown
        .iter()
        .map(|r| Series {
            label: format!("{} {} (n = {})", r.backbone, r.method, r.evaluations.len()),
            values: r.mean_per_class(),
        })
        .collect();
    if let (Some(counts), false) = (&counts, series.is_empty()) {
        let title = "Per-class test accuracy, mean over seeds";
        plots::per_class(&series, counts, title, "accuracy", 1.0, &dir.join("per_class_accuracy"))?;
        let rows: Vec<String> = shown.iter().map(|r| format!("{} {}", r.backbone, r.method)).collect();
        drawn.push(plot(
            "per_class_accuracy",
            format!("{title} ({}), against class index with seed {seed}'s training counts", rows.join(", ")),
        ));
    }
    let features = stage1.join(LAYOUT.features);
    if let (Some(counts), true) = (&counts, features.exists()) {
        let f = Features::open(&features)?;
        if let Some(d) = dispersion::of_features(&f, Split::Test)? {
            for (values, title, y_desc, stem) in [
                (
                    &d.class_representation,
                    "Dispersion of stochastic representations (test)",
                    "dispersion",
                    "dispersion_representation",
                ),
                (
                    &d.class_probability,
                    "Dispersion in probability space (test)",
                    "mutual information",
                    "dispersion_probability",
                ),
            ] {
                let label =
                    format!("{} SWAG samples, mean over each class's test images", f.swag_indices().len());
                let series = vec![Series { label: label.clone(), values: values.clone() }];
                plots::per_class(&series, counts, title, y_desc, y_max(values), &dir.join(stem))?;
                drawn.push(plot(stem, format!("{title}: {y_desc} per class, seed {seed}'s {label}")));
            }
            let json = dir.join("dispersion.json");
            let text = serde_json::to_string_pretty(&d).map_err(|e| MetricsError::Invalid(e.to_string()))?;
            lt_core::atomic::write_bytes_atomic(&json, text.as_bytes())
                .map_err(|error| MetricsError::Io { path: json.clone(), error })?;
            drawn.push((
                "`plots/dispersion.json`".into(),
                format!("the dispersion plots' values (seed {seed})"),
            ));
        }
    }
    Ok(drawn)
}
