//! The plots of a report (first seed): per-class accuracy of chosen rows against class index
//! with the training counts, a reliability diagram per row, and the per-class dispersion of the
//! stochastic representations (poster Figure 3).

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

/// Writes every plot of the report into `dir`.
pub(super) fn write_all(dir: &Path, spec: &ReportSpec, c: &Collected) -> Result<()> {
    let Some(stage1) = c.first_stage1() else { return Ok(()) };
    let seed = c.seeds[0];
    let split = stage1.join(LAYOUT.split);
    let counts =
        if split.exists() { Some(lt_core::split::SplitInfo::read(&split)?.class_counts()) } else { None };
    let series: Vec<Series> = spec
        .per_class_rows
        .iter()
        .filter_map(|id| c.rows.iter().find(|r| &r.id == id && r.seeds.first() == Some(&seed)))
        .map(|r| Series {
            label: format!("{} {}", r.backbone, r.method),
            values: r.evaluations[0].per_class.clone(),
        })
        .collect();
    if let (Some(counts), false) = (&counts, series.is_empty()) {
        plots::per_class(
            &series,
            counts,
            &format!("Per-class test accuracy (seed {seed})"),
            "accuracy",
            1.0,
            &dir.join("per_class_accuracy"),
        )?;
    }
    for (id, file) in c.files.get(&seed).into_iter().flatten() {
        let p = Predictions::read(file)?;
        let (conf, ok) = confidences(&p.scores()?);
        let label = c.rows.iter().find(|r| &r.id == id).map(|r| format!("{} {}", r.backbone, r.method));
        plots::reliability_diagram(
            &reliability(&conf, &ok, ECE_BINS, BinEdges::Guo),
            &format!(
                "{}: reliability (seed {seed}, {} test images)",
                label.unwrap_or_else(|| id.clone()),
                p.labels.len()
            ),
            &dir.join(format!("reliability-{id}")),
        )?;
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
                let series = vec![Series { label, values: values.clone() }];
                plots::per_class(&series, counts, title, y_desc, y_max(values), &dir.join(stem))?;
            }
            let json = dir.join("dispersion.json");
            let text = serde_json::to_string_pretty(&d).map_err(|e| MetricsError::Invalid(e.to_string()))?;
            lt_core::atomic::write_bytes_atomic(&json, text.as_bytes())
                .map_err(|source| MetricsError::Io { path: json.clone(), source })?;
        }
    }
    Ok(())
}
