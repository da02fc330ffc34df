//! The executors of a [`crate::program::Program`]: [`eager`] (the `Backend` ops with candle's
//! autograd, on any device), [`taped`] (the same ops with the backward pass walked by hand, for
//! training steps on the fast backend) and [`fused`] (the whole backbone as one autograd node on
//! the CPU).

pub(crate) mod eager;
pub(crate) mod fused;
pub(crate) mod taped;

/// How a forward pass runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Mode {
    /// Batch norm in training mode: batch statistics, running statistics updated.
    pub train: bool,
    /// Record the autograd graph (every parameter gets a gradient from `loss.backward()`).
    pub graph: bool,
}
