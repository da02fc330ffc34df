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

/// How a model's training-mode batch norms update their running statistics.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum BnMode {
    /// `running <- (1 - momentum) running + momentum batch` (PyTorch's default momentum is 0.1).
    Momentum(f64),
    /// The cumulative average in which every sample weighs the same (recalibration).
    Cumulative,
}

/// What a model must offer to have its batch norms recalibrated.
///
/// candle-nn's own `BatchNorm` fixes its momentum when it is built, so it cannot switch to the
/// cumulative average: a candle-nn model recalibrates by rebuilding its batch norms, or by
/// wrapping them in a layer that reads its mode from a shared cell (as `lt-models` does).
pub trait BatchNormModel {
    /// Resets every running statistic (mean 0, variance 1, counters 0).
    fn reset_running_stats(&self) -> Result<()>;
    /// The current update mode.
    fn bn_mode(&self) -> BnMode;
    /// Sets the update mode.
    fn set_bn_mode(&self, mode: BnMode);
    /// A training-mode forward pass without gradients (updates the running statistics).
    fn forward_train(&self, x: &Tensor) -> Result<()>;
}

/// Recalibrates `model`'s batch norms on `batches`; returns the number of samples seen.
/// The model's update mode is restored afterwards to what it was, also when a batch fails.
pub fn recalibrate<M: BatchNormModel + ?Sized>(
    model: &M,
    batches: impl IntoIterator<Item = Result<Tensor>>,
) -> Result<usize> {
    model.reset_running_stats()?;
    let previous = model.bn_mode();
    model.set_bn_mode(BnMode::Cumulative);
    let result = (|| {
        let mut seen = 0;
        for b in batches {
            let b = b?;
            seen += b.dim(0)?;
            model.forward_train(&b)?;
        }
        Ok(seen)
    })();
    model.set_bn_mode(previous);
    result
}

#[cfg(test)]
mod tests {
    use std::cell::{Cell, RefCell};

    use candle_core::{Device, Tensor};

    use super::*;
    use crate::SwagError;

    /// Records the modes it runs in; fails on a batch of one row.
    struct Fake {
        mode: Cell<BnMode>,
        seen: RefCell<Vec<BnMode>>,
    }

    impl BatchNormModel for Fake {
        fn reset_running_stats(&self) -> Result<()> {
            Ok(())
        }
        fn bn_mode(&self) -> BnMode {
            self.mode.get()
        }
        fn set_bn_mode(&self, mode: BnMode) {
            self.mode.set(mode);
        }
        fn forward_train(&self, x: &Tensor) -> Result<()> {
            self.seen.borrow_mut().push(self.mode.get());
            if x.dim(0)? == 1 {
                return Err(SwagError::Model("a batch of one".into()));
            }
            Ok(())
        }
    }

    #[test]
    fn recalibration_runs_cumulative_and_restores_the_mode_it_found() {
        let m = Fake { mode: Cell::new(BnMode::Momentum(0.3)), seen: RefCell::new(Vec::new()) };
        let batch =
            |n: usize| Tensor::zeros((n, 2), candle_core::DType::F32, &Device::Cpu).map_err(SwagError::from);
        assert_eq!(recalibrate(&m, [batch(4), batch(3)]).unwrap(), 7);
        assert_eq!(*m.seen.borrow(), vec![BnMode::Cumulative; 2]);
        assert_eq!(m.bn_mode(), BnMode::Momentum(0.3));
        // A failing batch: the error keeps the model's message as its source; the mode is restored.
        let err = recalibrate(&m, [batch(4), batch(1)]).unwrap_err();
        assert!(std::error::Error::source(&err).unwrap().to_string().contains("a batch of one"));
        assert_eq!(m.bn_mode(), BnMode::Momentum(0.3));
    }
}
