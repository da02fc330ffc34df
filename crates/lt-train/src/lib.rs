//! Stage 1 of decoupled long-tailed training: representation learning.
//!
//! - [`config::TrainConfig`]: the recipe (SGD with momentum, Nesterov and weight decay; warm-up
//!   and cosine schedules; SWA start and rate; SWAG rank).
//! - [`trainer::train`]: one run producing the SGD backbone and, with SWA, the SWA backbone and
//!   the SWAG statistics, checkpointed every epoch and resumable bit for bit.
//! - [`init`]: a pretrained start (hub or local weights) and the fine-tuning knobs.
//! - [`extract::extract`]: the features artifact: representations of the SGD and SWA backbones
//!   and of `M` SWAG samples (each with its own batch-norm recalibration).

#![warn(missing_docs)]

pub mod bn;
pub mod checkpoint;
pub mod config;
mod error;
pub mod eta;
pub mod evaluate;
pub mod extract;
pub mod init;
pub use lt_core::optim;
pub mod run;
pub mod schedule;
pub mod trainer;

pub use config::{SwaConfig, TrainConfig};
pub use error::{Result, TrainError};
pub use run::RunDir;
pub use trainer::{train, RunOptions, TrainSummary};
