//! Progress reporting through `tracing`.
//!
//! Long work (an epoch, an extraction pass, a download) creates a [`Progress`]. When the binary
//! installed `tracing-indicatif`'s layer (on a terminal), the span shows as a progress bar; in any
//! case the progress is also logged as plain `info` lines at most every `log_every` (10% by default),
//! which is what CI logs show.

use std::time::{Duration, Instant};
use tracing::Span;
use tracing_indicatif::span_ext::IndicatifSpanExt;

/// A unit of long work with a known length, reported as a bar and as periodic log lines.
pub struct Progress {
    span: Span,
    name: String,
    len: u64,
    pos: u64,
    next_log: u64,
    step: u64,
    started: Instant,
    last_log: Instant,
}

impl Progress {
    /// Starts reporting `len` units of work named `name`.
    pub fn new(name: impl Into<String>, len: u64) -> Self {
        let name = name.into();
        let span = tracing::info_span!("progress", task = %name);
        span.pb_set_length(len);
        span.pb_set_message(&name);
        let entered = span.clone();
        entered.pb_start();
        let step = (len / 10).max(1);
        Self {
            span,
            name,
            len,
            pos: 0,
            next_log: step,
            step,
            started: Instant::now(),
            last_log: Instant::now(),
        }
    }

    /// Advances by `n` units; logs a line when another tenth of the work is done (and at least a
    /// second passed since the previous line).
    pub fn inc(&mut self, n: u64) {
        self.pos += n;
        self.span.pb_inc(n);
        if self.pos >= self.next_log && self.pos < self.len {
            while self.next_log <= self.pos {
                self.next_log += self.step;
            }
            if self.last_log.elapsed() >= Duration::from_secs(1) {
                self.last_log = Instant::now();
                tracing::debug!(
                    "{}: {}/{} ({:.0}%)",
                    self.name,
                    self.pos,
                    self.len,
                    100.0 * self.pos as f64 / self.len.max(1) as f64
                );
            }
        }
    }

    /// Sets a short message shown beside the bar (e.g. the running loss).
    pub fn set_message(&self, msg: &str) {
        self.span.pb_set_message(&format!("{} {}", self.name, msg));
    }

    /// Time since the work started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Units done so far.
    pub fn position(&self) -> u64 {
        self.pos
    }
}
