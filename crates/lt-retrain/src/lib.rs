//! Stage 2 of decoupled long-tailed training: classifier re-training on frozen representations.
//!
//! Every method reads representations through a [`FeatureSource`]: the features artifact
//! written by `lt extract` ([`lt_core::formats::features::Features`], memory-mapped), or an
//! in-memory [`FeatureBank`] of your own tensors. No image or backbone code is needed.
//!
//! | method | trainable | loss | sampler |
//! |---|---|---|---|
//! | `none` | - | the stage-1 head | - |
//! | `crt` | re-initialised `W, b` | CE | class-balanced |
//! | `lws` | per-class scales on the frozen head | CE | class-balanced |
//! | `tau-norm` | - | `w_c / ‖w_c‖^tau`, tau chosen on validation data | - |
//! | `la` | re-initialised `W, b` | `CE(eta + tau log pi)`, tau chosen on validation data | instance |
//! | `la-posthoc` | - | `eta - tau log pi`, tau chosen on validation data | - |
//! | `balanced-softmax` | re-initialised `W, b` | `CE(eta + log n)` (LA at tau = 1) | instance |
//! | `disalign` | `alpha, beta, v, c` on the frozen head | re-weighted CE, `(1/pi)^rho` | instance |
//! | `srepr` | re-initialised `W, b` | balancing loss on SWAG members + `lambda T^2 KL` ([`methods::srepr`]) | instance |
//!
//! One training loop ([`fit`]) serves every trainable method: SGD with momentum 0.9, a cosine
//! from `lr` to 0 over the run, epochs of `floor(N / batch)` steps. Knobs left open are chosen on
//! the validation split ([`select`]), never on the test split.
//!
//! SRepr on your own representations, no file written:
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use lt_core::formats::features::{SampleKind::{Swa, Swag}, Split};
//! use lt_retrain::{retrain, FeatureBank, MethodKind, RetrainConfig};
//! let dev = Device::Cpu;
//! let (counts, n_test) = (vec![40, 10, 4], 30); // training images per class; test images
//! let train_y: Vec<u32> = counts.iter().enumerate().flat_map(|(c, &k)| vec![c as u32; k]).collect();
//! let test_y: Vec<u32> = (0..n_test as u32).map(|i| i % 3).collect();
//! let z = |y: &[u32]| Tensor::randn(0f32, 1.0, (3, y.len(), 8), &dev).unwrap(); // [S=3, N, D=8]
//! let bank = FeatureBank::new(vec![Swa, Swag, Swag], counts).unwrap()
//!     .with_split(Split::Train, z(&train_y), train_y.clone()).unwrap()
//!     .with_split(Split::Test, z(&test_y), test_y).unwrap();
//! let mut cfg = RetrainConfig::new(MethodKind::Srepr);
//! (cfg.epochs, cfg.srepr.lambda, cfg.srepr.temperature) = (2, Some(0.3), Some(2.0));
//! let out = retrain(&bank, &cfg, &dev).unwrap();
//! assert_eq!(out.test_scores.len(), n_test * 3);
//! ```

#![warn(missing_docs)]

pub mod bank;
pub mod config;
mod error;
pub mod head;
pub mod losses;
pub mod methods;
pub mod outputs;
pub mod problem;
pub mod resident;
pub mod rows;
pub mod select;
mod vocab;

use candle_core::Device;
use lt_core::formats::features::Split;

pub use bank::{FeatureBank, FeatureSource};
pub use config::{
    Backbone, Balance, Criterion, KdLogits, KlDirection, MethodKind, Objective, Predict, RetrainConfig,
    SelectConfig, SreprConfig, Teacher, Weighting,
};
pub use error::{Result, RetrainError};
pub use head::Head;
pub use problem::{fit, Problem};

/// The outcome of one stage-2 run.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// The configuration.
    pub config: RetrainConfig,
    /// The classifier.
    pub head: Head,
    /// Test scores `[N, C]`, row-major: logits, or probabilities when `probabilities`.
    pub test_scores: Vec<f32>,
    /// Whether `test_scores` are probabilities (ensemble predictions).
    pub probabilities: bool,
    /// Test labels.
    pub test_labels: Vec<u32>,
    /// What the method chose or measured (chosen knobs with their validation search, members...).
    pub facts: serde_json::Map<String, serde_json::Value>,
    /// Mean training loss of each epoch.
    pub epoch_losses: Vec<f64>,
    /// What the run warned about (also logged through `tracing`), e.g. too few steps for the
    /// schedule; not recorded in the artifacts.
    pub warnings: Vec<String>,
}

/// Runs one stage-2 method (see the crate docs) and predicts the test split.
///
/// On a device other than the CPU, rows that are not there already are kept there
/// ([`resident::Resident`]): each split of each backbone in use is read from `source` once.
pub fn retrain(source: &dyn FeatureSource, cfg: &RetrainConfig, device: &Device) -> Result<Outcome> {
    cfg.validate()?;
    let resident = resident::Resident::new(source, device);
    let source = if device.is_cpu() || source.resident_on(device) { source } else { &resident };
    let p = Problem::new(source, cfg.backbone, device)?;
    let test_labels = source.labels(Split::Test)?;
    if test_labels.is_empty() {
        return Err(RetrainError::Invalid(format!(
            "{}: the test split has no rows; stage 2 predicts it (give it rows)",
            source.describe()
        )));
    }
    let members = p.predicting_members(cfg)?;
    let fitted = methods::run(&p, cfg)?;
    // Once per run (a validation search fits every candidate on the same rows), for methods
    // that train.
    let warnings = if fitted.epoch_losses.is_empty() {
        Vec::new()
    } else {
        problem::few_steps(cfg, p.labels.len())?.into_iter().collect()
    };
    let (test_scores, probabilities) = select::scores(&p, &fitted.head, cfg.predict, &members, Split::Test)?;
    Ok(Outcome {
        config: cfg.clone(),
        head: fitted.head,
        test_scores,
        probabilities,
        test_labels,
        facts: fitted.facts,
        epoch_losses: fitted.epoch_losses,
        warnings,
    })
}
