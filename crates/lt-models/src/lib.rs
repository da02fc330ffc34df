//! Backbones for long-tailed classification on candle.
//!
//! - [`Model`]: the CIFAR ResNet family (option-A shortcuts, as in LDAM-DRW) and torchvision's
//!   ResNet-18/34/50 behind one interface: candle's [`ModuleT`](candle_core::ModuleT) (logits
//!   with the autograd graph), [`Model::train_step`], [`Model::infer`] (features and logits),
//!   [`Model::update_bn_stats`], [`Model::head`] (the classifier, replaced in stage 2).
//!   Parameters live in a candle-nn `VarMap` with PyTorch names ([`params::ParamStore`]).
//! - Each network is described once, as a program of layers; it runs on the [`ops`] (the
//!   project's CPU kernels, cuDNN on CUDA, or candle's stock ops) with candle's autograd, or on
//!   the CPU as one fused node with its own backward pass.
//! - [`weights`]: safetensors with torchvision/timm or transformers names; [`hub`]: the Hugging
//!   Face hub with an offline mode.
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use lt_models::{Arch, Model};
//! let model = Model::new(Arch::new("resnet32", 10, 3).unwrap(), 0, &Device::Cpu).unwrap();
//! assert_eq!(model.num_params(), 464_154);
//! let x = Tensor::zeros((2, 3, 32, 32), candle_core::DType::F32, &Device::Cpu).unwrap();
//! let (features, logits) = model.infer(&x).unwrap();
//! assert_eq!((features.dims(), logits.dims()), (&[2, 64][..], &[2, 10][..]));
//! let y = Tensor::new(&[1u32, 7], &Device::Cpu).unwrap();
//! let step = model.train_step(&x, |logits| candle_nn::loss::cross_entropy(logits, &y)).unwrap();
//! assert!(step.loss.to_scalar::<f32>().unwrap().is_finite());
//! ```

#![warn(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod arch;
mod cifar;
pub mod error;
mod exec;
mod frozen;
#[cfg(feature = "selftest")]
pub mod golden;
pub mod hub;
pub mod init;
mod layers;
pub mod model;
pub mod ops;
pub mod params;
pub mod pool;
pub mod precision;
pub mod profile;
mod program;
mod torchvision;
pub mod weights;

pub use arch::{Arch, Family};
pub use error::{ModelError, Result};
pub use frozen::Frozen;
pub use model::{Model, Shapes, TrainStep};
pub use ops::Backend;
pub use params::{BnUpdate, ParamStore};
pub use precision::Precision;
pub use weights::{LoadReport, BACKBONE_FORMAT};
