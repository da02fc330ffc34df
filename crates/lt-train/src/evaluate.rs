//! Predictions of a backbone on a data set, and a summary of their accuracy.

use std::sync::Arc;

use candle_core::Device;
use lt_core::readback::{Read, ReadBack, READ_EVERY};
use lt_core::split::ShotGroup;
use lt_data::loader::{EpochBatches, LoaderConfig};
use lt_data::Dataset;
use lt_metrics::{BinEdges, Evaluation, Scores};
use lt_models::Model;

use crate::error::Result;

/// Eval-mode `(features [N, D], logits [N, C])` of every sample of `data`, in order. The passes
/// run on a frozen snapshot of `model` (`Model::freeze`; the same values), so that what
/// evaluation prepares from the weights is made once, not checked or redone for every batch:
/// the packed weights on the CPU, the channels-last filters on CUDA.
pub fn predict(
    model: &Model,
    data: &Arc<dyn Dataset>,
    batch_size: usize,
    workers: usize,
    device: &Device,
) -> Result<(Vec<f32>, Vec<f32>)> {
    let cfg = LoaderConfig { batch_size, workers, ..LoaderConfig::default() };
    let mut feats = Vec::with_capacity(data.len() * model.feature_dim());
    let mut logits = Vec::with_capacity(data.len() * model.arch().num_classes);
    let frozen = model.freeze()?;
    // Outputs are read several batches at a time: on a GPU one wait for the device per
    // READ_EVERY batches. Each batch leaves two tensors, tagged by where they go.
    let mut add = |read: Read<bool>| {
        for (v, &is_features) in read.iter() {
            if is_features { &mut feats } else { &mut logits }.extend_from_slice(v);
        }
    };
    let mut unread = ReadBack::new(2 * READ_EVERY);
    for b in EpochBatches::new(data.clone(), (0..data.len()).collect(), 0, cfg, device.clone()) {
        let (f, l) = frozen.infer(&b?.images)?;
        add(unread.push(&f, true)?);
        add(unread.push(&l, false)?);
    }
    add(unread.read()?);
    Ok((feats, logits))
}

/// Accuracy, shot-group accuracy, NLL and ECE of a backbone on `data`.
pub fn evaluate(
    model: &Model,
    data: &Arc<dyn Dataset>,
    groups: &[ShotGroup],
    batch_size: usize,
    workers: usize,
    device: &Device,
) -> Result<Evaluation> {
    let (_, logits) = predict(model, data, batch_size, workers, device)?;
    let s = Scores::logits(&logits, data.labels(), model.arch().num_classes)?;
    Ok(lt_metrics::evaluate(&s, groups, lt_metrics::classification::ECE_BINS, BinEdges::Guo)?)
}
