//! SWA and SWAG statistics for any candle model (Izmailov et al. 2018; Maddox et al. 2019).
//!
//! - [`ParamLayout`]: a model's trainable parameters flattened in sorted-name order (batch-norm
//!   running statistics excluded).
//! - [`Swag`]: running first and second moments and the FIFO deviation matrix of rank `K`
//!   (`K = 0`: SWAG-diagonal); [`Swag::sample`] draws
//!   `theta = mean + sqrt(scale) * (sqrt(var) * z1 + D^T z2 / sqrt(K - 1))` from a seeded host
//!   RNG; `scale = 0` is SWA.
//! - [`bn::recalibrate`]: batch-norm statistics recomputed with a cumulative, sample-weighted
//!   average after the weights changed.
//! - Statistics are saved as one streaming safetensors artifact ([`Swag::save`]).
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use candle_nn::VarMap;
//! use lt_swag::{ParamLayout, Swag};
//!
//! let vm = VarMap::new();
//! vm.data().lock().unwrap().insert("w".into(), candle_core::Var::from_tensor(&Tensor::ones(3, candle_core::DType::F32, &Device::Cpu).unwrap()).unwrap());
//! let layout = ParamLayout::of(&vm).unwrap();
//! let mut swag = Swag::new(layout.clone(), 20);
//! swag.collect(&layout.flatten(&vm).unwrap()).unwrap();
//! let theta = swag.sample(0.0, &mut lt_core::Rng::new(0)).unwrap();
//! assert_eq!(theta, vec![1.0, 1.0, 1.0]);
//! ```

#![warn(missing_docs)]

pub mod bn;
mod error;
mod layout;
mod stats;

pub use error::{Result, SwagError};
pub use layout::ParamLayout;
pub use stats::{Swag, SWAG_FORMAT};
