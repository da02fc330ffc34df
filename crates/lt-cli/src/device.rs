//! Device selection (`cpu`, `cuda`, `cuda:N`).

use anyhow::{bail, Context, Result};
use candle_core::Device;
use clap::Args;

/// `--device`: where a command computes.
#[derive(Args, Clone, Debug)]
pub struct DeviceArg {
    /// Device: cpu, cuda, cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

impl DeviceArg {
    /// The device, opened and prepared ([`parse`]).
    pub fn open(&self) -> Result<Device> {
        parse(&self.device)
    }
}

/// Parses a device name and opens the device, prepared for the project's workloads
/// ([`lt_models::ops::prepare_device`]).
pub fn parse(name: &str) -> Result<Device> {
    let device = open(name)?;
    lt_models::ops::prepare_device(&device).with_context(|| format!("preparing {name}"))?;
    Ok(device)
}

fn open(name: &str) -> Result<Device> {
    match name {
        "cpu" => Ok(Device::Cpu),
        "cuda" => Device::new_cuda(0).context("opening cuda:0 (was `lt` built with --features cuda?)"),
        s if s.starts_with("cuda:") => {
            let n: usize = s[5..].parse().with_context(|| format!("bad device {s:?}"))?;
            Device::new_cuda(n).with_context(|| format!("opening {s} (was `lt` built with --features cuda?)"))
        }
        other => bail!("unknown device {other:?}; expected cpu, cuda or cuda:N"),
    }
}

/// Warns when mixed precision is asked for on the CPU, where it runs candle's stock ops in
/// `bf16`: slower than `f32` on the project's kernels (it is for CUDA).
pub fn warn_precision(device: &Device, precision: lt_models::Precision) {
    if device.is_cpu() && precision != lt_models::Precision::F32 {
        tracing::warn!(
            "precision {precision} on the CPU runs candle's stock ops in {precision}, slower than f32 on the \
             project's kernels; it is meant for CUDA"
        );
    }
}

/// Stage 2's copy of `features` on a GPU `device` (`None` on the CPU, where the rows are read
/// from the memory-mapped file as needed): each split of each backbone in use, kept there up to
/// half the device memory free now, the rest left to the steps (see
/// [`lt_retrain::resident::Resident`]; past the limit every row is read from the host).
pub fn stage2_features<'a>(
    features: &'a lt_core::formats::features::Features,
    device: &Device,
) -> Option<lt_retrain::resident::Resident<'a>> {
    if device.is_cpu() {
        return None;
    }
    let kept = lt_retrain::resident::Resident::new(features, device);
    Some(match lt_models::ops::device_memory_free(device) {
        Some(free) => kept.with_limit((free / 2) as usize),
        None => kept,
    })
}

/// Where stage 2 reads its rows: the copy [`stage2_features`] made (`kept`), or the file itself.
pub fn stage2_source<'a>(
    kept: &'a Option<lt_retrain::resident::Resident<'a>>,
    features: &'a lt_core::formats::features::Features,
) -> &'a dyn lt_retrain::FeatureSource {
    match kept {
        Some(kept) => kept,
        None => features,
    }
}
