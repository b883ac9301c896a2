//! One run of the matrix on the local target: build every row, then for each repetition
//! and each row (interleaved) seed identical data, start the server pinned to its CPUs,
//! refuse to measure unless it reports the row's features, search each workload's max
//! QPS, check integrity; then measure the pgbench reference and write the results.
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::matrix::{Matrix, Row, Workload};
use crate::measure::{check_integrity, evaluate, Step};
use crate::oha::{Oha, Side};
use crate::pgbench::Pgbench;
use crate::results::*;
use crate::search::Search;
use crate::server::{self, Server};
use crate::{environment, pg, procfs, report};

pub struct Options {
    pub root: PathBuf,
    pub matrix_path: PathBuf,
    pub matrix: Matrix,
    pub quick: bool,
    pub out: PathBuf,
    pub readme: Option<PathBuf>,
    pub database_url: String,
    pub pg_data: Option<PathBuf>,
    pub oha: PathBuf,
}

struct Ctx<'a> {
    o: &'a Options,
    m: &'a Matrix,
    oha: Oha,
    raw: PathBuf,
    db: postgres::Client,
    postmaster: Option<u32>,
    started: Instant,
    measuring: Option<Instant>,
    searches_done: usize,
    searches_total: usize,
}

impl Ctx<'_> {
    fn progress(&self, what: &str) {
        let elapsed = self.started.elapsed().as_secs_f64();
        let measuring = self.measuring.map_or(0.0, |m| m.elapsed().as_secs_f64());
        let left = if self.searches_done > 0 {
            let per = measuring / self.searches_done as f64;
            format!(
                ", ~{:.0} min left",
                per * (self.searches_total - self.searches_done) as f64 / 60.0
            )
        } else {
            String::new()
        };
        eprintln!("[{:>5.1} min{left}] {what}", elapsed / 60.0);
        let _ = std::io::stderr().flush();
    }

    fn pg_ticks(&self) -> Option<u64> {
        self.postmaster.and_then(procfs::postgres_ticks)
    }
}

