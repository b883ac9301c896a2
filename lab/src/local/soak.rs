//! The soak test (`scripts/soak.sh`, not in CI): one build at a share of its capacity
//! for a long time. It reports, per interval, what was offered and served, the errors,
//! p99 and the server's memory and CPU, and at the end checks every written id: each
//! acknowledged PATCH is stored, and no id holds more writes than its PATCHes could
//! explain.
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use super::server::{self, Server};
use super::{pg, ports, LocalProbe};
use crate::environment;
use crate::matrix::{Matrix, Row, Workload};
use crate::measure::driver::{sides, write_inputs, Driver, Tally};
use crate::measure::ids::{check_ids, IdCheck, PatchOutcomes};
use crate::measure::oha::{self, Method, Oha};
use crate::measure::{evaluate, procfs};

pub struct Options {
    pub root: PathBuf,
    pub matrix: Matrix,
    /// The row to soak (name or file name); default: the one with the most features.
    pub row: Option<String>,
    /// The workload (name); default: the matrix's first.
    pub workload: Option<String>,
    pub duration: Duration,
    pub interval: Duration,
    /// Share of the capacity to offer.
    pub share: f64,
    /// Offer this rate instead of searching the capacity first.
    pub rate: Option<f64>,
    pub database_url: String,
    pub pg_data: Option<PathBuf>,
    pub oha: PathBuf,
    pub out: PathBuf,
}

/// One interval of the soak.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// Seconds since the soak began, at the end of the interval.
    pub t_secs: f64,
    pub achieved: f64,
    pub requests: u64,
    /// Non-2xx replies and transport errors.
    pub errors: u64,
    pub p99_ms: Option<f64>,
    /// The server's resident memory at the end of the interval.
    pub rss_kib: Option<u64>,
    pub server_cpu: Option<f64>,
    pub postgres_cpu: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub date: String,
    pub git_commit: String,
    pub cpu_model: String,
    pub row: String,
    pub features: Vec<String>,
    pub workload: String,
    /// The capacity the rate was derived from, and how it was found.
    pub capacity: Option<f64>,
    pub capacity_source: String,
    pub rate: f64,
    pub interval_secs: f64,
    pub duration_secs: f64,
    pub samples: Vec<Sample>,
    pub requests: u64,
    pub errors: u64,
    pub ids: IdCheck,
    pub server_peak_rss_kib: Option<u64>,
    pub passed: bool,
    pub verdicts: Vec<String>,
}

/// The named row, or the one with the most features; never an external row (the soak
/// builds and runs our server).
fn pick_row<'a>(m: &'a Matrix, name: Option<&str>) -> Result<&'a Row> {
    let ours = m.rows.iter().filter(|r| r.external.is_none());
    match name {
        Some(n) => {
            let row = m
                .rows
                .iter()
                .find(|r| r.name == n || r.slug() == n)
                .with_context(|| format!("no row {n:?} in the matrix"))?;
            anyhow::ensure!(
                row.external.is_none(),
                "row {n:?} is external: the soak runs our server only"
            );
            Ok(row)
        }
        None => ours
            .max_by_key(|r| r.features.len())
            .context("the matrix has no row of our server"),
    }
}

fn pick_workload<'a>(m: &'a Matrix, name: Option<&str>) -> Result<&'a Workload> {
    match name {
        Some(n) => m
            .workloads
            .iter()
            .find(|w| w.name == n)
            .with_context(|| format!("no workload {n:?} in the matrix")),
        None => m.workloads.first().context("the matrix has no workloads"),
    }
}

/// Current resident memory (VmRSS) in KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

