//! The names of the files that one stage writes into a run directory and another reads: stage 1's
//! (`lt train`, `lt extract`), stage 2's (`lt retrain`) and the report's (`lt report`). The
//! reproduction's own folders (`seed-<k>/stage1`, `seed-<k>/stage2/<row>`) are
//! `lt_metrics::report::LAYOUT`'s.

/// The split artifact (`lt.split`) of a stage-1 run.
pub const SPLIT_FILE: &str = "split.safetensors";
/// The rolling checkpoint of a stage-1 run.
pub const CHECKPOINT_FILE: &str = "checkpoint.safetensors";
/// The features artifact (`lt.features`) `lt extract` writes into a stage-1 run.
pub const FEATURES_FILE: &str = "features.safetensors";
/// The predictions artifact (`lt.predictions`) of a stage-2 run.
pub const PREDICTIONS_FILE: &str = "predictions.safetensors";

/// A row id as part of a file name (`lt report`'s plots, `lt eval --out`'s files): a row id a
/// foreign artifact records may hold anything, so every character but ASCII letters, digits and
/// `-_.` becomes `_`, and leading dots go (no separators, no hidden or parent names); an id with
/// nothing left is `predictions`.
pub fn row_file_name(row: &str) -> String {
    let plain: String =
        row.chars().map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '_' }).collect();
    match plain.trim_start_matches('.') {
        "" => "predictions".into(),
        r => r.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_id_becomes_a_plain_file_name() {
        assert_eq!(row_file_name("swa-srepr-lambda0.3"), "swa-srepr-lambda0.3");
        assert_eq!(row_file_name("a/b"), "a_b");
        assert_eq!(row_file_name("../../x"), "_.._x");
        assert_eq!(row_file_name("..x"), "x");
        assert_eq!(row_file_name("..."), "predictions");
        assert_eq!(row_file_name(""), "predictions");
        assert_eq!(row_file_name("λ=1"), "__1");
    }
}