pub fn run(o: &Options) -> Result<Summary> {
    let m = &o.matrix;
    let stamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now())
        .to_string()
        .replace([':', '-'], "");
    let raw = o.out.join("results").join(&stamp);
    std::fs::create_dir_all(&raw).with_context(|| format!("creating {}", raw.display()))?;
    let started = Instant::now();
    eprintln!("==> results of this run go to {}", raw.display());

    // Build every row first: a build failure is reported, the run goes on.
    let bin_dir = o.root.join("target/lab-bin");
    let mut binaries: Vec<Result<PathBuf, String>> = Vec::new();
    for (i, row) in m.rows.iter().enumerate() {
        eprintln!(
            "==> building row {}/{} {:?} (features: {})",
            i + 1,
            m.rows.len(),
            row.name,
            row.features_label()
        );
        binaries.push(server::build(&o.root, row, &bin_dir).map_err(|e| format!("{e:#}")));
    }

    let mut db = pg::connect(&o.database_url)?;
    let postmaster = match &o.pg_data {
        Some(dir) => {
            let pid = pg::postmaster_pid(dir)?;
            pg::pin(pid, &m.local.postgres_cpus)?;
            Some(pid)
        }
        None => None,
    };
    let postgres_version = pg::server_version(&mut db);

    // Inputs for oha: every id once (oha picks a random line: uniform ids) and bodies.
    let port = free_port()?;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let urls_file = raw.join("urls.txt");
    let bodies_file = raw.join("bodies.txt");
    write_inputs(&urls_file, &bodies_file, addr, m.load.users)?;
    let oha = Oha {
        binary: o.oha.clone(),
        cpus: m.local.oha_cpus.clone(),
        urls_file: urls_file.clone(),
        bodies_file: bodies_file.clone(),
    };
    let oha_version = oha.version();

    let mut ctx = Ctx {
        o,
        m,
        oha,
        raw: raw.clone(),
        db,
        postmaster,
        started,
        measuring: None,
        searches_done: 0,
        searches_total: m.rows.len() * m.workloads.len() * m.load.repetitions as usize,
    };
    let mut rows: Vec<RowResult> = m
        .rows
        .iter()
        .map(|r| RowResult {
            name: r.name.clone(),
            features: r.features.clone(),
            index: r.index,
            note: r.note.clone(),
            failures: vec![],
            workloads: vec![],
        })
        .collect();
    for (row, bin) in rows.iter_mut().zip(&binaries) {
        if let Err(e) = bin {
            row.failures.push(format!("build failed: {e}"));
        }
    }
    let mut reference = Vec::new();
    let mut reference_error = None;

    ctx.measuring = Some(Instant::now());
    for rep in 1..=m.load.repetitions {
        for (i, row) in m.rows.iter().enumerate() {
            let Ok(binary) = &binaries[i] else {
                ctx.searches_done += m.workloads.len();
                continue;
            };
            if !rows[i].failures.is_empty() {
                ctx.searches_done += m.workloads.len();
                continue;
            }
            ctx.progress(&format!(
                "repetition {rep}/{}, row {}/{} {:?}",
                m.load.repetitions,
                i + 1,
                m.rows.len(),
                row.name
            ));
            match measure_row(&mut ctx, row, binary, addr, rep, &mut rows[i]) {
                Ok(()) => {}
                Err(e) => {
                    let msg = format!("repetition {rep}: {e:#}");
                    eprintln!("!!! row {:?} failed: {msg}", row.name);
                    rows[i].failures.push(msg);
                }
            }
        }
        match measure_reference(&mut ctx, rep) {
            Ok(mut r) => reference.append(&mut r),
            Err(e) => {
                eprintln!("!!! pgbench reference failed: {e:#}");
                reference_error = Some(format!("{e:#}"));
            }
        }
    }

    let env = Environment {
        date: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        git_commit: environment::git_commit(&o.root),
        target: "local".into(),
        cpu_model: environment::cpu_model(),
        cpus: environment::cpu_count(),
        memory_gib: environment::memory_gib(),
        kernel: environment::kernel(),
        rustc: environment::rustc(&o.root),
        postgres: postgres_version,
        oha: oha_version,
        pgbench: environment::pgbench(),
        users: m.load.users,
        quick: o.quick,
        matrix_file: o
            .matrix_path
            .file_name()
            .map_or("matrix.toml".into(), |f| f.to_string_lossy().to_string()),
        duration_secs: m.load.duration_secs,
        repetitions: m.load.repetitions,
        slo_p99_ms: m.load.slo_p99_ms,
        error_budget: m.load.error_budget,
        min_achieved: m.load.min_achieved,
        connections: m.load.connections,
        server_cpus: m.local.server_cpus.clone(),
        postgres_cpus: m.local.postgres_cpus.clone(),
        oha_cpus: m.local.oha_cpus.clone(),
        pool_size: m.local.pool_size,
        elapsed_secs: started.elapsed().as_secs_f64(),
    };
    let summary = Summary {
        environment: env,
        workloads: m.workloads.iter().map(|w| w.name.clone()).collect(),
        rows,
        reference,
        reference_error,
        matrix: serde_json::to_value(m)?,
    };
    write_outputs(o, &raw, &summary)?;
    // The per-step inputs are large and derived; the summary and oha's JSON stay.
    let _ = std::fs::remove_file(&urls_file);
    Ok(summary)
}

pub fn write_outputs(o: &Options, raw: &Path, summary: &Summary) -> Result<()> {
    std::fs::write(
        raw.join("summary.json"),
        serde_json::to_string_pretty(summary)?,
    )?;
    std::fs::write(o.out.join("results.md"), report::results_md(summary))?;
    std::fs::write(o.out.join("results.svg"), report::chart_svg(summary))?;
    if let Some(readme) = &o.readme {
        let text = std::fs::read_to_string(readme)
            .with_context(|| format!("reading {}", readme.display()))?;
        std::fs::write(readme, report::update_readme(&text, summary)?)?;
    }
    eprintln!(
        "==> wrote {}, {} and {}",
        o.out.join("results.md").display(),
        o.out.join("results.svg").display(),
        raw.join("summary.json").display()
    );
    Ok(())
}

