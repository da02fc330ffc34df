//! A batch loader that prepares the next batches on background threads.
//!
//! Given an epoch's index order, worker `w` of `W` builds batches `w, w + W, ...` (decoding and
//! augmenting each sample as bytes, then moving the batch's bytes to the target device and
//! normalising them there: a GPU gets a quarter of the `f32` copy, staged off the consumer's
//! thread) and hands them over through a bounded channel; the consumer receives them in order.
//! Each sample's random augmentation is drawn from a stream keyed by `(seed, epoch, position in
//! the epoch)`, so batches are identical whatever the number of workers or their timing.

mod check;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use candle_core::{Device, Tensor};
use lt_core::Rng;

use crate::dataset::Dataset;
use crate::error::Result;
use crate::transform::Normalize;
pub use check::{check_device_batches, BatchCheck};

/// A batch of samples.
#[derive(Debug)]
pub struct Batch {
    /// Images, `B x C x H x W` f32.
    pub images: Tensor,
    /// Labels, `B` u32.
    pub labels: Tensor,
    /// Labels on the host.
    pub label_vec: Vec<u32>,
    /// Indices of the samples in the data set.
    pub indices: Vec<usize>,
    /// Batch number within the epoch.
    pub number: usize,
}

/// Host-side batch data before it becomes tensors.
#[derive(Debug)]
pub struct HostBatch {
    /// Sample bytes before normalisation, `B * C * H * W`.
    pub images: Vec<u8>,
    /// Labels.
    pub labels: Vec<u32>,
    /// Indices of the samples.
    pub indices: Vec<usize>,
}

impl HostBatch {
    /// The batch as tensors on the device of `tables` ([`Normalize::tables`] of `norm` there):
    /// images of `shape` (`C x H x W`) per sample, normalised, and batch number `number` of its
    /// epoch. On a GPU the bytes are copied and normalised there (a quarter of the copy of
    /// `f32`); on the CPU the host's table loop is faster than tensor ops. Same values.
    pub fn into_batch(
        self,
        shape: [usize; 3],
        number: usize,
        norm: &Normalize,
        tables: &Tensor,
    ) -> Result<Batch> {
        let [c, h, w] = shape;
        let b = self.labels.len();
        let device = tables.device();
        let images = if device.is_cpu() {
            let mut values = vec![0f32; self.images.len()];
            norm.apply(&self.images, shape, &mut values);
            Tensor::from_vec(values, (b, c, h, w), device)?
        } else {
            Normalize::apply_tensor(&Tensor::from_vec(self.images, (b, c, h, w), device)?, tables)?
        };
        let labels = Tensor::from_vec(self.labels.clone(), b, device)?;
        settle(device)?;
        Ok(Batch { images, labels, label_vec: self.labels, indices: self.indices, number })
    }
}

/// Waits until the work this thread queued on `device` is done; nothing to wait for on the CPU.
///
/// Tensors made on one thread and used on another need it on CUDA: candle runs each host
/// thread's ops on that thread's own stream (the per-thread default stream), and nothing orders
/// one thread's stream after another's. So a worker settles its batch (the upload and the
/// normalisation) before handing it over, and the consumer settles the tables it shares with
/// the workers; each waits on its own stream only.
fn settle(device: &Device) -> candle_core::Result<()> {
    if device.is_cpu() {
        Ok(())
    } else {
        device.synchronize()
    }
}

/// Loader settings.
#[derive(Clone, Debug)]
pub struct LoaderConfig {
    /// Samples per batch (the last batch of an epoch may be smaller).
    pub batch_size: usize,
    /// Background worker threads.
    pub workers: usize,
    /// Batches each worker may prepare ahead.
    pub prefetch: usize,
    /// Apply training augmentation.
    pub train: bool,
    /// Seed of the augmentation streams.
    pub seed: u64,
}

impl Default for LoaderConfig {
    fn default() -> Self {
        Self { batch_size: 128, workers: 2, prefetch: 2, train: false, seed: 0 }
    }
}

/// Fills one batch's bytes on the calling thread.
pub fn load_batch(
    ds: &dyn Dataset,
    indices: &[usize],
    first_position: usize,
    epoch: u64,
    cfg: &LoaderConfig,
) -> Result<HostBatch> {
    let len = ds.sample_len();
    let mut images = vec![0u8; indices.len() * len];
    let labels_all = ds.labels();
    let mut labels = Vec::with_capacity(indices.len());
    for (k, (&i, out)) in indices.iter().zip(images.chunks_exact_mut(len)).enumerate() {
        let mut rng =
            Rng::stream(cfg.seed, &[lt_core::rng::streams::LOADER, epoch, (first_position + k) as u64]);
        ds.load_bytes_into(i, cfg.train, &mut rng, out)?;
        labels.push(labels_all[i]);
    }
    Ok(HostBatch { images, labels, indices: indices.to_vec() })
}

