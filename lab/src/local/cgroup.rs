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
}
