//! Batch-norm recalibration after the weights changed (SWA average, SWAG samples).
//!
//! Running statistics are reset (mean 0, variance 1) and recomputed in one pass over training
//! batches in training mode with a *cumulative* average in which every sample weighs the same
//! (momentum `b / (n + b)` for a batch of `b` after `n` samples). The running mean is then the
//! exact mean over the pass; the running variance is the sample-weighted average of the batches'
//! unbiased variances (PyTorch's `bn_update` semantics), which equals the full-data unbiased
//! variance when the pass is one batch.

use candle_core::Tensor;

use crate::error::Result;

/// What a model must offer to have its batch norms recalibrated.
pub trait BatchNormModel {
    /// Resets every running statistic (mean 0, variance 1, counters 0).
    fn reset_running_stats(&self) -> Result<()>;
    /// Switches training-mode updates between the cumulative average (`true`) and the model's
    /// usual momentum (`false`).
    fn set_cumulative(&self, cumulative: bool);
    /// A training-mode forward pass without gradients (updates the running statistics).
    fn forward_train(&self, x: &Tensor) -> Result<()>;
}

/// Recalibrates `model`'s batch norms on `batches`; returns the number of samples seen.
/// The model's momentum mode is restored afterwards, also when a batch fails.
pub fn recalibrate<M: BatchNormModel + ?Sized>(
    model: &M,
    batches: impl IntoIterator<Item = Result<Tensor>>,
) -> Result<usize> {
    model.reset_running_stats()?;
    model.set_cumulative(true);
    let result = (|| {
        let mut seen = 0;
        for b in batches {
            let b = b?;
            seen += b.dim(0)?;
            model.forward_train(&b)?;
        }
        Ok(seen)
    })();
    model.set_cumulative(false);
    result
}
