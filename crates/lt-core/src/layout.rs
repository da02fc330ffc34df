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
