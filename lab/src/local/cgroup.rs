//! A CPU-accounting group per party (each server, PostgreSQL, oha): nanoseconds of
//! CPU, per CPU where the kernel gives them (cgroup v1 `cpuacct`; v2 `cpu.stat` has the
//! total only). Created under `perflab-<pid>/`, emptied and removed when dropped.
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

const V1: &str = "/sys/fs/cgroup/cpuacct";
const V2: &str = "/sys/fs/cgroup";

#[derive(Debug)]
pub struct CpuGroup {
    dir: PathBuf,
    v1: bool,
    /// Where the processes moved in came from, to put them back (pid, group).
    moved: Vec<(u32, PathBuf)>,
}

/// The hierarchy this machine accounts CPU in, if any.
fn hierarchy() -> Option<(PathBuf, bool)> {
    if Path::new(V1).join("cpuacct.usage").exists() {
        Some((PathBuf::from(V1), true))
    } else if Path::new(V2).join("cgroup.controllers").exists() {
        Some((PathBuf::from(V2), false))
    } else {
        None
    }
}

/// The group `pid` is in, in our hierarchy, as a directory.
fn group_of(pid: u32, root: &Path, v1: bool) -> Option<PathBuf> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    text.lines().find_map(|l| {
        let mut f = l.splitn(3, ':');
        let (_, controllers, path) = (f.next()?, f.next()?, f.next()?);
        let ours = if v1 {
            controllers.split(',').any(|c| c == "cpuacct")
        } else {
            controllers.is_empty()
        };
        ours.then(|| root.join(path.trim_start_matches('/')))
    })
}

