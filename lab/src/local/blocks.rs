//! Randomized blocks on this machine: every row's server started once (each on its
//! own port, pinned like the search's, in its own CPU group), PostgreSQL and oha in
//! theirs; a warm-up that finds each cell's split of the mix; then the blocks, each
//! cell once per block in a fresh random order, one closed-loop window each.
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use postgres::Client;

use crate::blocks::design::{self, Cell, Split};
use crate::blocks::judge::{self, Evidence, Shares};
use crate::blocks::{aa_name, Blocks, Counts, FixedWindow, Probe, Settings, Window};
use crate::matrix::{Matrix, Row, Workload};
use crate::measure::contract;
use crate::measure::driver::{write_inputs, write_inputs_with};
use crate::measure::oha::{parse_summary, Method, Oha, Side};

mod duet;

use super::cgroup::{CpuGroup, PodGroup};
use super::cluster::Clusters;
use super::server::{Launch, Server};
use super::{pg, ports, profile};
use crate::measure::procfs::{cpu_ticks, RssPeak};
use crate::measure::speedo::{MemoryProbe, Speedometer};

/// How long after a window PostgreSQL's counters are read: the window's last
/// connections (a connection per request, in the first rows) end and are counted.
/// How long the host's memory is probed before and after each window.
const GAP_PROBE: Duration = Duration::from_millis(120);
const STATS_FLUSH: Duration = Duration::from_millis(crate::blocks::STATS_FLUSH_MS);

/// oha's niceness in the blocks: ahead of PostgreSQL on the CPU they share, so the
/// load generator has the headroom it needs and the server side is what saturates
/// (root only; elsewhere `nice` cannot raise a priority and oha runs at the default).
const OHA_NICE: i32 = -10;

/// How long each window's probe of the majority alone lasts, s.
const PROBE_SECS: f64 = 0.75;

/// Whether this process runs as root (its `nice` may raise oha's priority).
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|t| {
        t.lines()
            .find(|l| l.starts_with("Uid:"))
            .and_then(|l| l.split_whitespace().nth(1).map(|u| u == "0"))
            .unwrap_or(false)
    })
}

/// A server of the blocks, up for the whole run.
struct Up {
    row: Row,
    /// None: a service already running (a `url` row), which the lab never stops.
    server: Option<Server>,
    /// Its process on this machine, where known: CPU time and counters.
    pid: Option<u32>,
    group: Option<CpuGroup>,
    /// Its pod's resources (CPU weight and quota, memory limit), where the row sets them.
    pod: Option<PodGroup>,
    oha: Oha,
    /// The database it uses (one per index setting; a service's own, where reachable).
    db: Option<usize>,
}

/// One database of the blocks: rows with and without the index, with different
/// session settings or in clusters of their own need their own.
struct Db {
    name: String,
    index: bool,
    /// The row's own cluster (an index into `Inputs::clusters`), or the run's.
    cluster: Option<usize>,
    /// Settings each session on it starts with (`ALTER DATABASE … SET`).
    session: BTreeMap<String, String>,
    /// Users seeded.
    users: i64,
    client: Client,
}

/// What a database of the blocks is keyed by: its cluster, the index, session
/// settings, users.
type DbKey = (Option<usize>, bool, BTreeMap<String, String>, i64);

/// Databases the blocks may create beyond `<prefix>_blocks` and `…_noindex`, named
/// `<prefix>_blocks_<k>` (a sandbox's journal lists them all to drop).
pub const MAX_EXTRA_DATABASES: usize = 8;

pub struct Inputs<'a> {
    pub m: &'a Matrix,
    pub settings: &'a Settings,
    pub quick: bool,
    pub database_url: &'a str,
    /// What may be done to the server's settings (see `local::Options::settings`).
    pub postgres_scope: &'a pg::SettingsScope,
    /// The blocks' databases are `<prefix>_blocks` and `<prefix>_blocks_noindex`.
    pub db_prefix: &'a str,
    pub pg_data: Option<&'a Path>,
    pub oha: &'a Path,
    /// The rows' own clusters and session settings.
    pub clusters: &'a Clusters,
    /// Rows to measure (matrix order) with their binaries (None: an external row).
    pub rows: Vec<(&'a Row, Option<PathBuf>)>,
    pub raw: &'a Path,
    pub say: &'a dyn Fn(&str),
}

