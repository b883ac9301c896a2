//! What the run ran on, recorded with every result.
use std::path::{Path, PathBuf};
use std::process::Command;

fn output(cmd: &str, args: &[&str], dir: &Path) -> Option<String> {
    let out = Command::new(cmd)
        .args(args)
        .current_dir(dir)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The code a run measured: the commit, and whether the working tree had changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    /// The short hash ("unknown" outside a git checkout).
    pub hash: String,
    pub dirty: bool,
}

impl Commit {
    /// As a run records it: `hash`, or `hash+uncommitted changes`.
    pub fn recorded(&self) -> String {
        if self.dirty {
            format!("{}+uncommitted changes", self.hash)
        } else {
            self.hash.clone()
        }
    }

    /// As an image tag or label value: `hash`, or `hash-dirty`.
    pub fn tag(&self) -> String {
        if self.dirty {
            format!("{}-dirty", self.hash)
        } else {
            self.hash.clone()
        }
    }
}

pub fn commit(root: &Path) -> Commit {
    let Some(hash) = output("git", &["rev-parse", "--short=12", "HEAD"], root) else {
        return Commit {
            hash: "unknown".into(),
            dirty: false,
        };
    };
    let dirty = output(
        "git",
        &["status", "--porcelain", "--untracked-files=no"],
        root,
    )
    .is_some_and(|s| !s.is_empty());
    Commit { hash, dirty }
}

/// The commit as a run records it (see [`Commit::recorded`]).
pub fn git_commit(root: &Path) -> String {
    commit(root).recorded()
}

pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

pub fn cpu_count() -> usize {
    std::fs::read_to_string("/proc/cpuinfo")
        .map(|t| t.lines().filter(|l| l.starts_with("processor")).count())
        .unwrap_or(0)
        .max(1)
}

pub fn memory_gib() -> f64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0 / 1024.0)
}

pub fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or("unknown".into(), |s| s.trim().to_string())
}

pub fn rustc(root: &Path) -> String {
    output("rustc", &["--version"], root).unwrap_or_else(|| "unknown".into())
}

pub fn pgbench() -> String {
    output("pgbench", &["--version"], Path::new("."))
        .and_then(|s| s.split_whitespace().nth(2).map(String::from))
        .unwrap_or_else(|| "not found".into())
}

/// The path from folder `from` to `to`, both absolute (`..` as needed).
pub fn relative(from: &Path, to: &Path) -> PathBuf {
    let from: Vec<_> = from.components().collect();
    let to: Vec<_> = to.components().collect();
    let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    let mut p = PathBuf::new();
    for _ in common..from.len() {
        p.push("..");
    }
    for c in &to[common..] {
        p.push(c.as_os_str());
    }
    p
}

#[cfg(test)]
mod commit_tests {
    use super::*;

    #[test]
    fn a_dirty_commit_is_recorded_and_tagged_apart() {
        let c = Commit {
            hash: "110a5ad0b816".into(),
            dirty: true,
        };
        assert_eq!(c.recorded(), "110a5ad0b816+uncommitted changes");
        assert_eq!(c.tag(), "110a5ad0b816-dirty");
        let c = Commit { dirty: false, ..c };
        assert_eq!(c.recorded(), "110a5ad0b816");
        assert_eq!(c.tag(), "110a5ad0b816");
    }
}
