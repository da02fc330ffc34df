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

use crate::bank::{select_rows, FeatureSource};
use crate::config::Backbone;
use crate::error::Result;

/// A [`FeatureSource`] whose rows on `device` come from copies of whole splits held there, in
/// the source's stored type ([`FeatureSource::stored`]: f16 features take half the memory of f32
/// ones, and widen to the same f32 values). A split of one backbone takes
/// `N x D x 2` (f16) or `x 4` (f32) bytes of device memory from its first read to the drop of
/// the `Resident`. Should one not fit ([`Resident::with_limit`], or the device's memory), every
/// row from then on comes from the source, as without a `Resident`. Rows asked for on another
/// device come from the source itself.
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
    limit: Option<usize>,
    blocks: Mutex<Blocks>,
}

/// The blocks kept, or none from the first one that did not fit on.
#[derive(Default)]
struct Blocks {
    kept: HashMap<(Split, usize), Tensor>,
    bytes: usize,
    given_up: bool,
}

impl<'a> Resident<'a> {
    /// Rows of `source` kept on `device` (nothing is read before the first request).
    pub fn new(source: &'a dyn FeatureSource, device: &Device) -> Self {
        Self { source, device: device.clone(), limit: None, blocks: Mutex::new(Blocks::default()) }
    }

    /// At most `bytes` kept on the device. A block that would pass the limit, or that the device
    /// has no memory for, frees every block kept, and every row from then on comes from the
    /// source, as without a `Resident` (with a warning): slower, not wrong.
    pub fn with_limit(mut self, bytes: usize) -> Self {
        self.limit = Some(bytes);
        self
    }

    /// Bytes kept on the device now.
    pub fn kept_bytes(&self) -> usize {
        self.blocks.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).bytes
    }

    /// The whole of `split` for backbone `sample` in the stored type, when rows on `device` come
    /// from a block kept there; `None` when they come from the source (another device, or a
    /// block did not fit).
    fn kept_on(&self, split: Split, sample: usize, device: &Device) -> Result<Option<Tensor>> {
        if !device.same_device(&self.device) {
            return Ok(None);
        }
        self.block(split, sample)
    }

    /// The whole of `split` for backbone `sample` on the device, in the stored type: read from
    /// the source (which checks every value) on first use; `None` once a block did not fit.
    fn block(&self, split: Split, sample: usize) -> Result<Option<Tensor>> {
        let mut blocks = self.blocks.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if blocks.given_up {
            return Ok(None);
        }
        if let Some(t) = blocks.kept.get(&(split, sample)) {
            return Ok(Some(t.clone()));
        }
        // Read on the host first: an error there is the source's (a bad value), one in the copy
        // the device's (its memory), which the rows survive.
        let host = self.source.stored(split, sample, &Device::Cpu)?;
        let bytes = blocks.bytes + host.elem_count() * host.dtype().size_in_bytes();
        let copied = match self.limit {
            Some(limit) if bytes > limit => Err(format!("{bytes} bytes would pass the limit of {limit}")),
            _ => host.to_device(&self.device).map_err(|e| e.to_string()),
        };
        match copied {
            Ok(t) => {
                blocks.kept.insert((split, sample), t.clone());
                blocks.bytes = bytes;
                Ok(Some(t))
            }
            Err(why) => {
                tracing::warn!(
                    "{}: the {split} split of backbone {sample} does not fit on the device ({why}); \
                     stage 2 reads every batch from the host from here on",
                    self.describe()
                );
                *blocks = Blocks { given_up: true, ..Blocks::default() };
                Ok(None)
            }
        }
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
        match self.kept_on(split, sample, device)? {
            Some(block) => {
                let whose = format!("{}, {split} split", self.describe());
                Ok(select_rows(&block, idx, &whose)?.to_dtype(DType::F32)?)
            }
            None => self.source.rows(split, sample, idx, device),
        }
    }
    fn all(&self, split: Split, sample: usize, device: &Device) -> Result<Tensor> {
        match self.kept_on(split, sample, device)? {
            Some(block) => Ok(block.to_dtype(DType::F32)?),
            None => self.source.all(split, sample, device),
        }
    }
    fn stage1_head(&self, backbone: Backbone) -> Result<Option<(Vec<f32>, Vec<f32>)>> {
        self.source.stage1_head(backbone)
    }
    fn describe(&self) -> String {
        self.source.describe()
    }
    fn stored(&self, split: Split, sample: usize, device: &Device) -> Result<Tensor> {
        match self.kept_on(split, sample, device)? {
            Some(block) => Ok(block),
            None => self.source.stored(split, sample, device),
        }
    }
    fn resident_on(&self, device: &Device) -> bool {
        let given_up = self.blocks.lock().map(|b| b.given_up).unwrap_or(true);
        (device.same_device(&self.device) && !given_up) || self.source.resident_on(device)
    }
}
