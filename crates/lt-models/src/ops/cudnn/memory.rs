//! Device memory: cudarc allocates stream-ordered from the device's default memory pool, whose
//! `USED_MEM_HIGH` attribute is the most ever allocated at once and whose `RELEASE_THRESHOLD`
//! says how much freed memory it keeps for reuse.

use candle_core::Device;
use cudarc::driver::sys;

fn default_pool(device: &Device) -> Option<sys::CUmemoryPool> {
    let Device::Cuda(d) = device else { return None };
    let stream = d.cuda_stream();
    let ctx = stream.context();
    ctx.bind_to_thread().ok()?;
    let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
    // SAFETY: the driver writes the device's default pool into `pool`.
    let r = unsafe { sys::cuDeviceGetDefaultMemPool(&mut pool, ctx.cu_device()) };
    (r == sys::CUresult::CUDA_SUCCESS).then_some(pool)
}

/// A 64-bit attribute of `pool`.
fn attribute(pool: sys::CUmemoryPool, attr: sys::CUmemPool_attribute) -> Option<u64> {
    let mut v: u64 = 0;
    // SAFETY: the attributes read here (the high-water mark, memory reserved and in use) are
    // 64-bit values written into `v`.
    let r = unsafe { sys::cuMemPoolGetAttribute(pool, attr, (&mut v as *mut u64).cast()) };
    (r == sys::CUresult::CUDA_SUCCESS).then_some(v)
}

/// Bytes allocated at most since the last [`reset_peak`].
pub(crate) fn peak(device: &Device) -> Option<u64> {
    attribute(default_pool(device)?, sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH)
}

/// Bytes of the device's memory free now for new allocations: the driver's count, and what the
/// default pool keeps for reuse (reserved, not in use; the driver counts it as taken, since the
/// pool keeps freed memory: [`keep_freed_memory`]).
pub(crate) fn free(device: &Device) -> Option<u64> {
    let Device::Cuda(d) = device else { return None };
    let ctx = d.cuda_stream().context().clone();
    let (free, _total) = ctx.mem_get_info().ok()?;
    let kept = default_pool(device).and_then(|pool| {
        let reserved = attribute(pool, sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT)?;
        let used = attribute(pool, sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_CURRENT)?;
        Some(reserved.saturating_sub(used))
    });
    Some(free as u64 + kept.unwrap_or(0))
}

/// Sets a 64-bit attribute of `pool` to `value`.
fn set_attribute(pool: sys::CUmemoryPool, attr: sys::CUmemPool_attribute, mut value: u64) -> sys::CUresult {
    // SAFETY: both attributes set here (the high-water mark and the release threshold) are
    // 64-bit values read from `value`.
    unsafe { sys::cuMemPoolSetAttribute(pool, attr, (&mut value as *mut u64).cast()) }
}

/// Hands the freed memory the device's default pool keeps for reuse back to the driver, once the
/// device's stream (this thread's, candle's `synchronize`) has finished what is queued, so that
/// allocations outside the pool, cuDNN's own, can have it: after running out of memory. Memory
/// freed on other threads' streams and not yet reached stays in the pool. Whether it did.
pub(crate) fn release_kept(device: &Device) -> bool {
    let Some(pool) = default_pool(device) else { return false };
    if device.synchronize().is_err() {
        return false;
    }
    // SAFETY: `pool` is the device's default pool; trimming releases only memory that no
    // allocation holds.
    unsafe { sys::cuMemPoolTrimTo(pool, 0) == sys::CUresult::CUDA_SUCCESS }
}

/// Resets the high-water mark to the memory in use now.
pub(crate) fn reset_peak(device: &Device) {
    if let Some(pool) = default_pool(device) {
        let _ = set_attribute(pool, sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH, 0);
    }
}

/// Makes the device's default memory pool keep freed memory for reuse (release threshold
/// `u64::MAX`) instead of handing it back to the driver at every synchronisation (the default
/// threshold, 0): a training step frees and allocates the same sizes again every step, and with
/// threshold 0 each step maps its memory anew after the step's synchronisation. PyTorch's caching
/// allocator keeps its memory the same way. `release` restores the driver's default (threshold 0).
pub(crate) fn keep_freed_memory(device: &Device, release: bool) -> candle_core::Result<()> {
    let Some(pool) = default_pool(device) else {
        candle_core::bail!("{device:?}: no default memory pool (stream-ordered allocation unsupported)")
    };
    let attr = sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD;
    let r = set_attribute(pool, attr, if release { 0 } else { u64::MAX });
    if r != sys::CUresult::CUDA_SUCCESS {
        candle_core::bail!("cuMemPoolSetAttribute(RELEASE_THRESHOLD) on {device:?}: {r:?}");
    }
    Ok(())
}
