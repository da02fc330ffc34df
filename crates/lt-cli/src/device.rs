//! Device selection (`cpu`, `cuda`, `cuda:N`).

use anyhow::{bail, Context, Result};
use candle_core::Device;

/// Parses a device name.
pub fn parse(name: &str) -> Result<Device> {
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
