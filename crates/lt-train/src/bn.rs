//! Batch-norm recalibration of an `lt-models` backbone over a training set.

use std::sync::Arc;

use candle_core::{Device, Tensor};
use lt_data::loader::{EpochBatches, LoaderConfig};
use lt_data::Dataset;
use lt_models::{BnUpdate, Model};
use lt_swag::bn::BatchNormModel;

use crate::error::Result;

/// An `lt-models` backbone seen as a [`BatchNormModel`].
pub struct Recal<'a>(pub &'a Model);

impl BatchNormModel for Recal<'_> {
    fn reset_running_stats(&self) -> lt_swag::Result<()> {
        self.0.store().reset_bn_stats().map_err(|e| lt_swag::SwagError::Mismatch(e.to_string()))
    }
    fn set_cumulative(&self, cumulative: bool) {
        self.0.store().set_bn_update(if cumulative { BnUpdate::Cumulative } else { BnUpdate::Momentum(0.1) });
    }
    fn forward_train(&self, x: &Tensor) -> lt_swag::Result<()> {
        self.0.update_bn_stats(x).map_err(|e| lt_swag::SwagError::Mismatch(e.to_string()))
    }
}

/// Recomputes `model`'s batch-norm statistics with one training-mode pass over `data` (augmented
/// like training, as the SWAG reference does), every sample weighted equally. `epoch` keys the
/// augmentation streams. Returns the number of samples seen.
pub fn recalibrate(
    model: &Model,
    data: &Arc<dyn Dataset>,
    batch_size: usize,
    workers: usize,
    seed: u64,
    epoch: u64,
    device: &Device,
) -> Result<usize> {
    let order: Vec<usize> = (0..data.len()).collect();
    let cfg = LoaderConfig { batch_size, workers, prefetch: 2, train: true, seed };
    let batches = EpochBatches::new(data.clone(), order, epoch, cfg, device.clone());
    let batches =
        batches.map(|b| b.map(|b| b.images).map_err(|e| lt_swag::SwagError::Mismatch(e.to_string())));
    Ok(lt_swag::bn::recalibrate(&Recal(model), batches)?)
}
