//! The machine's own speed, seen by the method before every search: a fixed CPU-bound
//! loop and a chase of random memory reads timed on each CPU, and the latency of a
//! small synchronous write (what each commit waits for). On a shared virtual machine
//! the same work can take longer from one half hour to the next; when a row's
//! repetitions disagree, these show whether the machine moved under them, and where.
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

/// Words in the memory chase's buffer: 32 MiB, beyond the caches of this class of CPU.
const CHASE_WORDS: usize = 4 << 20;
/// Dependent reads timed per chase.
const CHASE_READS: usize = 1 << 20;

/// `next` for a chase through `n` slots: Sattolo's shuffle gives one cycle through
/// every slot, and a fixed xorshift seed the same cycle every time.
pub fn one_cycle(n: usize) -> Vec<u32> {
    let mut next: Vec<u32> = (0..n as u32).collect();
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    for i in (1..n).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        next.swap(i, (x % i as u64) as usize);
    }
    next
}

/// Nanoseconds per random memory read: a chase through one random cycle over
/// [`CHASE_WORDS`] (each read's address comes from the previous one, so none overlap).
pub fn memory_ns_per_read() -> f64 {
    let next = one_cycle(CHASE_WORDS);
    let mut at = 0u32;
    let t = Instant::now();
    for _ in 0..CHASE_READS {
        at = next[at as usize];
    }
    std::hint::black_box(at);
    t.elapsed().as_nanos() as f64 / CHASE_READS as f64
}

/// Median microseconds of writing 8 KiB and `fdatasync` in `dir`, over 16 writes: the
/// wait each PostgreSQL commit has on this disk.
pub fn fsync_us(dir: &std::path::Path) -> Result<f64> {
    use std::io::Write as _;
    let path = dir.join(format!("lab-fsync-{}", std::process::id()));
    let mut f =
        std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    let block = [0x5Au8; 8192];
    let mut times = Vec::new();
    for _ in 0..16 {
        let t = Instant::now();
        f.write_all(&block)?;
        f.sync_data()?;
        times.push(t.elapsed().as_secs_f64() * 1e6);
    }
    drop(f);
    let _ = std::fs::remove_file(&path);
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

/// The machine before a search: per CPU, ns per thousand loop iterations and ns per
/// random memory read; and the disk's synchronous-write latency.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Machine {
    pub alu_ns_per_thousand: Vec<f64>,
    pub memory_ns_per_read: Vec<f64>,
    pub fsync_us: Option<f64>,
}

/// [`ns_per_thousand`] and [`memory_ns_per_read`] on each of `cpus`, each measured by
/// this program pinned there (`lab calibrate`, through taskset).
pub fn per_cpu(cpus: &[usize]) -> Result<Vec<(f64, f64)>> {
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
            let text = String::from_utf8_lossy(&out.stdout);
            let v: Vec<f64> = text
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            match v[..] {
                [alu, memory] => Ok((alu, memory)),
                _ => bail!("lab calibrate on CPU {cpu} printed {text:?}, not two numbers"),
            }
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
        let mem = super::memory_ns_per_read();
        assert!(mem > 0.0 && mem < 10_000.0, "{mem}");
        let us = super::fsync_us(&std::env::temp_dir()).unwrap();
        assert!(us > 0.0, "{us}");
    }
}
