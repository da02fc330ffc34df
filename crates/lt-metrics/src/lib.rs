//! Metrics for long-tailed classification, for anyone's logits.
//!
//! - [`classification`]: accuracy overall, per class and per shot group (Many > 100, Medium
//!   20..100, Few < 20 training images; a group's number is the mean of its classes'
//!   accuracies), top-k, NLL, ECE (Guo's bins by default) and reliability bins.
//! - [`dispersion`]: how scattered stochastic representations are, per input and per class, in
//!   representation and probability space.
//! - [`aggregate`]: mean ± sample std over seeds.
//! - [`predictions`]: prediction sets (the `lt.predictions` artifact) as scores with shot groups;
//!   [`report`]: a reproduction's report (collection from the run directories, the poster's
//!   layout with the paper's ImageNet-LT numbers, chosen knobs, plots); [`plots`]: PNG and SVG.
//!
//! ```
//! use lt_metrics::classification::{ece_from, BinEdges};
//! // The reference sheet's test vector.
//! let e = ece_from(&[0.95, 1.0], &[true, false], 15, BinEdges::Guo).unwrap();
//! assert!((e - 0.475).abs() < 1e-12);
//! ```

#![warn(missing_docs)]

pub mod aggregate;
pub mod classification;
pub mod dispersion;
mod error;
pub mod plots;
pub mod predictions;
pub mod report;

pub use classification::{evaluate, BinEdges, Evaluation, Scores};
pub use error::{MetricsError, Result};
pub use predictions::{Predictions, PredictionsExt};