fn measure_row(
    ctx: &mut Ctx,
    row: &Row,
    binary: &Path,
    addr: SocketAddr,
    rep: u32,
    out: &mut RowResult,
) -> Result<()> {
    let mut settings = ctx.m.postgres.clone();
    settings.extend(row.postgres.clone());
    pg::apply_settings(&mut ctx.db, &settings)?;
    let took = pg::seed(&mut ctx.db, ctx.m.load.users, row.index)?;
    ctx.progress(&format!(
        "  seeded {} users (index: {}) in {:.1} s",
        ctx.m.load.users,
        row.index,
        took.as_secs_f64()
    ));
    let log = ctx.raw.join(format!("rep{rep}-{}-server.log", row.slug()));
    let mut server = Server::start(
        binary,
        &ctx.m.local.server_cpus,
        addr,
        &ctx.o.database_url,
        ctx.m.local.pool_size,
        &log,
    )?;
    server.wait_ready(Duration::from_secs(30))?;
    let reported = server.features()?;
    if reported != row.features {
        bail!(
            "refusing to measure: /version reports features {:?}, the row asks for {:?}",
            reported,
            row.features
        );
    }
    for (wi, w) in ctx.m.workloads.iter().enumerate() {
        if out.workloads.len() <= wi {
            out.workloads.push(WorkloadResult {
                name: w.name.clone(),
                searches: vec![],
            });
        }
        let hint = out.workloads[wi]
            .searches
            .iter()
            .map(|s| s.qps)
            .filter(|q| *q > 0.0)
            .reduce(f64::max);
        let result = search(ctx, &server, row, w, rep, hint)?;
        out.workloads[wi].searches.push(result);
        ctx.searches_done += 1;
    }
    server.stop(Duration::from_secs(20))?;
    Ok(())
}

fn sides(w: &Workload, rate: f64, connections: u32) -> Vec<Side> {
    let mut v = Vec::new();
    let share = w.get_share();
    let conns = |s: f64| ((f64::from(connections) * s).round() as u32).max(8);
    if w.get_percent > 0 {
        v.push(Side {
            method: "GET",
            rate: rate * share,
            connections: conns(share),
        });
    }
    if w.patch_percent > 0 {
        v.push(Side {
            method: "PATCH",
            rate: rate * (1.0 - share),
            connections: conns(1.0 - share),
        });
    }
    v
}