/// The blocks' result and the rows that could not take part (name, why).
pub fn run(i: &Inputs) -> Result<crate::blocks::Outcome> {
    let started = Instant::now();
    let m = i.m;
    let dir = i.raw.join("blocks");
    std::fs::create_dir_all(&dir)?;
    let most = i
        .rows
        .iter()
        .filter_map(|(r, _)| r.connections)
        .chain([i.settings.connections])
        .max()
        .unwrap_or(0);
    raise_open_files(u64::from(most) + 1024)?;
    let mut admin = pg::connect(i.database_url)?;
    i.postgres_scope.apply(&mut admin, &m.postgres)?;
    let statements = enable_statements(&mut admin, i.postgres_scope.allows(TRACK_PLANNING));
    let mut rows: Vec<Row> = i.rows.iter().map(|(r, _)| (*r).clone()).collect();
    let mut binaries: Vec<Option<PathBuf>> = i.rows.iter().map(|(_, b)| b.clone()).collect();
    if let Some(k) = add_aa_copy(&mut rows, i.settings.aa.as_deref())? {
        binaries.push(binaries[k].clone());
    }
    let mut cluster_admins = Vec::new();
    for c in &i.clusters.list {
        let mut client = pg::connect(&c.url)?;
        client.batch_execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")?;
        cluster_admins.push(client);
    }
    let mut dbs: Vec<Db> = Vec::new();
    let mut row_db = Vec::new();
    for row in &rows {
        let key = (
            i.clusters
                .of(row)
                .and_then(|c| i.clusters.list.iter().position(|x| std::ptr::eq(x, c))),
            row.index,
            i.clusters.session(row),
            row.users.unwrap_or(m.load.users),
        );
        let k = match dbs.iter().position(|d| {
            (d.cluster, d.index, &d.session, d.users) == (key.0, key.1, &key.2, key.3)
        }) {
            Some(k) => k,
            None => {
                let client = match key.0 {
                    Some(c) => &mut cluster_admins[c],
                    None => &mut admin,
                };
                let url = match key.0 {
                    Some(c) => i.clusters.list[c].url.as_str(),
                    None => i.database_url,
                };
                dbs.push(database(client, i, url, key, dbs.len())?);
                dbs.len() - 1
            }
        };
        row_db.push(k);
    }
    let app = dbs
        .iter_mut()
        .map(|d| {
            let url = match d.cluster {
                Some(c) => pg::with_database(&i.clusters.list[c].url, &d.name)?,
                None => pg::with_database(i.database_url, &d.name)?,
            };
            pg::app_login(&mut d.client, &url)
        })
        .collect::<Result<Vec<String>>>()?;
    let mut postmasters: Vec<u32> = i.clusters.list.iter().map(|c| c.postmaster).collect();
    if let Some(p) = i.pg_data.and_then(|d| pg::postmaster_pid(d).ok()) {
        postmasters.insert(0, p);
    }
    let postgres = postgres_group(&postmasters);
    let oha_group = CpuGroup::create("oha").ok();
    let bodies = dir.join("bodies.txt");
    let mut up = Vec::new();
    let mut failed = Vec::new();
    for ((row, binary), db) in rows.iter().zip(&binaries).zip(row_db) {
        match start(i, row, binary.as_deref(), &app[db], &dir, &bodies) {
            Ok((server, oha, pod)) => {
                let group = CpuGroup::create(&row.slug()).and_then(|mut g| {
                    g.add(server.pid)?;
                    Ok(g)
                });
                if let Err(e) = &group {
                    eprintln!(
                        "warning: no CPU group for {:?} ({e:#}); its CPU is not recorded",
                        row.name
                    );
                }
                up.push(Up {
                    row: row.clone(),
                    pid: Some(server.pid),
                    server: Some(server),
                    group: group.ok(),
                    pod,
                    oha,
                    db: Some(db),
                });
            }
            Err(e) => {
                eprintln!(
                    "!!! row {:?} could not start for the blocks: {e:#}",
                    row.name
                );
                failed.push((row.name.clone(), format!("blocks: {e:#}")));
            }
        }
    }
    if up.is_empty() {
        bail!("no server could be started for the blocks");
    }
    let seed = seed();
    let mut b = new_blocks(&up, i.settings, m, seed);
    b.own_clusters = up
        .iter()
        .filter(|u| u.db.is_some_and(|d| dbs[d].cluster.is_some()))
        .map(|u| u.row.name.clone())
        .collect();
    let host_cpus = all_cpus(m);
    let mut lab = Lab {
        up,
        dbs,
        admin: Some(admin),
        cluster_admins,
        statements,
        postgres,
        oha_group,
        dir,
        error_budget: m.load.error_budget,
        probe_secs: if i.quick { 0.5 } else { PROBE_SECS },
        oha_cpus: crate::matrix::parse_cpu_list(&m.local.oha_cpus).map_or(1, |v| v.len()),
        oha_ahead: is_root(),
        perf: profile::available(),
        pinned: {
            let cpus = |l: &str| crate::matrix::parse_cpu_list(l).unwrap_or_default();
            (
                cpus(&m.local.server_cpus),
                cpus(&m.local.postgres_cpus),
                cpus(&m.local.oha_cpus),
            )
        },
        owned: true,
        speedo: Speedometer::start(&host_cpus),
        memory: MemoryProbe::new(),
        host_cpus,
    };
    measure_blocks(&mut lab, &mut b, m, i.settings, i.quick, seed, i.say)?;
    for u in &mut lab.up {
        let Some(server) = &mut u.server else {
            continue;
        };
        if let Err(e) = server.stop(Duration::from_secs(20)) {
            failed.push((u.row.name.clone(), format!("blocks: stopping: {e:#}")));
        }
    }
    drop(lab.up);
    for d in &lab.dbs {
        let admin = match d.cluster {
            Some(c) => lab.cluster_admins.get_mut(c),
            None => lab.admin.as_mut(),
        };
        if let Some(admin) = admin {
            let _ =
                admin.batch_execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", d.name));
        }
    }
    b.elapsed_secs = started.elapsed().as_secs_f64();
    Ok((b, failed))
}

/// Raises this process's open-file limit (which the servers and oha inherit) to
/// `need`, or says why the rows' connections cannot be opened.
fn raise_open_files(need: u64) -> Result<()> {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit write and read the struct given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) } != 0 {
        bail!("cannot read the open-file limit");
    }
    if l.rlim_cur >= need {
        return Ok(());
    }
    let raised = libc::rlimit {
        rlim_cur: need,
        rlim_max: l.rlim_max.max(need),
    };
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
        bail!(
            "the rows' connections need {need} open files, and this process may open {} (hard limit {}): raise it (ulimit -n {need}, as root) or lower the rows' `connections`",
            l.rlim_cur,
            l.rlim_max
        );
    }
    Ok(())
}

