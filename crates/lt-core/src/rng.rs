//! A seeded, checkpointable host random number generator.
//!
//! candle's CPU random tensors cannot be seeded, so every random choice in the project (weight
//! initialisation, data order, augmentation, SWAG sampling) flows from a seed through [`Rng`]:
//! xoshiro256++ seeded by SplitMix64. Its whole state is four `u64` words, which checkpoints store
//! so that a resumed run continues the exact same stream.

/// xoshiro256++ generator with helpers for the distributions the project needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rng {
    s: [u64; 4],
}

fn splitmix64(x: &mut u64) -> u64 {
    *x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Rng {
    /// A generator seeded from `seed` (SplitMix64 expansion, as recommended by xoshiro's authors).
    pub fn new(seed: u64) -> Self {
        let mut x = seed;
        let s = [splitmix64(&mut x), splitmix64(&mut x), splitmix64(&mut x), splitmix64(&mut x)];
        Self { s }
    }

    /// An independent generator for a named sub-stream of `seed`: the same `(seed, stream)` pair
    /// always gives the same generator, and different streams do not overlap in practice.
    pub fn stream(seed: u64, stream: &[u64]) -> Self {
        let mut h = seed ^ 0x5851_F42D_4C95_7F2D;
        for &s in stream {
            let mut x = h ^ s.wrapping_mul(0x2545_F491_4F6C_DD1D);
            h = splitmix64(&mut x);
        }
        Self::new(h)
    }

    /// The raw state, for checkpoints.
    pub fn state(&self) -> [u64; 4] {
        self.s
    }

    /// Restores a generator from [`Rng::state`].
    pub fn from_state(s: [u64; 4]) -> Self {
        Self { s }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[0].wrapping_add(s[3]).rotate_left(23).wrapping_add(s[0]);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// The next 32 random bits.
    pub fn next_u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }

    /// A uniform integer in `0..n` without modulo bias (Lemire's method). `n` must be positive.
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "Rng::below(0)");
        let mut m = (self.next_u64() as u128) * (n as u128);
        let mut low = m as u64;
        if low < n {
            let threshold = n.wrapping_neg() % n;
            while low < threshold {
                m = (self.next_u64() as u128) * (n as u128);
                low = m as u64;
            }
        }
        (m >> 64) as u64
    }

    /// A uniform `f64` in `[0, 1)` with 53 random bits.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// A uniform `f32` in `[0, 1)` with 24 random bits.
    pub fn uniform_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 * (1.0 / (1u32 << 24) as f32)
    }

    /// A uniform `f64` in `[lo, hi)`.
    pub fn uniform_range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.uniform()
    }

    /// A Bernoulli draw with probability `p` of `true`.
    pub fn bernoulli(&mut self, p: f64) -> bool {
        self.uniform() < p
    }

    /// A standard normal draw (Box–Muller; one of the pair is used so the state stays simple).
    pub fn normal(&mut self) -> f64 {
        // 1 - u is in (0, 1], so the logarithm is finite.
        let u1 = 1.0 - self.uniform();
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// Fills `out` with independent `N(mean, std^2)` draws, using both values of each Box–Muller pair.
    pub fn fill_normal(&mut self, out: &mut [f32], mean: f32, std: f32) {
        let mut chunks = out.chunks_exact_mut(2);
        for pair in &mut chunks {
            let u1 = 1.0 - self.uniform();
            let u2 = self.uniform();
            let r = (-2.0 * u1.ln()).sqrt();
            let (s, c) = (std::f64::consts::TAU * u2).sin_cos();
            pair[0] = mean + std * (r * c) as f32;
            pair[1] = mean + std * (r * s) as f32;
        }
        for x in chunks.into_remainder() {
            *x = mean + std * self.normal() as f32;
        }
    }

    /// Shuffles `items` in place (Fisher–Yates).
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }

    /// A random permutation of `0..n`.
    pub fn permutation(&mut self, n: usize) -> Vec<usize> {
        let mut v: Vec<usize> = (0..n).collect();
        self.shuffle(&mut v);
        v
    }
}

