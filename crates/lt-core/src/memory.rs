//! Process and machine memory as the kernel reports it (Linux `/proc/self/status`,
//! `/proc/meminfo` and the control group's limit; `None` elsewhere).

use std::path::{Path, PathBuf};

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

/// The memory this process may use, MiB: the machine's (`MemTotal`), or its control group's
/// limit where that is lower (a container's `--memory`; cgroup v2 `memory.max` or v1
/// `memory.limit_in_bytes`).
pub fn total_mib() -> Option<f64> {
    let machine = file_field_mib("/proc/meminfo", "MemTotal:")?;
    Some(cgroup_limit_mib().map_or(machine, |limit| limit.min(machine)))
}

/// The memory limit of this process's control group, MiB, if it or one of its ancestors has one
/// (the lowest applies).
fn cgroup_limit_mib() -> Option<f64> {
    cgroup_limit_in(&std::fs::read_to_string("/proc/self/cgroup").ok()?, Path::new("/sys/fs/cgroup"))
}

/// [`cgroup_limit_mib`] for the `/proc/self/cgroup` text `groups` and the hierarchies mounted
/// under `mount` (v2 at `mount`, v1's memory controller at `mount/memory`).
fn cgroup_limit_in(groups: &str, mount: &Path) -> Option<f64> {
    let mut files = Vec::new();
    for line in groups.lines() {
        // `id:controllers:path`; v2 has the id 0 and no controllers.
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let (root, file) = if id == "0" && controllers.is_empty() {
            (mount.to_path_buf(), "memory.max")
        } else if controllers.split(',').any(|c| c == "memory") {
            (mount.join("memory"), "memory.limit_in_bytes")
        } else {
            continue;
        };
        // The group and its ancestors up to the root (inside a container's own cgroup namespace
        // the path is `/`, and its limit is at the root).
        let mut group = PathBuf::from(path.trim_matches('/'));
        loop {
            files.push(root.join(&group).join(file));
            if !group.pop() {
                break;
            }
        }
    }
    files.iter().filter_map(|f| limit_mib(&std::fs::read_to_string(f).ok()?)).reduce(f64::min)
}

/// A cgroup memory limit file's value in MiB; `None` for no limit (`max`, or v1's near-`i64::MAX`).
fn limit_mib(text: &str) -> Option<f64> {
    let bytes: u64 = text.trim().parse().ok()?;
    (bytes < 1 << 60).then(|| bytes as f64 / (1u64 << 20) as f64)
}

#[cfg(test)]
mod tests {
    #[test]
    fn cgroup_limits_are_read_and_no_limit_is_none() {
        assert_eq!(super::limit_mib("1073741824\n"), Some(1024.0));
        assert_eq!(super::limit_mib("max\n"), None);
        assert_eq!(super::limit_mib("9223372036854771712\n"), None);
        assert_eq!(super::limit_mib(""), None);
    }

    /// The limit of the group or of any ancestor, v1 and v2; none where no file holds one; a
    /// malformed line is skipped.
    #[test]
    fn cgroup_limits_are_found_up_the_hierarchy() {
        let dir = tempfile::tempdir().unwrap();
        let put = |rel: &str, text: &str| {
            let p = dir.path().join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        };
        put("memory/jobs/memory.limit_in_bytes", "536870912\n");
        put("memory/jobs/42/memory.limit_in_bytes", "9223372036854771712\n");
        put("memory/memory.limit_in_bytes", "9223372036854771712\n");
        put("slice/memory.max", "2147483648\n");
        put("slice/app/memory.max", "max\n");
        let limit = |groups: &str| super::cgroup_limit_in(groups, dir.path());
        assert_eq!(limit("4:memory:/jobs/42\n"), Some(512.0));
        assert_eq!(limit("4:cpu,memory:/jobs/42\n0::/slice/app\n"), Some(512.0));
        assert_eq!(limit("0::/slice/app\n"), Some(2048.0));
        assert_eq!(limit("garbage\n0::/slice/app\n"), Some(2048.0));
        assert_eq!(limit("4:memory:/\n"), None);
        assert_eq!(limit("3:cpu:/jobs/42\n"), None);
        assert_eq!(limit("4:memory:/elsewhere\n"), None);
    }

    #[test]
    fn reads_something_on_linux() {
        if cfg!(target_os = "linux") {
            let (rss, peak) = (super::rss_mib().unwrap(), super::peak_rss_mib().unwrap());
            assert!(rss > 0.0 && peak >= rss);
            assert!(super::total_mib().unwrap() > peak);
        }
    }
}
