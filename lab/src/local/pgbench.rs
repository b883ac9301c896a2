//! The reference line: PostgreSQL's own ceiling for each mix, measured with pgbench
//! (prepared statements, the same data and the same statements, no HTTP), closed loop.
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::matrix::Workload;
use crate::measure::stats::Latencies;

/// What one pgbench run measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PgbenchRun {
    pub tps: f64,
    pub transactions: u64,
    pub p99_ms: Option<f64>,
}

pub struct Pgbench<'a> {
    pub url: &'a str,
    pub cpus: &'a str,
    pub clients: u32,
    pub users: i64,
}

impl Pgbench<'_> {
    pub fn run(&self, w: &Workload, secs: u32, dir: &Path, tag: &str) -> Result<PgbenchRun> {
        let get = dir.join("pgbench-get.sql");
        let patch = dir.join("pgbench-patch.sql");
        std::fs::write(
            &get,
            format!(
                "\\set id random(1, {})\nSELECT id, name, email, updated_at, version FROM users WHERE id = :id;\n",
                self.users
            ),
        )?;
        std::fs::write(
            &patch,
            format!(
                "\\set id random(1, {})\nUPDATE users SET email = 'pgbench' || :id || '@example.com', \
                 updated_at = now(), version = version + 1 WHERE id = :id \
                 RETURNING id, name, email, updated_at, version;\n",
                self.users
            ),
        )?;
        let log_dir = dir.join(format!("{tag}-log"));
        std::fs::create_dir_all(&log_dir)?;
        let mut cmd = Command::new("taskset");
        cmd.args([
            "-c", self.cpus, "pgbench", "-n", "-M", "prepared", "-j", "1",
        ])
        .arg("-c")
        .arg(self.clients.to_string())
        .arg("-T")
        .arg(secs.to_string())
        .arg("-l")
        .arg(format!("--log-prefix={}", log_dir.join("tx").display()));
        if w.get_percent > 0 {
            cmd.arg("-f")
                .arg(format!("{}@{}", get.display(), w.get_percent));
        }
        if w.patch_percent > 0 {
            cmd.arg("-f")
                .arg(format!("{}@{}", patch.display(), w.patch_percent));
        }
        cmd.arg(self.url);
        let out = cmd.output().context("running pgbench")?;
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        std::fs::write(dir.join(format!("{tag}.txt")), &stdout)?;
        if !out.status.success() {
            bail!(
                "pgbench failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let tps = parse_tps(&stdout).context("no tps in pgbench's output")?;
        let mut lat = Latencies::new();
        let mut n = 0;
        for entry in std::fs::read_dir(&log_dir)? {
            let text = std::fs::read_to_string(entry?.path())?;
            for line in text.lines() {
                if let Some(us) = line
                    .split_whitespace()
                    .nth(2)
                    .and_then(|v| v.parse::<f64>().ok())
                {
                    lat.record_secs(us / 1e6);
                    n += 1;
                }
            }
        }
        let _ = std::fs::remove_dir_all(&log_dir);
        Ok(PgbenchRun {
            tps,
            transactions: n,
            p99_ms: lat.quantile_ms(0.99),
        })
    }
}

fn parse_tps(text: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with("tps = "))
        .and_then(|l| l["tps = ".len()..].split_whitespace().next()?.parse().ok())
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_tps() {
        let out = "number of transactions actually processed: 1000\nlatency average = 1.0 ms\ntps = 15873.123456 (without initial connection time)\n";
        assert_eq!(super::parse_tps(out), Some(15873.123456));
        assert_eq!(super::parse_tps("nothing"), None);
    }
}
