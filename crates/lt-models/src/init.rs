//! Parameter initialisation from the seeded host RNG.
//!
//! Each parameter draws from its own stream keyed by `(seed, name)`, so a model built twice with
//! one seed is identical whatever the construction order.

use candle_core::{Device, Tensor};
use lt_core::Rng;

use crate::error::Result;

/// An initialiser.
#[derive(Clone, Copy, Debug)]
pub enum Init {
    /// `N(0, 2 / fan)` (Kaiming normal with ReLU gain); `fan` is the fan-in or fan-out.
    KaimingNormal {
        /// Fan used for the variance.
        fan: usize,
    },
    /// `U(-bound, bound)`.
    Uniform {
        /// Half-width.
        bound: f64,
    },
    /// A constant.
    Const(f32),
}

fn name_hash(name: &str) -> u64 {
    // FNV-1a, stable across platforms and releases.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Draws a tensor of `shape` for parameter `name` from the stream `(seed, name)`.
pub fn draw(init: Init, shape: &[usize], seed: u64, name: &str, device: &Device) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let mut v = vec![0f32; n];
    let mut rng = Rng::stream(seed, &[lt_core::rng::streams::MODEL_INIT, name_hash(name)]);
    match init {
        Init::KaimingNormal { fan } => rng.fill_normal(&mut v, 0.0, (2.0 / fan.max(1) as f64).sqrt() as f32),
        Init::Uniform { bound } => v.iter_mut().for_each(|x| *x = rng.uniform_range(-bound, bound) as f32),
        Init::Const(c) => v.fill(c),
    }
    Ok(Tensor::from_vec(v, shape, device)?)
}
