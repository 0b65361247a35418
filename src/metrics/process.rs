//! The process's own figures, read from `/proc` at scrape time (Linux; elsewhere absent).

/// What a scrape reports about the process.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Process {
    pub open_fds: Option<u64>,
    pub max_fds: Option<u64>,
    pub resident_bytes: Option<u64>,
    pub cpu_seconds: Option<f64>,
    pub threads: Option<u64>,
}

/// Reads the figures; one that cannot be read is `None` (and left out of the exposition).
pub fn read() -> Process {
    let status = std::fs::read_to_string("/proc/self/status").ok();
    let field = |name: &str| -> Option<u64> {
        status
            .as_deref()?
            .lines()
            .find_map(|l| l.strip_prefix(name))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    Process {
        open_fds: std::fs::read_dir("/proc/self/fd")
            .ok()
            .map(|d| d.count() as u64),
        max_fds: max_fds(),
        resident_bytes: field("VmRSS:").map(|kib| kib * 1024),
        cpu_seconds: cpu_seconds(),
        threads: field("Threads:"),
    }
}

/// The soft limit on open descriptors (`Max open files` in `/proc/self/limits`).
fn max_fds() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// User plus system CPU time: fields 14 and 15 of `/proc/self/stat`, in clock ticks, which
/// Linux reports in USER_HZ (100 on every architecture it runs on).
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) is in parentheses and may contain spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0)
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    #[test]
    fn reads_this_process() {
        let p = super::read();
        assert!(p.open_fds.is_some_and(|n| n >= 3), "{p:?}");
        assert!(p.max_fds.is_some_and(|n| n >= p.open_fds.unwrap()), "{p:?}");
        assert!(p.resident_bytes.is_some_and(|b| b > 1 << 20), "{p:?}");
        assert!(p.cpu_seconds.is_some(), "{p:?}");
        assert!(p.threads.is_some_and(|n| n >= 1), "{p:?}");
    }
}
