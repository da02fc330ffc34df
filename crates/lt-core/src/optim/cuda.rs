//! The SGD step's in-place passes on CUDA: launches of the kernels of `passes.cu` (compiled to
//! PTX by `build.rs`), one thread per value, on the device's one stream.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::CudaDevice;
use candle_core::{CudaStorage, Layout};

use super::span;

/// The kernels' PTX.
const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/sgd_passes.ptx"));
/// The name the PTX module is loaded under.
const MODULE: &str = "lt_sgd_passes";
const MOMENTUM: &str = "lt_sgd_momentum_f32";
const PARAMETER: &str = "lt_sgd_parameter_f32";

/// Loads both kernels on `dev` (once; later calls find them loaded): an error when the driver
/// cannot load the PTX, before anything is written.
pub(super) fn load(dev: &CudaDevice) -> candle_core::Result<()> {
    for name in [MOMENTUM, PARAMETER] {
        dev.get_or_load_custom_func(name, MODULE, PTX)?;
    }
    Ok(())
}

fn launch_error(e: impl std::fmt::Display) -> candle_core::Error {
    candle_core::Error::Msg(format!("SGD pass on CUDA: {e}"))
}

fn config(n: usize) -> candle_core::Result<LaunchConfig> {
    let n = u32::try_from(n).map_err(|_| launch_error(format!("{n} values exceed a launch")))?;
    Ok(LaunchConfig::for_num_elems(n))
}

/// `buf <- (buf * mu + 0) + (g + (p * wd + 0))`, in place.
pub(super) fn momentum(
    (buf, bl): (&mut CudaStorage, &Layout),
    (g, gl): (&CudaStorage, &Layout),
    (p, pl): (&CudaStorage, &Layout),
    (mu, wd): (f32, f32),
) -> candle_core::Result<()> {
    let (br, gr, pr) = (span(bl)?, span(gl)?, span(pl)?);
    let n = br.len();
    if n == 0 {
        return Ok(()); // a grid of no blocks is an invalid launch
    }
    let f = buf.device().get_or_load_custom_func(MOMENTUM, MODULE, PTX)?;
    let (g, p) = (g.as_cuda_slice::<f32>()?.slice(gr), p.as_cuda_slice::<f32>()?.slice(pr));
    let mut buf = buf.as_cuda_slice_mut::<f32>()?.slice_mut(br);
    let mut b = f.builder();
    b.arg(&n).arg(&mut buf).arg(&g).arg(&p).arg(&mu).arg(&wd);
    // SAFETY: the arguments match the kernel's signature (size_t, float*, const float*,
    // const float*, float, float) and every buffer holds `n` values (checked by the caller).
    unsafe { b.launch(config(n)?) }.map_err(launch_error)?;
    Ok(())
}

/// `p <- p - (d * lr + 0)` with `d` the Nesterov (`Some(mu)`) or plain update, in place.
pub(super) fn parameter(
    (p, pl): (&mut CudaStorage, &Layout),
    (g, gl): (&CudaStorage, &Layout),
    (buf, bl): (&CudaStorage, &Layout),
    (lr, wd, nesterov): (f32, f32, Option<f32>),
) -> candle_core::Result<()> {
    let (pr, gr, br) = (span(pl)?, span(gl)?, span(bl)?);
    let n = pr.len();
    if n == 0 {
        return Ok(());
    }
    let f = p.device().get_or_load_custom_func(PARAMETER, MODULE, PTX)?;
    let (g, buf) = (g.as_cuda_slice::<f32>()?.slice(gr), buf.as_cuda_slice::<f32>()?.slice(br));
    let mut p = p.as_cuda_slice_mut::<f32>()?.slice_mut(pr);
    let (mu, on) = (nesterov.unwrap_or(0.0), i32::from(nesterov.is_some()));
    let mut b = f.builder();
    b.arg(&n).arg(&mut p).arg(&g).arg(&buf).arg(&lr).arg(&wd).arg(&mu).arg(&on);
    // SAFETY: the arguments match the kernel's signature (size_t, float*, const float*,
    // const float*, float, float, float, int) and every buffer holds `n` values.
    unsafe { b.launch(config(n)?) }.map_err(launch_error)?;
    Ok(())
}
