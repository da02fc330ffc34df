//! Representations kept on the device ([`Resident`]): each split of each backbone is read from
//! its source once, on first use, and every later batch is an index selection on the device.
//!
//! Stage 2 on a GPU otherwise decodes each batch's rows on the host and uploads them, for every
//! SWAG member at every step, and uploads a whole split again for every knob a validation
//! search tries. [`crate::retrain`] wraps a source in a `Resident` when the device is not the
//! CPU and the source's rows are not there already ([`FeatureSource::resident_on`]).

use std::collections::HashMap;
use std::sync::Mutex;

use candle_core::{DType, Device, Tensor};
use lt_core::formats::features::{SampleKind, Split};

use crate::bank::FeatureSource;
use crate::config::Backbone;
use crate::error::{Result, RetrainError};

/// A [`FeatureSource`] whose rows on `device` come from copies of whole splits held there, in
/// the source's stored type ([`FeatureSource::stored`]: f16 features take half the memory of f32
/// ones, and widen to the same f32 values). A split of one backbone takes
/// `N x D x 2` (f16) or `x 4` (f32) bytes of device memory from its first read to the drop of
/// the `Resident`. Rows asked for on another device come from the source itself.
///
/// ```
/// use candle_core::{DType, Device, Tensor};
/// use lt_core::formats::features::{SampleKind, Split};
/// use lt_retrain::bank::{FeatureBank, FeatureSource};
/// use lt_retrain::resident::Resident;
/// let dev = Device::Cpu;
/// let z = Tensor::arange(0f32, 8.0, &dev).unwrap().reshape((1, 4, 2)).unwrap(); // S=1, N=4, D=2
/// let bank = FeatureBank::new(vec![SampleKind::Swa], vec![2, 2]).unwrap()
///     .with_split(Split::Train, z, vec![0, 0, 1, 1]).unwrap();
/// let kept = Resident::new(&bank, &dev);
/// let rows = kept.rows(Split::Train, 0, &[3, 0], &dev).unwrap();
/// assert_eq!(rows.to_vec2::<f32>().unwrap(), [[6.0, 7.0], [0.0, 1.0]]);
/// ```
pub struct Resident<'a> {
    source: &'a dyn FeatureSource,
    device: Device,
    blocks: Mutex<HashMap<(Split, usize), Tensor>>,
}

impl<'a> Resident<'a> {
    /// Rows of `source` kept on `device` (nothing is read before the first request).
    pub fn new(source: &'a dyn FeatureSource, device: &Device) -> Self {
        Self { source, device: device.clone(), blocks: Mutex::new(HashMap::new()) }
    }

    /// The whole of `split` for backbone `sample` on the device, in the stored type: read from
    /// the source (which checks every value) on first use.
    fn block(&self, split: Split, sample: usize) -> Result<Tensor> {
        let mut blocks = self.blocks.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(t) = blocks.get(&(split, sample)) {
            return Ok(t.clone());
        }
        let t = self.source.stored(split, sample, &self.device)?;
        blocks.insert((split, sample), t.clone());
        Ok(t)
    }
}

impl FeatureSource for Resident<'_> {
    fn classes(&self) -> usize {
        self.source.classes()
    }
    fn dim(&self) -> usize {
        self.source.dim()
    }
    fn kinds(&self) -> Vec<SampleKind> {
        self.source.kinds()
    }
    fn class_counts(&self) -> &[usize] {
        self.source.class_counts()
    }
    fn has_split(&self, split: Split) -> bool {
        self.source.has_split(split)
    }
    fn labels(&self, split: Split) -> Result<Vec<u32>> {
        self.source.labels(split)
    }
    fn rows(&self, split: Split, sample: usize, idx: &[usize], device: &Device) -> Result<Tensor> {
        if !device.same_device(&self.device) {
            return self.source.rows(split, sample, idx, device);
        }
        let block = self.block(split, sample)?;
        let n = block.dim(0)?;
        if let Some(i) = idx.iter().find(|&&i| i >= n) {
            return Err(RetrainError::Invalid(format!(
                "{}: row {i} outside 0..{n} of the {split} split",
                self.describe()
            )));
        }
        let ids: Vec<u32> = idx.iter().map(|&i| i as u32).collect();
        let ids = Tensor::from_vec(ids, idx.len(), device)?;
        Ok(block.index_select(&ids, 0)?.to_dtype(DType::F32)?)
    }
    fn all(&self, split: Split, sample: usize, device: &Device) -> Result<Tensor> {
        if !device.same_device(&self.device) {
            return self.source.all(split, sample, device);
        }
        Ok(self.block(split, sample)?.to_dtype(DType::F32)?)
    }
    fn stage1_head(&self, backbone: Backbone) -> Result<Option<(Vec<f32>, Vec<f32>)>> {
        self.source.stage1_head(backbone)
    }
    fn describe(&self) -> String {
        self.source.describe()
    }
    fn stored(&self, split: Split, sample: usize, device: &Device) -> Result<Tensor> {
        if !device.same_device(&self.device) {
            return self.source.stored(split, sample, device);
        }
        self.block(split, sample)
    }
    fn resident_on(&self, device: &Device) -> bool {
        device.same_device(&self.device) || self.source.resident_on(device)
    }
}
