//! The reference line: PostgreSQL alone (pgbench, prepared statements, the same data
//! and statements, no HTTP), measured like the rows: a closed-loop probe, then the same
//! open-loop search (`pgbench -R`, latency from each transaction's scheduled start, so
//! a queue behind busy clients counts), the same SLO and confirmations, with pgbench
//! pinned where oha is; then the cost of a transaction at the run's common rate. One
//! difference remains: pgbench's arrivals are Poisson, burstier than oha's even
//! timetable, which makes the same p99 slightly harder to meet.
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::matrix::{Load, Workload};
use crate::measure::search::{common_rate, Measured, Search, MIN_QPS};
use crate::measure::stats::Latencies;
use crate::measure::{procfs, MIX_TOLERANCE};
use crate::results::ReferenceCommon;

/// What one pgbench run measured, from its per-transaction log.
#[derive(Debug, Clone)]
pub struct PgbenchRun {
    pub secs: f64,
    pub transactions: u64,
    /// Transactions of the GET script (the first `-f`).
    pub reads: u64,
    pub latencies: Latencies,
    /// The whole run's wall time, connecting and exiting included: the CPU window.
    pub wall_secs: f64,
    /// CPU-seconds of PostgreSQL and of pgbench over the run.
    pub cpu_postgres: Option<f64>,
    pub cpu_pgbench: f64,
}

impl PgbenchRun {
    pub fn tps(&self) -> f64 {
        self.transactions as f64 / self.secs
    }
    fn read_share(&self) -> f64 {
        self.reads as f64 / self.transactions.max(1) as f64
    }
}

/// One step of the reference's search.
#[derive(Debug, Clone, Serialize)]
pub struct PgbenchStep {
    pub offered: f64,
    pub achieved: f64,
    pub read_share: f64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// CPU cores used over the step.
    pub cpu_postgres: Option<f64>,
    pub cpu_pgbench: f64,
    pub passed: bool,
    pub confirmation: bool,
    pub reasons: Vec<String>,
}

/// Judges an open-loop step like a row's: achieved rate, p99 from the scheduled start,
/// and the mix (pgbench draws each transaction's script at random, so the tolerance
/// allows three standard errors of that draw).
pub fn judge(offered: f64, target_read_share: f64, run: &PgbenchRun, load: &Load) -> PgbenchStep {
    let achieved = run.tps();
    let read_share = run.read_share();
    let p99 = run.latencies.quantile_ms(0.99);
    let mut reasons = Vec::new();
    // pgbench -R draws arrivals from a Poisson process: over T seconds the count has a
    // standard deviation of √(rate·T), allowed three times over (the rows' oha sends an
    // exact timetable instead).
    let poisson = 3.0 * (offered * run.secs).sqrt() / run.secs;
    if achieved < load.min_achieved * offered - poisson {
        reasons.push(format!(
            "achieved {achieved:.0}/s is {:.1}% of offered (< {:.0}% less {poisson:.0}/s of Poisson arrival noise)",
            100.0 * achieved / offered,
            load.min_achieved * 100.0
        ));
    }
    match p99 {
        Some(p) if p <= load.slo_p99_ms => {}
        Some(p) => reasons.push(format!("p99 {p:.1} ms > {} ms", load.slo_p99_ms)),
        None => reasons.push("no transactions".into()),
    }
    let n = run.transactions.max(1) as f64;
    let draw = 3.0 * (target_read_share * (1.0 - target_read_share) / n).sqrt();
    let tolerance = MIX_TOLERANCE.max(draw);
    if (read_share - target_read_share).abs() > tolerance {
        reasons.push(format!(
            "mix {:.1}% reads (want {:.0}% ± {:.1})",
            read_share * 100.0,
            target_read_share * 100.0,
            tolerance * 100.0
        ));
    }
    PgbenchStep {
        offered,
        achieved,
        read_share,
        p50_ms: run.latencies.quantile_ms(0.5),
        p99_ms: p99,
        cpu_postgres: run.cpu_postgres.map(|c| c / run.wall_secs),
        cpu_pgbench: run.cpu_pgbench / run.wall_secs,
        passed: reasons.is_empty(),
        confirmation: false,
        reasons,
    }
}

impl Measured for PgbenchStep {
    fn offered(&self) -> f64 {
        self.offered
    }
    fn achieved(&self) -> f64 {
        self.achieved
    }
    fn passed(&self) -> bool {
        self.passed
    }
}

pub struct Pgbench<'a> {
    pub url: &'a str,
    pub cpus: &'a str,
    pub clients: u32,
    pub users: i64,
    /// The cluster's postmaster, whose processes' CPU is counted.
    pub postmaster: Option<u32>,
}

/// The reference's result for one workload and repetition.
pub struct ReferenceSearch {
    /// The confirmed rate, and its weakest passing step.
    pub capacity: Option<(f64, PgbenchStep)>,
    pub steps: Vec<PgbenchStep>,
    pub common: Option<ReferenceCommon>,
}

