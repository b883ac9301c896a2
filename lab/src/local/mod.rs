//! The local target: this machine. Every row's server is built once; for each row run
//! identical data is seeded, the server starts pinned to its CPUs as the app's role,
//! and each workload is searched with oha on its own CPUs; after each repetition,
//! pgbench measures PostgreSQL's own ceiling. Everything is visible here: the server's
//! and PostgreSQL's processes, and the database.
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;

use crate::experiment::{RowRun, Software, Target};
use crate::matrix::{Matrix, Row};
use crate::measure::driver::{write_inputs, Driver, Probe, Tally, Ticks};
use crate::measure::oha::Oha;
use crate::measure::remote::Scrape;
use crate::measure::{contract, procfs};
use crate::results::{Host, ReferenceResult, SearchResult};

pub mod blocks;
pub mod cgroup;
pub mod cluster;
pub mod pg;
pub mod pgbench;
pub mod ports;
pub mod profile;
pub mod sandbox;
pub mod server;
pub mod soak;

use pgbench::Pgbench;
use server::Server;

/// Seeds `db` for `row` and gives the app's role a fresh password: the URL the row's
/// server connects with (the least-privileged role the seed granted, never the
/// superuser), and how long the seed took. `run` and `soak` prepare a row this way.
pub(crate) fn seed_for(
    db: &mut postgres::Client,
    database_url: &str,
    users: i64,
    row: &Row,
) -> Result<(String, Duration)> {
    let took = pg::seed(db, users, row.index)?;
    let app_url = pg::app_login(db, database_url)?;
    Ok((app_url, took))
}

/// Waits for a started server and checks the API's contract (and a build's features)
/// before anything is measured: `run` and `soak` accept a server this way.
pub(crate) fn ready_and_checked(server: &mut Server, row: &Row, users: i64) -> Result<()> {
    server.wait_ready(Duration::from_secs(30))?;
    contract::check_server(&server.remote, row, users)
}

/// What the local target needs beyond the experiment.
pub struct Options {
    pub root: PathBuf,
    /// A superuser URL of the PostgreSQL to use.
    pub database_url: String,
    /// What the run may do to the server's settings (ALTER SYSTEM): anything in the
    /// script's own cluster; in yours, the matrix's names with --allow-settings, else
    /// nothing.
    pub settings: pg::SettingsScope,
    /// The blocks' databases are `<prefix>_blocks` and `<prefix>_blocks_noindex`.
    pub db_prefix: String,
    /// The data directory of a cluster on this machine: pins it and counts its CPU.
    pub pg_data: Option<PathBuf>,
    pub oha: PathBuf,
    /// Profile the server at the common rate (`--profile`).
    pub profile: bool,
    /// A smoke run (`--quick`): one short block.
    pub quick: bool,
}

pub struct Local<'a> {
    o: &'a Options,
    m: &'a Matrix,
    binaries: Vec<Option<PathBuf>>,
    ready: Option<Ready>,
}

/// What `prepare` sets up once the builds are done.
struct Ready {
    /// PostgreSQL's CPU weight, where rows set their pods' resources (kept for the run).
    _postgres_weight: Option<cgroup::PodGroup>,
    /// The rows' own clusters and where their settings go.
    clusters: cluster::Clusters,
    db: postgres::Client,
    postmaster: Option<u32>,
    postgres_version: String,
    oha: Oha,
    addr: SocketAddr,
}

/// On this machine everything is visible: the server's and PostgreSQL's processes, and
/// the database itself.
pub(crate) struct LocalProbe<'a> {
    pub server: &'a Server,
    pub db: &'a mut postgres::Client,
    pub postmaster: Option<u32>,
    /// The cluster's data directory, where it is on this machine.
    pub pg_dir: Option<PathBuf>,
    /// Where flame graphs go, when the run profiles the server (`--profile`).
    pub profile_to: Option<PathBuf>,
    pub recording: Option<profile::Recording>,
    /// False for the `memory-store` reference: its PATCHes never reach PostgreSQL, so
    /// there are no versions or emails to check there.
    pub writes_to_postgres: bool,
}

