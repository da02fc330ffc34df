//! Op-level timing, for finding where a step spends its time (`lt bench backbone --profile`).
//! While enabled, every op of an eager forward pass (any device), every forward and backward op
//! of the taped executor and of the fused CPU pass is bracketed by device synchronisations and its wall time is added
//! to its kind's total; on a GPU this serialises the device, so a profiled step is slower than a
//! normal one and only the shares are meaningful. Off by default, and then costs one relaxed
//! atomic load per op.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use candle_core::Device;

static ENABLED: AtomicBool = AtomicBool::new(false);
static TOTALS: Mutex<BTreeMap<&'static str, (u64, f64)>> = Mutex::new(BTreeMap::new());

/// Turns op timing on or off (process-wide); turning it on clears the totals.
pub fn set_enabled(on: bool) {
    if on {
        if let Ok(mut t) = TOTALS.lock() {
            t.clear();
        }
    }
    ENABLED.store(on, Ordering::Relaxed);
}

/// Whether op timing is on.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Per op kind: `(kind, calls, seconds)` since timing was turned on, slowest first.
pub fn totals() -> Vec<(&'static str, u64, f64)> {
    let mut v: Vec<_> =
        TOTALS.lock().map(|t| t.iter().map(|(k, (n, s))| (*k, *n, *s)).collect()).unwrap_or_default();
    v.sort_by(|a, b| b.2.total_cmp(&a.2));
    v
}

/// Runs `f` as one op of kind `kind` on `device`, timed when timing is on.
pub fn time<T, E: From<candle_core::Error>>(
    kind: &'static str,
    device: &Device,
    f: impl FnOnce() -> Result<T, E>,
) -> Result<T, E> {
    if !enabled() {
        return f();
    }
    device.synchronize()?;
    let t = Instant::now();
    let out = f()?;
    device.synchronize()?;
    let secs = t.elapsed().as_secs_f64();
    if let Ok(mut totals) = TOTALS.lock() {
        let e = totals.entry(kind).or_insert((0, 0.0));
        e.0 += 1;
        e.1 += secs;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timing_counts_calls_per_kind_only_while_enabled() {
        // Kinds of this test's own: other tests of the crate may run eager passes meanwhile.
        let dev = Device::Cpu;
        time::<_, candle_core::Error>("test-off", &dev, || Ok(())).unwrap();
        set_enabled(true);
        for _ in 0..3 {
            time::<_, candle_core::Error>("test-a", &dev, || Ok(())).unwrap();
        }
        time::<_, candle_core::Error>("test-b", &dev, || Ok(())).unwrap();
        set_enabled(false);
        time::<_, candle_core::Error>("test-a", &dev, || Ok(())).unwrap();
        let t = totals();
        let calls: BTreeMap<_, _> =
            t.iter().filter(|(k, _, _)| k.starts_with("test-")).map(|(k, n, _)| (*k, *n)).collect();
        assert_eq!(calls, BTreeMap::from([("test-a", 3), ("test-b", 1)]));
        assert!(t.iter().all(|(_, _, s)| *s >= 0.0));
    }
}