pub fn run(o: &Options) -> Result<Report> {
    let m = &o.matrix;
    let row = pick_row(m, o.row.as_deref())?;
    let w = pick_workload(m, o.workload.as_deref())?;
    if !(o.share > 0.0 && o.share <= 1.0) {
        bail!("--share must be in (0, 1], not {}", o.share);
    }
    if o.interval.is_zero() || o.duration < o.interval {
        bail!("--interval must be positive and at most --duration");
    }
    std::fs::create_dir_all(&o.out).with_context(|| format!("creating {}", o.out.display()))?;
    // The commit the binary is built from: read now, not after a long soak.
    let commit = environment::git_commit(&o.root);
    eprintln!(
        "==> soak: row {:?} (features: {}), workload {}, for {}",
        row.name,
        row.features_label(),
        w.name,
        humantime::format_duration(o.duration)
    );
    let binary = server::build(&o.root, row, &o.root.join("target/lab-bin"))?;

    let mut db = pg::connect(&o.database_url)?;
    let postmaster = match &o.pg_data {
        Some(dir) => {
            let pid = pg::postmaster_pid(dir)?;
            pg::pin(pid, &m.local.postgres_cpus)?;
            Some(pid)
        }
        None => None,
    };
    pg::apply_settings(&mut db, &crate::experiment::settings_for(m, row))?;
    let (app_url, _) = super::seed_for(&mut db, &o.database_url, m.load.users, row)?;

    let addr: SocketAddr = format!("127.0.0.1:{}", ports::free_port()?).parse()?;
    let (urls, bodies) = (o.out.join("urls.txt"), o.out.join("bodies.txt"));
    write_inputs(&urls, &bodies, &format!("http://{addr}"), m.load.users)?;
    let oha = Oha {
        binary: o.oha.clone(),
        nice: None,
        cpus: Some(m.local.oha_cpus.clone()),
        urls_file: urls.clone(),
        bodies_file: bodies.clone(),
    };
    let log = o.out.join("server.log");
    let mut server = Server::start(
        &binary,
        &super::server::Launch::of(
            row,
            &m.local.server_cpus,
            addr,
            &app_url,
            m.local.pool_size,
            &log,
        ),
    )?;
    super::ready_and_checked(&mut server, row, m.load.users)?;

    let (capacity, capacity_source, rate) = match o.rate {
        Some(r) => (None, "given with --rate".to_string(), r),
        None => {
            let progress = |s: &str| eprintln!("{s}");
            let driver = Driver::new(&oha, &m.load, &o.out, &progress);
            let mut probe = LocalProbe {
                server: &server,
                db: &mut db,
                postmaster,
                pg_dir: o.pg_data.clone(),
                profile_to: None,
                recording: None,
                writes_to_postgres: row.writes_to_postgres(),
            };
            let found = driver.search(&mut probe, row, w, 1, None, &mut Tally::default())?;
            if found.qps <= 0.0 {
                bail!("no rate passed the search: nothing to soak at");
            }
            let source = format!(
                "one search on this machine just before the soak ({} steps of {} s)",
                found.steps, m.load.duration_secs
            );
            (Some(found.qps), source, found.qps * o.share)
        }
    };
    eprintln!("==> soaking at {rate:.0}/s");

    let before = pg::versions(&mut db)?;
    let report = soak(o, m, w, &oha, &server, postmaster, rate)?;
    let after = pg::versions(&mut db)?;
    server.stop(Duration::from_secs(20))?;
    for f in [&urls, &bodies] {
        let _ = std::fs::remove_file(f);
    }
    let (samples, patches) = report;
    let ids = check_ids(&before, &after, &patches);
    let mut report = finish(
        o,
        row,
        w,
        capacity,
        capacity_source,
        rate,
        samples,
        ids,
        &server,
    );
    report.git_commit = commit;
    Ok(report)
}

