//! The fast routes' candle custom ops: each op a private struct with an explicit forward (CPU
//! kernels, and cuDNN on CUDA where it has the op) and backward, behind a crate-visible function
//! that [`super::Backend`] calls.

pub(crate) mod conv;
pub(crate) mod elementwise;
pub(crate) mod norm;
pub(crate) mod pool;

use candle_core::{CpuStorage, Device, Layout, Shape, Storage, Tensor};

type CResult<T> = candle_core::Result<T>;

/// The `f32` values of a contiguous CPU storage.
fn cpu_f32<'a>(s: &'a CpuStorage, l: &Layout, what: &'static str) -> CResult<&'a [f32]> {
    let data = s.as_slice::<f32>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("{what}: the fast kernels need a contiguous tensor"),
    }
}

/// Runs `f` on the host `f32` data of a CPU tensor (made contiguous first).
fn with_host<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> CResult<R>) -> CResult<R> {
    let t = t.contiguous()?;
    let (st, l) = t.storage_and_layout();
    match &*st {
        Storage::Cpu(cs) => f(cpu_f32(cs, l, "tensor")?),
        _ => candle_core::bail!("the fast kernels run on the CPU"),
    }
}

/// A CPU tensor from host values.
fn host_tensor(v: Vec<f32>, shape: impl Into<Shape>) -> CResult<Tensor> {
    Tensor::from_vec(v, shape, &Device::Cpu)
}