impl Probe for LocalProbe<'_> {
    fn ticks(&mut self) -> Ticks {
        // The server's whole process tree: an external one may fork workers.
        let server_split = procfs::tree_split(self.server.pid);
        Ticks {
            server: server_split.map(|s| s.user + s.system),
            postgres: self.postmaster.and_then(procfs::postgres_ticks),
            server_split,
        }
    }
    fn server_peak_rss_kib(&mut self) -> Option<u64> {
        procfs::peak_rss_kib(self.server.pid)
    }
    fn applied_writes(&mut self) -> Result<Option<i64>> {
        if !self.writes_to_postgres {
            return Ok(None);
        }
        pg::applied_writes(self.db).map(Some)
    }
    fn scrape(&mut self) -> Result<Option<Scrape>> {
        self.server.remote.scrape().map(Some)
    }
    fn versions(&mut self) -> Result<Option<std::collections::HashMap<i64, i64>>> {
        if !self.writes_to_postgres {
            return Ok(None);
        }
        pg::versions(self.db).map(Some)
    }
    /// Best effort, like `background`: on the CPUs this process may use.
    fn machine_speed(&mut self) -> Result<crate::measure::calibrate::Machine> {
        use crate::measure::calibrate;
        let mut m = calibrate::Machine::default();
        match calibrate::per_cpu(&calibrate::allowed_cpus()) {
            Ok(v) => (m.alu_ns_per_thousand, m.memory_ns_per_read) = v.into_iter().unzip(),
            Err(e) => {
                eprintln!("warning: the machine's speed could not be timed ({e:#}); not recorded")
            }
        }
        // Where a throwaway cluster keeps its data: the same disk as its WAL.
        let dir = self.pg_dir.clone().unwrap_or_else(std::env::temp_dir);
        match calibrate::fsync_us(&dir) {
            Ok(us) => m.fsync_us = Some(us),
            Err(e) => eprintln!(
                "warning: the disk's write latency could not be timed ({e:#}); not recorded"
            ),
        }
        Ok(m)
    }
    fn cpu_times(&mut self) -> Vec<(u64, u64)> {
        procfs::cpu_times()
    }
    fn settle(&mut self) -> Result<()> {
        pg::settle(self.db)
    }
    /// Best effort: the counters only inform, so a server whose statistics views
    /// differ records none rather than failing the step.
    fn background(&mut self) -> Result<Option<crate::measure::driver::Background>> {
        match pg::background(self.db) {
            Ok(b) => Ok(Some(b)),
            Err(e) => {
                eprintln!("warning: PostgreSQL's checkpoint and autovacuum counters are unreadable ({e:#}); not recorded");
                Ok(None)
            }
        }
    }
    fn emails(&mut self, ids: &[i64]) -> Result<Option<std::collections::HashMap<i64, String>>> {
        if !self.writes_to_postgres {
            return Ok(None);
        }
        pg::emails(self.db, ids).map(Some)
    }
    fn profiles(&self) -> bool {
        self.profile_to.is_some()
    }
    /// Best effort: a profile that cannot be recorded is reported and left out.
    fn profile_start(&mut self, tag: &str, secs: f64, title: &str) -> Result<()> {
        let Some(raw) = &self.profile_to else {
            return Ok(());
        };
        match profile::start(self.server.pid, secs, raw, tag, title) {
            Ok(r) => self.recording = Some(r),
            Err(e) => eprintln!("warning: the server could not be profiled ({e:#})"),
        }
        Ok(())
    }
    fn profile_finish(&mut self, requests: u64) -> Result<Option<crate::results::ServerProfile>> {
        let Some(recording) = self.recording.take() else {
            return Ok(None);
        };
        match recording.finish(requests) {
            Ok(mut p) => {
                // Relative to results.md, which sits two folders above the run's.
                if let Some(run) = self.profile_to.as_deref().and_then(Path::file_name) {
                    p.flame_graph = format!("results/{}/{}", run.to_string_lossy(), p.flame_graph);
                }
                Ok(Some(p))
            }
            Err(e) => {
                eprintln!("warning: the server's profile was lost ({e:#})");
                Ok(None)
            }
        }
    }
}

