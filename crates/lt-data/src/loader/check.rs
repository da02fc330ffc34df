//! A device check of the loader ([`check_device_batches`]), for `lt selftest` on a GPU: are the
//! batches its workers make on the device complete when the consumer reads them?

use std::sync::Arc;
use std::time::Duration;

use candle_core::Device;
use lt_core::Rng;

use super::{load_batch, EpochBatches, LoaderConfig};
use crate::dataset::{Dataset, ImageSet, InMemoryDataset};
use crate::error::Result;
use crate::transform::{Augment, Normalize};

/// What [`check_device_batches`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchCheck {
    /// Batches compared.
    pub batches: usize,
    /// Values compared (image values and labels).
    pub compared: usize,
    /// Values whose bits differ from the host's, or missing.
    pub differing: usize,
}

/// The check's data: images of `3 x SIDE x SIDE`, `BATCHES` batches of `BATCH`.
const SIDE: usize = 96;
const BATCH: usize = 64;
const BATCHES: usize = 6;

/// Loads one epoch of generated images (training augmentation, 2 workers) on `device` through
/// [`EpochBatches`] and compares every batch with the same samples loaded and normalised on the
/// host ([`Normalize::apply`]): each image value and label must have the same bits.
///
/// Each batch is read on this thread the moment it arrives, and the workers pause before every
/// sample, so that this thread is the one waiting. On CUDA each host thread runs its ops on a
/// stream of its own: a batch handed over before its upload and normalisation had finished on
/// the worker's stream would be read half-written here. (On the CPU the batch is normalised by
/// [`Normalize::apply`] on the worker; the check then covers the order and the labels.)
pub fn check_device_batches(device: &Device) -> Result<BatchCheck> {
    let n = BATCH * BATCHES;
    let pixels = (0..n * 3 * SIDE * SIDE).map(|i| (i.wrapping_mul(2_654_435_761) >> 7) as u8).collect();
    let labels = (0..n as u32).map(|i| i * 7 % 10).collect();
    let set = ImageSet {
        channels: 3,
        height: SIDE,
        width: SIDE,
        pixels,
        labels,
        num_classes: 10,
        class_names: vec![],
    };
    let host = InMemoryDataset::new(set, Augment::PadCropFlip { pad: 4, flip: true }, Normalize::imagenet());
    let slow: Arc<dyn Dataset> = Arc::new(Paused(host.clone()));
    let cfg = LoaderConfig { batch_size: BATCH, workers: 2, prefetch: 1, train: true, seed: 11 };
    let order: Vec<usize> = (0..n).rev().collect();
    let (epoch, shape) = (3, host.sample_shape());
    let mut check = BatchCheck { batches: 0, compared: 0, differing: 0 };
    for batch in EpochBatches::new(slow, order.clone(), epoch, cfg.clone(), device.clone()) {
        let batch = batch?;
        // Read at once, before anything else on this thread.
        let images = batch.images.flatten_all()?.to_vec1::<f32>()?;
        let labels = batch.labels.to_vec1::<u32>()?;
        let start = batch.number * BATCH;
        let want = load_batch(&host, &order[start..(start + BATCH).min(n)], start, epoch, &cfg)?;
        let mut values = vec![0f32; want.images.len()];
        host.normalize.apply(&want.images, shape, &mut values);
        check.batches += 1;
        check.compared += values.len() + want.labels.len();
        check.differing +=
            differing(&images, &values, |v| v.to_bits()) + differing(&labels, &want.labels, |&l| l);
    }
    if check.batches != BATCHES {
        return Err(crate::error::DataError::Invalid(format!(
            "the loader check got {} of its {BATCHES} batches",
            check.batches
        )));
    }
    Ok(check)
}

/// The values of `want` that `got` does not have, bit for bit (a missing value counts).
fn differing<T, B: PartialEq>(got: &[T], want: &[T], bits: impl Fn(&T) -> B) -> usize {
    let unequal = got.iter().zip(want).filter(|(g, w)| bits(g) != bits(w)).count();
    unequal + want.len().abs_diff(got.len())
}

/// A data set whose samples take a while to load: the loader's workers become the slow side.
struct Paused(InMemoryDataset);

impl Dataset for Paused {
    fn len(&self) -> usize {
        self.0.len()
    }
    fn labels(&self) -> &[u32] {
        self.0.labels()
    }
    fn num_classes(&self) -> usize {
        self.0.num_classes()
    }
    fn sample_shape(&self) -> [usize; 3] {
        self.0.sample_shape()
    }
    fn load_bytes_into(&self, index: usize, train: bool, rng: &mut Rng, out: &mut [u8]) -> Result<()> {
        std::thread::sleep(Duration::from_micros(300));
        self.0.load_bytes_into(index, train, rng, out)
    }
    fn normalize(&self) -> &Normalize {
        self.0.normalize()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_batch_matches_the_host_on_the_cpu() {
        let c = check_device_batches(&Device::Cpu).unwrap();
        assert_eq!(c.batches, BATCHES);
        assert_eq!(c.compared, BATCHES * BATCH * (3 * SIDE * SIDE + 1));
        assert_eq!(c.differing, 0);
    }

    #[test]
    fn differing_counts_unequal_bits_and_missing_values() {
        let bits = |v: &f32| v.to_bits();
        assert_eq!(differing(&[1.0, 2.0, 3.0], &[1.0, 2.0, 3.0], bits), 0);
        assert_eq!(differing(&[1.0, 2.5, 3.0], &[1.0, 2.0, 3.0], bits), 1);
        assert_eq!(differing(&[0.0, 2.0], &[-0.0, 2.0, 3.0], bits), 2);
    }
}
