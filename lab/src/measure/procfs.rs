//! CPU and memory accounting from /proc, so each measurement can say what was busy:
//! the server, PostgreSQL (every backend, including exited ones via the postmaster's
//! reaped-children time) and oha (our reaped children).
use std::fs;

/// Clock ticks per second of /proc's time fields (USER_HZ; 100 on Linux).
pub const TICKS_PER_SEC: f64 = 100.0;

struct Stat {
    ppid: u32,
    utime: u64,
    stime: u64,
    cutime: u64,
    cstime: u64,
}

fn stat(pid: u32) -> Option<Stat> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

fn parse_stat(text: &str) -> Option<Stat> {
    // The command name may contain spaces and parentheses: fields start after the last ')'.
    let rest = &text[text.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); utime is field 14 → index 11.
    Some(Stat {
        ppid: f.get(1)?.parse().ok()?,
        utime: f.get(11)?.parse().ok()?,
        stime: f.get(12)?.parse().ok()?,
        cutime: f.get(13)?.parse().ok()?,
        cstime: f.get(14)?.parse().ok()?,
    })
}

/// CPU time (user + system) of one live process, in ticks.
pub fn process_ticks(pid: u32) -> Option<u64> {
    stat(pid).map(|s| s.utime + s.stime)
}

/// User and system CPU time of one process, in ticks.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CpuSplit {
    pub user: u64,
    pub system: u64,
}

/// (busy, total) ticks of each CPU so far, from /proc/stat (busy: all but idle and
/// iowait).
pub fn cpu_times() -> Vec<(u64, u64)> {
    fs::read_to_string("/proc/stat")
        .map(|t| parse_cpu_times(&t))
        .unwrap_or_default()
}

fn parse_cpu_times(text: &str) -> Vec<(u64, u64)> {
    // Busy and total with steal in both: the way these shares have always been taken.
    parse_cpu_ticks(text)
        .into_iter()
        .map(|t| (t.busy + t.steal, t.total + t.steal))
        .collect()
}

/// One CPU's ticks so far: busy and total with steal left out of both (a CPU whose
/// hypervisor took time from it is not busy with our work), and the steal itself.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ticks {
    pub busy: u64,
    pub total: u64,
    pub steal: u64,
}

/// Each CPU's [`Ticks`] so far, from /proc/stat.
pub fn cpu_ticks() -> Vec<Ticks> {
    fs::read_to_string("/proc/stat")
        .map(|t| parse_cpu_ticks(&t))
        .unwrap_or_default()
}

fn parse_cpu_ticks(text: &str) -> Vec<Ticks> {
    text.lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .map(|l| {
            let v: Vec<u64> = l
                .split_whitespace()
                .skip(1)
                .filter_map(|x| x.parse().ok())
                .collect();
            let at = |i: usize| v.get(i).copied().unwrap_or(0);
            // user nice system idle iowait irq softirq steal
            let busy = at(0) + at(1) + at(2) + at(5) + at(6);
            Ticks {
                busy,
                total: busy + at(3) + at(4),
                steal: at(7),
            }
        })
        .collect()
}

/// User and system CPU time of a process and everything it started: each live
/// process of the tree, plus what its members have reaped (`cutime`, `cstime`). An
/// external server may fork workers; ours is one process, for which this is its own
/// time. On loopback the kernel's share (TCP on both ends) is large, so user and system
/// stay apart.
pub fn tree_split(root: u32) -> Option<CpuSplit> {
    let top = stat(root)?;
    Some(sum_tree(root, top, &all_stats()))
}

/// `top` (the stat of `root`) and its descendants among `all`, summed.
fn sum_tree(root: u32, top: Stat, all: &[(u32, Stat)]) -> CpuSplit {
    let mut split = CpuSplit::default();
    for s in std::iter::once(&top).chain(tree(root, all).map(|(_, s)| s)) {
        split.user += s.utime + s.cutime;
        split.system += s.stime + s.cstime;
    }
    split
}

/// The pids of `root`'s descendants, live now (a stopped server's workers are found
/// before it exits: once it has, they belong to init).
pub fn descendants(root: u32) -> Vec<u32> {
    tree(root, &all_stats()).map(|(pid, _)| *pid).collect()
}

/// Every live process's stat.
fn all_stats() -> Vec<(u32, Stat)> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| Some((pid, stat(pid)?)))
        .collect()
}

/// The descendants of `root` among `all`, each once.
fn tree(root: u32, all: &[(u32, Stat)]) -> impl Iterator<Item = &(u32, Stat)> {
    let mut found: Vec<&(u32, Stat)> = Vec::new();
    let mut frontier = vec![root];
    while let Some(parent) = frontier.pop() {
        for entry in all.iter().filter(|(_, s)| s.ppid == parent) {
            found.push(entry);
            frontier.push(entry.0);
        }
    }
    found.into_iter()
}

/// Each CPU's busy share between two [`cpu_times`] samples.
pub fn busy_shares(before: &[(u64, u64)], after: &[(u64, u64)]) -> Vec<f64> {
    before
        .iter()
        .zip(after)
        .map(|((b0, t0), (b1, t1))| {
            let total = t1.saturating_sub(*t0);
            if total == 0 {
                0.0
            } else {
                b1.saturating_sub(*b0) as f64 / total as f64
            }
        })
        .collect()
}