/// Which pass a stream of batches belongs to: it keys the augmentation randomness (with the seed
/// and each sample's position), so that every pass draws its own and a resumed run repeats it
/// exactly. The keys are part of the results and never change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    /// Training epoch `e` (0-based; both branches of a SWA run see the same epochs).
    Epoch(u64),
    /// The batch-norm recalibration of the SWA backbone of a run of `epochs` epochs (keyed as
    /// the epoch after the last).
    SwaRecalibration {
        /// The run's epochs.
        epochs: u64,
    },
    /// The batch-norm recalibration of SWAG sample `sample` in `lt extract`.
    Recalibration {
        /// The sample's index.
        sample: u64,
    },
}

/// First key of the SWAG samples' recalibration streams (far above any epoch).
const RECALIBRATION_KEYS: u64 = 1_000_000;

impl Stream {
    /// The stream's key.
    pub fn key(self) -> u64 {
        match self {
            Stream::Epoch(e) => e,
            Stream::SwaRecalibration { epochs } => epochs,
            Stream::Recalibration { sample } => RECALIBRATION_KEYS + sample,
        }
    }
}

/// Iterator over the batches of one epoch, prepared in the background.
pub struct EpochBatches {
    receivers: Vec<Receiver<Result<Batch>>>,
    handles: Vec<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    next: usize,
    total: usize,
    times: Arc<WorkerTimes>,
}

/// The workers' running time and the part of it they waited for room in their queues, in
/// nanoseconds, all workers together.
#[derive(Default)]
struct WorkerTimes {
    alive: AtomicU64,
    waited: AtomicU64,
}

impl EpochBatches {
    /// Starts preparing the batches of `order` (an epoch's indices) for `epoch`.
    pub fn new(
        ds: Arc<dyn Dataset>,
        order: Vec<usize>,
        epoch: u64,
        cfg: LoaderConfig,
        device: Device,
    ) -> Self {
        let bs = cfg.batch_size.max(1);
        let total = order.len().div_ceil(bs);
        let workers = cfg.workers.max(1).min(total.max(1));
        let order = Arc::new(order);
        let stop = Arc::new(AtomicBool::new(false));
        let shape = ds.sample_shape();
        // Made once per epoch on the device, shared by the workers; a failure reaches the
        // consumer as the first batch's error.
        let tables = ds
            .normalize()
            .tables(shape[0], &device)
            .and_then(|t| settle(&device).map(|()| t))
            .map_err(|e| e.to_string());
        let mut receivers = Vec::with_capacity(workers);
        let mut handles = Vec::with_capacity(workers);
        let times = Arc::new(WorkerTimes::default());
        for w in 0..workers {
            let (tx, rx) = sync_channel(cfg.prefetch.max(1));
            let (ds, order, stop, cfg) = (ds.clone(), order.clone(), stop.clone(), cfg.clone());
            let (tables, norm, times) = (tables.clone(), ds.normalize().clone(), times.clone());
            handles.push(std::thread::spawn(move || {
                let (started, mut waited) = (Instant::now(), std::time::Duration::ZERO);
                let mut b = w;
                while b < total && !stop.load(Ordering::Relaxed) {
                    let start = b * bs;
                    let end = (start + bs).min(order.len());
                    let batch = match &tables {
                        Ok(t) => load_batch(ds.as_ref(), &order[start..end], start, epoch, &cfg)
                            .and_then(|host| host.into_batch(shape, b, &norm, t)),
                        Err(e) => Err(crate::error::DataError::Invalid(format!(
                            "the normalisation tables could not be made on the device: {e}"
                        ))),
                    };
                    let failed = batch.is_err();
                    let asked = Instant::now();
                    let sent = tx.send(batch).is_ok();
                    waited += asked.elapsed();
                    if !sent || failed {
                        break;
                    }
                    b += workers;
                }
                // A batch that failed half-way may have left work queued on this thread's stream
                // that reads the tables, which another thread may free next.
                if let Ok(t) = &tables {
                    let _ = settle(t.device());
                }
                times.alive.fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
                times.waited.fetch_add(waited.as_nanos() as u64, Ordering::Relaxed);
            }));
            receivers.push(rx);
        }
        Self { receivers, handles, stop, next: 0, total, times }
    }