/// Every CPU the server, PostgreSQL or oha is pinned to.
fn all_cpus(m: &Matrix) -> Vec<usize> {
    let mut v: Vec<usize> = [
        &m.local.server_cpus,
        &m.local.postgres_cpus,
        &m.local.oha_cpus,
    ]
    .iter()
    .flat_map(|l| crate::matrix::parse_cpu_list(l).unwrap_or_default())
    .collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// The blocks' record before any window: the rows that are up, the references (rows
/// that write nowhere, and the A/A copy), the hypotheses.
fn new_blocks(up: &[Up], settings: &Settings, m: &Matrix, seed: u64) -> Blocks {
    Blocks {
        settings: settings.clone(),
        seed,
        rows: up.iter().map(|u| u.row.name.clone()).collect(),
        references: up
            .iter()
            .filter(|u| {
                !u.row.writes_to_postgres()
                    || u.row.name == aa_name(settings.aa.as_deref().unwrap_or(""))
            })
            .map(|u| u.row.name.clone())
            .collect(),
        workloads: m.workloads.iter().map(|w| w.name.clone()).collect(),
        windows: Vec::new(),
        duets: Vec::new(),
        cells: Vec::new(),
        aa_check: None,
        aa_check_at_once: None,
        splits: Vec::new(),
        hypotheses: up
            .iter()
            .filter(|u| {
                settings
                    .aa
                    .as_ref()
                    .is_none_or(|a| aa_name(a) != u.row.name)
            })
            .filter_map(|u| Some((u.row.name.clone(), u.row.moves?)))
            .collect(),
        own_clusters: Vec::new(),
        versus: up
            .iter()
            .filter_map(|u| Some((u.row.name.clone(), u.row.versus.clone()?)))
            .collect(),
        elapsed_secs: 0.0,
        steal: None,
        host: None,
    }
}

/// The warm-up (each cell's split of the mix), then the blocks: every cell once per
/// block, in a fresh random order. Between blocks the lab's own databases are settled.
fn measure_blocks(
    lab: &mut Lab,
    b: &mut Blocks,
    m: &Matrix,
    settings: &Settings,
    quick: bool,
    seed: u64,
    say: &dyn Fn(&str),
) -> Result<()> {
    if !lab.perf {
        eprintln!("warning: perf is not installed: the server's system calls are not counted (Debian: apt-get install linux-perf)");
    }
    let (secs, warm) = if quick {
        (1.0, 0.5)
    } else {
        (settings.window_secs, 1.5)
    };
    let count = if quick { 1 } else { settings.blocks as usize };
    std::thread::sleep(STATS_FLUSH);
    // The warm-up: every cell, in a random order, finds the minority's rate.
    let cells = design::blocks(lab.up.len(), m.workloads.len(), 1, seed ^ 0xA5A5)
        .pop()
        .unwrap_or_default();
    let mut splits: BTreeMap<(usize, usize), Split> = BTreeMap::new();
    say(&format!(
        "blocks: warming up {} servers side by side ({} cells)",
        lab.up.len(),
        cells.len()
    ));
    for c in &cells {
        let w = &m.workloads[c.workload];
        let connections = lab.up[c.row]
            .row
            .connections
            .unwrap_or(settings.connections);
        match lab.calibrate(*c, w, connections, warm) {
            Ok(s) => {
                b.splits
                    .push((lab.up[c.row].row.name.clone(), w.name.clone(), s));
                splits.insert((c.row, c.workload), s);
            }
            Err(e) => eprintln!(
                "warning: warm-up of {:?} {} failed: {e:#}",
                lab.up[c.row].row.name, w.name
            ),
        }
    }
    // Rows whose fixed-rate window failed once (oha stopped at its bound): not tried again.
    let mut no_fixed = std::collections::BTreeSet::new();
    let orders = match settings.order {
        design::Order::Shuffle => design::blocks(lab.up.len(), m.workloads.len(), count, seed),
        design::Order::Walk => {
            let index = |name: &str| lab.up.iter().position(|u| u.row.name == name);
            let aa = settings
                .aa
                .as_deref()
                .and_then(|a| index(&aa_name(a)).zip(index(a)));
            design::walks(lab.up.len(), aa, m.workloads.len(), count, seed)
        }
    };
    let duets = design::duets(
        &duet::pairs(lab, settings.aa.as_deref()),
        m.workloads.len(),
        count,
        seed,
    );
    for (k, order) in orders.into_iter().enumerate() {
        let block = k as u32 + 1;
        say(&format!(
            "block {block}/{count}: {} windows of {secs} s",
            order.len()
        ));
        for (pos, c) in order.iter().enumerate() {
            let Some(split) = splits.get(&(c.row, c.workload)) else {
                continue;
            };
            let w = &m.workloads[c.workload];
            match lab.window(*c, w, split, secs, block, pos as u32) {
                Ok(mut win) => {
                    if let Some(qps) = settings.fixed_qps.filter(|_| !no_fixed.contains(&c.row)) {
                        let connections = lab.up[c.row]
                            .row
                            .connections
                            .unwrap_or(settings.connections);
                        let fixed_secs = if quick {
                            1.0
                        } else {
                            fixed_secs(settings.fixed_secs, qps, connections)
                        };
                        match lab.fixed(*c, w, qps, fixed_secs, connections, block) {
                            Ok(f) => win.fixed = Some(f),
                            Err(e) => {
                                eprintln!(
                                    "warning: block {block}, {:?} {}: fixed-rate window lost, and its later ones are not run: {e:#}",
                                    lab.up[c.row].row.name, w.name
                                );
                                no_fixed.insert(c.row);
                            }
                        }
                    }
                    b.windows.push(win)
                }
                Err(e) => eprintln!(
                    "warning: block {block}, {:?} {}: window lost: {e:#}",
                    lab.up[c.row].row.name, w.name
                ),
            }
        }
        if let Some(duet_secs) = settings.duet_secs {
            let secs = if quick { duet_secs.min(1.0) } else { duet_secs };
            let ds = &duets[k];
            say(&format!(
                "block {block}/{count}: {} duets of {secs} s",
                ds.len()
            ));
            for (pos, d) in ds.iter().enumerate() {
                let (Some(first), Some(second)) = (
                    splits.get(&(d.first, d.workload)),
                    splits.get(&(d.second, d.workload)),
                ) else {
                    continue;
                };
                let w = &m.workloads[d.workload];
                match lab.duet(*d, w, [first, second], secs, block, pos as u32) {
                    Ok(duet) => b.duets.push(duet),
                    Err(e) => eprintln!(
                        "warning: block {block}, duet of {:?} and {:?} {}: lost: {e:#}",
                        lab.up[d.first].row.name, lab.up[d.second].row.name, w.name
                    ),
                }
            }
        }
        if lab.owned {
            for d in &mut lab.dbs {
                pg::settle(&mut d.client)?;
            }
        }
        // Their WAL and statistics are reported late: not into the next block's first window.
        std::thread::sleep(STATS_FLUSH);
    }
    Ok(())
}

/// What the blocks of services already running (`url` rows) need.
pub struct ServiceInputs<'a> {
    pub m: &'a Matrix,
    pub settings: &'a Settings,
    pub quick: bool,
    /// The services' database, read only: per-window write totals and counters.
    pub database_url: Option<&'a str>,
    /// An id no user has, where the database says so (the contract probe's 404).
    pub missing_id: Option<i64>,
    pub oha: &'a Path,
    pub rows: Vec<&'a Row>,
    pub raw: &'a Path,
    pub say: &'a dyn Fn(&str),
}

/// The blocks of services already running: nothing is started, seeded, settled or
/// stopped. Each service's CPU is its process tree's, where it is on this machine;
/// the CPUs are not the lab's to pin, so each party counts as spread over all of them.
pub fn run_services(i: &ServiceInputs) -> Result<crate::blocks::Outcome> {
    let started = Instant::now();
    let m = i.m;
    let dir = i.raw.join("blocks");
    std::fs::create_dir_all(&dir)?;
    let (dbs, admin) = match i.database_url {
        Some(url) => {
            let mut client = pg::connect(url)?;
            let name: String = client.query_one("SELECT current_database()", &[])?.get(0);
            let db = Db {
                name,
                index: true,
                cluster: None,
                session: BTreeMap::new(),
                users: m.load.users,
                client,
            };
            (vec![db], Some(pg::connect(url)?))
        }
        None => (Vec::new(), None),
    };
    let mut rows: Vec<Row> = i.rows.iter().map(|r| (*r).clone()).collect();
    add_aa_copy(&mut rows, i.settings.aa.as_deref())?;
    let bodies = dir.join("bodies.txt");
    let (mut up, mut failed) = (Vec::new(), Vec::new());
    for row in &rows {
        match attach(i, row, &dir, &bodies, !dbs.is_empty()) {
            Ok(u) => up.push(u),
            Err(e) => {
                eprintln!(
                    "!!! row {:?} could not be measured in the blocks: {e:#}",
                    row.name
                );
                failed.push((row.name.clone(), format!("blocks: {e:#}")));
            }
        }
    }
    if up.is_empty() {
        bail!("no service answered for the blocks");
    }
    let all: Vec<usize> = (0..crate::environment::cpu_count()).collect();
    let seed = seed();
    let mut b = new_blocks(&up, i.settings, m, seed);
    let mut lab = Lab {
        up,
        dbs,
        admin,
        cluster_admins: Vec::new(),
        statements: false,
        postgres: None,
        oha_group: CpuGroup::create("oha").ok(),
        dir,
        error_budget: m.load.error_budget,
        probe_secs: if i.quick { 0.5 } else { PROBE_SECS },
        oha_cpus: all.len(),
        oha_ahead: false,
        perf: profile::available(),
        speedo: Speedometer::start(&all),
        memory: MemoryProbe::new(),
        host_cpus: all.clone(),
        pinned: (all.clone(), Vec::new(), all),
        owned: false,
    };
    measure_blocks(&mut lab, &mut b, m, i.settings, i.quick, seed, i.say)?;
    b.elapsed_secs = started.elapsed().as_secs_f64();
    Ok((b, failed))
}