fn search(
    ctx: &mut Ctx,
    server: &Server,
    row: &Row,
    w: &Workload,
    rep: u32,
    hint: Option<f64>,
) -> Result<SearchResult> {
    let l = &ctx.m.load;
    let metrics = row.features.iter().any(|f| f == "metrics");
    // Warm-up and probe: a closed-loop run (every connection busy) warms caches and
    // connections, and its throughput (an upper bound of what passes the SLO) seeds
    // the first repetition's search. Not measured.
    let mut hint = hint;
    if l.warmup_secs > 0.0 {
        let probe = ctx.oha.run(
            &sides(w, 0.0, l.connections),
            l.warmup_secs,
            &ctx.raw,
            "probe",
        )?;
        let good: u64 = probe.iter().map(|r| r.good()).sum();
        let rate = good as f64 / l.warmup_secs;
        ctx.progress(&format!(
            "  {} {} rep {rep} probe (closed loop): {rate:.0}/s good",
            row.name, w.name
        ));
        if hint.is_none() && rate >= crate::search::MIN_QPS {
            hint = Some(rate);
        }
    }
    let mut s = Search::new(l.start_qps, hint, l.max_qps, l.precision, l.max_steps);
    let mut steps: Vec<Step> = Vec::new();
    let mut integrity_failures = Vec::new();
    let mut writes_checked = 0;
    while let Some(rate) = s.next_rate() {
        let tag = format!("rep{rep}-{}-{}-step{}", row.slug(), w.name, steps.len() + 1);
        let step = measure_step(ctx, server, w, rate, metrics, &tag)?;
        if let Some(i) = &step.integrity {
            writes_checked += i.acked;
            if !i.ok {
                eprintln!("!!! INTEGRITY FAILURE at {tag}: {}", i.message);
                integrity_failures.push(format!("at {:.0} offered: {}", rate, i.message));
            }
        }
        ctx.progress(&format!(
            "  {} {} rep {rep} step {}: offered {:.0}/s → {:.0}/s good, p99 {} ms, mix {:.1}% GET, errors {:.2}% → {}",
            row.name,
            w.name,
            steps.len() + 1,
            rate,
            step.achieved,
            step.p99_ms.map_or("n/a".into(), |p| format!("{p:.1}")),
            step.get_share * 100.0,
            step.error_rate * 100.0,
            if step.passed { "pass".to_string() } else { format!("FAIL ({})", step.reasons.join("; ")) }
        ));
        s.record(rate, step.passed);
        steps.push(step);
    }
    std::fs::write(
        ctx.raw
            .join(format!("rep{rep}-{}-{}-steps.json", row.slug(), w.name)),
        serde_json::to_string_pretty(&steps)?,
    )?;
    let best = s
        .best()
        .and_then(|b| steps.iter().find(|st| st.passed && st.offered == b));
    let limit_step = match s.best() {
        Some(b) => steps
            .iter()
            .filter(|st| !st.passed && st.offered > b)
            .min_by(|a, c| a.offered.total_cmp(&c.offered)),
        None => steps
            .iter()
            .filter(|st| !st.passed)
            .min_by(|a, c| a.offered.total_cmp(&c.offered)),
    };
    let limit =
        limit_step.map(|st| format!("{} at {:.0}/s offered", st.reasons.join(", "), st.offered));
    let limit_cpu = limit_step.map(|st| (st.cpu.server, st.cpu.postgres, st.cpu.oha));
    Ok(SearchResult {
        repetition: rep,
        qps: best.map_or(0.0, |b| b.achieved),
        offered: best.map(|b| b.offered),
        p99_ms: best.and_then(|b| b.p99_ms),
        get_share: best.map(|b| b.get_share),
        cpu_server: best.and_then(|b| b.cpu.server),
        cpu_postgres: best.and_then(|b| b.cpu.postgres),
        cpu_oha: best.map(|b| b.cpu.oha),
        server_peak_rss_kib: best.and_then(|b| b.cpu.server_peak_rss_kib),
        limit,
        limit_cpu,
        steps: s.steps() as usize,
        integrity_failures,
        writes_checked,
    })
}

fn measure_step(
    ctx: &mut Ctx,
    server: &Server,
    w: &Workload,
    rate: f64,
    metrics: bool,
    tag: &str,
) -> Result<Step> {
    let l = &ctx.m.load;
    let plan = sides(w, rate, l.connections);
    let writes_before = if w.writes() {
        Some(pg::applied_writes(&mut ctx.db)?)
    } else {
        None
    };
    let served_before = if metrics {
        Some(server.served_counts()?)
    } else {
        None
    };
    let (srv0, pg0, oha0) = (
        procfs::process_ticks(server.pid),
        ctx.pg_ticks(),
        procfs::reaped_children_ticks(),
    );
    let t0 = Instant::now();
    let results = ctx.oha.run(&plan, l.duration_secs, &ctx.raw, tag)?;
    let wall = t0.elapsed().as_secs_f64();
    let (srv1, pg1, oha1) = (
        procfs::process_ticks(server.pid),
        ctx.pg_ticks(),
        procfs::reaped_children_ticks(),
    );
    for side in &plan {
        let _ = std::fs::remove_file(
            ctx.raw
                .join(format!("{tag}-{}.sqlite", side.method.to_lowercase())),
        );
    }
    let paired: Vec<(Side, crate::oha::SideResult)> = plan.into_iter().zip(results).collect();
    let mut step = evaluate(rate, l.duration_secs, w.get_share(), &paired, l);
    step.wall_secs = wall;
    // Every party's CPU over the same window: from just before oha starts to just after
    // it exits (oha's figure includes writing its per-request log after the load).
    let per_sec = |a: Option<u64>, b: Option<u64>| match (a, b) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a) as f64 / procfs::TICKS_PER_SEC / wall),
        _ => None,
    };
    step.cpu.server = per_sec(srv0, srv1);
    step.cpu.postgres = per_sec(pg0, pg1);
    step.cpu.oha = oha1.saturating_sub(oha0) as f64 / procfs::TICKS_PER_SEC / wall;
    step.cpu.server_peak_rss_kib = procfs::peak_rss_kib(server.pid);
    if let Some(before) = writes_before {
        let applied = pg::applied_writes(&mut ctx.db)? - before;
        let find = |m: &str| paired.iter().find(|(s, _)| s.method == m).map(|(_, r)| r);
        let (get, patch) = (find("GET"), find("PATCH"));
        let acked = patch.map_or(0, |p| p.count(200));
        let unacked = patch.map_or(0, |p| p.replies() - p.count(200) + p.transport_errors());
        let transport: u64 = paired.iter().map(|(_, r)| r.transport_errors()).sum();
        let served = match served_before {
            Some((g0, p0)) => {
                let (g1, p1) = server.served_counts()?;
                Some((g1 - g0, p1 - p0))
            }
            None => None,
        };
        step.integrity = Some(check_integrity(
            acked,
            unacked,
            applied,
            (get.map_or(0, |g| g.count(200)), acked),
            served,
            transport,
        ));
    }
    Ok(step)
}

