//! Tests of the report's tables and words.

use super::*;

/// Each column is as wide as its widest cell, so a long or non-ASCII label keeps the
/// columns after it aligned.
#[test]
fn the_text_table_aligns_its_columns_whatever_the_labels() {
    let rows = [
        Row::new("a", "SWA", "LA"),
        Row::new("b", "SWA", "SRepr, frozen teacher, LA on the student"),
        Row::new("c", "SGD", "café ñ"),
    ];
    let spec = ReportSpec {
        title: "t".into(),
        tables: vec![TableSpec {
            title: "T".into(),
            rows: vec!["a".into(), "b".into(), "c".into()],
            note: String::new(),
        }],
        per_class_rows: Vec::new(),
        paper: None,
    };
    let text = text_table(&spec, &rows);
    let lines: Vec<&str> = text.lines().skip(1).take(4).collect();
    assert!(lines[0].starts_with("Backbone") && lines[2].contains("LA on the student"), "{text}");
    let ends: Vec<usize> = lines.iter().map(|l| l.chars().count()).collect();
    assert!(ends.iter().all(|&e| e == ends[0]), "{ends:?}\n{text}");
    // The seed counts stand under the header's `n`.
    let n_at = lines[0].find("  n  ").map(|b| lines[0][..b].chars().count() + 2).unwrap();
    assert!(lines[1..].iter().all(|l| l.chars().nth(n_at) == Some('0')), "{n_at}\n{text}");
}

#[test]
fn other_runs_are_ordered_by_their_numbers_value() {
    let mut names =
        ["srepr-lambda10", "srepr-lambda3", "srepr-lambda0.3", "a", "srepr-lambda1", "srepr-lambda0.25"];
    names.sort_by(|a, b| natural_order(a, b));
    assert_eq!(
        names,
        ["a", "srepr-lambda0.25", "srepr-lambda0.3", "srepr-lambda1", "srepr-lambda3", "srepr-lambda10"]
    );
    let mut v = ["x1.", "x1", "x01", "v1.2.3", "v1.10"];
    v.sort_by(|a, b| natural_order(a, b));
    // Decimals by value (1.10 before 1.2), as knob values are written.
    assert_eq!(v, ["v1.10", "v1.2.3", "x01", "x1", "x1."]);
}

/// Knobs a row did not choose are listed as given (`fixed`) or taken for want of a
/// validation split (`defaults`); a row with neither is not listed.
#[test]
fn knobs_not_chosen_are_listed_by_how_they_were_set() {
    let mut b = Row::new("b", "SWA", "SRepr (b)");
    b.not_chosen = serde_json::json!({"fixed": {"lambda": 0.0}, "defaults": {"tau": 1.0}});
    let mut given = Row::new("g", "SWA", "mine");
    given.not_chosen = serde_json::json!({"fixed": {"tau": 2.0}});
    let rows = [b, given, Row::new("a", "SWA", "LA")];
    let spec = ReportSpec {
        title: "t".into(),
        tables: vec![TableSpec {
            title: "T".into(),
            rows: vec!["a".into(), "b".into(), "g".into()],
            note: "N.".into(),
        }],
        per_class_rows: Vec::new(),
        paper: None,
    };
    let md = markdown(&spec, "", &rows);
    // The table's note stands under it.
    assert!(md.contains("| SWA | LA | 0 |") && md.contains("|\n\nN.\n"), "{md}");
    let table = md.split("## Knobs not chosen on validation\n").nth(1).unwrap_or_else(|| panic!("{md}"));
    let lines: Vec<&str> = table.lines().skip(3).take_while(|l| l.starts_with('|')).collect();
    assert_eq!(
        lines,
        [
            "| SWA | SRepr (b) | fixed: lambda 0.0; defaults (no validation split): tau 1.0 |",
            "| SWA | mine | fixed: tau 2.0 |"
        ],
        "{md}"
    );
    assert!(!markdown(&spec, "", &rows[2..]).contains("not chosen"));
}

/// The per-class plot and the Classes table show each class's mean over the seeds that have a
/// value for it.
#[test]
fn a_rows_per_class_accuracy_is_the_mean_over_seeds() {
    let seed = |per_class: Vec<Option<f64>>| Evaluation {
        accuracy: 0.0,
        many: None,
        medium: None,
        few: None,
        nll: 0.0,
        ece: 0.0,
        top5: None,
        per_class,
        samples: 0,
    };
    let row = |evaluations| Row { evaluations, ..Row::new("r", "SWA", "LA") };
    let mean = row(vec![seed(vec![Some(1.0), Some(0.2), None]), seed(vec![Some(0.5), Some(0.4), None])])
        .mean_per_class();
    assert_eq!(mean.len(), 3);
    assert!((mean[0].unwrap() - 0.75).abs() < 1e-12 && (mean[1].unwrap() - 0.3).abs() < 1e-12);
    assert_eq!(mean[2], None);
    let partly = row(vec![seed(vec![None, Some(0.5)]), seed(vec![Some(1.0), Some(0.5)])]);
    assert_eq!(partly.mean_per_class()[0], Some(1.0));
}

/// Two row ids that make the same file name (foreign predictions may hold any id) get a
/// reliability diagram each, both listed in report.md.
#[test]
fn ids_with_the_same_file_name_keep_a_plot_each() {
    use lt_core::formats::predictions::Predictions;
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().join("runs");
    for (dir, row) in [("x", "a/b"), ("y", "a_b")] {
        let file = runs.join(format!("seed-0/stage2/{dir}/predictions.safetensors"));
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        let meta = lt_core::formats::RunMeta {
            row: row.into(),
            label: row.into(),
            backbone: "SWA".into(),
            seed: Some(0),
            ..Default::default()
        };
        let p = Predictions {
            scores: vec![2.0, 0.0, 0.0, 1.0],
            probabilities: false,
            labels: vec![0, 1],
            classes: 2,
            class_counts: Some(vec![5, 1]),
            class_names: None,
            meta,
        };
        p.write(&file).unwrap();
    }
    let c = collect(&runs, as_recorded).unwrap();
    let spec = ReportSpec { title: "t".into(), tables: Vec::new(), per_class_rows: Vec::new(), paper: None };
    let out = tmp.path().join("report");
    write(&out, &spec, &c).unwrap();
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    for stem in ["reliability-a_b", "reliability-a_b-2"] {
        assert!(out.join(format!("plots/{stem}.png")).exists(), "{stem}\n{md}");
        assert!(md.contains(&format!("`plots/{stem}.png` (`.svg`)")), "{stem}\n{md}");
    }
}