impl<'a> Local<'a> {
    pub fn new(o: &'a Options, m: &'a Matrix) -> Self {
        Self {
            o,
            m,
            binaries: Vec::new(),
            ready: None,
        }
    }

    fn ready(&mut self) -> Result<&mut Ready> {
        self.ready
            .as_mut()
            .ok_or_else(|| anyhow::anyhow!("the local target was not prepared"))
    }
}

impl Target for Local<'_> {
    /// Builds every row's server first (a failed build fails its row only), then
    /// connects to PostgreSQL, pins it, and writes oha's inputs.
    fn prepare(&mut self, rows: &[Row], raw: &Path) -> Result<Vec<Option<String>>> {
        // The rows' PostgreSQL settings are checked before anything is built or started.
        let mut db = pg::connect(&self.o.database_url)?;
        let own = self.o.settings == pg::SettingsScope::All;
        let splits = cluster::split_rows(&mut db, rows, own)?;
        let bin_dir = self.o.root.join("target/lab-bin");
        let mut why = Vec::new();
        for (i, row) in rows.iter().enumerate() {
            if let Some(external) = &row.external {
                // Nothing to build: its program must be there.
                self.binaries.push(None);
                why.push(
                    server::external_program(&self.o.root, external)
                        .err()
                        .map(|e| format!("{e:#}")),
                );
                continue;
            }
            eprintln!(
                "==> building row {}/{} {:?} (features: {})",
                i + 1,
                rows.len(),
                row.name,
                row.features_label()
            );
            match server::build(&self.o.root, row, &bin_dir) {
                Ok(b) => {
                    // A value the server refuses is the matrix's error: nothing starts.
                    server::check_config(&b, row)?;
                    self.binaries.push(Some(b));
                    why.push(None);
                }
                Err(e) => {
                    self.binaries.push(None);
                    why.push(Some(format!("build failed: {e:#}")));
                }
            }
        }
        let clusters = cluster::Clusters::start(self.o.pg_data.as_deref(), self.m, splits)?;
        for c in &clusters.list {
            pg::pin(c.postmaster, &self.m.local.postgres_cpus)?;
        }
        let postmaster = match &self.o.pg_data {
            Some(dir) => {
                let pid = pg::postmaster_pid(dir)?;
                pg::pin(pid, &self.m.local.postgres_cpus)?;
                Some(pid)
            }
            None => None,
        };
        // Pods weigh their CPU request against PostgreSQL's group (see PodGroup::postgres).
        let postgres_weight = if rows.iter().any(|r| r.resources.is_some()) {
            let postmasters: Vec<u32> = postmaster
                .into_iter()
                .chain(clusters.list.iter().map(|c| c.postmaster))
                .collect();
            Some(cgroup::PodGroup::postgres(&postmasters)?)
        } else {
            None
        };
        let postgres_version = pg::server_version(&mut db);
        // Inputs for oha: every id once (oha picks a random line: uniform ids) and bodies.
        let addr: SocketAddr = format!("127.0.0.1:{}", ports::free_port()?).parse()?;
        let oha = Oha {
            binary: self.o.oha.clone(),
            nice: None,
            cpus: Some(self.m.local.oha_cpus.clone()),
            urls_file: raw.join("urls.txt"),
            bodies_file: raw.join("bodies.txt"),
        };
        write_inputs(
            &oha.urls_file,
            &oha.bodies_file,
            &format!("http://{addr}"),
            self.m.load.users,
        )?;
        self.ready = Some(Ready {
            _postgres_weight: postgres_weight,
            clusters,
            db,
            postmaster,
            postgres_version,
            oha,
            addr,
        });
        Ok(why)
    }

    fn measure(&mut self, run: &RowRun) -> Result<Vec<(String, SearchResult)>> {
        let (m, database_url) = (self.m, self.o.database_url.clone());
        let binary = self
            .m
            .rows
            .iter()
            .position(|r| r == run.row)
            .and_then(|i| self.binaries.get(i).cloned().flatten());
        let root = self.o.root.clone();
        let pg_dir = self.o.pg_data.clone();
        let profile_to = self.o.profile.then(|| run.raw.to_path_buf());
        let scope = self.o.settings.clone();
        let r = self.ready()?;
        // A row with server settings is measured in its own cluster; session settings
        // are the server's for the row's search (reset for the next row).
        // In a cluster of the row's own, its server settings are in postgresql.conf:
        // the run's ALTER SYSTEM must not override them.
        let server = r.clusters.server(run.row);
        let mut settings: std::collections::BTreeMap<String, String> = m
            .postgres
            .iter()
            .filter(|(k, _)| !server.contains_key(*k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        settings.extend(r.clusters.session(run.row));
        let own = r
            .clusters
            .of(run.row)
            .map(|c| (c.url.clone(), c.postmaster, c.data.clone()));
        let mut own_db = match &own {
            Some((url, _, _)) => Some(pg::connect(url)?),
            None => None,
        };
        let (database_url, postmaster, pg_dir) = match own {
            Some((url, pid, data)) => (url, Some(pid), Some(data)),
            None => (database_url, r.postmaster, pg_dir),
        };
        let db = own_db.as_mut().unwrap_or(&mut r.db);
        scope.apply(db, &settings)?;
        let (app_url, took) = seed_for(db, &database_url, m.load.users, run.row)?;
        (run.say)(&format!(
            "  seeded {} users (index: {}) in {:.1} s",
            m.load.users,
            run.row.index,
            took.as_secs_f64()
        ));
        let log = run.raw.join(format!(
            "rep{}-{}-server.log",
            run.repetition,
            run.row.slug()
        ));
        let pod = match &run.row.resources {
            Some(res) => Some(cgroup::PodGroup::create(
                &format!("{}-search", run.row.slug()),
                res,
            )?),
            None => None,
        };
        let mut launch = server::Launch::of(
            run.row,
            &m.local.server_cpus,
            r.addr,
            &app_url,
            m.local.pool_size,
            &log,
        );
        launch.groups = pod.as_ref().map(|p| p.join_at_exec()).unwrap_or_default();
        let mut server = match (&run.row.external, binary) {
            (Some(external), _) => Server::start_external(&root, external, &launch)?,
            (None, Some(binary)) => Server::start(&binary, &launch)?,
            (None, None) => anyhow::bail!("row {:?} has no binary", run.row.name),
        };
        ready_and_checked(&mut server, run.row, m.load.users)?;
        let driver = Driver::new(&r.oha, &m.load, run.raw, run.say);
        let mut probe = LocalProbe {
            server: &server,
            db,
            postmaster,
            pg_dir,
            profile_to,
            recording: None,
            writes_to_postgres: run.row.writes_to_postgres(),
        };
        let searches = driver.search_row(
            &mut probe,
            run.row,
            &m.workloads,
            run.repetition,
            &run.hints,
            &mut Tally::default(),
        )?;
        server.stop(Duration::from_secs(20))?;
        Ok(searches)
    }

    fn blocks(
        &mut self,
        rows: &[Row],
        raw: &Path,
        say: &dyn Fn(&str),
    ) -> Option<Result<crate::blocks::Outcome>> {
        let with_binaries = rows
            .iter()
            .map(|row| {
                let binary = self
                    .m
                    .rows
                    .iter()
                    .position(|r| r == row)
                    .and_then(|i| self.binaries.get(i).cloned().flatten());
                (row, binary)
            })
            .collect();
        let none = cluster::Clusters::default();
        let inputs = blocks::Inputs {
            clusters: self.ready.as_ref().map_or(&none, |r| &r.clusters),
            m: self.m,
            settings: &self.m.blocks,
            quick: self.o.quick,
            database_url: &self.o.database_url,
            postgres_scope: &self.o.settings,
            db_prefix: &self.o.db_prefix,
            pg_data: self.o.pg_data.as_deref(),
            oha: &self.o.oha,
            rows: with_binaries,
            raw,
            say,
        };
        Some(blocks::run(&inputs))
    }

    /// pgbench on the same data, statements and mix: PostgreSQL's own ceiling.
    fn reference(
        &mut self,
        rep: u32,
        raw: &Path,
        say: &dyn Fn(&str),
    ) -> Option<Result<Vec<ReferenceResult>>> {
        let (m, url, settings) = (self.m, self.o.database_url.clone(), self.o.settings.clone());
        let r = self.ready.as_mut()?;
        Some(measure_reference(m, &url, settings, r, rep, raw, say))
    }

    fn host(&self) -> Host {
        let l = &self.m.local;
        Host::Machine {
            cpu_model: crate::environment::cpu_model(),
            cpus: crate::environment::cpu_count(),
            memory_gib: crate::environment::memory_gib(),
            kernel: crate::environment::kernel(),
            pgbench: crate::environment::pgbench(),
            server_cpus: l.server_cpus.clone(),
            postgres_cpus: l.postgres_cpus.clone(),
            oha_cpus: l.oha_cpus.clone(),
        }
    }

    fn software(&self) -> Software {
        match &self.ready {
            Some(r) => Software {
                postgres: r.postgres_version.clone(),
                oha: r.oha.version(),
            },
            None => Software {
                postgres: "unknown".into(),
                oha: "unknown".into(),
            },
        }
    }
}

impl Drop for Local<'_> {
    /// The per-run inputs are large and derived; the summary and oha's JSON stay.
    fn drop(&mut self) {
        if let Some(r) = &self.ready {
            let _ = std::fs::remove_file(&r.oha.urls_file);
        }
    }
}