/// The load itself: one oha run per interval, until the duration is spent.
fn soak(
    o: &Options,
    m: &Matrix,
    w: &Workload,
    oha: &Oha,
    server: &Server,
    postmaster: Option<u32>,
    rate: f64,
) -> Result<(Vec<Sample>, PatchOutcomes)> {
    let plan = sides(w, rate, m.load.connections, m.load.slo_p99_ms);
    let secs = o.interval.as_secs_f64();
    let began = Instant::now();
    let (mut samples, mut patches) = (Vec::new(), PatchOutcomes::default());
    let mut n = 0;
    while began.elapsed() + o.interval <= o.duration + Duration::from_secs(1) {
        n += 1;
        let tag = format!("soak{n:04}");
        // Counted as the matrix counts them: the server's whole process tree, all of
        // PostgreSQL's processes.
        let server_ticks = |pid| procfs::tree_split(pid).map(|s| s.user + s.system);
        let (s0, p0, t0) = (
            server_ticks(server.pid),
            postmaster.and_then(procfs::postgres_ticks),
            Instant::now(),
        );
        let results = oha.run(&plan, secs, &o.out, &tag)?;
        let wall = t0.elapsed().as_secs_f64();
        let per_sec = |a: Option<u64>, b: Option<u64>| {
            Some(b?.saturating_sub(a?) as f64 / procfs::TICKS_PER_SEC / wall)
        };
        let server_cpu = per_sec(s0, server_ticks(server.pid));
        let postgres_cpu = per_sec(p0, postmaster.and_then(procfs::postgres_ticks));
        for side in &plan {
            let db = oha::db_path(&o.out, &tag, side.method);
            if side.method == Method::Patch {
                for (url, status) in oha::read_outcomes(&db)? {
                    patches.record(&url, status)?;
                }
            }
            let _ = std::fs::remove_file(&db);
        }
        let paired: Vec<_> = plan.iter().cloned().zip(results).collect();
        patches.transport_errors += paired
            .iter()
            .filter(|(s, _)| s.method == Method::Patch)
            .map(|(_, r)| r.transport_errors())
            .sum::<u64>();
        let step = evaluate(rate, secs, w.get_share(), &paired, &m.load);
        let requests: u64 = paired
            .iter()
            .map(|(_, r)| r.replies() + r.transport_errors())
            .sum();
        let sample = Sample {
            t_secs: began.elapsed().as_secs_f64(),
            achieved: step.achieved,
            requests,
            errors: (step.error_rate * requests as f64).round() as u64,
            p99_ms: step.p99_ms,
            rss_kib: rss_kib(server.pid),
            server_cpu,
            postgres_cpu,
        };
        eprintln!(
            "  {:>6.0} s: {:.0}/s good, {} errors, p99 {} ms, RSS {} MiB",
            sample.t_secs,
            sample.achieved,
            sample.errors,
            sample.p99_ms.map_or("n/a".into(), |p| format!("{p:.1}")),
            sample
                .rss_kib
                .map_or("n/a".into(), |k| format!("{:.1}", k as f64 / 1024.0))
        );
        samples.push(sample);
    }
    Ok((samples, patches))
}

#[allow(clippy::too_many_arguments)]
fn finish(
    o: &Options,
    row: &Row,
    w: &Workload,
    capacity: Option<f64>,
    capacity_source: String,
    rate: f64,
    samples: Vec<Sample>,
    ids: IdCheck,
    server: &Server,
) -> Report {
    let requests: u64 = samples.iter().map(|s| s.requests).sum();
    let errors: u64 = samples.iter().map(|s| s.errors).sum();
    let mut verdicts = Vec::new();
    let error_budget = o.matrix.load.error_budget;
    let errors_ok = requests > 0 && (errors as f64) <= error_budget * requests as f64;
    verdicts.push(format!(
        "errors: {errors} of {requests} requests ({:.3}%, budget {:.2}%): {}",
        100.0 * errors as f64 / requests.max(1) as f64,
        error_budget * 100.0,
        if errors_ok { "ok" } else { "FAIL" }
    ));
    let (memory_ok, memory) = memory_verdict(&samples);
    verdicts.push(memory);
    verdicts.push(format!(
        "writes, per id: {} ids written, {} PATCHes acknowledged, {} answered otherwise, {} without a reply; \
         {} versions applied; {} ids lost an acknowledged write; {} writes unexplained (at most {} allowed): {}",
        ids.ids_written,
        ids.acked,
        ids.other_replies,
        ids.transport_errors,
        ids.applied,
        ids.lost.len(),
        ids.unexplained,
        ids.transport_errors,
        if ids.ok { "ok" } else { "FAIL" }
    ));
    Report {
        date: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        git_commit: environment::git_commit(&o.root),
        cpu_model: environment::cpu_model(),
        row: row.name.clone(),
        features: row.features.clone(),
        workload: w.name.clone(),
        capacity,
        capacity_source,
        rate,
        interval_secs: o.interval.as_secs_f64(),
        duration_secs: o.duration.as_secs_f64(),
        requests,
        errors,
        server_peak_rss_kib: procfs::peak_rss_kib(server.pid),
        passed: errors_ok && memory_ok && ids.ok,
        ids,
        samples,
        verdicts,
    }
}

