//! A pool of reusable `f32` buffers, so that a training step does not allocate (and page-fault)
//! fresh activation memory every time.

use std::sync::{Arc, Mutex};

/// Buffers returned by dropped [`Buf`]s, ready for reuse.
#[derive(Default)]
pub struct Pool {
    free: Mutex<Vec<Vec<f32>>>,
}

/// A buffer of `len` floats borrowed from a [`Pool`]; its content is unspecified until written.
pub struct Buf {
    data: Vec<f32>,
    len: usize,
    pool: Arc<Pool>,
}

impl Pool {
    /// An empty pool.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// A buffer of `len` floats (reused when one of at least that size is free; the smallest
    /// such one is taken, and of those the one returned last, whose memory is likeliest to
    /// still be in cache: writing to memory that is not costs a read from memory first). Its
    /// content is whatever the previous user left.
    pub fn take(self: &Arc<Self>, len: usize) -> Buf {
        let mut free = self.free.lock().expect("pool lock");
        let best = free
            .iter()
            .enumerate()
            .rev()
            .filter(|(_, v)| v.len() >= len)
            .min_by_key(|(_, v)| v.len())
            .map(|(i, _)| i);
        let data = match best {
            Some(i) => free.remove(i),
            None => vec![0f32; len],
        };
        Buf { data, len, pool: self.clone() }
    }

    /// A zero-filled buffer of `len` floats.
    pub fn zeros(self: &Arc<Self>, len: usize) -> Buf {
        let mut b = self.take(len);
        b.fill(0.0);
        b
    }

    /// Drops every free buffer (memory returns to the allocator).
    pub fn clear(&self) {
        self.free.lock().expect("pool lock").clear();
    }

    /// Bytes held by free buffers.
    pub fn free_bytes(&self) -> usize {
        self.free.lock().expect("pool lock").iter().map(|v| v.len() * 4).sum()
    }
}

impl std::ops::Deref for Buf {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        &self.data[..self.len]
    }
}

impl std::ops::DerefMut for Buf {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.data[..self.len]
    }
}

impl Drop for Buf {
    fn drop(&mut self) {
        let data = std::mem::take(&mut self.data);
        if let Ok(mut free) = self.pool.free.lock() {
            free.push(data);
        }
    }
}
