//! A speedometer of the host: one thread per CPU, pinned there at a high priority,
//! times a fixed unit of arithmetic on a buffer that fits in the L1 cache every
//! [`PERIOD`], in its own thread's CPU time (so waiting for the CPU does not count).
//!
//! On a virtual machine the same instructions take longer when the hypervisor gives
//! the vCPU a slower share of a core (a busy sibling thread, frequency, a neighbour's
//! memory traffic) — time that is not reported as steal. Measured here, an idle
//! machine's unit drifted by ±5% within seconds, and in the blocks every party's CPU
//! per request rose together in the slow windows. A window's median unit time is a
//! covariate measured outside the server and PostgreSQL; the effects are adjusted for
//! it (see `blocks::Covariates`). Its cost: ≈ 0.5 ms of work every 20 ms per CPU.
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often each CPU's thread runs one unit.
pub const PERIOD: Duration = Duration::from_millis(20);

/// Iterations of one unit (≈ 0.45 ms on this machine's CPUs).
const UNIT_ITERATIONS: u32 = 200_000;

/// The unit's working set: 4 KiB, inside any L1 data cache.
const BUFFER_WORDS: usize = 512;

/// The speedometer's threads' niceness: they run as soon as they wake, so a unit is
/// rarely cut by a switch (root only; elsewhere the default).
const NICE: i32 = -15;

type Samples = Arc<Mutex<Vec<(Instant, u64)>>>;

/// Running speedometer threads; stopped when dropped.
pub struct Speedometer {
    samples: Samples,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Speedometer {
    /// Starts one thread on each CPU of `cpus`.
    pub fn start(cpus: &[usize]) -> Speedometer {
        let samples: Samples = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let threads = cpus
            .iter()
            .map(|&cpu| {
                let (samples, stop) = (samples.clone(), stop.clone());
                std::thread::spawn(move || run(cpu, &samples, &stop))
            })
            .collect();
        Speedometer {
            samples,
            stop,
            threads,
        }
    }

    /// The median unit time, ns, of the units that ended between `from` and `to`
    /// (None with fewer than 10 of them).
    pub fn median_between(&self, from: Instant, to: Instant) -> Option<f64> {
        let samples = self.samples.lock().ok()?;
        let mut v: Vec<u64> = samples
            .iter()
            .filter(|(t, _)| *t >= from && *t <= to)
            .map(|(_, ns)| *ns)
            .collect();
        (v.len() >= 10).then_some(())?;
        v.sort_unstable();
        Some(v[v.len() / 2] as f64)
    }

    /// Forgets the units that ended before `t` (the memory stays bounded).
    pub fn forget_before(&self, t: Instant) {
        if let Ok(mut s) = self.samples.lock() {
            s.retain(|(at, _)| *at >= t);
        }
    }
}

impl Drop for Speedometer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn run(cpu: usize, samples: &Samples, stop: &AtomicBool) {
    // Unpinned or at the default priority the figures are noisier, not wrong.
    let _ = pin_and_raise(cpu);
    let mut buf = [0u64; BUFFER_WORDS];
    let mut seed = 0x9E37_79B9_7F4A_7C15_u64;
    while !stop.load(Ordering::Relaxed) {
        let before = thread_cpu_ns();
        seed = unit(&mut buf, seed);
        let after = thread_cpu_ns();
        if let (Some(a), Some(b)) = (before, after) {
            if let Ok(mut s) = samples.lock() {
                s.push((Instant::now(), b.saturating_sub(a)));
            }
        }
        std::thread::sleep(PERIOD);
    }
    std::hint::black_box(seed);
}

/// The fixed unit: xorshift and read-modify-writes in `buf`.
fn unit(buf: &mut [u64; BUFFER_WORDS], mut x: u64) -> u64 {
    for _ in 0..UNIT_ITERATIONS {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let i = (x as usize) % BUFFER_WORDS;
        buf[i] = buf[i].wrapping_add(x);
        x = x.wrapping_add(buf[(i + 1) % BUFFER_WORDS]);
    }
    std::hint::black_box(x)
}

/// A probe of the host's memory between windows: on each CPU at once, a chain of
/// dependent loads through a buffer far larger than the caches, timed in the thread's
/// CPU time. Run while nothing else is, it cannot be moved by the row just measured
/// (the speedometer's unit, timed during the load, is), and a shared machine's memory
/// system is what moved most here (a random read took 32 to 257 ns between searches,
/// docs/studies.md, while the arithmetic unit stayed within 0.1%).
pub struct MemoryProbe {
    /// `next[i]` is the slot read after slot `i`: one cycle through every slot.
    next: Vec<Slot>,
}

/// One cache line holding the index of the next: every load misses a different line.
#[derive(Clone, Copy)]
#[repr(align(64))]
struct Slot(u32);

/// The probe's buffer: 64 MiB, beyond any L3 share a virtual machine gets.
const PROBE_SLOTS: usize = 1 << 20;

/// Loads timed together (≈ 1–3 ms each at DRAM latency).
const PROBE_CHUNK: u32 = 20_000;

impl MemoryProbe {
    /// Builds the chain: one random cycle through every slot.
    pub fn new() -> MemoryProbe {
        MemoryProbe {
            next: super::calibrate::one_cycle(PROBE_SLOTS)
                .into_iter()
                .map(Slot)
                .collect(),
        }
    }

