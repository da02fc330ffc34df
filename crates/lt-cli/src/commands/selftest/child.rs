//! A group of checks in a process of its own: its lines passed through as they come, its counts
//! read from one machine-readable line, how it ended (exit code, signal, or stopped at its
//! deadline) when it did not report.

use std::io::{self, BufRead, BufReader, Write};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use super::Tally;

/// What starts the line a group's process reports its counts on.
const RESULT: &str = "lt-selftest-result ";

/// The line that reports `t` to the parent process.
pub(super) fn result_line(t: &Tally) -> anyhow::Result<String> {
    Ok(format!("{RESULT}{}", serde_json::to_string(t)?))
}

/// How a group's process went.
#[derive(Debug)]
pub(super) struct Outcome {
    /// The counts it reported (summed, should it report more than once).
    pub result: Option<Tally>,
    /// How it ended.
    pub status: ExitStatus,
    /// Whether it was stopped at its deadline.
    pub timed_out: bool,
}

/// Runs `cmd` (stdout captured, stderr inherited) for at most `timeout`: its stdout's lines go
/// to `out` as they come, except its result lines, which are read.
pub(super) fn run(mut cmd: Command, timeout: Duration, out: &mut impl Write) -> io::Result<Outcome> {
    let deadline = Instant::now() + timeout;
    let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).spawn()?;
    let stdout = child.stdout.take().ok_or_else(|| io::Error::other("the child's stdout is not a pipe"))?;
    let (tx, rx) = mpsc::channel::<String>();
    // The reader ends with the pipe; the loop below stops waiting for it at the deadline.
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut buf = Vec::new();
        while reader.read_until(b'\n', &mut buf).is_ok_and(|n| n > 0) {
            let line = String::from_utf8_lossy(&buf).trim_end_matches(['\n', '\r']).to_string();
            if tx.send(line).is_err() {
                break;
            }
            buf.clear();
        }
    });
    let mut result: Option<Tally> = None;
    let mut timed_out = false;
    loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => match line.strip_prefix(RESULT).map(serde_json::from_str::<Tally>) {
                Some(Ok(t)) => result.get_or_insert_with(Tally::default).add(t),
                _ => {
                    writeln!(out, "{line}")?;
                    out.flush()?;
                }
            },
            Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => {
                timed_out = true;
                break;
            }
        }
    }
    let status = match wait_until(&mut child, deadline)? {
        Some(status) if !timed_out => status,
        _ => {
            timed_out = true;
            // It may have ended meanwhile: then there is nothing to stop.
            let _ = child.kill();
            child.wait()?
        }
    };
    Ok(Outcome { result, status, timed_out })
}