/// CPU time of the children this process has reaped (oha runs), in ticks.
pub fn reaped_children_ticks() -> u64 {
    stat(std::process::id()).map_or(0, |s| s.cutime + s.cstime)
}

/// CPU time of a PostgreSQL cluster: the postmaster, its live children, and the
/// children it has already reaped (connection-per-request backends exit quickly).
pub fn postgres_ticks(postmaster: u32) -> Option<u64> {
    let pm = stat(postmaster)?;
    let mut total = pm.utime + pm.stime + pm.cutime + pm.cstime;
    for pid in children(postmaster) {
        if let Some(s) = stat(pid) {
            total += s.utime + s.stime;
        }
    }
    Some(total)
}

/// Live direct children of `parent`.
pub fn children(parent: u32) -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| stat(*pid).is_some_and(|s| s.ppid == parent))
        .collect()
}

/// Peak resident set size (VmHWM) in KiB.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Resident set size now (VmRSS) in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The highest resident memory of a process while it runs, sampled every 100 ms on a
/// thread of its own (its lifetime peak, VmHWM, would carry an earlier window's).
pub struct RssPeak {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: Option<std::thread::JoinHandle<(Option<u64>, Option<u64>)>>,
}

/// Open file descriptors of a process now (its sockets among them).
pub fn open_fds(pid: u32) -> Option<u64> {
    Some(fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64)
}

impl RssPeak {
    pub fn start(pid: Option<u32>) -> Self {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let handle = pid.map(|pid| {
            std::thread::spawn(move || {
                let (mut peak, mut fds) = (rss_kib(pid), open_fds(pid));
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(std::time::Duration::from_millis(100));
                    peak = peak.max(rss_kib(pid));
                    fds = fds.max(open_fds(pid));
                }
                (peak.map(|k| k * 1024), fds)
            })
        });
        RssPeak { stop, handle }
    }

    /// The peaks: resident memory, bytes, and open file descriptors.
    pub fn stop(mut self) -> (Option<u64>, Option<u64>) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.handle
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or((None, None))
    }
}

impl Drop for RssPeak {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_a_resident_memory_peak() {
        let peak = RssPeak::start(Some(std::process::id()));
        std::thread::sleep(std::time::Duration::from_millis(150));
        let (rss, fds) = peak.stop();
        assert!(rss.is_some_and(|b| b > 1024 * 1024));
        assert!(fds.is_some_and(|n| n >= 3));
        assert_eq!(RssPeak::start(None).stop(), (None, None));
    }

    #[test]
    fn steal_is_neither_busy_nor_counted() {
        let t = "cpu  1 2 3 4 5 6 7 8 0 0\ncpu0 100 0 50 40 10 0 0 300 0 0\ncpu1 10 0 0 90 0 0 0 0 0 0\n";
        let v = parse_cpu_ticks(t);
        assert_eq!((v[0].busy, v[0].total, v[0].steal), (150, 200, 300));
        assert_eq!((v[1].busy, v[1].total, v[1].steal), (10, 100, 0));
    }

    #[test]
    fn parses_stat_with_awkward_command_names() {
        let line = "1234 (post (gres) x) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 7 3 20 0 1 0 100 1000 100";
        let s = parse_stat(line).unwrap();
        assert_eq!(s.ppid, 1);
        assert_eq!((s.utime, s.stime, s.cutime, s.cstime), (250, 50, 7, 3));
    }

    #[test]
    fn a_tree_counts_every_descendant_once() {
        let st = |ppid, u, s, cu, cs| Stat {
            ppid,
            utime: u,
            stime: s,
            cutime: cu,
            cstime: cs,
        };
        // 10 → 11 → 12, and 13 unrelated.
        let others = vec![
            (11, st(10, 5, 1, 2, 0)),
            (12, st(11, 7, 3, 0, 0)),
            (13, st(1, 100, 100, 0, 0)),
        ];
        let t = sum_tree(10, st(1, 10, 4, 1, 1), &others);
        assert_eq!((t.user, t.system), (10 + 1 + 5 + 2 + 7, 4 + 1 + 1 + 3));
        let me = std::process::id();
        let tree = tree_split(me).unwrap();
        assert!(tree.user + tree.system >= process_ticks(me).unwrap());
    }

    #[test]
    fn reads_each_cpus_busy_share() {
        let before = parse_cpu_times(
            "cpu  10 0 10 80 0 0 0 0 0 0\ncpu0 5 0 5 40 0 0 0 0 0 0\ncpu1 5 0 5 40 0 0 0 0 0 0\nintr 1\n",
        );
        assert_eq!(before, vec![(10, 50), (10, 50)]);
        let after = [(60, 100), (10, 100)];
        assert_eq!(busy_shares(&before, &after), vec![1.0, 0.0]);
        assert_eq!(cpu_times().len(), crate::environment::cpu_count());
    }

    #[test]
    fn reads_our_own_process() {
        assert!(process_ticks(std::process::id()).is_some());
        assert!(peak_rss_kib(std::process::id()).unwrap() > 0);
    }
}