    /// Nanoseconds per dependent load: each CPU's median over chunks of loads for
    /// `span`, averaged over `cpus` (None if no CPU timed a chunk).
    pub fn run(&self, cpus: &[usize], span: Duration) -> Option<f64> {
        let per_cpu: Vec<Option<f64>> = std::thread::scope(|scope| {
            let handles: Vec<_> = cpus
                .iter()
                .map(|&cpu| scope.spawn(move || self.chase(cpu, span)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().ok().flatten())
                .collect()
        });
        let v: Vec<f64> = per_cpu.into_iter().flatten().collect();
        (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
    }

    fn chase(&self, cpu: usize, span: Duration) -> Option<f64> {
        let _ = pin_and_raise(cpu);
        let mut at = (cpu * 7919) % PROBE_SLOTS;
        let mut chunks = Vec::new();
        let end = Instant::now() + span;
        while Instant::now() < end {
            let before = thread_cpu_ns()?;
            for _ in 0..PROBE_CHUNK {
                at = self.next[at].0 as usize;
            }
            at = std::hint::black_box(at);
            let after = thread_cpu_ns()?;
            chunks.push(after.saturating_sub(before) as f64 / f64::from(PROBE_CHUNK));
        }
        chunks.sort_by(f64::total_cmp);
        chunks.get(chunks.len() / 2).copied()
    }
}

impl Default for MemoryProbe {
    fn default() -> Self {
        Self::new()
    }
}

/// This thread's CPU time, ns.
fn thread_cpu_ns() -> Option<u64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    (rc == 0).then(|| ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
}

/// Pins the calling thread to `cpu` and raises its priority.
fn pin_and_raise(cpu: usize) -> std::io::Result<()> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET stays inside it for
    // cpu < CPU_SETSIZE (checked), and both calls only read the set / act on this
    // thread (tid 0).
    unsafe {
        if cpu >= libc::CPU_SETSIZE as usize {
            return Err(std::io::Error::other("CPU number out of range"));
        }
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let tid = libc::gettid() as libc::id_t;
        if libc::setpriority(libc::PRIO_PROCESS, tid, NICE) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_memory_probe_is_one_cycle_and_times_its_loads() {
        let p = MemoryProbe::new();
        let (mut at, mut steps) = (0usize, 0usize);
        loop {
            at = p.next[at].0 as usize;
            steps += 1;
            if at == 0 {
                break;
            }
        }
        assert_eq!(steps, PROBE_SLOTS, "every slot on the one cycle");
        let ns = p.run(&[0], Duration::from_millis(30)).expect("timed");
        assert!(ns > 0.1 && ns < 10_000.0, "{ns}");
    }

    #[test]
    fn records_units_and_takes_the_median_of_a_span() {
        let s = Speedometer::start(&[0]);
        let from = Instant::now();
        std::thread::sleep(PERIOD * 20);
        let to = Instant::now();
        let m = s.median_between(from, to).expect("units were timed");
        assert!(m > 1_000.0 && m < 1e9, "{m}");
        assert!(s.median_between(to, to).is_none());
        s.forget_before(to);
        assert!(s.median_between(from, to).is_none());
    }
}