/// The child's exit status once it has ended, or `None` at `deadline`.
fn wait_until(child: &mut Child, deadline: Instant) -> io::Result<Option<ExitStatus>> {
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Outcome {
    /// The counts of group `name`: what it reported, and a broken run (with a `FAIL` line to
    /// `out`) when it did not report or did not end well.
    pub(super) fn into_tally(self, name: &str, timeout: Duration, out: &mut impl Write) -> io::Result<Tally> {
        let how = if self.timed_out {
            Some(format!("was stopped after {} s (--group-timeout)", timeout.as_secs_f64()))
        } else if self.status.success() {
            None
        } else {
            Some(ended(self.status))
        };
        let reported = self.result.is_some();
        let mut t = self.result.unwrap_or_default();
        match (reported, how) {
            (true, None) => {}
            (false, how) => {
                let how = how.unwrap_or_else(|| "exited without reporting its counts".into());
                writeln!(out, "FAIL {name}: its process {how}; its checks are not counted")?;
                t.broken.push(format!("{name} ({how})"));
            }
            (true, Some(how)) => {
                writeln!(out, "FAIL {name}: its process reported its counts, then {how}")?;
                t.broken.push(format!("{name} ({how} after reporting)"));
            }
        }
        Ok(t)
    }
}

/// How a process that did not succeed ended, in words.
fn ended(status: ExitStatus) -> String {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(sig) = status.signal() {
            let name = match sig {
                libc::SIGSEGV => " (SIGSEGV)",
                libc::SIGABRT => " (SIGABRT)",
                libc::SIGKILL => " (SIGKILL)",
                libc::SIGBUS => " (SIGBUS)",
                _ => "",
            };
            return format!("was ended by signal {sig}{name}");
        }
    }
    match status.code() {
        Some(code) => format!("exited with code {code}"),
        None => format!("ended ({status})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str, timeout_ms: u64) -> (Outcome, String) {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", script]);
        let mut out = Vec::new();
        let outcome = run(cmd, Duration::from_millis(timeout_ms), &mut out).unwrap();
        (outcome, String::from_utf8(out).unwrap())
    }

    fn tally(o: Outcome) -> (Tally, String) {
        let mut out = Vec::new();
        let t = o.into_tally("mixed", Duration::from_millis(300), &mut out).unwrap();
        (t, String::from_utf8(out).unwrap())
    }

    #[test]
    fn a_reporting_process_gives_its_counts_and_its_lines() {
        let line = result_line(&Tally { total: 3, failed: 1, broken: vec!["x".into()] }).unwrap();
        let (o, out) = sh(&format!("echo 'ok   first'; echo '{line}'; echo 'after'"), 10_000);
        assert_eq!(out, "ok   first\nafter\n");
        assert!(o.status.success() && !o.timed_out);
        let (t, fail) = tally(o);
        assert_eq!(t, Tally { total: 3, failed: 1, broken: vec!["x".into()] });
        assert_eq!(fail, "");
    }

    #[test]
    fn a_crash_fails_the_group_and_names_the_signal() {
        let (o, out) = sh("echo 'ok   before'; kill -SEGV $$", 10_000);
        assert_eq!(out, "ok   before\n");
        let (t, fail) = tally(o);
        assert_eq!((t.total, t.failed), (0, 0));
        assert_eq!(t.broken, vec!["mixed (was ended by signal 11 (SIGSEGV))".to_string()]);
        assert!(fail.starts_with("FAIL mixed: its process was ended by signal 11"), "{fail}");
    }

    #[test]
    fn an_exit_without_counts_or_a_crash_after_them_is_broken() {
        let (t, fail) = tally(sh("exit 3", 10_000).0);
        assert_eq!(t.broken, vec!["mixed (exited with code 3)".to_string()], "{fail}");
        let (t, _) = tally(sh("exit 0", 10_000).0);
        assert_eq!(t.broken, vec!["mixed (exited without reporting its counts)".to_string()]);
        let line = result_line(&Tally { total: 2, failed: 0, broken: vec![] }).unwrap();
        let (t, fail) = tally(sh(&format!("echo '{line}'; kill -ABRT $$"), 10_000).0);
        assert_eq!(t.total, 2);
        assert_eq!(t.broken, vec!["mixed (was ended by signal 6 (SIGABRT) after reporting)".to_string()]);
        assert!(fail.contains("reported its counts, then was ended by signal 6"), "{fail}");
    }

    #[test]
    fn a_hang_is_stopped_at_the_deadline() {
        let t0 = Instant::now();
        let (o, out) = sh("echo 'ok   started'; exec sleep 30", 300);
        assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
        assert_eq!(out, "ok   started\n");
        assert!(o.timed_out);
        let (t, fail) = tally(o);
        assert_eq!(t.broken, vec!["mixed (was stopped after 0.3 s (--group-timeout))".to_string()]);
        assert!(fail.contains("its checks are not counted"), "{fail}");
    }

    #[test]
    fn a_malformed_result_line_is_passed_through_not_counted() {
        let (o, out) = sh(&format!("echo '{RESULT}{{not json'"), 10_000);
        assert_eq!(out, format!("{RESULT}{{not json\n"));
        assert!(o.result.is_none());
    }
}
