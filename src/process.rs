//! The server's own CPU time and peak memory, from /proc/self, for `GET /stats`: a load
//! generator that cannot see this process (on Kubernetes it runs on another node) reads
//! them around each step, as the local harness reads /proc directly. And the open-file
//! limit, raised at start-up to what the configuration can use.
use serde::Serialize;

/// Raises the soft open-file limit to the hard one, and checks that `need` descriptors
/// fit: a server whose clients and database connections can exhaust descriptors fails
/// every accept and reconnect with EMFILE instead of refusing at its own caps. Returns
/// the limit now in force.
pub fn raise_open_files(need: u64) -> Result<u64, String> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed to them.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(format!(
            "cannot read the open-file limit: {}",
            std::io::Error::last_os_error()
        ));
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit = raised;
        }
    }
    let have: u64 = limit.rlim_cur;
    if have < need {
        return Err(format!(
            "the open-file limit is {have} (hard limit {}), but MAX_CONNECTIONS, MAX_PENDING \
             and the database connections can use {need}: raise the limit (ulimit -n, or \
             the container's nofile) or lower MAX_CONNECTIONS",
            limit.rlim_max
        ));
    }
    Ok(have)
}

/// The standard `process_*` series of a Prometheus exposition, read from /proc/self at
/// each scrape.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProcessMetrics {
    pub cpu_seconds: Option<f64>,
    pub resident_bytes: Option<u64>,
    pub open_fds: Option<u64>,
    pub max_fds: Option<u64>,
    pub start_time_seconds: Option<f64>,
}

/// Clock ticks per second of /proc's times (USER_HZ: 100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;

impl ProcessMetrics {
    pub fn current() -> Self {
        let stat = std::fs::read_to_string("/proc/self/stat").ok();
        let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("btime "))
                .and_then(|v| v.trim().parse::<f64>().ok())
        });
        let started = stat.as_deref().and_then(start_ticks);
        Self {
            cpu_seconds: stat
                .as_deref()
                .and_then(cpu_ticks)
                .map(|t| t as f64 / TICKS_PER_SECOND),
            resident_bytes: std::fs::read_to_string("/proc/self/status")
                .ok()
                .and_then(|t| status_kib(&t, "VmRSS:"))
                .map(|kib| kib * 1024),
            open_fds: std::fs::read_dir("/proc/self/fd")
                .ok()
                .map(|d| d.count() as u64),
            max_fds: std::fs::read_to_string("/proc/self/limits")
                .ok()
                .and_then(|t| max_open_files(&t)),
            start_time_seconds: boot
                .zip(started)
                .map(|(b, s)| b + s as f64 / TICKS_PER_SECOND),
        }
    }

    /// The text exposition; a value that could not be read is left out.
    pub fn exposition(&self) -> String {
        let series: [(&str, &str, &str, Option<f64>); 5] = [
            (
                "process_cpu_seconds_total",
                "counter",
                "Total user and system CPU time spent in seconds.",
                self.cpu_seconds,
            ),
            (
                "process_resident_memory_bytes",
                "gauge",
                "Resident memory size in bytes.",
                self.resident_bytes.map(|v| v as f64),
            ),
            (
                "process_open_fds",
                "gauge",
                "Number of open file descriptors.",
                self.open_fds.map(|v| v as f64),
            ),
            (
                "process_max_fds",
                "gauge",
                "Maximum number of open file descriptors.",
                self.max_fds.map(|v| v as f64),
            ),
            (
                "process_start_time_seconds",
                "gauge",
                "Start time of the process since the Unix epoch in seconds.",
                self.start_time_seconds,
            ),
        ];
        series
            .iter()
            .filter_map(|(name, kind, help, value)| {
                value.map(|v| format!("# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}\n"))
            })
            .collect()
    }
}

fn start_ticks(stat: &str) -> Option<u64> {
    // starttime is the 22nd field of the line, the 20th after the command name.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

fn status_kib(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

fn max_open_files(limits: &str) -> Option<u64> {
    limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse().ok())
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ProcessStats {
    /// User + system CPU time in clock ticks (USER_HZ, 100 per second on Linux).
    pub cpu_ticks: Option<u64>,
    /// Peak resident set size (VmHWM) in KiB.
    pub peak_rss_kib: Option<u64>,
}

impl ProcessStats {
    pub fn current() -> Self {
        Self {
            cpu_ticks: std::fs::read_to_string("/proc/self/stat")
                .ok()
                .and_then(|t| cpu_ticks(&t)),
            peak_rss_kib: std::fs::read_to_string("/proc/self/status")
                .ok()
                .and_then(|t| peak_rss_kib(&t)),
        }
    }
}

fn cpu_ticks(stat: &str) -> Option<u64> {
    // Fields after the command name, which may hold spaces: utime and stime are the
    // 14th and 15th fields of the line, the 12th and 13th after the name.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

fn peak_rss_kib(status: &str) -> Option<u64> {
    status_kib(status, "VmHWM:")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_proc_fields() {
        let stat = "42 (a b) S 1 42 42 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 4 0 1 1 1";
        assert_eq!(cpu_ticks(stat), Some(325));
        assert_eq!(peak_rss_kib("Name:\tx\nVmHWM:\t  12345 kB\n"), Some(12345));
        let now = ProcessStats::current();
        assert!(now.cpu_ticks.is_some() && now.peak_rss_kib.unwrap_or(0) > 0);
        let stat = "42 (a b) S 1 42 42 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 4 0 12345 1 1";
        assert_eq!(start_ticks(stat), Some(12345));
        let limits = "Limit Soft Limit Hard Limit Units\nMax open files            1024                 4096                 files\n";
        assert_eq!(max_open_files(limits), Some(1024));
        let m = ProcessMetrics::current();
        assert!(m.resident_bytes.unwrap_or(0) > 0 && m.open_fds.unwrap_or(0) > 0);
        assert!(m.start_time_seconds.unwrap_or(0.0) > 1.6e9, "{m:?}");
    }
}