/// A service of the blocks: ready, keeping the contract, with its oha inputs.
fn attach(i: &ServiceInputs, row: &Row, dir: &Path, bodies: &Path, db: bool) -> Result<Up> {
    let service = row
        .service
        .as_ref()
        .context("only `url` rows are services")?;
    let addr = crate::service::attach(service, Duration::from_secs(30), i.missing_id)?.addr;
    let oha = Oha {
        binary: i.oha.to_path_buf(),
        nice: None,
        cpus: None,
        urls_file: dir.join(format!("{}-urls.txt", row.slug())),
        bodies_file: bodies.to_path_buf(),
    };
    write_inputs(
        &oha.urls_file,
        &oha.bodies_file,
        &format!("http://{addr}"),
        i.m.load.users,
    )?;
    Ok(Up {
        row: row.clone(),
        server: None,
        pid: crate::service::listening_pid(addr),
        group: None,
        pod: None,
        oha,
        db: db.then_some(0),
    })
}

/// Appends the A/A copy of row `aa` (one build under a second name) and returns the
/// index of the row it copies; nothing without an A/A pair.
fn add_aa_copy(rows: &mut Vec<Row>, aa: Option<&str>) -> Result<Option<usize>> {
    let Some(aa) = aa else { return Ok(None) };
    let k = rows
        .iter()
        .position(|r| r.name == aa)
        .with_context(|| format!("[blocks] aa = {aa:?}: no such row among those run"))?;
    let mut copy = rows[k].clone();
    copy.name = aa_name(aa);
    // The copy is compared with its original, not with the row its original changes.
    copy.versus = None;
    rows.push(copy);
    Ok(Some(k))
}

/// A random seed for the design, recorded with the run.
fn seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    t ^ (u64::from(std::process::id()) << 32)
}

/// `pg_stat_statements` in the admin database where the cluster preloads it, with
/// planning counted; false where it is not available (its counters are then absent).
/// The setting that makes `pg_stat_statements` count plans.
pub const TRACK_PLANNING: &str = "pg_stat_statements.track_planning";

fn enable_statements(admin: &mut Client, settings_allowed: bool) -> bool {
    let planning: Option<String> = admin
        .query_opt(
            "SELECT setting FROM pg_settings WHERE name = 'pg_stat_statements.track_planning'",
            &[],
        )
        .ok()
        .flatten()
        .map(|r| r.get(0));
    // Without leave to change settings, only where planning is already counted.
    let loaded = match planning.as_deref() {
        None => false,
        Some("on") => true,
        Some(_) => settings_allowed,
    };
    // One statement per call: ALTER SYSTEM refuses to run inside the implicit
    // transaction of a multi-statement string.
    let statements: &[&str] = if settings_allowed {
        &[
            "CREATE EXTENSION IF NOT EXISTS pg_stat_statements",
            "ALTER SYSTEM SET pg_stat_statements.track_planning = on",
            "SELECT pg_reload_conf()",
        ]
    } else {
        &["CREATE EXTENSION IF NOT EXISTS pg_stat_statements"]
    };
    loaded && statements.iter().all(|q| admin.batch_execute(q).is_ok())
}

/// A fresh, seeded database for the blocks' rows of one key (cluster, index, session
/// settings) in the cluster `admin` serves at `url`: `<prefix>_blocks` and
/// `…_noindex` in the run's cluster without settings, else `<prefix>_blocks_<n>`.
fn database(
    admin: &mut Client,
    i: &Inputs,
    url: &str,
    (cluster, index, session, users): DbKey,
    n: usize,
) -> Result<Db> {
    let usual = users == i.m.load.users;
    let name = match (cluster, session.is_empty() && usual, index) {
        (None, true, true) => format!("{}_blocks", i.db_prefix),
        (None, true, false) => format!("{}_blocks_noindex", i.db_prefix),
        _ if n >= MAX_EXTRA_DATABASES => {
            bail!("the blocks need more than {MAX_EXTRA_DATABASES} databases of their own (rows with different `index`, session settings or server settings)")
        }
        _ => format!("{}_blocks_{}", i.db_prefix, n + 1),
    };
    admin.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))?;
    admin.batch_execute(&format!("CREATE DATABASE {name}"))?;
    for (k, v) in &session {
        admin.batch_execute(&format!(
            "ALTER DATABASE {name} SET {k} = '{}'",
            v.replace('\'', "''")
        ))?;
    }
    let mut client = pg::connect(&pg::with_database(url, &name)?)?;
    let took = pg::seed(&mut client, users, index)?;
    if !usual {
        (i.say)(&format!(
            "blocks: seeded {users} users into {name} in {:.1} s",
            took.as_secs_f64()
        ));
    }
    Ok(Db {
        name,
        index,
        cluster,
        session,
        users,
        client,
    })
}

/// PostgreSQL's processes (of every cluster of the run) in a group of their own,
/// where the clusters are ours.
fn postgres_group(postmasters: &[u32]) -> Option<CpuGroup> {
    if postmasters.is_empty() {
        return None;
    }
    let mut g = CpuGroup::create("postgres").ok()?;
    for &postmaster in postmasters {
        g.add(postmaster).ok()?;
        for pid in crate::measure::procfs::children(postmaster) {
            let _ = g.add(pid);
        }
    }
    Some(g)
}

