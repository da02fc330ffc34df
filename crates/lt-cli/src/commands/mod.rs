//! One module per subcommand.

pub mod backbone;
pub mod bench;
pub mod bench_features;
pub mod bench_loader;
pub mod data;
pub mod eval;
pub mod preset;
pub mod retrain;
pub mod selftest;
pub mod train;

/// How a stage-2 run set its knobs, from its facts, for a line of output: `, chose {"tau":1.25},
/// fixed {"lambda":0.0}` (chosen on validation, given or set by the row, or defaults for want of
/// a validation split); empty when it has none.
pub fn knobs_said(facts: &serde_json::Value) -> String {
    let knobs = lt_core::formats::facts::knobs(facts);
    lt_core::formats::facts::SAID
        .iter()
        .filter_map(|(key, how)| {
            knobs
                .get(*key)
                .filter(|k| k.as_object().is_some_and(|o| !o.is_empty()))
                .map(|k| format!(", {how} {k}"))
        })
        .collect()
}
