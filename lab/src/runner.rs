//! One run of the matrix on the local target: build every row, then for each repetition
//! and each row (interleaved) seed identical data, start the server pinned to its CPUs,
//! refuse to measure unless it reports the row's features, search each workload's max
//! QPS, check integrity; then measure the pgbench reference and write the results.
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::driver::{write_inputs, Driver, Probe, Tally, Ticks};
use crate::matrix::{Matrix, Row};
use crate::oha::Oha;
use crate::pgbench::Pgbench;
use crate::results::*;
use crate::server::{self, Scrape, Server};
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
    clock: Clock,
}

/// Progress lines with elapsed time and an estimate of what is left.
struct Clock {
    started: Instant,
    measuring: Option<Instant>,
    searches_done: usize,
    searches_total: usize,
}

impl Clock {
    fn say(&self, what: &str) {
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
}

impl Ctx<'_> {
    fn pg_ticks(&self) -> Option<u64> {
        self.postmaster.and_then(procfs::postgres_ticks)
    }
}

/// On this machine everything is visible: the server's and PostgreSQL's processes, and
/// the database itself.
pub(crate) struct LocalProbe<'a> {
    pub server: &'a Server,
    pub db: &'a mut postgres::Client,
    pub postmaster: Option<u32>,
}

impl Probe for LocalProbe<'_> {
    fn ticks(&mut self) -> Ticks {
        Ticks {
            server: procfs::process_ticks(self.server.pid),
            postgres: self.postmaster.and_then(procfs::postgres_ticks),
        }
    }
    fn server_peak_rss_kib(&mut self) -> Option<u64> {
        procfs::peak_rss_kib(self.server.pid)
    }
    fn applied_writes(&mut self) -> Result<Option<i64>> {
        pg::applied_writes(self.db).map(Some)
    }
    fn scrape(&mut self) -> Result<Option<Scrape>> {
        self.server.remote.scrape().map(Some)
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
    let port = crate::ports::free_port()?;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let urls_file = raw.join("urls.txt");
    let bodies_file = raw.join("bodies.txt");
    write_inputs(
        &urls_file,
        &bodies_file,
        &format!("http://{addr}"),
        m.load.users,
    )?;
    let oha = Oha {
        binary: o.oha.clone(),
        cpus: Some(m.local.oha_cpus.clone()),
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
        clock: Clock {
            started,
            measuring: None,
            searches_done: 0,
            searches_total: m.rows.len() * m.workloads.len() * m.load.repetitions as usize,
        },
    };
    let mut rows: Vec<RowResult> = m.rows.iter().map(RowResult::new).collect();
    for (row, bin) in rows.iter_mut().zip(&binaries) {
        if let Err(e) = bin {
            row.failures.push(format!("build failed: {e}"));
        }
    }
    let mut reference = Vec::new();
    let mut reference_error = None;

    ctx.clock.measuring = Some(Instant::now());
    for rep in 1..=m.load.repetitions {
        for (i, row) in m.rows.iter().enumerate() {
            let Ok(binary) = &binaries[i] else {
                ctx.clock.searches_done += m.workloads.len();
                continue;
            };
            if !rows[i].failures.is_empty() {
                ctx.clock.searches_done += m.workloads.len();
                continue;
            }
            ctx.clock.say(&format!(
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
    write_outputs(&o.out, o.readme.as_deref(), &raw, &summary)?;
    // The per-step inputs are large and derived; the summary and oha's JSON stay.
    let _ = std::fs::remove_file(&urls_file);
    Ok(summary)
}

pub fn write_outputs(
    out: &Path,
    readme: Option<&Path>,
    raw: &Path,
    summary: &Summary,
) -> Result<()> {
    std::fs::write(
        raw.join("summary.json"),
        serde_json::to_string_pretty(summary)?,
    )?;
    std::fs::write(out.join("results.md"), report::results_md(summary))?;
    std::fs::write(out.join("results.svg"), report::chart_svg(summary))?;
    if let Some(readme) = readme {
        let text = std::fs::read_to_string(readme)
            .with_context(|| format!("reading {}", readme.display()))?;
        std::fs::write(readme, report::update_readme(&text, summary)?)?;
    }
    eprintln!(
        "==> wrote {}, {} and {}",
        out.join("results.md").display(),
        out.join("results.svg").display(),
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
    ctx.clock.say(&format!(
        "  seeded {} users (index: {}) in {:.1} s",
        ctx.m.load.users,
        row.index,
        took.as_secs_f64()
    ));
    // The server under test connects as the least-privileged role the seed granted,
    // never as the superuser.
    let app_url = pg::app_login(&mut ctx.db, &ctx.o.database_url)?;
    let log = ctx.raw.join(format!("rep{rep}-{}-server.log", row.slug()));
    let mut server = Server::start(
        binary,
        &ctx.m.local.server_cpus,
        addr,
        &app_url,
        ctx.m.local.pool_size,
        &log,
    )?;
    server.wait_ready(Duration::from_secs(30))?;
    let reported = server.remote.features()?;
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
        let progress = |m: &str| ctx.clock.say(m);
        let driver = Driver {
            oha: &ctx.oha,
            load: &ctx.m.load,
            raw: &ctx.raw,
            progress: &progress,
        };
        let mut probe = LocalProbe {
            server: &server,
            db: &mut ctx.db,
            postmaster: ctx.postmaster,
        };
        let result = driver.search(&mut probe, row, w, rep, hint, &mut Tally::default())?;
        out.workloads[wi].searches.push(result);
        ctx.clock.searches_done += 1;
    }
    server.stop(Duration::from_secs(20))?;
    Ok(())
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
        ctx.clock.say(&format!(
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
