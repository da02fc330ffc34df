//! The SGD step with momentum on CUDA: launches of `passes.cu`'s kernel (compiled to PTX by
//! `build.rs`), each updating up to 96 parameters (`STEP_TENSORS`) and their momentum buffers in
//! place, on the device's stream. The table of addresses goes by value as the kernel's first
//! parameter, so an `Sgd::step` call is one launch per 96 parameters (all of ResNet-32's, two for
//! ResNet-50's), with no copy and no allocation, where two launches per parameter (or the tensor
//! ops' nine) ran before.

use candle_core::backend::{BackendDevice, BackendStorage};
use candle_core::cuda_backend::cudarc::driver::{DevicePtr, DeviceRepr, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::CudaDevice;
use candle_core::{Storage, Tensor};

use super::table::{step_launches, StepTable};
use super::{bits, span};

/// The kernel's PTX.
const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/sgd_passes.ptx"));
/// The name the PTX module is loaded under.
const MODULE: &str = "lt_sgd_passes";
/// The kernel.
const STEP: &str = "lt_sgd_step_f32";
/// Threads per block (each loops over its block's values).
const THREADS: u32 = 256;

// SAFETY: `StepTable` is `#[repr(C)]` plain data laid out as `passes.cu`'s `LtSgdTable` (its
// test checks every offset), so the driver copies it as the kernel's parameter.
unsafe impl DeviceRepr for StepTable {}

/// Loads the kernel on `dev` and tries it on three values of its own (once per process, see
/// `passes_run_on`): an error when the driver cannot load the PTX, the launch fails, or the
/// values differ from the CPU passes' bits, so that SGD then runs its tensor ops instead of
/// failing (or erring) at its first step.
pub(super) fn load(dev: &CudaDevice) -> candle_core::Result<()> {
    dev.get_or_load_custom_func(STEP, MODULE, PTX)?;
    let (mu, wd, lr) = (0.9f32, 0.1f32, 0.5f32);
    let start = [1.0f32, 0.5, 0.25]; // p, g, buf
    let on = |d: &candle_core::Device, v: f32| Tensor::new(&[v], d);
    let cuda = candle_core::Device::Cuda(dev.clone());
    let (p, g, buf) = (on(&cuda, start[0])?, on(&cuda, start[1])?, on(&cuda, start[2])?);
    step(&[(p.clone(), g, buf.clone())], (mu, wd, lr, true))?;
    let cpu = candle_core::Device::Cpu;
    let (cp, cg, cb) = (on(&cpu, start[0])?, on(&cpu, start[1])?, on(&cpu, start[2])?);
    super::host_passes((&cp, &cg, &cb), (mu, wd, lr, true))?;
    if bits(&p)? != bits(&cp)? || bits(&buf)? != bits(&cb)? {
        return Err(launch_error(format!(
            "a trial step gave p {:?}, buf {:?} where the CPU passes give {:?}, {:?}",
            p.to_vec1::<f32>()?,
            buf.to_vec1::<f32>()?,
            cp.to_vec1::<f32>()?,
            cb.to_vec1::<f32>()?
        )));
    }
    Ok(())
}

fn launch_error(e: impl std::fmt::Display) -> candle_core::Error {
    candle_core::Error::Msg(format!("SGD step on CUDA: {e}"))
}

/// The device address of a contiguous `f32` CUDA tensor's first value, and its device.
fn address(t: &Tensor) -> candle_core::Result<(u64, CudaDevice)> {
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cuda(s) = &*storage else {
        return Err(launch_error("a tensor that is not on CUDA"));
    };
    let dev = s.device().clone();
    let stream = dev.cuda_stream();
    let view = s.as_cuda_slice::<f32>()?.slice(span(layout)?);
    // Event tracking is off where `lt` runs (`lt_models::ops::prepare_device`); where it is on,
    // the read event recorded here precedes the launch on the same stream, as the kernel's own
    // arguments' would.
    let (address, _sync) = view.device_ptr(&stream);
    Ok((address, dev))
}

/// One SGD step with momentum `mu`, weight decay `wd`, learning rate `lr` and Nesterov momentum
/// or not, in place on each `(parameter, gradient, buffer)`: contiguous `f32` tensors of one
/// shape per triple, all on one CUDA device. The values of the CPU passes, bit for bit.
///
/// The tensors are held by the caller until the step is queued; the kernel writes after this
/// returns, in stream order, as candle's own in-place ops do.
pub(super) fn step(
    items: &[(Tensor, Tensor, Tensor)],
    (mu, wd, lr, nesterov): (f32, f32, f32, bool),
) -> candle_core::Result<()> {
    let items: Vec<_> = items.iter().filter(|(p, ..)| p.elem_count() > 0).collect();
    let sizes: Vec<usize> = items.iter().map(|(p, ..)| p.elem_count()).collect();
    for launch in step_launches(&sizes).map_err(launch_error)? {
        let mut table = launch.table;
        let mut device: Option<CudaDevice> = None;
        for (k, (p, g, buf)) in items[launch.items.clone()].iter().enumerate() {
            let ((pa, dev), (ga, _), (ba, _)) = (address(p)?, address(g)?, address(buf)?);
            if !device.get_or_insert_with(|| dev.clone()).same_device(&dev) {
                return Err(launch_error("parameters on two devices"));
            }
            (table.p[k], table.g[k], table.buf[k]) = (pa, ga, ba);
        }
        let Some(dev) = device else { continue };
        let f = dev.get_or_load_custom_func(STEP, MODULE, PTX)?;
        let count = launch.items.len() as u32;
        let nesterov = i32::from(nesterov);
        let config =
            LaunchConfig { grid_dim: (launch.blocks, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 };
        let mut b = f.builder();
        b.arg(&table).arg(&count).arg(&mu).arg(&wd).arg(&lr).arg(&nesterov);
        // SAFETY: the arguments match the kernel's signature (LtSgdTable by value, unsigned int,
        // float, float, float, int); the table's first `count` entries hold the addresses of
        // live contiguous f32 buffers of `n[k]` values each (the three of a triple have one
        // shape, checked by the caller), and its blocks cover those values exactly.
        unsafe { b.launch(config) }.map_err(launch_error)?;
    }
    Ok(())
}
