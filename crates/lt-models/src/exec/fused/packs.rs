//! Evaluation's packed weights, kept between calls.
//!
//! On CUDA a frozen model's cache also keeps each convolution's filter in cuDNN's channels-last
//! layout ([`PackCache::prepared`]), which would otherwise be transposed on every call.
//!
//! An evaluation pass folds each batch norm into its convolution's weights and packs them for
//! the kernels: for ResNet-50 that is 25 M weights read in a transposed order on every call,
//! a third of a batch-1 forward pass. The cache keeps each convolution's packed weights with a
//! fingerprint of what they were made from (the weights and the folded scale); a call whose
//! fingerprint differs (the weights or the running statistics changed) packs again. Reading the
//! weights for the fingerprint costs a fraction of packing them. A training-mode pass empties
//! the cache (its weights are about to change, and the memory is better spent on activations).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rayon::prelude::*;

use crate::error::{ModelError, Result};
use crate::ops::conv::{ConvShape, PackedWeights};

/// Packed weights with the fingerprint of what they were packed from, by parameter index.
type Entries = HashMap<usize, (u64, Arc<PackedWeights>)>;

/// Packed, scaled convolution weights by parameter index (see the module docs).
#[derive(Default)]
pub(crate) struct PackCache {
    entries: Mutex<Entries>,
    /// A frozen model's device filters prepared for its convolutions, by parameter index.
    prepared: Mutex<HashMap<usize, candle_core::Tensor>>,
    /// Whether the weights it packs never change (a [`crate::Frozen`] model's, which nothing
    /// else can reach): then what it packed stays valid and no fingerprint is taken.
    frozen: bool,
}

impl PackCache {
    fn entries(&self) -> Result<std::sync::MutexGuard<'_, Entries>> {
        self.entries.lock().map_err(|_| ModelError::Invalid("poisoned packed-weight cache".into()))
    }

    fn prepared_filters(&self) -> Result<std::sync::MutexGuard<'_, HashMap<usize, candle_core::Tensor>>> {
        self.prepared.lock().map_err(|_| ModelError::Invalid("poisoned prepared-filter cache".into()))
    }

    /// A cache for weights that never change (see [`PackCache::frozen`]'s field).
    pub fn frozen() -> Self {
        Self { entries: Mutex::default(), prepared: Mutex::default(), frozen: true }
    }

    /// Convolution parameter `index`'s prepared device filter (see
    /// [`crate::ops::Backend::prepared_filter`]), made by `make` on first use; `None` unless the
    /// cache is frozen (weights that can change are prepared again on every call) or `make`
    /// has nothing to prepare.
    pub fn prepared(
        &self,
        index: usize,
        make: impl FnOnce() -> Result<Option<candle_core::Tensor>>,
    ) -> Result<Option<candle_core::Tensor>> {
        if !self.frozen {
            return Ok(None);
        }
        let mut map = self.prepared_filters()?;
        if let Some(t) = map.get(&index) {
            return Ok(Some(t.clone()));
        }
        let made = make()?;
        if let Some(t) = &made {
            map.insert(index, t.clone());
        }
        Ok(made)
    }

    /// The weights `w` of convolution parameter `index` packed with `scale` folded in: from the
    /// cache when both are what they were when packed (or the cache is frozen), else packed now
    /// (and kept).
    pub fn get(&self, index: usize, w: &[f32], s: &ConvShape, scale: &[f32]) -> Result<Arc<PackedWeights>> {
        let print = if self.frozen { 0 } else { fingerprint(&[w, scale]) };
        if let Some((p, packed)) = self.entries()?.get(&index) {
            if (self.frozen || *p == print) && packed.fits(s) {
                return Ok(packed.clone());
            }
        }
        let packed = Arc::new(PackedWeights::fastest(w, s, Some(scale)));
        self.entries()?.insert(index, (print, packed.clone()));
        Ok(packed)
    }

    /// Drops every packed weight and prepared filter.
    pub fn clear(&self) -> Result<()> {
        self.entries()?.clear();
        self.prepared_filters()?.clear();
        Ok(())
    }

    /// How many convolutions have packed weights in the cache.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries().map(|e| e.len()).unwrap_or(0)
    }
}

