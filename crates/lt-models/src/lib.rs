//! Backbones for long-tailed classification on candle.
//!
//! - [`Model`]: the CIFAR ResNet family (option-A shortcuts, as in LDAM-DRW) and torchvision's
//!   ResNet-18/34/50 behind one interface: [`Model::forward_t`] (logits), [`Model::features`]
//!   (the pooled representation), [`Model::head`] (the classifier, replaced in stage 2).
//!   Parameters live in a candle-nn `VarMap` with PyTorch names ([`params::ParamStore`]).
//! - [`ops`]: the fast training ops (convolution, batch norm + ReLU, residual add, shortcut,
//!   pooling) as candle custom ops with explicit backward passes.
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
//! ```

#![warn(missing_docs)]

pub mod arch;
mod cifar;
pub mod error;
pub mod fused;
pub mod golden;
pub mod hub;
pub mod init;
mod layers;
pub mod model;
pub mod ops;
pub mod params;
pub mod pool;
mod torchvision;
pub mod weights;

pub use arch::{Arch, Family};
pub use error::{ModelError, Result};
pub use fused::TrainPass;
pub use model::Model;
pub use ops::Backend;
pub use params::{BnUpdate, ParamStore};
pub use weights::{LoadReport, BACKBONE_FORMAT};
