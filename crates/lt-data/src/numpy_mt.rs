//! Emulation of numpy's legacy `RandomState` (MT19937) shuffle, bit-exact.
//!
//! The CIFAR-LT splits of the LDAM-DRW reference (`imbalance_cifar.py`) are chosen with
//! `np.random.seed(0)` and `np.random.shuffle` on each class's indices. Reproducing the same
//! training subset requires the same generator: MT19937 seeded by `init_genrand`, and numpy's
//! `random_interval` (mask-and-reject) for the Fisher–Yates swaps.

const N: usize = 624;
const M: usize = 397;

/// numpy's legacy MT19937 generator (`np.random.RandomState(seed)` with an integer seed).
#[derive(Clone)]
pub struct NumpyRandomState {
    mt: [u32; N],
    idx: usize,
}

impl NumpyRandomState {
    /// `init_genrand(seed)`, which `np.random.seed(seed)` uses for integer seeds.
    pub fn new(seed: u32) -> Self {
        let mut mt = [0u32; N];
        mt[0] = seed;
        for i in 1..N {
            mt[i] = 1_812_433_253u32.wrapping_mul(mt[i - 1] ^ (mt[i - 1] >> 30)).wrapping_add(i as u32);
        }
        Self { mt, idx: N }
    }

    fn generate(&mut self) {
        const UPPER: u32 = 0x8000_0000;
        const LOWER: u32 = 0x7fff_ffff;
        const MATRIX_A: u32 = 0x9908_b0df;
        for i in 0..N {
            let y = (self.mt[i] & UPPER) | (self.mt[(i + 1) % N] & LOWER);
            let mut v = self.mt[(i + M) % N] ^ (y >> 1);
            if y & 1 != 0 {
                v ^= MATRIX_A;
            }
            self.mt[i] = v;
        }
        self.idx = 0;
    }

    /// The next tempered 32-bit output (`genrand_int32`).
    pub fn next_u32(&mut self) -> u32 {
        if self.idx >= N {
            self.generate();
        }
        let mut y = self.mt[self.idx];
        self.idx += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^= y >> 18;
        y
    }

    /// numpy's `random_interval(max)`: a uniform integer in `0..=max` by masking and rejection.
    pub fn random_interval(&mut self, max: u64) -> u64 {
        if max == 0 {
            return 0;
        }
        let mut mask = max;
        mask |= mask >> 1;
        mask |= mask >> 2;
        mask |= mask >> 4;
        mask |= mask >> 8;
        mask |= mask >> 16;
        mask |= mask >> 32;
        if max <= 0xffff_ffff {
            loop {
                let v = (self.next_u32() as u64) & mask;
                if v <= max {
                    return v;
                }
            }
        } else {
            loop {
                let hi = self.next_u32() as u64;
                let lo = self.next_u32() as u64;
                let v = ((hi << 32) | lo) & mask;
                if v <= max {
                    return v;
                }
            }
        }
    }

    /// `RandomState.shuffle` on a one-dimensional array.
    pub fn shuffle<T>(&mut self, a: &mut [T]) {
        for i in (1..a.len()).rev() {
            let j = self.random_interval(i as u64) as usize;
            a.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_numpy_test_vectors() {
        // np.random.seed(0); a = np.arange(10); np.random.shuffle(a)
        let mut r = NumpyRandomState::new(0);
        let mut a: Vec<usize> = (0..10).collect();
        r.shuffle(&mut a);
        assert_eq!(a, vec![2, 8, 4, 9, 1, 6, 7, 3, 0, 5]);
        // np.random.seed(0); a = np.arange(5000); np.random.shuffle(a); a[:10]
        let mut r = NumpyRandomState::new(0);
        let mut a: Vec<usize> = (0..5000).collect();
        r.shuffle(&mut a);
        assert_eq!(&a[..10], &[398, 3833, 4836, 4572, 636, 2545, 1161, 2230, 148, 2530]);
    }

    #[test]
    fn mt19937_reference_output() {
        // First outputs of MT19937 seeded with init_genrand(5489), the reference default.
        let mut r = NumpyRandomState::new(5489);
        assert_eq!(r.next_u32(), 3_499_211_612);
        assert_eq!(r.next_u32(), 581_869_302);
    }
}