/// The registry of random streams: the first tag of every [`Rng::stream`] in the project.
///
/// Each random choice draws from its own stream, so that adding a draw to one never shifts
/// another. The values are part of the results (changing one changes what a seed produces), so
/// they never change; a new stream takes a new, unused value (the test below checks uniqueness).
pub mod streams {
    /// Weight initialisation of a backbone (with a hash of the parameter's name).
    pub const MODEL_INIT: u64 = 0x1417;
    /// Sampler epoch orders (with the epoch).
    pub const SAMPLER: u64 = 0x5A3F;
    /// Training augmentation (with the epoch and the sample's position).
    pub const LOADER: u64 = 0x10AD;
    /// The synthetic data set's classes and images.
    pub const SYNTHETIC: u64 = 0x5717;
    /// The seeded test split of an image folder.
    pub const FOLDER_SPLIT: u64 = 0xF01D;
    /// A re-initialised stage-2 head.
    pub const HEAD_INIT: u64 = 0x4EAD;
    /// DisAlign's calibration parameters.
    pub const DISALIGN_INIT: u64 = 0xD15A;
    /// A SWAG sample's draw (with the sample index); recorded in the features artifact.
    pub const SWAG_SAMPLE: u64 = 0x5A6;

    /// Every stream tag, for the uniqueness check.
    pub const ALL: [u64; 8] =
        [MODEL_INIT, SAMPLER, LOADER, SYNTHETIC, FOLDER_SPLIT, HEAD_INIT, DISALIGN_INIT, SWAG_SAMPLE];
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xoshiro256pp_reference_output() {
        // Reference values of xoshiro256++ from state [1, 2, 3, 4] (the authors' C code).
        let mut r = Rng::from_state([1, 2, 3, 4]);
        let got: Vec<u64> = (0..4).map(|_| r.next_u64()).collect();
        assert_eq!(got, vec![41943041, 58720359, 3588806011781223, 3591011842654386]);
    }

    #[test]
    fn same_seed_same_stream_and_state_roundtrip() {
        let mut a = Rng::new(7);
        let mut b = Rng::new(7);
        for _ in 0..10 {
            a.next_u64();
        }
        let saved = a.state();
        let x: Vec<u64> = (0..5).map(|_| a.next_u64()).collect();
        let mut c = Rng::from_state(saved);
        let y: Vec<u64> = (0..5).map(|_| c.next_u64()).collect();
        assert_eq!(x, y);
        assert_ne!(b.next_u64(), Rng::new(8).next_u64());
        assert_ne!(Rng::stream(1, &[0]).next_u64(), Rng::stream(1, &[1]).next_u64());
        assert_eq!(Rng::stream(1, &[3, 4]).next_u64(), Rng::stream(1, &[3, 4]).next_u64());
    }

    #[test]
    fn below_is_in_range_and_roughly_uniform() {
        let mut r = Rng::new(3);
        let mut counts = [0usize; 7];
        for _ in 0..70_000 {
            counts[r.below(7) as usize] += 1;
        }
        for c in counts {
            assert!((9_000..11_000).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn normal_moments() {
        let mut r = Rng::new(11);
        let mut v = vec![0f32; 200_001];
        r.fill_normal(&mut v, 1.0, 2.0);
        let n = v.len() as f64;
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
        let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
        assert!((mean - 1.0).abs() < 0.02, "mean {mean}");
        assert!((var - 4.0).abs() < 0.05, "var {var}");
    }

    #[test]
    fn shuffle_is_a_permutation() {
        let mut r = Rng::new(5);
        let mut p = r.permutation(100);
        assert_ne!(p, (0..100).collect::<Vec<_>>());
        p.sort();
        assert_eq!(p, (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn stream_tags_are_unique() {
        let mut tags = streams::ALL.to_vec();
        tags.sort_unstable();
        tags.dedup();
        assert_eq!(tags.len(), streams::ALL.len(), "two random streams share a tag");
    }
}