/// Starts one row's server, checks it, and writes its oha inputs.
fn start(
    i: &Inputs,
    row: &Row,
    binary: Option<&Path>,
    app_url: &str,
    dir: &Path,
    bodies: &Path,
) -> Result<(Server, Oha, Option<PodGroup>)> {
    let addr: SocketAddr = format!("127.0.0.1:{}", ports::free_port()?).parse()?;
    let log = dir.join(format!("{}-server.log", row.slug()));
    let pod = match &row.resources {
        Some(r) => Some(PodGroup::create(&row.slug(), r)?),
        None => None,
    };
    let mut launch = Launch::of(
        row,
        &i.m.local.server_cpus,
        addr,
        app_url,
        i.m.local.pool_size,
        &log,
    );
    launch.groups = pod.as_ref().map(PodGroup::join_at_exec).unwrap_or_default();
    let mut server = match (&row.external, binary) {
        (Some(external), _) => {
            Server::start_external(&crate::commands::repo_root()?, external, &launch)?
        }
        (None, Some(binary)) => Server::start(binary, &launch)?,
        (None, None) => bail!("row {:?} has no binary", row.name),
    };
    server.wait_ready(Duration::from_secs(30))?;
    let mut checked = row.clone();
    if checked.name.ends_with(crate::blocks::AA_SUFFIX) {
        checked.name = checked
            .name
            .trim_end_matches(crate::blocks::AA_SUFFIX)
            .to_string();
    }
    let users = row.users.unwrap_or(i.m.load.users);
    contract::check_server(&server.remote, &checked, users)?;
    let oha = Oha {
        binary: i.oha.to_path_buf(),
        nice: Some(OHA_NICE),
        cpus: Some(i.m.local.oha_cpus.clone()),
        urls_file: dir.join(format!("{}-urls.txt", row.slug())),
        bodies_file: bodies.to_path_buf(),
    };
    write_inputs_with(
        &oha.urls_file,
        &oha.bodies_file,
        &format!("http://{addr}"),
        users,
        row.ids,
    )?;
    Ok((server, oha, pod))
}

/// Everything a window needs.
struct Lab {
    up: Vec<Up>,
    dbs: Vec<Db>,
    /// Where PostgreSQL's counters are read (the admin database; a service's own).
    admin: Option<Client>,
    /// The same for each row's own cluster (`Db::cluster`).
    cluster_admins: Vec<Client>,
    statements: bool,
    postgres: Option<CpuGroup>,
    oha_group: Option<CpuGroup>,
    dir: PathBuf,
    error_budget: f64,
    probe_secs: f64,
    oha_cpus: usize,
    oha_ahead: bool,
    /// Whether `perf` can count the server's system calls.
    perf: bool,
    /// The CPUs the server, PostgreSQL and oha are pinned to.
    pinned: (Vec<usize>, Vec<usize>, Vec<usize>),
    /// Times a fixed unit on every CPU they use: the host's speed, a covariate.
    speedo: Speedometer,
    /// Times the host's memory between windows, on `host_cpus`: the covariate.
    memory: MemoryProbe,
    host_cpus: Vec<usize>,
    /// The servers and databases are the lab's: settled between blocks, stopped and
    /// dropped at the end. Not so for services already running.
    owned: bool,
}

/// Child processes that are killed and reaped if still held when dropped (an error
/// path), so none outlives the window it belongs to.
#[derive(Default)]
struct Children(Vec<Option<std::process::Child>>);

