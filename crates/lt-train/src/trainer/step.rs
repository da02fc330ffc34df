//! One training step of the loop ([`train_batch`]) and what it leaves to read: the step's loss
//! and count of correct predictions stay on the device until the next step is queued
//! ([`Pending`]), and add up to the epoch's sums ([`EpochSums`]).

use candle_core::{DType, Tensor};
use lt_core::optim::Sgd;
use lt_models::Model;

use super::Ctx;
use crate::error::{Result, TrainError};
use crate::init::ParamGroups;

/// Running sums of an epoch.
#[derive(Default)]
pub(super) struct EpochSums {
    /// The steps' mean losses, each times its batch's samples.
    pub loss: f64,
    /// Correct predictions.
    pub correct: usize,
    /// Samples.
    pub seen: usize,
    /// Seconds spent waiting for the loader.
    pub waited: f64,
}

impl EpochSums {
    /// Adds a step's read values.
    pub(super) fn add(&mut self, s: StepValues) {
        self.correct += s.correct;
        self.loss += s.loss as f64 * s.samples as f64;
        self.seen += s.samples;
    }
}

/// A step's loss and count of correct predictions, still on the device ([`Pending::read`]
/// brings them to the host).
pub(super) struct Pending {
    /// `[loss, correct]`, `f32`.
    values: Tensor,
    samples: usize,
    step: usize,
    epoch: usize,
}

/// A step's values on the host.
pub(super) struct StepValues {
    /// The batch's mean loss.
    loss: f32,
    correct: usize,
    samples: usize,
}

impl Pending {
    /// The step's values, read from the device (on a GPU this waits for the step); a non-finite
    /// loss is an error. Such a loss leaves non-finite weights in memory (and the steps queued
    /// after it build on them), which the error discards: the run resumes from its last
    /// checkpoint.
    pub(super) fn read(self, ctx: &Ctx) -> Result<StepValues> {
        let read = self.values.to_vec1::<f32>()?;
        let loss = read[0];
        if !loss.is_finite() {
            return Err(TrainError::NonFinite {
                step: self.step,
                epoch: self.epoch,
                value: loss,
                checkpoint: ctx.last_checkpoint.clone(),
            });
        }
        Ok(StepValues { loss, correct: read[1] as usize, samples: self.samples })
    }
}

/// One training step on `batch` (step `step` of epoch `epoch`, learning rate `lr`): forward,
/// backward and update, queued; its loss and count of correct predictions, to be read
/// ([`Pending::read`]). Nothing here waits for the device.
pub(super) fn train_batch(
    ctx: &Ctx,
    model: &Model,
    (opt, groups): (&mut Sgd, &ParamGroups),
    batch: &lt_data::Batch,
    (lr, step, epoch): (f64, usize, usize),
) -> Result<Pending> {
    let pass = model.train_step_bn(&batch.images, !ctx.cfg.freeze_bn, |logits| {
        candle_nn::loss::cross_entropy(logits, &batch.labels)
    })?;
    groups.step(opt, &pass.grads, lr)?;
    let correct = pass.logits.argmax(1)?.eq(&batch.labels)?.to_dtype(DType::F32)?.sum_all()?;
    let values = Tensor::stack(&[&pass.loss.to_dtype(DType::F32)?, &correct], 0)?;
    Ok(Pending { values, samples: batch.label_vec.len(), step, epoch })
}