fn measure_reference(ctx: &mut Ctx, rep: u32) -> Result<Vec<ReferenceResult>> {
    let m = ctx.m;
    pg::apply_settings(&mut ctx.db, &m.postgres)?;
    let mut out = Vec::new();
    for w in &m.workloads {
        pg::seed(&mut ctx.db, m.load.users, true)?;
        let bench = Pgbench {
            url: &ctx.o.database_url,
            cpus: &m.local.oha_cpus,
            clients: m.load.pgbench_clients,
            users: m.load.users,
        };
        let secs = (m.load.duration_secs.ceil() as u32).max(1);
        let (pg0, c0, t0) = (
            ctx.pg_ticks(),
            procfs::reaped_children_ticks(),
            Instant::now(),
        );
        let (tps, n, p99) =
            bench.run(w, secs, &ctx.raw, &format!("rep{rep}-pgbench-{}", w.name))?;
        let wall = t0.elapsed().as_secs_f64();
        let (pg1, c1) = (ctx.pg_ticks(), procfs::reaped_children_ticks());
        let cpu_pg = match (pg0, pg1) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a) as f64 / procfs::TICKS_PER_SEC / wall),
            _ => None,
        };
        ctx.progress(&format!(
            "  pgbench reference {} rep {rep}: {tps:.0} TPS ({n} transactions), p99 {} ms",
            w.name,
            p99.map_or("n/a".into(), |p| format!("{p:.1}"))
        ));
        out.push(ReferenceResult {
            workload: w.name.clone(),
            repetition: rep,
            tps,
            p99_ms: p99,
            clients: m.load.pgbench_clients,
            cpu_postgres: cpu_pg,
            cpu_pgbench: c1.saturating_sub(c0) as f64 / procfs::TICKS_PER_SEC / wall,
        });
    }
    Ok(out)
}

fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// Every id once (oha picks a random line per request, so ids are uniform) and a set
/// of distinct valid emails (oha picks a random body line per PATCH).
fn write_inputs(urls: &Path, bodies: &Path, addr: SocketAddr, users: i64) -> Result<()> {
    let mut u = std::io::BufWriter::new(std::fs::File::create(urls)?);
    for id in 1..=users {
        writeln!(u, "http://{addr}/users/{id}")?;
    }
    u.flush()?;
    let mut b = std::io::BufWriter::new(std::fs::File::create(bodies)?);
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for i in 0..10_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        writeln!(
            b,
            "{{\"email\":\"bench{i}.{:x}@example.com\"}}",
            x & 0xffff_ffff
        )?;
    }
    b.flush()?;
    Ok(())
}
