//! The report's class table: each class by name (the split's class names: a folder data set's
//! sub-folder names), its training images and shot group, and the per-class test accuracy of
//! the rows the per-class plot shows.

use super::{Collected, ReportSpec, LAYOUT};

/// Classes beyond this many are not listed (iNaturalist's 8,142 would bury the report).
pub const MAX_LISTED_CLASSES: usize = 200;

/// The Markdown class table of `c` (empty when no seed's stage 1 is there, its split artifact is
/// not, or there are more than [`MAX_LISTED_CLASSES`] classes).
pub(super) fn table(spec: &ReportSpec, c: &Collected) -> String {
    let Some((seed, stage1)) = c.first_stage1() else { return String::new() };
    let path = stage1.join(LAYOUT.split);
    let Ok(split) = lt_core::split::SplitInfo::read(&path) else { return String::new() };
    let classes = split.num_classes();
    if classes == 0 || classes > MAX_LISTED_CLASSES {
        return String::new();
    }
    let rows: Vec<_> =
        spec.per_class_rows.iter().filter_map(|id| c.rows.iter().find(|r| &r.id == id)).collect();
    let (counts, groups) = (split.class_counts(), split.groups());
    let means: Vec<Vec<Option<f64>>> = rows.iter().map(|r| r.mean_per_class()).collect();
    let mut s = String::from("\n## Classes\n\n| # | Class | Training images | Group |");
    for r in &rows {
        s.push_str(&format!(" {} {} |", r.backbone, r.method));
    }
    s.push_str(&format!("\n|---|---|---|---|{}\n", "---|".repeat(rows.len())));
    for k in 0..classes {
        let name = split.class_names.get(k).map(|n| n.replace('|', "\\|")).unwrap_or_default();
        s.push_str(&format!("| {k} | {name} | {} | {} |", counts[k], groups[k].name()));
        for mean in &means {
            match mean.get(k).copied().flatten() {
                None => s.push_str(" - |"),
                Some(acc) => s.push_str(&format!(" {:.2} |", 100.0 * acc)),
            }
        }
        s.push('\n');
    }
    s.push_str(&format!(
        "\nPer-class test accuracy in percent, the mean over seeds; training images of seed {seed}'s split.\n"
    ));
    s
}