impl Drop for Children {
    fn drop(&mut self) {
        for mut child in self.0.drain(..).flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// What oha reported for one window.
struct Load {
    secs: f64,
    get_ok: u64,
    patch_ok: u64,
    failed: u64,
    patch_unacked: u64,
}

impl Load {
    fn majority_qps(&self, w: &Workload) -> f64 {
        let ok = if w.get_percent >= w.patch_percent {
            self.get_ok
        } else {
            self.patch_ok
        };
        ok as f64 / self.secs.max(1e-9)
    }

    /// Good replies per second of load time.
    fn throughput(&self) -> f64 {
        (self.get_ok + self.patch_ok) as f64 / self.secs.max(1e-9)
    }

    /// GETs among the good replies (0 without any).
    fn get_share(&self) -> f64 {
        let good = self.get_ok + self.patch_ok;
        if good == 0 {
            0.0
        } else {
            self.get_ok as f64 / good as f64
        }
    }

    /// What a probe answered, as a window records it.
    fn as_probe(&self) -> Probe {
        Probe {
            get_ok: self.get_ok,
            patch_ok: self.patch_ok,
            patch_unacked: self.patch_unacked,
        }
    }
}

/// The majority and minority sides of a cell's mix.
fn sides(w: &Workload, split: &Split, with_minority: bool) -> Vec<Side> {
    let (major, minor) = if w.get_percent >= w.patch_percent {
        (Method::Get, Method::Patch)
    } else {
        (Method::Patch, Method::Get)
    };
    let mut v = vec![Side {
        method: major,
        rate: 0.0,
        connections: split.majority_connections,
    }];
    if with_minority && split.minority_rate > 0.0 {
        v.push(Side {
            method: minor,
            rate: split.minority_rate,
            connections: split.minority_connections,
        });
    }
    v
}

/// A snapshot of every counter a window compares.
struct Snapshot {
    ticks: Vec<crate::measure::procfs::Ticks>,
    server: Option<u64>,
    server_cpus: Vec<u64>,
    postgres: Option<u64>,
    postgres_cpus: Vec<u64>,
    oha: Option<u64>,
    oha_cpus: Vec<u64>,
}

fn usage(g: &Option<CpuGroup>) -> (Option<u64>, Vec<u64>) {
    g.as_ref()
        .map_or((None, Vec::new()), |g| (g.usage_ns(), g.usage_percpu()))
}

/// A party's CPU time spread evenly over the `pinned` CPUs of `n`, as shares of
/// the window (where the kernel gives no per-CPU time: cgroup v2).
fn spread_over(total_ns: Option<u64>, pinned: &[usize], n: usize, wall_ns: f64) -> Vec<f64> {
    let Some(total) = total_ns else {
        return Vec::new();
    };
    let on: Vec<usize> = pinned.iter().copied().filter(|c| *c < n).collect();
    (0..n)
        .map(|c| {
            if on.contains(&c) {
                total as f64 / on.len() as f64 / wall_ns
            } else {
                0.0
            }
        })
        .collect()
}

fn diff(a: &[u64], b: &[u64], wall_ns: f64) -> Vec<f64> {
    a.iter()
        .zip(b)
        .map(|(x, y)| y.saturating_sub(*x) as f64 / wall_ns)
        .collect()
}

impl Lab {
    fn snapshot(&self, row: usize) -> Snapshot {
        let (server, server_cpus) = match (&self.up[row].group, self.up[row].pid) {
            (None, Some(pid)) => (tree_ns(pid), Vec::new()),
            (group, _) => usage(group),
        };
        let (postgres, postgres_cpus) = usage(&self.postgres);
        let (oha, oha_cpus) = usage(&self.oha_group);
        Snapshot {
            ticks: cpu_ticks(),
            server,
            server_cpus,
            postgres,
            postgres_cpus,
            oha,
            oha_cpus,
        }
    }

    /// Runs oha's sides against row `row` for `secs`; the raw JSON stays in the run's
    /// blocks folder under `tag`.
    fn load(&mut self, row: usize, sides: &[Side], secs: f64, tag: &str) -> Result<Load> {
        let running = self.spawn(row, sides, secs, tag)?;
        running.finish()
    }

    /// Starts oha's sides against row `row` (see [`Lab::load`]).
    fn spawn(&mut self, row: usize, sides: &[Side], secs: f64, tag: &str) -> Result<Running> {
        let oha = &self.up[row].oha;
        // Every side is waited for, and on any error the others are killed: an oha
        // left running would load this server during another row's window.
        let mut running = Children::default();
        let mut jsons = Vec::new();
        for side in sides {
            let json = self.dir.join(format!("{tag}-{}.json", side.method.lower()));
            let mut cmd = oha.command(side, secs, &json);
            let child = cmd
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .context("starting oha")?;
            if let Some(g) = &mut self.oha_group {
                let _ = g.add(child.id());
            }
            running.0.push(Some(child));
            jsons.push((side.method, json));
        }
        Ok(Running {
            children: running,
            jsons,
            secs,
        })
    }
}

/// oha's processes for one row's load, started: waited for by [`Running::finish`],
/// killed if dropped first.
struct Running {
    children: Children,
    jsons: Vec<(Method, PathBuf)>,
    secs: f64,
}

impl Running {
    /// Waits for every side (bounded) and adds up what they answered.
    fn finish(self) -> Result<Load> {
        let Running {
            children: mut running,
            jsons,
            secs,
        } = self;
        let mut load = Load {
            secs: 0.0,
            get_ok: 0,
            patch_ok: 0,
            failed: 0,
            patch_unacked: 0,
        };
        for (k, (method, json)) in jsons.into_iter().enumerate() {
            let child = running.0[k].take().context("oha was waited for twice")?;
            let out = crate::measure::oha::wait_bounded(child, secs)?;
            if !out.status.success() {
                bail!(
                    "oha failed ({}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            let text = std::fs::read_to_string(&json)
                .with_context(|| format!("reading {}", json.display()))?;
            let side = parse_summary(&text)?;
            if k == 0 {
                let v: serde_json::Value = serde_json::from_str(&text)?;
                load.secs = v["summary"]["total"].as_f64().unwrap_or(secs);
            }
            let failed = side.replies() - side.good() + side.transport_errors();
            load.failed += failed;
            if method == Method::Get {
                load.get_ok += side.good();
            } else {
                load.patch_ok += side.count(200);
                load.patch_unacked += side.replies() - side.count(200) + side.transport_errors();
            }
        }
        Ok(load)
    }
}

impl Lab {
    /// The warm-up of one cell: the majority alone, then with the minority at the rate
    /// that keeps the mix against it; the second measurement sets the split.
    fn calibrate(&mut self, c: Cell, w: &Workload, connections: u32, secs: f64) -> Result<Split> {
        let share = w.get_share().max(1.0 - w.get_share());
        let alone = design::split(share, connections, 0.0);
        let tag = format!("warmup-{}-{}", self.up[c.row].row.slug(), w.name);
        let first = self.load(c.row, &sides(w, &alone, false), secs, &tag)?;
        let s = design::split(share, connections, first.majority_qps(w));
        let second = self.load(c.row, &sides(w, &s, true), secs, &tag)?;
        Ok(design::split(share, connections, second.majority_qps(w)))
    }

    /// The probe before a window: the mix at the warm-up's split, whose majority
    /// throughput sets the window's minority rate (the machine drifts between the
    /// warm-up and a block, and a fixed rate would let the mix drift with it).
    fn probe(
        &mut self,
        c: Cell,
        w: &Workload,
        warm: &Split,
        secs: f64,
        tag: &str,
    ) -> Result<(Split, Load)> {
        let load = self.load(c.row, &sides(w, warm, true), secs, &format!("{tag}-probe"))?;
        let s = design::split(
            warm.majority_share,
            warm.majority_connections,
            load.majority_qps(w),
        );
        Ok((s, load))
    }

    /// PostgreSQL's counters that are exact at any moment: write transactions (the
    /// next transaction id: one is assigned per write transaction), WAL bytes (the
    /// insert position), statements, plans and buffer use (`pg_stat_statements` keeps
    /// them in shared memory at once), and backends started (`pg_stat_database`
    /// counts a session when it ends, and a connection per request ends at once).
    /// `pg_stat_database`'s commits and `pg_stat_wal` are not used: PostgreSQL 15 holds
    /// a busy backend's statistics back for up to 10 s after its last report, so a
    /// window would get another's.
    fn pg_counts(&mut self, db: Option<usize>) -> Counts {
        let mut c = Counts::default();
        let Some(db) = db else { return c };
        let name = self.dbs[db].name.clone();
        let admin = match self.dbs[db].cluster {
            Some(k) => self.cluster_admins.get_mut(k),
            None => self.admin.as_mut(),
        };
        let Some(admin) = admin else { return c };
        let row = admin.query_one(
            "SELECT (SELECT sessions FROM pg_stat_database WHERE datname = $1), \
                    pg_snapshot_xmax(pg_current_snapshot())::text::bigint, \
                    (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint",
            &[&name],
        );
        match row {
            Ok(r) => {
                c.pg_backends_started = r.get::<_, Option<i64>>(0);
                c.pg_commits = r.get::<_, Option<i64>>(1);
                c.pg_wal_bytes = r.get::<_, Option<i64>>(2);
            }
            Err(e) => {
                eprintln!("warning: PostgreSQL's counters are unreadable ({e}); not recorded")
            }
        }
        if self.statements {
            let row = admin.query_one(
                "SELECT coalesce(sum(calls), 0)::bigint, coalesce(sum(plans), 0)::bigint, \
                        coalesce(sum(shared_blks_hit), 0)::bigint, \
                        coalesce(sum(shared_blks_read), 0)::bigint \
                 FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid \
                 JOIN pg_roles r ON r.oid = s.userid \
                 WHERE d.datname = $1 AND r.rolname = $2",
                &[&name, &crate::sql::APP_USER],
            );
            if let Ok(r) = row {
                c.pg_statements = Some(r.get(0));
                c.pg_plans = Some(r.get(1));
                c.pg_buffer_hits = Some(r.get(2));
                c.pg_buffer_reads = Some(r.get(3));
            }
        }
        c
    }

    /// The connections the row's server has refused so far, where it counts them.
    fn refused(&self, row: usize) -> Option<u64> {
        let u = &self.up[row];
        if !u.row.serves_metrics() {
            return None;
        }
        u.server.as_ref()?.remote.scrape().ok().map(|s| s.refused)
    }

    fn applied(&mut self, row: usize) -> Option<i64> {
        if !self.up[row].row.writes_to_postgres() {
            return None;
        }
        let db = self.up[row].db?;
        pg::applied_writes(&mut self.dbs[db].client).ok()
    }

    /// One closed-loop window of cell `c`, after a probe of its majority alone.
    fn window(
        &mut self,
        c: Cell,
        w: &Workload,
        warm: &Split,
        secs: f64,
        block: u32,
        position: u32,
    ) -> Result<Window> {
        let tag = format!("b{block}-{}-{}", self.up[c.row].row.slug(), w.name);
        let pid = self.up[c.row].pid;
        let db = self.up[c.row].db;
        // PostgreSQL's counters span the probe and the window (it reports a probe's
        // statistics up to a second late); the CPU figures and the server's counters
        // the window alone.
        // The host's memory while nothing runs, just before and just after the window.
        let gap_before = self.memory.run(&self.host_cpus, GAP_PROBE);
        let pg_before = self.pg_counts(db);
        let applied_before = self.applied(c.row);
        let (split, probe) = self.probe(c, w, warm, self.probe_secs, &tag)?;
        let split = &split;
        let refused_before = self.refused(c.row);
        let server_before = pid.map_or((None, None), server_counts);
        let throttled_before = self.up[c.row].pod.as_ref().and_then(PodGroup::throttling);
        let before = self.snapshot(c.row);
        let stat_out = self.dir.join(format!("{tag}.perf-stat.csv"));
        let mut counting = Children(vec![pid
            .filter(|_| self.perf)
            .and_then(|pid| profile::count_syscalls(pid, secs, &stat_out).ok())]);
        let start = Instant::now();
        self.speedo.forget_before(start);
        let rss = RssPeak::start(pid);
        let load = self.load(c.row, &sides(w, split, true), secs, &tag);
        let (server_rss_bytes, _) = rss.stop();
        let load = load?;
        let wall = start.elapsed().as_secs_f64();
        let after = self.snapshot(c.row);
        let throttled_after = self.up[c.row].pod.as_ref().and_then(PodGroup::throttling);
        let server_after = pid.map_or((None, None), server_counts);
        let refused_after = self.refused(c.row);
        let syscalls = counting.0[0]
            .take()
            .and_then(|c| profile::syscalls_counted(c, &stat_out));
        let flush = Instant::now();
        let gap_after = self.memory.run(&self.host_cpus, GAP_PROBE);
        std::thread::sleep(STATS_FLUSH.saturating_sub(flush.elapsed()));
        let pg_after = self.pg_counts(db);
        let applied_after = self.applied(c.row);
        let wall_ns = wall * 1e9;
        let cpu_busy: Vec<f64> = before
            .ticks
            .iter()
            .zip(&after.ticks)
            .map(|(a, b)| {
                let t = b.total.saturating_sub(a.total);
                if t == 0 {
                    0.0
                } else {
                    b.busy.saturating_sub(a.busy) as f64 / t as f64
                }
            })
            .collect();
        let cpu_steal: Vec<f64> = before
            .ticks
            .iter()
            .zip(&after.ticks)
            .map(|(a, b)| {
                let t = (b.total + b.steal).saturating_sub(a.total + a.steal);
                if t == 0 {
                    0.0
                } else {
                    b.steal.saturating_sub(a.steal) as f64 / t as f64
                }
            })
            .collect();
        let ns = |a: Option<u64>, b: Option<u64>| Some(b?.saturating_sub(a?));
        let n = cpu_busy.len();
        // Per CPU where the kernel says (cgroup v1); else (v2) each party's total spread
        // evenly over the CPUs it is pinned to.
        let share = |a: &[u64], b: &[u64], total: Option<u64>, pinned: &[usize]| {
            let v = diff(a, b, wall_ns);
            if v.is_empty() {
                spread_over(total, pinned, n, wall_ns)
            } else {
                v
            }
        };
        let shares = Shares {
            server: share(
                &before.server_cpus,
                &after.server_cpus,
                ns(before.server, after.server),
                &self.pinned.0,
            ),
            postgres: share(
                &before.postgres_cpus,
                &after.postgres_cpus,
                ns(before.postgres, after.postgres),
                &self.pinned.1,
            ),
            oha: share(
                &before.oha_cpus,
                &after.oha_cpus,
                ns(before.oha, after.oha),
                &self.pinned.2,
            ),
        };
        let total = load.get_ok + load.patch_ok + load.failed;
        let limit = judge::judge(&Evidence {
            busy: &cpu_busy,
            shares: &shares,
            error_rate: if total == 0 {
                1.0
            } else {
                load.failed as f64 / total as f64
            },
            error_budget: self.error_budget,
            p99_over_slo: false,
            oha_cpus: self.oha_cpus,
            oha_ahead: self.oha_ahead,
            throttled: throttled_before
                .zip(throttled_after)
                .map(|(a, b)| a.until(&b))
                .map(|t| t.throttled as f64 / t.periods.max(1) as f64),
        });
        let d = |a: Option<i64>, b: Option<i64>| Some(b? - a?);
        Ok(Window {
            block,
            position,
            row: self.up[c.row].row.name.clone(),
            workload: w.name.clone(),
            secs: load.secs,
            wall_secs: wall,
            get_ok: load.get_ok,
            patch_ok: load.patch_ok,
            failed: load.failed,
            patch_unacked: load.patch_unacked,
            probe: probe.as_probe(),
            throughput: load.throughput(),
            get_share: load.get_share(),
            server_ns: ns(before.server, after.server),
            postgres_ns: ns(before.postgres, after.postgres),
            oha_ns: ns(before.oha, after.oha),
            cpu_busy,
            cpu_steal,
            host_unit_ns: self
                .speedo
                .median_between(start, start + Duration::from_secs_f64(wall)),
            host_gap_ns: gap_before.zip(gap_after).map(|(a, b)| (a + b) / 2.0),
            shares,
            throttling: throttled_before
                .zip(throttled_after)
                .map(|(a, b)| a.until(&b)),
            counts: Counts {
                server_syscalls: syscalls,
                server_context_switches: server_before
                    .0
                    .zip(server_after.0)
                    .map(|(a, b)| b.saturating_sub(a)),
                server_run_delay_ns: server_before
                    .1
                    .zip(server_after.1)
                    .map(|(a, b)| b.saturating_sub(a)),
                pg_backends_started: d(pg_before.pg_backends_started, pg_after.pg_backends_started),
                pg_commits: d(pg_before.pg_commits, pg_after.pg_commits),
                pg_wal_records: None,
                pg_wal_bytes: d(pg_before.pg_wal_bytes, pg_after.pg_wal_bytes),
                pg_wal_syncs: None,
                pg_plans: d(pg_before.pg_plans, pg_after.pg_plans),
                pg_statements: d(pg_before.pg_statements, pg_after.pg_statements),
                pg_buffer_hits: d(pg_before.pg_buffer_hits, pg_after.pg_buffer_hits),
                pg_buffer_reads: d(pg_before.pg_buffer_reads, pg_after.pg_buffer_reads),
                server_refused: refused_before
                    .zip(refused_after)
                    .map(|(a, b)| b.saturating_sub(a)),
            },
            applied_writes: d(applied_before, applied_after),
            limit,
            server_rss_bytes,
            fixed: None,
        })
    }

    /// One open-loop window of cell `c` at `qps`, over `connections` shared out by the
    /// mix: p99 over both methods (from each request's scheduled time), CPU per request,
    /// the server's peak memory, and its writes checked.
    fn fixed(
        &mut self,
        c: Cell,
        w: &Workload,
        qps: f64,
        secs: f64,
        connections: u32,
        block: u32,
    ) -> Result<FixedWindow> {
        let tag = format!("b{block}-{}-{}-fixed", self.up[c.row].row.slug(), w.name);
        let pid = self.up[c.row].pid;
        let plan = fixed_sides(w, qps, connections);
        let applied_before = self.applied(c.row);
        let before = self.snapshot(c.row);
        let rss = RssPeak::start(pid);
        let results = self.up[c.row].oha.run(&plan, secs, &self.dir, &tag);
        let (server_rss_bytes, server_fds) = rss.stop();
        let after = self.snapshot(c.row);
        for side in &plan {
            let _ =
                std::fs::remove_file(crate::measure::oha::db_path(&self.dir, &tag, side.method));
        }
        let results = results?;
        std::thread::sleep(STATS_FLUSH);
        let applied_after = self.applied(c.row);
        let mut all = crate::measure::stats::Latencies::new();
        let (mut good, mut failed, mut patch_ok, mut patch_unacked) = (0, 0, 0, 0);
        for (side, r) in plan.iter().zip(&results) {
            let _ = all.merge(&r.latencies);
            good += r.good();
            failed += r.replies() - r.good() + r.transport_errors();
            if side.method == Method::Patch {
                patch_ok += r.count(200);
                patch_unacked += r.replies() - r.count(200) + r.transport_errors();
            }
        }
        let ns = |a: Option<u64>, b: Option<u64>| Some(b?.saturating_sub(a?));
        Ok(FixedWindow {
            offered_qps: qps,
            secs,
            connections,
            achieved_qps: good as f64 / secs,
            good,
            failed,
            p50_ms: all.quantile_ms(0.50),
            p99_ms: all.quantile_ms(0.99),
            server_ns: ns(before.server, after.server),
            postgres_ns: ns(before.postgres, after.postgres),
            server_rss_bytes,
            server_fds,
            patch_ok,
            patch_unacked,
            applied_writes: applied_before.zip(applied_after).map(|(a, b)| b - a),
        })
    }
}

/// How long a fixed-rate window lasts: `secs`, or long enough for each connection to
/// carry 1.5 requests on average (oha opens a connection when it first sends on it, so
/// a shorter window would hold fewer connections than asked).
fn fixed_secs(secs: f64, qps: f64, connections: u32) -> f64 {
    secs.max(1.5 * f64::from(connections) / qps.max(1.0))
}

/// The sides of a fixed-rate window: each method at its share of `qps`, the
/// connections shared out by the mix (one at least per method).
fn fixed_sides(w: &Workload, qps: f64, connections: u32) -> Vec<Side> {
    let share = w.get_share();
    let get = ((f64::from(connections) * share).round() as u32).clamp(1, connections.max(2) - 1);
    let mut v = Vec::new();
    if w.get_percent > 0 {
        v.push(Side {
            method: Method::Get,
            rate: qps * share,
            connections: if w.patch_percent > 0 {
                get
            } else {
                connections
            },
        });
    }
    if w.patch_percent > 0 {
        v.push(Side {
            method: Method::Patch,
            rate: qps * (1.0 - share),
            connections: if w.get_percent > 0 {
                connections - get
            } else {
                connections
            },
        });
    }
    v
}

/// A process tree's CPU time so far, ns (from `/proc` ticks: a process the lab did not
/// start has no CPU group of the lab's).
fn tree_ns(pid: u32) -> Option<u64> {
    let t = crate::measure::procfs::tree_split(pid)?;
    Some(((t.user + t.system) as f64 * 1e9 / crate::measure::procfs::TICKS_PER_SEC) as u64)
}

/// The server's context switches over all its threads and run-queue delay (ns,
/// `schedstat`) so far. (Its system calls are counted by `perf stat` over the window:
/// `/proc/<pid>/io` counts only file-style reads and writes, not `send`/`recv`.)
fn server_counts(pid: u32) -> (Option<u64>, Option<u64>) {
    let delay = std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()
        .map(|tasks| {
            tasks
                .flatten()
                .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
                .filter_map(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum::<u64>()
        });
    (profile::context_switches(pid), delay)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_majority_runs_closed_and_the_minority_at_its_rate() {
        let w = Workload {
            name: "write-heavy".into(),
            get_percent: 10,
            patch_percent: 90,
        };
        let s = design::split(0.9, 64, 9000.0);
        let v = sides(&w, &s, true);
        assert_eq!(
            (v[0].method, v[0].rate, v[0].connections),
            (Method::Patch, 0.0, 64)
        );
        assert_eq!(v[1].method, Method::Get);
        assert!((v[1].rate - 1000.0).abs() < 1e-9);
        assert_eq!(sides(&w, &s, false).len(), 1);
        let load = Load {
            secs: 2.0,
            get_ok: 100,
            patch_ok: 900,
            failed: 0,
            patch_unacked: 0,
        };
        assert!((load.majority_qps(&w) - 450.0).abs() < 1e-9);
    }

    #[test]
    fn without_per_cpu_times_a_party_is_spread_over_its_cpus() {
        assert_eq!(spread_over(Some(1_000), &[1], 2, 1_000.0), vec![0.0, 1.0]);
        assert_eq!(
            spread_over(Some(1_000), &[0, 1], 2, 1_000.0),
            vec![0.5, 0.5]
        );
        assert!(spread_over(None, &[0], 2, 1.0).is_empty());
    }

    #[test]
    fn this_process_has_server_counters() {
        let (cs, delay) = server_counts(std::process::id());
        assert!(cs.is_some() && delay.is_some());
    }
}
