//! Long-tailed data sets, splits, samplers and batch loading for the SRepr pipeline.
//!
//! - Readers for the real formats: CIFAR-10/100 binary ([`cifar`], from a directory or the
//!   official archives, with a verified [`download`]er), MNIST/Fashion-MNIST IDX ([`idx`]),
//!   ImageNet-LT / iNaturalist-2018 split lists ([`listfile`]) and image folders ([`folder`]),
//!   decoded lazily with the standard transforms ([`files`]; their bilinear [`resize`]), and an
//!   embedded synthetic long-tailed set ([`synthetic`]).
//! - Long-tailed construction ([`longtail`]): the exponential profile and the LDAM-DRW
//!   selection, bit-exact with numpy ([`numpy_mt`]); shot groups.
//! - [`sampler`]s (instance, class-balanced, square-root / power, progressive) and a background
//!   batch [`loader`] yielding candle tensors.
//! - [`bundle`]: data sets by name, ready for training, and the split artifact they produce;
//!   [`spec`]: the description of a run's data (preset table, command-line flags, run record).
//!
//! ```no_run
//! use lt_data::{load_bundle, DataOptions, DatasetName};
//! let bundle = load_bundle(DatasetName::Synthetic, &DataOptions::default()).unwrap();
//! println!("{} training images, counts {:?}", bundle.train.len(), bundle.class_counts());
//! ```

#![warn(missing_docs)]

pub mod bundle;
pub mod cifar;
pub mod dataset;
pub mod download;
pub mod error;
pub mod files;
pub mod folder;
pub mod folder_data;
pub mod idx;
pub mod listfile;
pub mod loader;
pub mod longtail;
mod name;
pub mod numpy_mt;
pub mod resize;
pub use lt_core::sampler;
pub mod spec;
pub mod synthetic;
pub mod transform;

pub use bundle::{load_bundle, DataBundle, DataOptions, DatasetName};
pub use dataset::{Dataset, ImageSet, InMemoryDataset, Subset};
pub use error::{DataError, Result};
pub use loader::{Batch, EpochBatches, LoaderConfig};
pub use longtail::{
    exponential_profile, ldam_selection, ldam_selection_with_val, ldam_selection_with_val_counts,
    LongTailSplit, ShotGroup,
};
pub use sampler::{Sampler, SamplerKind};
pub use spec::DataSpec;
pub use synthetic::SyntheticConfig;
