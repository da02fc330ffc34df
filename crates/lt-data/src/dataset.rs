//! The data set abstraction shared by every source: in-memory images and lazily decoded files.

use std::sync::Arc;

use lt_core::Rng;

use crate::error::Result;
use crate::transform::{Augment, Normalize};

/// A labelled image data set producing `C x H x W` samples: bytes (augmented), which
/// [`Dataset::normalize`] turns into the network's `f32` input. The batch loader moves the bytes
/// to the batch's device and normalises them there (a quarter of the host-to-device copy of
/// `f32`); [`Dataset::load_into`] normalises on the host.
///
/// Implementations must be deterministic: the same `(index, train, rng state)` gives the same
/// sample, so that batches do not depend on which worker thread prepared them.
pub trait Dataset: Send + Sync {
    /// Number of samples.
    fn len(&self) -> usize;
    /// Whether the set is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Label of every sample, in index order.
    fn labels(&self) -> &[u32];
    /// Number of classes (labels are `< num_classes`).
    fn num_classes(&self) -> usize;
    /// Shape `[C, H, W]` of every produced sample.
    fn sample_shape(&self) -> [usize; 3];
    /// Writes sample `index` into `out` (length `C*H*W`) as bytes before normalisation,
    /// augmented when `train` (random choices drawn from `rng`).
    fn load_bytes_into(&self, index: usize, train: bool, rng: &mut Rng, out: &mut [u8]) -> Result<()>;
    /// The per-channel normalisation of the bytes.
    fn normalize(&self) -> &Normalize;
    /// Writes sample `index` into `out` (length `C*H*W`), normalised: [`Dataset::load_bytes_into`],
    /// then [`Normalize::apply`].
    fn load_into(&self, index: usize, train: bool, rng: &mut Rng, out: &mut [f32]) -> Result<()> {
        let mut bytes = vec![0u8; out.len()];
        self.load_bytes_into(index, train, rng, &mut bytes)?;
        self.normalize().apply(&bytes, self.sample_shape(), out);
        Ok(())
    }
    /// Number of elements of one sample.
    fn sample_len(&self) -> usize {
        self.sample_shape().iter().product()
    }
}

/// Images held in memory as bytes, `N x C x H x W` (CIFAR, Fashion-MNIST, synthetic).
#[derive(Clone, Debug)]
pub struct ImageSet {
    /// Channels per image (3 for RGB, 1 for grey).
    pub channels: usize,
    /// Image height.
    pub height: usize,
    /// Image width.
    pub width: usize,
    /// Pixel bytes, image after image, each channel-major (`C x H x W`).
    pub pixels: Vec<u8>,
    /// One label per image.
    pub labels: Vec<u32>,
    /// Number of classes.
    pub num_classes: usize,
    /// Class names (may be empty when the source has none).
    pub class_names: Vec<String>,
}

impl ImageSet {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no images.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Bytes per image.
    pub fn image_len(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// The bytes of image `i`.
    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.image_len();
        &self.pixels[i * n..(i + 1) * n]
    }

    /// The images at `indices`, in that order, as a new set.
    pub fn select(&self, indices: &[usize]) -> ImageSet {
        let n = self.image_len();
        let mut pixels = Vec::with_capacity(indices.len() * n);
        for &i in indices {
            pixels.extend_from_slice(self.image(i));
        }
        ImageSet {
            pixels,
            labels: indices.iter().map(|&i| self.labels[i]).collect(),
            class_names: self.class_names.clone(),
            ..*self
        }
    }
}

/// An [`ImageSet`] with its augmentation and normalisation: a ready [`Dataset`].
#[derive(Clone, Debug)]
pub struct InMemoryDataset {
    /// The images.
    pub images: Arc<ImageSet>,
    /// Augmentation applied when loading for training.
    pub augment: Augment,
    /// Per-channel normalisation.
    pub normalize: Normalize,
}

impl InMemoryDataset {
    /// Wraps images with an augmentation and a normalisation.
    pub fn new(images: ImageSet, augment: Augment, normalize: Normalize) -> Self {
        Self { images: Arc::new(images), augment, normalize }
    }
}

impl Dataset for InMemoryDataset {
    fn len(&self) -> usize {
        self.images.len()
    }
    fn labels(&self) -> &[u32] {
        &self.images.labels
    }
    fn num_classes(&self) -> usize {
        self.images.num_classes
    }
    fn sample_shape(&self) -> [usize; 3] {
        [self.images.channels, self.images.height, self.images.width]
    }
    fn load_bytes_into(&self, index: usize, train: bool, rng: &mut Rng, out: &mut [u8]) -> Result<()> {
        let img = self.images.image(index);
        let [c, h, w] = self.sample_shape();
        let aug = if train { self.augment } else { Augment::None };
        crate::transform::augment(img, c, h, w, aug, rng, out);
        Ok(())
    }
    fn normalize(&self) -> &Normalize {
        &self.normalize
    }
}

/// A view of a data set restricted to some of its indices (e.g. the long-tailed subset).
pub struct Subset {
    base: Arc<dyn Dataset>,
    indices: Vec<usize>,
    labels: Vec<u32>,
}

impl Subset {
    /// The samples of `base` at `indices`, in that order.
    pub fn new(base: Arc<dyn Dataset>, indices: Vec<usize>) -> Self {
        let all = base.labels();
        let labels = indices.iter().map(|&i| all[i]).collect();
        Self { base, indices, labels }
    }

    /// Indices into the base data set.
    pub fn indices(&self) -> &[usize] {
        &self.indices
    }
}

impl Dataset for Subset {
    fn len(&self) -> usize {
        self.indices.len()
    }
    fn labels(&self) -> &[u32] {
        &self.labels
    }
    fn num_classes(&self) -> usize {
        self.base.num_classes()
    }
    fn sample_shape(&self) -> [usize; 3] {
        self.base.sample_shape()
    }
    fn load_bytes_into(&self, index: usize, train: bool, rng: &mut Rng, out: &mut [u8]) -> Result<()> {
        self.base.load_bytes_into(self.indices[index], train, rng, out)
    }
    fn normalize(&self) -> &Normalize {
        self.base.normalize()
    }
}
