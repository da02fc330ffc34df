//! A pool of reusable `f32` buffers, so that a training step does not allocate (and page-fault)
//! fresh activation memory every time.

use std::sync::{Arc, Mutex};

/// Buffers returned by dropped [`Buf`]s, ready for reuse.
#[derive(Default)]
pub struct Pool {
    free: Mutex<Vec<Floats>>,
}

/// A buffer of `len` floats borrowed from a [`Pool`]; its content is unspecified until written.
pub struct Buf {
    data: Floats,
    len: usize,
    pool: Arc<Pool>,
}

/// A transparent huge page.
const HUGE_PAGE: usize = 2 << 20;

/// Fewest bytes that [`Floats::zeroed`] maps on their own: one huge page.
const MAPPED_BYTES: usize = HUGE_PAGE;

/// `f32` values on the heap or, from 2 MiB on Linux, in an anonymous mapping of their own that
/// asks for transparent huge pages (see [`Floats::zeroed`]).
pub(crate) struct Floats {
    repr: Repr,
    len: usize,
}

enum Repr {
    Heap(Vec<f32>),
    /// The mapping and where in it the values start (the first huge-page boundary).
    #[cfg(target_os = "linux")]
    Mapped(memmap2::MmapMut, usize),
}

impl Floats {
    /// `len` zeros. From 2 MiB on Linux, in fresh pages of their own, starting on a huge-page
    /// boundary and advised to be backed by transparent huge pages (2 MiB): Linux's default
    /// `madvise` mode gives them only to memory that asks before it is first touched, and the
    /// allocator would hand out reused heap memory, already backed by 4 KiB pages. Streaming
    /// through a large activation or a layer's packed weights then misses the TLB far less
    /// often (measured: ResNet-50's training step and batch-1 latency, see
    /// docs/performance.md). Where mapping fails the values go on the heap; where the kernel
    /// declines the advice, the pages stay small.
    pub fn zeroed(len: usize) -> Self {
        #[cfg(target_os = "linux")]
        if len * 4 >= MAPPED_BYTES {
            // One huge page more than needed, so that the values can start on a boundary.
            if let Ok(map) = memmap2::MmapMut::map_anon(len * 4 + HUGE_PAGE) {
                let start = (map.as_ptr() as usize).next_multiple_of(HUGE_PAGE) - map.as_ptr() as usize;
                // Only the whole huge pages are advised, so that a partial one at the end is
                // not made resident in full; the unused head and tail of the mapping are never
                // touched. A refusal leaves the pages as they are: nothing to do about it.
                let whole = len * 4 / HUGE_PAGE * HUGE_PAGE;
                let _ = map.advise_range(memmap2::Advice::HugePage, start, whole);
                return Floats { repr: Repr::Mapped(map, start), len };
            }
        }
        Floats { repr: Repr::Heap(vec![0f32; len]), len }
    }
}

impl std::ops::Deref for Floats {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        match &self.repr {
            Repr::Heap(v) => v,
            #[cfg(target_os = "linux")]
            Repr::Mapped(m, start) => bytemuck::cast_slice(&m[*start..*start + self.len * 4]),
        }
    }
}

impl std::ops::DerefMut for Floats {
    fn deref_mut(&mut self) -> &mut [f32] {
        match &mut self.repr {
            Repr::Heap(v) => v,
            #[cfg(target_os = "linux")]
            Repr::Mapped(m, start) => bytemuck::cast_slice_mut(&mut m[*start..*start + self.len * 4]),
        }
    }
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
            None => Floats::zeroed(len),
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
        let data = std::mem::replace(&mut self.data, Floats::zeroed(0));
        if let Ok(mut free) = self.pool.free.lock() {
            free.push(data);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_and_mapped_floats_are_zeros_of_their_length_and_writable() {
        for len in [0, 5, MAPPED_BYTES / 4 - 1, MAPPED_BYTES / 4 + 3] {
            let mut f = Floats::zeroed(len);
            assert_eq!(f.len(), len);
            assert!(f.iter().all(|&v| v == 0.0), "zeros of length {len}");
            f.iter_mut().enumerate().for_each(|(i, v)| *v = i as f32);
            assert!(f.iter().enumerate().all(|(i, &v)| v == i as f32), "written, length {len}");
        }
        #[cfg(target_os = "linux")]
        match Floats::zeroed(MAPPED_BYTES / 4) {
            f @ Floats { repr: Repr::Mapped(..), .. } => {
                assert_eq!(f.as_ptr() as usize % HUGE_PAGE, 0, "mapped values start on a huge page")
            }
            _ => panic!("2 MiB are mapped"),
        }
    }

    #[test]
    fn the_pool_hands_back_the_smallest_fitting_buffer_mapped_or_not() {
        let pool = Pool::new();
        let big = MAPPED_BYTES / 4 + 10;
        let (mut a, b) = (pool.take(big), pool.take(7));
        a[big - 1] = 3.0;
        drop((a, b));
        assert_eq!(pool.free_bytes(), (big + 7) * 4);
        let again = pool.take(big - 5);
        assert_eq!((again.len(), again.data[big - 1]), (big - 5, 3.0), "the large one, as it was left");
        let small = pool.take(6);
        assert_eq!(small.len(), 6);
        assert_eq!(pool.free_bytes(), 0, "both taken");
    }
}
