//! Values a loop leaves on the device and reads back several steps at a time ([`ReadBack`]).
//!
//! Reading a value from a GPU waits for everything queued before it on the stream: a loop that
//! reads each step's loss waits for each step, and the GPU idles while the host queues the first
//! work of the next one. Reading [`READ_EVERY`] steps' values together waits once for them all.
//! On the CPU a read costs nothing either way.

use std::ops::Range;

use candle_core::{DType, Tensor};

/// How many steps' values a training loop leaves on the device before reading them together.
pub const READ_EVERY: usize = 16;

/// Tensors left on the device, each with what the caller needs to know of it (`M`), read back
/// together once `every` are left ([`ReadBack::push`]) or when asked ([`ReadBack::read`]).
///
/// ```
/// use candle_core::{Device, Tensor};
/// use lt_core::readback::ReadBack;
/// let mut unread = ReadBack::new(2);
/// let step = |v: f32| Tensor::new(&[v, 2.0 * v], &Device::Cpu).unwrap();
/// assert!(unread.push(&step(1.0), "first").unwrap().is_empty());
/// let read = unread.push(&step(3.0), "second").unwrap(); // the second push reads both
/// let got: Vec<_> = read.iter().map(|(v, m)| (v.to_vec(), *m)).collect();
/// assert_eq!(got, [(vec![1.0, 2.0], "first"), (vec![3.0, 6.0], "second")]);
/// assert!(unread.read().unwrap().is_empty());
/// ```
#[derive(Debug)]
pub struct ReadBack<M> {
    every: usize,
    parts: Vec<Tensor>,
    tags: Vec<M>,
}

/// Values read back: each pushed tensor's values (`f32`, flattened) with its tag, in push order.
#[derive(Debug)]
pub struct Read<M> {
    values: Vec<f32>,
    parts: Vec<(Range<usize>, M)>,
}

impl<M> Read<M> {
    /// Each pushed tensor's values and tag, in push order.
    pub fn iter(&self) -> impl Iterator<Item = (&[f32], &M)> {
        self.parts.iter().map(|(r, m)| (&self.values[r.clone()], m))
    }

    /// Whether nothing was read.
    pub fn is_empty(&self) -> bool {
        self.parts.is_empty()
    }
}

impl<M> ReadBack<M> {
    /// Reads back once `every` tensors (at least 1) are left.
    pub fn new(every: usize) -> Self {
        Self { every: every.max(1), parts: Vec::new(), tags: Vec::new() }
    }

    /// Leaves `t` (any shape and float type, detached from its graph so that it holds no
    /// activations) on its device with `tag`; once `every` are left, reads them all.
    pub fn push(&mut self, t: &Tensor, tag: M) -> candle_core::Result<Read<M>> {
        self.parts.push(t.detach().flatten_all()?.to_dtype(DType::F32)?);
        self.tags.push(tag);
        if self.parts.len() >= self.every {
            self.read()
        } else {
            Ok(Read { values: Vec::new(), parts: Vec::new() })
        }
    }

    /// Reads every tensor left (one wait for the device), in push order.
    pub fn read(&mut self) -> candle_core::Result<Read<M>> {
        let values = match self.parts.len() {
            0 => Vec::new(),
            1 => self.parts[0].to_vec1::<f32>()?,
            _ => Tensor::cat(&self.parts, 0)?.to_vec1::<f32>()?,
        };
        let mut at = 0;
        let parts = self
            .parts
            .drain(..)
            .zip(self.tags.drain(..))
            .map(|(t, m)| {
                let n = t.elem_count();
                at += n;
                (at - n..at, m)
            })
            .collect();
        Ok(Read { values, parts })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Tensors of any shape and type come back flattened, in order, with their tags, `every` at
    /// a time, and a graph is not kept.
    #[test]
    fn reads_every_tensor_in_order_every_few_pushes() {
        let dev = Device::Cpu;
        let mut unread = ReadBack::new(3);
        let var = candle_core::Var::new(&[1f32, 2.0], &dev).unwrap();
        let with_graph = (var.as_tensor() * 2.0).unwrap();
        let scalar = Tensor::new(5f64, &dev).unwrap();
        let matrix = Tensor::new(&[[1u32, 2], [3, 4]], &dev).unwrap().to_dtype(DType::BF16).unwrap();
        assert!(unread.push(&with_graph, 'a').unwrap().is_empty());
        assert!(unread.push(&scalar, 'b').unwrap().is_empty());
        assert!(unread.parts.iter().all(|t| !t.track_op()));
        let read = unread.push(&matrix, 'c').unwrap();
        let got: Vec<_> = read.iter().map(|(v, m)| (v.to_vec(), *m)).collect();
        assert_eq!(got, [(vec![2.0, 4.0], 'a'), (vec![5.0], 'b'), (vec![1.0, 2.0, 3.0, 4.0], 'c')]);
        assert!(unread.push(&scalar, 'd').unwrap().is_empty());
        let rest: Vec<_> = unread.read().unwrap().iter().map(|(v, m)| (v.to_vec(), *m)).collect();
        assert_eq!(rest, [(vec![5.0], 'd')]);
        assert!(unread.read().unwrap().is_empty());
    }
}
