//! Batch-norm recalibration of an `lt-models` backbone over a training set.

use std::sync::Arc;

use candle_core::{Device, Tensor};
use lt_data::loader::{EpochBatches, LoaderConfig, Stream};
use lt_data::Dataset;
use lt_models::{BnUpdate, Model};
use lt_swag::bn::{BatchNormModel, BnMode};

use crate::error::Result;

/// An `lt-models` backbone seen as a [`BatchNormModel`].
pub struct Recal<'a>(pub &'a Model);

fn model_err(e: impl std::error::Error + Send + Sync + 'static) -> lt_swag::SwagError {
    lt_swag::SwagError::Model(Box::new(e))
}

impl BatchNormModel for Recal<'_> {
    fn reset_running_stats(&self) -> lt_swag::Result<()> {
        self.0.store().reset_bn_stats().map_err(model_err)
    }
    fn bn_mode(&self) -> BnMode {
        match self.0.store().bn_update() {
            BnUpdate::Momentum(m) => BnMode::Momentum(m),
            BnUpdate::Cumulative => BnMode::Cumulative,
        }
    }
    fn set_bn_mode(&self, mode: BnMode) {
        self.0.store().set_bn_update(match mode {
            BnMode::Momentum(m) => BnUpdate::Momentum(m),
            BnMode::Cumulative => BnUpdate::Cumulative,
        });
    }
    fn forward_train(&self, x: &Tensor) -> lt_swag::Result<()> {
        self.0.update_bn_stats(x).map_err(model_err)
    }
}

/// Recomputes `model`'s batch-norm statistics with one training-mode pass over `data` (augmented
/// like training, as the SWAG reference does), every sample weighted equally. `stream` keys the
/// augmentation randomness. Returns the number of samples seen.
pub fn recalibrate(
    model: &Model,
    data: &Arc<dyn Dataset>,
    batch_size: usize,
    workers: usize,
    seed: u64,
    stream: Stream,
    device: &Device,
) -> Result<usize> {
    let epoch = stream.key();
    let order: Vec<usize> = (0..data.len()).collect();
    let cfg = LoaderConfig { batch_size, workers, train: true, seed, ..LoaderConfig::default() };
    let batches = EpochBatches::new(data.clone(), order, epoch, cfg, device.clone());
    let batches = batches.map(|b| b.map(|b| b.images).map_err(model_err));
    Ok(lt_swag::bn::recalibrate(&Recal(model), batches)?)
}
