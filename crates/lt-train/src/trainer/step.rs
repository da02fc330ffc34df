//! One training step of the loop ([`train_batch`]) and what it leaves to read: the step's loss
//! and count of correct predictions stay on the device ([`StepTag`] says whose they are) and are
//! read several steps at a time ([`lt_core::readback`]), adding up to the epoch's sums
//! ([`EpochSums`]).

use std::time::Instant;

use candle_core::{DType, Tensor};
use lt_core::optim::Sgd;
use lt_core::readback::{Read, ReadBack};
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
    /// Seconds spent waiting for the device (reading the steps' values back).
    pub device_waited: f64,
}

impl EpochSums {
    /// Adds the steps read back, in order. A non-finite loss is an error naming its step: it
    /// left non-finite weights in memory (and the steps queued after it built on them), which
    /// the error discards: the run resumes from its last checkpoint.
    fn add(&mut self, read: &Read<StepTag>, ctx: &Ctx) -> Result<()> {
        for (values, tag) in read.iter() {
            let loss = values[0];
            if !loss.is_finite() {
                return Err(TrainError::NonFinite {
                    step: tag.step,
                    epoch: tag.epoch,
                    value: loss,
                    checkpoint: ctx.last_checkpoint.clone(),
                });
            }
            self.correct += values[1] as usize;
            self.loss += loss as f64 * tag.samples as f64;
            self.seen += tag.samples;
        }
        Ok(())
    }

    /// Leaves a step's values on the device (`Some`; read back with the ones before once enough
    /// are left), or reads back what is left (`None`): what was read is added, and the time spent
    /// waiting for the device counted.
    pub(super) fn take(
        &mut self,
        unread: &mut ReadBack<StepTag>,
        step: Option<(Tensor, StepTag)>,
        ctx: &Ctx,
    ) -> Result<()> {
        let asked = Instant::now();
        let read = match step {
            Some((values, tag)) => unread.push(&values, tag)?,
            None => unread.read()?,
        };
        self.device_waited += asked.elapsed().as_secs_f64();
        self.add(&read, ctx)
    }
}

/// Whose values `[loss, correct]` are: a step's, of a batch of `samples`.
pub(super) struct StepTag {
    samples: usize,
    step: usize,
    epoch: usize,
}

/// One training step on `batch` (step `step` of epoch `epoch`, learning rate `lr`): forward,
/// backward and update, queued; its `[loss, correct]` (`f32`) still on the device, with its
/// tag. Nothing here waits for the device.
pub(super) fn train_batch(
    ctx: &Ctx,
    model: &Model,
    (opt, groups): (&mut Sgd, &ParamGroups),
    batch: &lt_data::Batch,
    (lr, step, epoch): (f64, usize, usize),
) -> Result<(Tensor, StepTag)> {
    let pass = model.train_step_bn(&batch.images, !ctx.cfg.freeze_bn, |logits| {
        candle_nn::loss::cross_entropy(logits, &batch.labels)
    })?;
    groups.step(opt, &pass.grads, lr)?;
    let correct = pass.logits.argmax(1)?.eq(&batch.labels)?.to_dtype(DType::F32)?.sum_all()?;
    // The graph these hold (every activation, through candle's autograd) is dropped where they
    // are left to be read: ReadBack keeps them detached.
    let values = Tensor::stack(&[&pass.loss.to_dtype(DType::F32)?, &correct], 0)?;
    Ok((values, StepTag { samples: batch.label_vec.len(), step, epoch }))
}