    /// Stops the workers and returns the share of their running time they waited for room in
    /// their queues, the consumer not having taken their batches yet: near 1 when the loader ran
    /// ahead of the consumer, near 0 when it set the pace (0 without workers' time).
    pub fn finish(mut self) -> f64 {
        self.shut_down();
        let alive = self.times.alive.load(Ordering::Relaxed);
        let waited = self.times.waited.load(Ordering::Relaxed);
        if alive == 0 {
            0.0
        } else {
            waited as f64 / alive as f64
        }
    }

    /// Stops the workers and waits for them to end.
    fn shut_down(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Drain so that blocked senders wake up and see the stop flag.
        for rx in &self.receivers {
            while rx.try_recv().is_ok() {}
        }
        self.receivers.clear();
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }

    /// Number of batches in the epoch.
    pub fn len(&self) -> usize {
        self.total
    }

    /// Whether the epoch has no batches.
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }
}

impl Iterator for EpochBatches {
    type Item = Result<Batch>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.next >= self.total {
            return None;
        }
        let w = self.next % self.receivers.len();
        self.next += 1;
        match self.receivers[w].recv() {
            Ok(Ok(batch)) => Some(Ok(batch)),
            Ok(Err(e)) => {
                self.next = self.total;
                Some(Err(e))
            }
            Err(_) => {
                self.next = self.total;
                Some(Err(crate::error::DataError::Invalid("a loader worker stopped unexpectedly".into())))
            }
        }
    }
}

impl Drop for EpochBatches {
    fn drop(&mut self) {
        self.shut_down();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::{ImageSet, InMemoryDataset};
    use crate::transform::{Augment, Normalize};

    fn toy(n: usize) -> Arc<dyn Dataset> {
        let pixels: Vec<u8> = (0..n * 3 * 4 * 4).map(|i| (i * 7 % 251) as u8).collect();
        let set = ImageSet {
            channels: 3,
            height: 4,
            width: 4,
            pixels,
            labels: (0..n as u32).map(|i| i % 3).collect(),
            num_classes: 3,
            class_names: vec![],
        };
        Arc::new(InMemoryDataset::new(set, Augment::PadCropFlip { pad: 1, flip: true }, Normalize::half(3)))
    }

    #[test]
    fn batches_come_in_order_and_do_not_depend_on_worker_count() {
        let ds = toy(23);
        let order: Vec<usize> = (0..23).rev().collect();
        let run = |workers| {
            let cfg = LoaderConfig { batch_size: 5, workers, prefetch: 1, train: true, seed: 9 };
            EpochBatches::new(ds.clone(), order.clone(), 3, cfg, Device::Cpu)
                .map(|b| {
                    let b = b.unwrap();
                    (b.number, b.indices.clone(), b.images.flatten_all().unwrap().to_vec1::<f32>().unwrap())
                })
                .collect::<Vec<_>>()
        };
        let one = run(1);
        let three = run(3);
        assert_eq!(one.len(), 5);
        assert_eq!(one, three);
        assert_eq!(one[0].1, vec![22, 21, 20, 19, 18]);
        assert_eq!(one[4].1, vec![2, 1, 0]);
        assert_eq!(one.iter().map(|b| b.0).collect::<Vec<_>>(), vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn batches_normalised_on_the_device_equal_the_samples_normalised_on_the_host() {
        let ds = toy(7);
        let cfg = LoaderConfig { batch_size: 4, workers: 2, prefetch: 1, train: true, seed: 5 };
        let order: Vec<usize> = vec![3, 0, 6, 1, 5, 2, 4];
        for batch in EpochBatches::new(ds.clone(), order.clone(), 2, cfg.clone(), Device::Cpu) {
            let batch = batch.unwrap();
            let got = batch.images.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let len = ds.sample_len();
            for (k, &i) in batch.indices.iter().enumerate() {
                let position = batch.number * cfg.batch_size + k;
                let mut rng = Rng::stream(cfg.seed, &[lt_core::rng::streams::LOADER, 2, position as u64]);
                let mut want = vec![0f32; len];
                ds.load_into(i, true, &mut rng, &mut want).unwrap();
                assert_eq!(&got[k * len..(k + 1) * len], &want[..], "sample {i}");
            }
        }
    }

    #[test]
    fn dropping_mid_epoch_stops_workers() {
        let ds = toy(200);
        let cfg = LoaderConfig { batch_size: 2, workers: 2, prefetch: 1, train: false, seed: 0 };
        let mut it = EpochBatches::new(ds, (0..200).collect(), 0, cfg, Device::Cpu);
        let first = it.next().unwrap().unwrap();
        assert_eq!(first.images.dims(), &[2, 3, 4, 4]);
        drop(it); // must not hang
    }
}
