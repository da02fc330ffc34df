//! Time left, for the progress log of long runs: stage 1 counts its epochs over every phase,
//! extraction its backbone samples; and stage 1's log line per epoch.

use std::sync::atomic::{AtomicBool, Ordering};

use crate::config::TrainConfig;
use crate::schedule::Phase;
use crate::trainer::EpochLog;

/// Share of an epoch spent waiting for the loader above which the log says so (once per process).
const SLOW_LOADER: f64 = 0.25;

/// Share of the loader workers' time waiting for room in their queues below which they kept up
/// with nothing to spare.
const LOADER_NOT_AHEAD: f64 = 0.1;

/// Whether the loader set the pace of an epoch: the loop waited for it more than [`SLOW_LOADER`]
/// of the epoch, and its workers were hardly ever ahead (less than [`LOADER_NOT_AHEAD`] of their
/// time waiting for room). On a GPU the loop queues steps ahead, so it can wait for the loader
/// while the GPU still runs the steps queued before; a loader that keeps up then has its
/// queues full meanwhile.
fn loader_sets_the_pace(log: &EpochLog) -> bool {
    log.data_wait > SLOW_LOADER && log.loader_ahead < LOADER_NOT_AHEAD
}

/// Logs one epoch of stage 1: its figures, the epochs done and the time left; and once, when the
/// loader set the pace ([`loader_sets_the_pace`]), a warning.
pub(crate) fn log_epoch(cfg: &TrainConfig, log: &EpochLog) {
    let (done, total) = (epochs_done(cfg, log.phase, log.epoch), total_epochs(cfg));
    tracing::info!(
        "{} epoch {}/{}: loss {:.4}, train acc {:.2}%, lr {:.5}, {:.0} img/s, data wait {:.0}% (loader ahead {:.0}%), device wait {:.0}%, {:.0} MiB; stage 1 {done}/{total} epochs, {}",
        log.phase.name(),
        log.epoch + 1,
        cfg.epochs,
        log.loss,
        100.0 * log.accuracy,
        log.lr,
        log.images_per_sec,
        100.0 * log.data_wait,
        100.0 * log.loader_ahead,
        100.0 * log.device_wait,
        log.rss_mib.unwrap_or(0.0),
        left(total.saturating_sub(done), log.seconds)
    );
    static WARNED: AtomicBool = AtomicBool::new(false);
    if loader_sets_the_pace(log) && !WARNED.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            "the steps waited for the loader {:.0}% of the epoch: decoding sets the pace; more loader threads \
             (--workers, now {}) would help if the machine has the cores",
            100.0 * log.data_wait,
            cfg.workers
        );
    }
}

/// Epochs stage 1 trains in all: `epochs`, or with SWA the shared prefix and both branches.
pub fn total_epochs(cfg: &TrainConfig) -> usize {
    match &cfg.swa {
        Some(s) => s.start + 2 * (cfg.epochs - s.start.min(cfg.epochs)),
        None => cfg.epochs,
    }
}

/// Epochs stage 1 has trained at the end of `epoch` (0-based) of `phase`.
pub fn epochs_done(cfg: &TrainConfig, phase: Phase, epoch: usize) -> usize {
    let start = cfg.swa.as_ref().map(|s| s.start).unwrap_or(0);
    match phase {
        Phase::Sgd | Phase::Prefix | Phase::SgdBranch => epoch + 1,
        Phase::Swa => epoch + 1 + (cfg.epochs - start),
    }
}

/// A duration in words: `45s`, `12m05s`, `3h07m`.
pub fn format_duration(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// `"~12m05s left"` for `remaining` units at `seconds_per_unit` each.
pub fn left(remaining: usize, seconds_per_unit: f64) -> String {
    format!("~{} left", format_duration(remaining as f64 * seconds_per_unit))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SwaConfig;

    #[test]
    fn epochs_are_counted_over_every_phase() {
        let mut cfg = TrainConfig::cifar_lt();
        cfg.epochs = 10;
        cfg.warmup_epochs = 1;
        cfg.swa = Some(SwaConfig { start: 6, lr: 0.05, rank: 2, collect_every_steps: None });
        assert_eq!(total_epochs(&cfg), 6 + 4 + 4);
        assert_eq!(epochs_done(&cfg, Phase::Prefix, 5), 6);
        assert_eq!(epochs_done(&cfg, Phase::SgdBranch, 9), 10);
        assert_eq!(epochs_done(&cfg, Phase::Swa, 6), 11);
        assert_eq!(epochs_done(&cfg, Phase::Swa, 9), total_epochs(&cfg));
        cfg.swa = None;
        assert_eq!((total_epochs(&cfg), epochs_done(&cfg, Phase::Sgd, 9)), (10, 10));
    }

    /// The loader sets the pace when the loop waited for it past 25% of the epoch while its
    /// workers were hardly ever ahead; not when they were (a GPU run whose loop queued steps
    /// ahead and waited for the loader meanwhile).
    #[test]
    fn the_loader_sets_the_pace_when_its_workers_were_not_ahead() {
        let log = |data_wait, loader_ahead| EpochLog {
            phase: Phase::Sgd,
            epoch: 0,
            step: 10,
            loss: 1.0,
            accuracy: 0.5,
            lr: 0.1,
            images_per_sec: 100.0,
            seconds: 10.0,
            swag_models: 0,
            rss_mib: None,
            data_wait,
            loader_ahead,
            device_wait: 0.3,
        };
        let paced = |d, a| loader_sets_the_pace(&log(d, a));
        assert!(paced(0.3, 0.0) && paced(0.9, 0.05));
        assert!(!paced(0.2, 0.0) && !paced(0.7, 0.2) && !paced(0.4, 0.1));
    }

    #[test]
    fn durations_read_as_words() {
        assert_eq!(format_duration(44.6), "45s");
        assert_eq!(format_duration(725.0), "12m05s");
        assert_eq!(format_duration(3.0 * 3600.0 + 7.0 * 60.0 + 9.0), "3h07m");
        assert_eq!(left(3, 20.0), "~1m00s left");
    }
}
