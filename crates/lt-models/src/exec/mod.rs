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
    /// Run by the taped executor ([`taped`]), whose backward pass, walked by hand, follows: the
    /// ops keep what it reads, and a convolution on cuDNN needs its backward passes too (without
    /// a graph and without it, an op runs forward only: evaluation, batch-norm recalibration).
    pub taped: bool,
}

/// On a CUDA `device`, turns on candle's cache of small host-to-device uploads for this thread
/// until the returned guard drops: the dims and strides a strided kernel reads go to the device
/// once per distinct layout and are then shared (read only), and a tensor made from at most 4 KiB
/// of host data gets a device copy of an earlier upload of the same bytes (its own storage).
pub(crate) fn uploads_cached(device: &candle_core::Device) -> Option<Box<dyn std::any::Any>> {
    match device {
        #[cfg(feature = "cuda")]
        candle_core::Device::Cuda(d) => Some(Box::new(d.enable_cuda_graph_htod_cache())),
        _ => None,
    }
}
