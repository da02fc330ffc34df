//! Process and machine memory as the kernel reports it (Linux `/proc/self/status` and
//! `/proc/meminfo`; `None` elsewhere).

fn field_mib(name: &str) -> Option<f64> {
    file_field_mib("/proc/self/status", name)
}

fn file_field_mib(file: &str, name: &str) -> Option<f64> {
    let s = std::fs::read_to_string(file).ok()?;
    s.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
}

/// Resident memory now, MiB.
pub fn rss_mib() -> Option<f64> {
    field_mib("VmRSS:")
}

/// Peak resident memory so far, MiB.
pub fn peak_rss_mib() -> Option<f64> {
    field_mib("VmHWM:")
}

/// Anonymous (non file-backed) resident memory now, MiB: what memory-mapped files do not count in.
pub fn rss_anon_mib() -> Option<f64> {
    field_mib("RssAnon:")
}

/// The machine's memory, MiB (`MemTotal`).
pub fn total_mib() -> Option<f64> {
    file_field_mib("/proc/meminfo", "MemTotal:")
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_something_on_linux() {
        if cfg!(target_os = "linux") {
            let (rss, peak) = (super::rss_mib().unwrap(), super::peak_rss_mib().unwrap());
            assert!(rss > 0.0 && peak >= rss);
            assert!(super::total_mib().unwrap() > peak);
        }
    }
}
