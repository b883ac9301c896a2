//! `--profile`: the server's CPU profile over a window at the common rate, recorded
//! with `perf record` (DWARF call graphs) on its pid, folded and drawn as a flame graph with `inferno`;
//! and, over the same window, its system calls (`perf stat` on the
//! `raw_syscalls:sys_enter` tracepoint, where the kernel gives it) and context
//! switches (every thread's counts in /proc) per request answered.
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::results::ServerProfile;

/// Samples per second of `perf record` (odd, so that it does not beat with timers).
const FREQUENCY: u32 = 499;

/// A recording under way. Dropped unfinished (an error in its window), it stops perf
/// and removes its files.
pub struct Recording {
    pid: u32,
    record: Option<Child>,
    stat: Option<Child>,
    data: PathBuf,
    stat_out: PathBuf,
    svg: PathBuf,
    title: String,
    switches_before: Option<u64>,
}

/// Whether `perf` is on this machine (the scripts install Debian's `linux-perf` for
/// `--profile`).
pub fn available() -> bool {
    Command::new("perf")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Starts recording `pid` for `secs`; the flame graph will be `raw/flame-<tag>.svg`.
pub fn start(pid: u32, secs: f64, raw: &Path, tag: &str, title: &str) -> Result<Recording> {
    let data = raw.join(format!("{tag}.perf.data"));
    let stat_out = raw.join(format!("{tag}.perf-stat.csv"));
    let perf = |args: &[&str], out: &Path| perf_on(pid, secs, args, out);
    // cpu-clock: hardware counters are often missing in virtual machines. DWARF
    // unwinding: release builds keep no frame pointers, .eh_frame suffices.
    let frequency = FREQUENCY.to_string();
    let record = perf(
        &[
            "record",
            "-q",
            "-e",
            "cpu-clock",
            "--call-graph",
            "dwarf,16384",
            "-F",
            &frequency,
        ],
        &data,
    )
    .spawn()
    .context(
        "starting perf record (is perf installed? scripts/run-matrix.sh --profile installs it)",
    )?;
    // System calls, where the tracepoint is readable; without it the profile stands.
    let stat = count_syscalls(pid, secs, &stat_out).ok();
    Ok(Recording {
        pid,
        record: Some(record),
        stat,
        data,
        stat_out,
        svg: raw.join(format!("flame-{tag}.svg")),
        title: title.to_string(),
        switches_before: context_switches(pid),
    })
}

/// `perf ARGS -p PID -o OUT -- sleep SECS`, quiet.
fn perf_on(pid: u32, secs: f64, args: &[&str], out: &Path) -> Command {
    let mut cmd = Command::new("perf");
    cmd.args(args)
        .arg("-p")
        .arg(pid.to_string())
        .arg("-o")
        .arg(out)
        .args(["--", "sleep", &format!("{secs:.2}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd
}

/// Starts counting the system calls of `pid` (all its threads) for `secs` into `out`
/// (the `raw_syscalls:sys_enter` tracepoint); [`syscalls_counted`] reads the count.
pub fn count_syscalls(pid: u32, secs: f64, out: &Path) -> Result<Child> {
    perf_on(
        pid,
        secs,
        &["stat", "-x", ",", "-e", "raw_syscalls:sys_enter"],
        out,
    )
    .spawn()
    .context("starting perf stat")
}

/// Waits for a [`count_syscalls`] and returns its count (None where the tracepoint
/// could not be read); the file is removed.
pub fn syscalls_counted(mut child: Child, out: &Path) -> Option<u64> {
    let ok = child.wait().ok()?.success();
    let count = std::fs::read_to_string(out)
        .ok()
        .and_then(|t| parse_stat(&t));
    let _ = std::fs::remove_file(out);
    count.filter(|_| ok)
}

impl Recording {
    /// Waits for the recording, draws the flame graph and works out the counts per
    /// request (`requests`: answered in the window). The perf data is removed.
    pub fn finish(mut self, requests: u64) -> Result<ServerProfile> {
        let switches_after = context_switches(self.pid);
        let Some(mut record) = self.record.take() else {
            bail!("perf record was not running");
        };
        let status = record.wait().context("waiting for perf record")?;
        let syscalls = self
            .stat
            .take()
            .and_then(|c| syscalls_counted(c, &self.stat_out));
        let _ = std::fs::remove_file(&self.stat_out);
        if !status.success() || !self.data.exists() {
            bail!("perf record failed ({status}); is perf allowed here (perf_event_paranoid)?");
        }
        let script = Command::new("perf")
            .args(["script", "--no-inline", "-i"])
            .arg(&self.data)
            .stderr(Stdio::null())
            .output()
            .context("running perf script")?;
        let _ = std::fs::remove_file(&self.data);
        if !script.status.success() {
            bail!("perf script failed ({})", script.status);
        }
        let (cpu_ns, svg) = flame_graph(&script.stdout, &self.title)?;
        std::fs::write(&self.svg, svg)
            .with_context(|| format!("writing {}", self.svg.display()))?;
        let per = |n: u64| (requests > 0).then(|| n as f64 / requests as f64);
        Ok(ServerProfile {
            flame_graph: self
                .svg
                .file_name()
                .map(|f| f.to_string_lossy().to_string())
                .unwrap_or_default(),
            cpu_ns,
            requests,
            syscalls_per_request: syscalls.and_then(per),
            context_switches_per_request: self
                .switches_before
                .zip(switches_after)
                .and_then(|(a, b)| per(b.saturating_sub(a))),
        })
    }
}

impl Drop for Recording {
    fn drop(&mut self) {
        for child in [self.record.as_mut(), self.stat.as_mut()]
            .into_iter()
            .flatten()
        {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(&self.data);
        let _ = std::fs::remove_file(&self.stat_out);
    }
}

/// Folds `perf script` output and draws it: (the CPU time sampled in ns, SVG). With
/// the `cpu-clock` event each sample weighs its period, in ns.
pub fn flame_graph(perf_script: &[u8], title: &str) -> Result<(u64, Vec<u8>)> {
    use inferno::collapse::Collapse as _;
    let mut folded = Vec::new();
    inferno::collapse::perf::Folder::default()
        .collapse(BufReader::new(perf_script), &mut folded)
        .context("folding the perf samples")?;
    let folded = String::from_utf8_lossy(&folded).to_string();
    let cpu_ns: u64 = folded
        .lines()
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<u64>().ok())
        .sum();
    if cpu_ns == 0 {
        bail!("perf recorded no samples of the server");
    }
    let mut opts = inferno::flamegraph::Options::default();
    opts.title = title.to_string();
    opts.count_name = "ns of CPU".into();
    let mut svg = Vec::new();
    inferno::flamegraph::from_lines(&mut opts, folded.lines(), &mut svg)
        .context("drawing the flame graph")?;
    Ok((cpu_ns, svg))
}

/// The count of `perf stat -x ,` output's first event ("12345,,raw_syscalls:...").
fn parse_stat(text: &str) -> Option<u64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .find_map(|l| l.split(',').next()?.trim().parse::<u64>().ok())
}

/// Voluntary and involuntary context switches of every thread of `pid` so far.
pub fn context_switches(pid: u32) -> Option<u64> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut total = 0;
    for t in tasks.flatten() {
        let Ok(status) = std::fs::read_to_string(t.path().join("status")) else {
            continue;
        };
        total += status
            .lines()
            .filter(|l| {
                l.starts_with("voluntary_ctxt_switches")
                    || l.starts_with("nonvoluntary_ctxt_switches")
            })
            .filter_map(|l| l.split_whitespace().last()?.parse::<u64>().ok())
            .sum::<u64>();
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perf_samples_fold_into_a_flame_graph() {
        let script = b"perflab 1234/1235 100.000: 2002002 cpu-clock:pppH: \n\
\tffffffff81000001 tcp_sendmsg+0x1 ([kernel.kallsyms])\n\
\t55555555 perflab::http::handle+0x10 (/bin/perflab)\n\
\t55555556 tokio::runtime::worker::run+0x20 (/bin/perflab)\n\
\n\
perflab 1234/1235 100.002: 2002002 cpu-clock:pppH: \n\
\t55555555 perflab::http::handle+0x10 (/bin/perflab)\n\
\t55555556 tokio::runtime::worker::run+0x20 (/bin/perflab)\n\
\n";
        let (cpu_ns, svg) = flame_graph(script, "+pool read-heavy").unwrap();
        assert_eq!(cpu_ns, 2 * 2_002_002, "two samples of their period each");
        let svg = String::from_utf8(svg).unwrap();
        assert!(svg.contains("<svg") && svg.contains("+pool read-heavy"));
        assert!(svg.contains("tcp_sendmsg") && svg.contains("perflab::http::handle"));
        assert!(flame_graph(b"", "empty").is_err());
    }

    #[test]
    fn perf_stat_csv_gives_the_count() {
        let t = "# started on Sun Nov 29\n\n184467,,raw_syscalls:sys_enter,10009,100.00,,\n";
        assert_eq!(parse_stat(t), Some(184_467));
        assert_eq!(
            parse_stat("<not supported>,,raw_syscalls:sys_enter,0,100.00,,\n"),
            None
        );
    }

    #[test]
    fn this_process_has_context_switches() {
        assert!(context_switches(std::process::id()).is_some());
    }
}