impl Pgbench<'_> {
    /// Probe, search and common rate for one workload; steps go to `dir/tag-steps.json`.
    pub fn search(
        &self,
        w: &Workload,
        load: &Load,
        dir: &Path,
        tag: &str,
        say: &dyn Fn(&str),
    ) -> Result<ReferenceSearch> {
        let secs = |s: f64| s.max(1.0);
        let mut hint = None;
        if load.warmup_secs > 0.0 {
            let probe = self.run(
                w,
                None,
                secs(load.warmup_secs),
                dir,
                &format!("{tag}-probe"),
            )?;
            say(&format!(
                "  pgbench {} probe (closed loop): {:.0} TPS",
                w.name,
                probe.tps()
            ));
            hint = (probe.tps() >= MIN_QPS).then_some(probe.tps());
        }
        let mut s = Search::new(
            load.start_qps,
            hint,
            load.max_qps,
            load.precision,
            load.max_steps,
        )
        .confirm(load.confirmations);
        let mut steps = Vec::new();
        while let Some(rate) = s.next_rate() {
            let confirming = s.confirming();
            let step_tag = format!("{tag}-step{}", steps.len() + 1);
            let run = self.run(w, Some(rate), secs(load.duration_secs), dir, &step_tag)?;
            let mut step = judge(rate, w.get_share(), &run, load);
            step.confirmation = confirming;
            say(&format!(
                "  pgbench {} step {}{}: offered {rate:.0}/s → {:.0}/s, p99 {} ms → {}",
                w.name,
                steps.len() + 1,
                if confirming { " (confirming)" } else { "" },
                step.achieved,
                step.p99_ms.map_or("n/a".into(), |p| format!("{p:.1}")),
                if step.passed {
                    "pass".to_string()
                } else {
                    format!("FAIL ({})", step.reasons.join("; "))
                }
            ));
            s.record(rate, step.passed);
            steps.push(step);
        }
        std::fs::write(
            dir.join(format!("{tag}-steps.json")),
            serde_json::to_string_pretty(&steps)?,
        )?;
        let capacity = s.weakest_at_best(&steps).map(|st| (st.offered, st.clone()));
        let common = match (&capacity, load.common_qps > 0.0) {
            (Some((cap, _)), true) => {
                let (rate, reduced) = common_rate(*cap, load.common_qps);
                let run = self.run(
                    w,
                    Some(rate),
                    secs(load.common_secs),
                    dir,
                    &format!("{tag}-common"),
                )?;
                let step = judge(rate, w.get_share(), &run, load);
                let per_tx = |cpu: f64| cpu * 1e6 / run.transactions.max(1) as f64;
                Some(ReferenceCommon {
                    offered: rate,
                    reduced,
                    secs: run.secs,
                    achieved: step.achieved,
                    passed: step.passed,
                    p50_ms: run.latencies.quantile_ms(0.5),
                    p90_ms: run.latencies.quantile_ms(0.9),
                    p99_ms: run.latencies.quantile_ms(0.99),
                    p999_ms: run.latencies.quantile_ms(0.999),
                    postgres_us_per_transaction: run.cpu_postgres.map(per_tx),
                    pgbench_us_per_transaction: per_tx(run.cpu_pgbench),
                })
            }
            _ => None,
        };
        Ok(ReferenceSearch {
            capacity,
            steps,
            common,
        })
    }

    /// One pgbench run of `secs` seconds, open loop at `rate` (`-R`) or closed loop.
    pub fn run(
        &self,
        w: &Workload,
        rate: Option<f64>,
        secs: f64,
        dir: &Path,
        tag: &str,
    ) -> Result<PgbenchRun> {
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
        let _ = std::fs::remove_dir_all(&log_dir);
        std::fs::create_dir_all(&log_dir)?;
        let whole_secs = secs.ceil().max(1.0) as u32;
        let mut cmd = Command::new("taskset");
        cmd.args([
            "-c", self.cpus, "pgbench", "-n", "-M", "prepared", "-j", "1",
        ])
        .arg("-c")
        .arg(self.clients.to_string())
        .arg("-T")
        .arg(whole_secs.to_string())
        .arg("-l")
        .arg(format!("--log-prefix={}", log_dir.join("tx").display()));
        if let Some(rate) = rate {
            cmd.arg("-R").arg(format!("{rate:.0}"));
        }
        // GET first: script number 0 in the log is a read.
        let scripts: Vec<(&Path, u32)> = [
            (get.as_path(), w.get_percent),
            (patch.as_path(), w.patch_percent),
        ]
        .into_iter()
        .filter(|(_, weight)| *weight > 0)
        .collect();
        for (script, weight) in &scripts {
            cmd.arg("-f").arg(format!("{}@{weight}", script.display()));
        }
        // The password goes through the environment: a command line is visible to
        // every user of the machine.
        let (url, password) = crate::local::pg::without_password(self.url);
        cmd.arg(url);
        if let Some(p) = password {
            cmd.env("PGPASSWORD", p);
        }
        let pg_ticks = || self.postmaster.and_then(procfs::postgres_ticks);
        let (pg0, c0, t0) = (
            pg_ticks(),
            procfs::reaped_children_ticks(),
            std::time::Instant::now(),
        );
        let out = cmd.output().context("running pgbench")?;
        let wall = t0.elapsed().as_secs_f64();
        let (pg1, c1) = (pg_ticks(), procfs::reaped_children_ticks());
        std::fs::write(dir.join(format!("{tag}.txt")), &out.stdout)?;
        if !out.status.success() {
            bail!(
                "pgbench failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let read_script = if w.get_percent > 0 { Some(0) } else { None };
        let mut run = PgbenchRun {
            secs: f64::from(whole_secs),
            wall_secs: wall,
            transactions: 0,
            reads: 0,
            latencies: Latencies::new(),
            cpu_postgres: pg0
                .zip(pg1)
                .map(|(a, b)| b.saturating_sub(a) as f64 / procfs::TICKS_PER_SEC),
            cpu_pgbench: c1.saturating_sub(c0) as f64 / procfs::TICKS_PER_SEC,
        };
        for entry in std::fs::read_dir(&log_dir)? {
            let text = std::fs::read_to_string(entry?.path())?;
            for line in text.lines() {
                if let Some((us, script)) = parse_log_line(line) {
                    run.latencies.record_secs(us / 1e6);
                    run.transactions += 1;
                    if Some(script) == read_script {
                        run.reads += 1;
                    }
                }
            }
        }
        let _ = std::fs::remove_dir_all(&log_dir);
        Ok(run)
    }
}

/// (latency in µs, script number) of a line of pgbench's per-transaction log:
/// `client_id transaction_no time script_no time_epoch time_us [schedule_lag]`. With
/// `-R`, `time` counts from the transaction's scheduled start, so it includes the lag.
/// Skipped or failed transactions (`skipped`, `failed`) are not latencies.
fn parse_log_line(line: &str) -> Option<(f64, u32)> {
    let mut f = line.split_whitespace();
    let (_client, _n) = (f.next()?, f.next()?);
    let us = f.next()?.parse::<f64>().ok()?;
    let script = f.next()?.parse::<u32>().ok()?;
    Some((us, script))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matrix::Matrix;

    #[test]
    fn reads_the_per_transaction_log() {
        assert_eq!(
            parse_log_line("3 17 1520 0 1732850000 123456 40"),
            Some((1520.0, 0))
        );
        assert_eq!(
            parse_log_line("0 1 900 1 1732850000 123456"),
            Some((900.0, 1))
        );
        assert_eq!(
            parse_log_line("0 2 skipped 1 1732850000 123456 50000"),
            None
        );
        assert_eq!(parse_log_line(""), None);
    }

    fn run(transactions: u64, reads: u64, latency_s: f64, secs: f64) -> PgbenchRun {
        let mut latencies = Latencies::new();
        for _ in 0..transactions {
            latencies.record_secs(latency_s);
        }
        PgbenchRun {
            secs,
            transactions,
            reads,
            latencies,
            wall_secs: secs + 0.1,
            cpu_postgres: Some(1.0),
            cpu_pgbench: 0.5,
        }
    }

    #[test]
    fn reference_steps_are_judged_like_the_rows() {
        let load = Matrix::parse(include_str!("../../../tests/ci-matrix.toml"))
            .unwrap()
            .load;
        let ok = judge(1000.0, 0.9, &run(3000, 2700, 0.002, 3.0), &load);
        assert!(ok.passed, "{:?}", ok.reasons);
        assert!((ok.achieved - 1000.0).abs() < 1e-9);
        let slow = judge(1000.0, 0.9, &run(3000, 2700, 0.2, 3.0), &load);
        assert!(
            slow.reasons.iter().any(|r| r.starts_with("p99")),
            "{:?}",
            slow.reasons
        );
        let short = judge(1000.0, 0.9, &run(2000, 1800, 0.002, 3.0), &load);
        assert!(short.reasons.iter().any(|r| r.starts_with("achieved")));
        // 95% of 200/s over 3 s is 570 transactions; Poisson arrivals may bring 530.
        assert!(judge(200.0, 0.9, &run(530, 477, 0.002, 3.0), &load).passed);
        assert!(!judge(200.0, 0.9, &run(480, 432, 0.002, 3.0), &load).passed);
        let mix = judge(1000.0, 0.9, &run(3000, 2400, 0.002, 3.0), &load);
        assert!(mix.reasons.iter().any(|r| r.starts_with("mix")));
        // A small step's random draw is allowed its standard error.
        assert!(judge(30.0, 0.9, &run(90, 76, 0.002, 3.0), &load).passed);
    }
}