/// A 64-bit fingerprint of the bits of `parts` (lengths included). Each 32-bit word goes
/// through `h = (h ^ word) * K` (odd `K`, 32-bit arithmetic) in one of [`LANES`] lanes, a
/// bijection of `h` for every word, and the lanes of a chunk are then folded the same way in
/// 64 bits, a bijection of the running value for every lane: so changing any single value
/// always changes the fingerprint. Chunks are hashed in parallel and combined in order; the
/// lanes are 32-bit so that the multiplies vectorise (on the selected kernel set's
/// instruction set), which makes the check a small part of a batch-1 evaluation instead of a
/// tenth of it.
pub(crate) fn fingerprint(parts: &[&[f32]]) -> u64 {
    const K64: u64 = 0x9E37_79B9_7F4A_7C15;
    const K32: u32 = 0x9E37_79B1;
    const CHUNK: usize = 1 << 16;
    let mix = |h: u64, v: u64| (h ^ v).wrapping_mul(K64);
    let mut total = 0u64;
    for part in parts {
        let chunks: Vec<u64> = part
            .par_chunks(CHUNK)
            .map(|c| {
                let lanes = crate::ops::kernels::vectorised(
                    #[inline(always)]
                    || {
                        let mut lanes: [u32; LANES] = std::array::from_fn(|i| i as u32 + 1);
                        let mut it = c.chunks_exact(LANES);
                        for group in &mut it {
                            for (l, v) in lanes.iter_mut().zip(group) {
                                *l = (*l ^ v.to_bits()).wrapping_mul(K32);
                            }
                        }
                        for (l, v) in lanes.iter_mut().zip(it.remainder()) {
                            *l = (*l ^ v.to_bits()).wrapping_mul(K32);
                        }
                        lanes
                    },
                );
                lanes.iter().fold(c.len() as u64, |h, &l| mix(h, u64::from(l)))
            })
            .collect();
        total = chunks.iter().fold(mix(total, part.len() as u64), |h, &c| mix(h, c));
    }
    total
}

/// Lanes of [`fingerprint`]: four 16-lane vectors, so that four multiplies are in flight.
const LANES: usize = 64;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_changed_value_or_length_changes_the_fingerprint() {
        let w: Vec<f32> = (0..200_003).map(|i| (i as f32 * 0.37).sin()).collect();
        let s = [0.5f32, 2.0];
        let base = fingerprint(&[&w, &s]);
        assert_eq!(base, fingerprint(&[&w, &s]), "the same contents, the same fingerprint");
        for i in [0, 7, 8, 63, 64, 65_535, 65_536, 131_077, 200_002] {
            let mut v = w.clone();
            v[i] = f32::from_bits(v[i].to_bits() ^ 1);
            assert_ne!(base, fingerprint(&[&v, &s]), "a flipped bit of value {i}");
        }
        assert_ne!(base, fingerprint(&[&w, &[0.5, 2.5]]), "a changed scale");
        assert_ne!(base, fingerprint(&[&w[..200_002], &s]), "a shorter weight");
        assert_ne!(fingerprint(&[&[1.0, 2.0], &[3.0]]), fingerprint(&[&[1.0], &[2.0, 3.0]]), "split point");
    }

    #[test]
    fn the_cache_packs_again_when_weights_or_scale_change() {
        let s = ConvShape { n: 1, h: 4, w: 4, cin: 3, cout: 8, k: 3, stride: 1, pad: 1 };
        let x: Vec<f32> = (0..s.input_len()).map(|i| (i as f32 * 0.1).cos()).collect();
        let mut w: Vec<f32> = (0..s.weight_len()).map(|i| (i as f32 * 0.3).sin()).collect();
        let scale = vec![1.5f32; s.cout];
        let cache = PackCache::default();
        let run = |w: &[f32], scale: &[f32]| {
            let mut out = vec![0f32; s.output_len()];
            let packed = cache.get(3, w, &s, scale).unwrap();
            crate::ops::conv::forward_packed(&x, &packed, &s, &Default::default(), &mut out);
            (out, packed)
        };
        let direct = |w: &[f32], scale: &[f32]| {
            let mut out = vec![0f32; s.output_len()];
            let fuse = crate::ops::conv::Fuse { scale: Some(scale), ..Default::default() };
            crate::ops::conv::forward_fused(&x, w, &s, &fuse, &mut out);
            out
        };
        let (a, pa) = run(&w, &scale);
        let (b, pb) = run(&w, &scale);
        assert!(Arc::ptr_eq(&pa, &pb), "unchanged weights come from the cache");
        assert_eq!(a, direct(&w, &scale));
        assert_eq!(a, b);
        w[5] += 1.0;
        let (c, pc) = run(&w, &scale);
        assert!(!Arc::ptr_eq(&pa, &pc), "changed weights are packed again");
        assert_eq!(c, direct(&w, &scale));
        let scale2 = vec![0.5f32; s.cout];
        let (d, _) = run(&w, &scale2);
        assert_eq!(d, direct(&w, &scale2), "a changed scale is packed again");
        assert_eq!(cache.len(), 1);
        cache.clear().unwrap();
        assert_eq!(cache.len(), 0);
    }
}