impl CpuGroup {
    /// A new, empty group `name` of this run (an error where cgroups cannot be written,
    /// e.g. without root).
    pub fn create(name: &str) -> Result<Self> {
        let Some((root, v1)) = hierarchy() else {
            bail!("no cgroup CPU accounting on this machine");
        };
        let dir = root
            .join(format!("perflab-{}", std::process::id()))
            .join(name);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self {
            dir,
            v1,
            moved: Vec::new(),
        })
    }

    /// Moves `pid` (all its threads) into the group; its later children are born in it.
    pub fn add(&mut self, pid: u32) -> Result<()> {
        let root = self
            .dir
            .parent()
            .and_then(Path::parent)
            .map(Path::to_path_buf);
        if let Some(from) = root.and_then(|r| group_of(pid, &r, self.v1)) {
            self.moved.push((pid, from));
        }
        fs::write(self.dir.join("cgroup.procs"), pid.to_string())
            .with_context(|| format!("moving process {pid} into {}", self.dir.display()))
    }

    /// CPU time of the group so far, ns.
    pub fn usage_ns(&self) -> Option<u64> {
        if self.v1 {
            fs::read_to_string(self.dir.join("cpuacct.usage"))
                .ok()?
                .trim()
                .parse()
                .ok()
        } else {
            let text = fs::read_to_string(self.dir.join("cpu.stat")).ok()?;
            text.lines()
                .find_map(|l| l.strip_prefix("usage_usec "))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(|us| us * 1000)
        }
    }

    /// CPU time on each CPU so far, ns (empty on cgroup v2).
    pub fn usage_percpu(&self) -> Vec<u64> {
        if !self.v1 {
            return Vec::new();
        }
        fs::read_to_string(self.dir.join("cpuacct.usage_percpu"))
            .map(|t| {
                t.split_whitespace()
                    .filter_map(|x| x.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for CpuGroup {
    /// Puts the processes still alive back where they were (those moved in first: a
    /// postmaster may fork into the group while it is being emptied), then removes the
    /// group (and the run's parent once empty).
    fn drop(&mut self) {
        let root = self
            .dir
            .parent()
            .and_then(Path::parent)
            .map(Path::to_path_buf);
        for (pid, from) in &self.moved {
            let _ = fs::write(from.join("cgroup.procs"), pid.to_string());
        }
        for _ in 0..5 {
            let procs = fs::read_to_string(self.dir.join("cgroup.procs")).unwrap_or_default();
            let pids: Vec<u32> = procs
                .lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect();
            if pids.is_empty() {
                break;
            }
            for pid in pids {
                let back = self
                    .moved
                    .iter()
                    .find(|(p, _)| *p == pid)
                    .map(|(_, g)| g.clone())
                    .or_else(|| root.clone());
                if let Some(back) = back {
                    let _ = fs::write(back.join("cgroup.procs"), pid.to_string());
                }
            }
        }
        for _ in 0..5 {
            if fs::remove_dir(&self.dir).is_ok() || !self.dir.exists() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        if let Some(parent) = self.dir.parent() {
            let _ = fs::remove_dir(parent);
        }
    }
}

/// A row's pod resources on this machine: a group in cgroup v1's `cpu` hierarchy
/// (`cpu.shares` from the CPU request, `cpu.cfs_quota_us` from the limit) and, with a
/// memory limit, one in `memory` (`memory.limit_in_bytes`). The server is born in them
/// (see [`PodGroup::join_at_exec`]), so its start-up already sees its quota, as a
/// container's does. A memory request only places pods on Kubernetes: nothing here.
#[derive(Debug)]
pub struct PodGroup {
    cpu: PathBuf,
    memory: Option<PathBuf>,
}

pub use crate::pod::Throttling;

const V1_CPU: &str = "/sys/fs/cgroup/cpu";
const V1_MEMORY: &str = "/sys/fs/cgroup/memory";

/// This run's folder in a v1 hierarchy mounted at `mount` for `controller`: under the
/// group this process is in (so a container's own limits still hold), `perflab-<pid>`.
fn run_dir(mount: &str, controller: &str, probe: &str) -> Result<PathBuf> {
    if !Path::new(mount).join(probe).exists() {
        bail!("a row's `resources` need cgroup v1's {controller} controller at {mount} (this machine has none, or cgroup v2 only)");
    }
    let own = fs::read_to_string("/proc/self/cgroup")
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                let mut f = l.splitn(3, ':');
                let (_, list, path) = (f.next()?, f.next()?, f.next()?);
                list.split(',')
                    .any(|c| c == controller)
                    .then(|| path.trim_start_matches('/').to_string())
            })
        })
        .unwrap_or_default();
    Ok(Path::new(mount)
        .join(own)
        .join(format!("perflab-{}", std::process::id())))
}

impl PodGroup {
    /// Groups `name` of this run with `r`'s controls (an error where cgroup v1's `cpu`
    /// and `memory` controllers are not writable: the row cannot be run as asked).
    pub fn create(name: &str, r: &crate::pod::Resources) -> Result<Self> {
        let cpu = run_dir(V1_CPU, "cpu", "cpu.shares")?.join(name);
        fs::create_dir_all(&cpu).with_context(|| format!("creating {}", cpu.display()))?;
        let mut g = Self { cpu, memory: None };
        write(&g.cpu.join("cpu.shares"), &r.cpu_shares().to_string())?;
        write(
            &g.cpu.join("cpu.cfs_period_us"),
            &crate::pod::CFS_PERIOD_US.to_string(),
        )?;
        let quota = r.cpu_quota_us().map_or("-1".to_string(), |q| q.to_string());
        write(&g.cpu.join("cpu.cfs_quota_us"), &quota)?;
        if let Some(limit) = r.memory_limit {
            let dir = run_dir(V1_MEMORY, "memory", "memory.limit_in_bytes")?.join(name);
            fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            g.memory = Some(dir.clone());
            write(&dir.join("memory.limit_in_bytes"), &limit.to_string())?;
        }
        Ok(g)
    }

    /// PostgreSQL's group beside the pods', weighted as its Guaranteed one-CPU pod is on
    /// Kubernetes (`cpu.shares` 1024): a pod's CPU request then weighs against it on
    /// the CPU they share (without it, each backend would weigh as much as a whole pod).
    /// `postmasters` and their processes move in; their later backends are born in it.
    pub fn postgres(postmasters: &[u32]) -> Result<Self> {
        let cpu = run_dir(V1_CPU, "cpu", "cpu.shares")?.join("postgres");
        fs::create_dir_all(&cpu).with_context(|| format!("creating {}", cpu.display()))?;
        let g = Self { cpu, memory: None };
        write(&g.cpu.join("cpu.shares"), "1024")?;
        for &p in postmasters {
            for pid in std::iter::once(p).chain(crate::measure::procfs::children(p)) {
                let _ = fs::write(g.cpu.join("cgroup.procs"), pid.to_string());
            }
        }
        Ok(g)
    }

    /// The `cgroup.procs` files a child writes "0" to between fork and exec, so the
    /// server starts inside its groups.
    pub fn join_at_exec(&self) -> Vec<PathBuf> {
        std::iter::once(&self.cpu)
            .chain(self.memory.as_ref())
            .map(|d| d.join("cgroup.procs"))
            .collect()
    }

    /// Throttling so far.
    pub fn throttling(&self) -> Option<Throttling> {
        let text = fs::read_to_string(self.cpu.join("cpu.stat")).ok()?;
        let field = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(k))
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        Some(Throttling {
            periods: field("nr_periods ")?,
            throttled: field("nr_throttled ")?,
            throttled_ns: field("throttled_time ")?,
        })
    }

    /// Times the memory limit was hit (`memory.failcnt`), where there is one.
    pub fn memory_failures(&self) -> Option<u64> {
        fs::read_to_string(self.memory.as_ref()?.join("memory.failcnt"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }
}

/// A memory-only group (cgroup v1 `memory`, under this run's folder): a row's own
/// PostgreSQL under its pod's memory limit. Its processes and their later children
/// are charged for what they touch from then on (the page cache they read in
/// included), so the cache is bounded with them.
#[derive(Debug)]
pub struct MemoryGroup {
    dir: PathBuf,
}

impl MemoryGroup {
    /// Group `name` with `limit` bytes, `pids` and their children moved in.
    pub fn create(name: &str, limit: u64, pids: &[u32]) -> Result<Self> {
        let dir = run_dir(V1_MEMORY, "memory", "memory.limit_in_bytes")?.join(name);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let g = Self { dir };
        write(&g.dir.join("memory.limit_in_bytes"), &limit.to_string())?;
        for &p in pids {
            for pid in std::iter::once(p).chain(crate::measure::procfs::children(p)) {
                write(&g.dir.join("cgroup.procs"), &pid.to_string())?;
            }
        }
        Ok(g)
    }

    /// Memory charged to the group now, bytes.
    pub fn usage(&self) -> Option<u64> {
        fs::read_to_string(self.dir.join("memory.usage_in_bytes"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }
}

impl Drop for MemoryGroup {
    fn drop(&mut self) {
        remove_group(&self.dir);
    }
}

fn write(path: &Path, value: &str) -> Result<()> {
    fs::write(path, value).with_context(|| format!("writing {value} to {}", path.display()))
}

impl Drop for PodGroup {
    fn drop(&mut self) {
        for dir in std::iter::once(&self.cpu).chain(self.memory.as_ref()) {
            remove_group(dir);
        }
    }
}

/// Moves what is left in the group at `dir` to the group this process is in (the run
/// folder's parent), removes the group and the run's folder once empty.
fn remove_group(dir: &Path) {
    let root = dir.parent().and_then(Path::parent).map(Path::to_path_buf);
    for _ in 0..5 {
        let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        if procs.trim().is_empty() {
            break;
        }
        if let Some(root) = &root {
            for pid in procs.lines() {
                let _ = fs::write(root.join("cgroup.procs"), pid.trim());
            }
        }
    }
    for _ in 0..5 {
        if fs::remove_dir(dir).is_ok() || !dir.exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    if let Some(parent) = dir.parent() {
        let _ = fs::remove_dir(parent);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_group_counts_its_processes_cpu() {
        let Ok(mut g) = CpuGroup::create(&format!("test-{}", std::process::id())) else {
            eprintln!("no writable cgroup here: skipped");
            return;
        };
        let mut child = std::process::Command::new("sh")
            .args(["-c", "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done"])
            .spawn()
            .unwrap();
        g.add(child.id()).unwrap();
        child.wait().unwrap();
        assert!(g.usage_ns().unwrap() > 1_000_000, "a busy loop used CPU");
    }

    #[test]
    fn a_memory_group_takes_a_process_and_its_limit() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let name = format!("test-mem-{}", std::process::id());
        let g = match MemoryGroup::create(&name, 128 << 20, &[child.id()]) {
            Ok(g) => g,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                eprintln!("no writable cgroup v1 memory controller here ({e:#}): skipped");
                return;
            }
        };
        let dir = g.dir.clone();
        let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap();
        let limit = fs::read_to_string(dir.join("memory.limit_in_bytes")).unwrap();
        assert!(
            procs.lines().any(|p| p.trim() == child.id().to_string()),
            "{procs}"
        );
        assert_eq!(limit.trim(), (128u64 << 20).to_string());
        assert!(g.usage().is_some());
        drop(g);
        assert!(
            !dir.exists(),
            "the group is removed, its process moved out first"
        );
        let _ = child.kill();
        let _ = child.wait();
    }

    #[test]
    fn a_pod_group_throttles_at_its_quota() {
        let r = crate::pod::Resources {
            cpu_limit: Some(0.1),
            cpu_request: Some(0.1),
            memory_request: Some(64 << 20),
            memory_limit: Some(64 << 20),
        };
        let Ok(g) = PodGroup::create(&format!("test-pod-{}", std::process::id()), &r) else {
            eprintln!("no writable cgroup v1 cpu controller here: skipped");
            return;
        };
        let before = g.throttling().unwrap();
        let mut cmd = std::process::Command::new("sh");
        cmd.args(["-c", "i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done"]);
        super::super::server::join_groups(&mut cmd, &g.join_at_exec());
        let start = std::time::Instant::now();
        cmd.status().unwrap();
        let t = before.until(&g.throttling().unwrap());
        assert!(
            t.throttled > 0,
            "a busy loop under 0.1 CPU was throttled: {t:?}"
        );
        assert!(t.throttled_ns > 0);
        assert!(start.elapsed().as_millis() > 100);
        assert_eq!(g.memory_failures(), Some(0));
    }
}
