//! The machine's own speed, seen by the method: a fixed CPU-bound loop timed on each
//! CPU before every search. On a shared virtual machine the same work can take a
//! quarter longer from one half hour to the next; when a row's repetitions disagree,
//! this shows whether the machine moved under them.
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};

/// Iterations of one timed pass of [`spin`] (about 8 ms here).
pub const ITERATIONS: u64 = 5_000_000;

/// A fixed amount of integer work that the optimiser cannot remove.
pub fn spin(iterations: u64) -> u64 {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for _ in 0..iterations {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
    }
    std::hint::black_box(x)
}

/// Nanoseconds per thousand iterations: the fastest of `passes` passes in this process.
pub fn ns_per_thousand(passes: u32) -> f64 {
    (0..passes.max(1))
        .map(|_| {
            let t = Instant::now();
            spin(std::hint::black_box(ITERATIONS));
            t.elapsed().as_nanos() as f64 / (ITERATIONS as f64 / 1e3)
        })
        .fold(f64::INFINITY, f64::min)
}

/// [`ns_per_thousand`] on each of `cpus`, each measured by this program pinned there
/// (`lab calibrate`, through taskset).
pub fn per_cpu(cpus: &[usize]) -> Result<Vec<f64>> {
    let exe = std::env::current_exe().context("locating lab")?;
    cpus.iter()
        .map(|cpu| {
            let out = Command::new("taskset")
                .arg("-c")
                .arg(cpu.to_string())
                .arg(&exe)
                .arg("calibrate")
                .output()
                .context("running taskset")?;
            if !out.status.success() {
                bail!(
                    "lab calibrate on CPU {cpu} failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse::<f64>()
                .with_context(|| format!("lab calibrate on CPU {cpu} printed no number"))
        })
        .collect()
}

/// The CPUs this process may run on (`Cpus_allowed_list` in /proc/self/status; a
/// container's cpuset can hide some of the machine's).
pub fn allowed_cpus() -> Vec<usize> {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                .and_then(|list| crate::matrix::parse_cpu_list(list.trim()).ok())
        })
        .unwrap_or_else(|| (0..crate::environment::cpu_count()).collect())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_loop_takes_time_in_proportion_to_its_work() {
        let ns = super::ns_per_thousand(3);
        assert!(ns > 0.0 && ns.is_finite());
        assert_ne!(super::spin(10), super::spin(11));
        assert!(!super::allowed_cpus().is_empty());
    }
}