fn measure_reference(
    m: &Matrix,
    url: &str,
    settings: pg::SettingsScope,
    r: &mut Ready,
    rep: u32,
    raw: &Path,
    say: &dyn Fn(&str),
) -> Result<Vec<ReferenceResult>> {
    settings.apply(&mut r.db, &m.postgres)?;
    let mut out = Vec::new();
    for w in &m.workloads {
        pg::seed(&mut r.db, m.load.users, true)?;
        pg::settle(&mut r.db)?;
        let bench = Pgbench {
            url,
            cpus: &m.local.oha_cpus,
            clients: m.load.pgbench_clients,
            users: m.load.users,
            postmaster: r.postmaster,
        };
        let found = bench.search(
            w,
            &m.load,
            raw,
            &format!("rep{rep}-pgbench-{}", w.name),
            say,
        )?;
        let (offered, at) = match &found.capacity {
            Some((rate, step)) => (Some(*rate), Some(step)),
            None => (None, None),
        };
        say(&format!(
            "  pgbench reference {} rep {rep}: {} confirmed, {}",
            w.name,
            at.map_or("nothing".into(), |s| format!("{:.0} TPS", s.achieved)),
            found
                .common
                .as_ref()
                .map_or("no common-rate window".into(), |c| format!(
                    "at {:.0}/s PostgreSQL spent {} µs per transaction",
                    c.offered,
                    c.postgres_us_per_transaction
                        .map_or("n/a".into(), |u| format!("{u:.0}"))
                ))
        ));
        out.push(ReferenceResult {
            workload: w.name.clone(),
            repetition: rep,
            tps: at.map_or(0.0, |s| s.achieved),
            p99_ms: at.and_then(|s| s.p99_ms),
            clients: m.load.pgbench_clients,
            cpu_postgres: at.and_then(|s| s.cpu_postgres),
            cpu_pgbench: at.map_or(0.0, |s| s.cpu_pgbench),
            offered,
            steps: found.steps.len(),
            common: found.common,
        });
    }
    Ok(out)
}
