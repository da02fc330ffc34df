//! Metrics of arbitrary logits: shot-group accuracy, NLL, ECE, a report row and a reliability
//! diagram: `cargo run --release -p lt-metrics --example evaluate_logits`.
use lt_core::split::shot_groups;
use lt_metrics::classification::{confidences, reliability, BinEdges};
use lt_metrics::report::{markdown, ReportSpec, Row, TableSpec};
use lt_metrics::{evaluate, Scores};

fn main() -> anyhow::Result<()> {
    let counts = [500usize, 120, 40, 10];
    let labels: Vec<u32> = (0..4u32).flat_map(|c| std::iter::repeat_n(c, 25)).collect();
    // A head-biased classifier: confident on the head, often wrong on the tail.
    let logits: Vec<f32> = labels
        .iter()
        .enumerate()
        .flat_map(|(i, &y)| {
            let right = (i * 7919) % 100 < [95, 80, 50, 20][y as usize];
            let mut row = [0.0f32, -0.5, -1.0, -1.5];
            row[if right { y as usize } else { 0 }] += 3.0;
            row
        })
        .collect();
    let s = Scores::logits(&logits, &labels, 4)?;
    let e = evaluate(&s, &shot_groups(&counts), 15, BinEdges::Guo)?;
    println!("{e:#?}");
    let mut row = Row::new("sgd-none", "SGD", "-");
    (row.seeds, row.evaluations, row.chosen) = (vec![0], vec![e], vec![serde_json::Value::Null]);
    let spec = ReportSpec {
        title: "Example".into(),
        tables: vec![TableSpec {
            title: "Synthetic logits".into(),
            rows: vec!["sgd-none".into()],
            note: "A head-biased classifier.".into(),
        }],
        per_class_rows: Vec::new(),
        paper: None,
    };
    println!("{}", markdown(&spec, "A head-biased classifier on 100 test images.", &[row]));
    let (c, ok) = confidences(&s);
    let files = lt_metrics::plots::reliability_diagram(
        &reliability(&c, &ok, 15, BinEdges::Guo)?,
        "example",
        &std::env::temp_dir().join("lt-metrics-example"),
    )?;
    println!("wrote {files:?}");
    Ok(())
}