/// Memory is bounded when the RSS of the last quarter of the soak stays within 10% (and
/// at least 4 MiB) of the highest RSS of its first quarter, once warm.
fn memory_verdict(samples: &[Sample]) -> (bool, String) {
    let rss: Vec<u64> = samples.iter().filter_map(|s| s.rss_kib).collect();
    if rss.len() < 4 {
        return (true, "memory: too few samples to judge growth".into());
    }
    let q = rss.len() / 4;
    let early = rss[..q].iter().copied().max().unwrap_or(0);
    let late = rss[rss.len() - q..].iter().copied().max().unwrap_or(0);
    let bound = early + (early / 10).max(4 * 1024);
    let ok = late <= bound;
    (
        ok,
        format!(
            "memory: RSS {:.1} MiB at most in the first quarter, {:.1} MiB at most in the last (bound {:.1}): {}",
            early as f64 / 1024.0,
            late as f64 / 1024.0,
            bound as f64 / 1024.0,
            if ok { "bounded" } else { "GREW" }
        ),
    )
}

/// The report as markdown (README's soak section is this, pasted).
pub fn markdown(r: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Soak of `{}` (features: {}), {} workload, at {:.0}/s for {:.0} s, {} at {} on {}.\n",
        r.row,
        r.features.join(", "),
        r.workload,
        r.rate,
        r.duration_secs,
        r.git_commit,
        r.date,
        r.cpu_model
    );
    match r.capacity {
        Some(c) => {
            let _ = writeln!(
                s,
                "Capacity {c:.0}/s from {}; the soak offered {:.0}% of it.\n",
                r.capacity_source,
                100.0 * r.rate / c
            );
        }
        None => {
            let _ = writeln!(s, "Rate {}.\n", r.capacity_source);
        }
    }
    let _ = writeln!(
        s,
        "| t (s) | good/s | requests | errors | p99 (ms) | server RSS (MiB) | server CPU | PostgreSQL CPU |"
    );
    let _ = writeln!(s, "|---:|---:|---:|---:|---:|---:|---:|---:|");
    let opt = |v: Option<f64>, d: usize| v.map_or("n/a".to_string(), |x| format!("{x:.d$}"));
    for x in &r.samples {
        let _ = writeln!(
            s,
            "| {:.0} | {:.0} | {} | {} | {} | {} | {} | {} |",
            x.t_secs,
            x.achieved,
            x.requests,
            x.errors,
            opt(x.p99_ms, 1),
            opt(x.rss_kib.map(|k| k as f64 / 1024.0), 1),
            opt(x.server_cpu, 2),
            opt(x.postgres_cpu, 2)
        );
    }
    let _ = writeln!(s);
    for v in &r.verdicts {
        let _ = writeln!(s, "- {v}");
    }
    let _ = writeln!(
        s,
        "\n**{}**",
        if r.passed {
            "Soak passed."
        } else {
            "Soak FAILED."
        }
    );
    s
}

pub fn write(out: &Path, r: &Report) -> Result<()> {
    std::fs::write(out.join("soak.json"), serde_json::to_string_pretty(r)?)?;
    std::fs::write(out.join("soak.md"), markdown(r))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_that_keeps_growing_is_reported() {
        let sample = |rss| Sample {
            t_secs: 0.0,
            achieved: 0.0,
            requests: 0,
            errors: 0,
            p99_ms: None,
            rss_kib: Some(rss),
            server_cpu: None,
            postgres_cpu: None,
        };
        let flat: Vec<_> = [
            20_000, 21_000, 21_000, 20_500, 21_000, 21_200, 21_000, 21_100,
        ]
        .map(sample)
        .to_vec();
        assert!(memory_verdict(&flat).0);
        let growing: Vec<_> = (0..8).map(|i| sample(20_000 + i * 10_000)).collect();
        assert!(!memory_verdict(&growing).0);
    }
}
