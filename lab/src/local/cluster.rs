//! A row's PostgreSQL settings on this machine. Settings a session can take
//! (`work_mem`, `synchronous_commit`, …) go on the row's own database
//! (`ALTER DATABASE … SET`), so rows that differ in them still share one server.
//! Settings of the whole server (`shared_buffers`, `max_connections`, anything that
//! needs a restart or a reload) give the row a cluster of its own: started once beside
//! the script's, with the same base configuration plus the row's, pinned to
//! PostgreSQL's CPUs and counted in its CPU group, used by that row (and rows with the
//! same settings) for the whole run, side by side with the others. Only in the lab's
//! own throwaway cluster: a PostgreSQL you gave keeps its own configuration.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use postgres::Client;

use super::pg;
use crate::matrix::{Matrix, Row};

/// A row's settings, split by where PostgreSQL takes them.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Split {
    /// On the row's database: each new session starts with them.
    pub session: BTreeMap<String, String>,
    /// The server's: a cluster of the row's own.
    pub server: BTreeMap<String, String>,
    /// PostgreSQL's pod memory limit (bytes): a cluster of the row's own, in a memory
    /// group with that limit.
    pub memory: Option<u64>,
}

impl Split {
    /// Whether the row needs a cluster of its own.
    pub fn own_cluster(&self) -> bool {
        !self.server.is_empty() || self.memory.is_some()
    }
}

/// PostgreSQL's `pg_settings.context` values a session can set for itself (so
/// `ALTER DATABASE … SET` applies them to the row's sessions).
const SESSION_CONTEXTS: &[&str] = &["user", "superuser"];

/// Splits each row's `postgres` settings by context, and checks that PostgreSQL
/// accepts each value, before anything starts: an unknown name or a value it refuses
/// is an error naming the row and the setting. `own`: the cluster is the lab's (server
/// settings may get a cluster of their own); else they are refused.
pub fn split_rows(admin: &mut Client, rows: &[Row], own: bool) -> Result<BTreeMap<String, Split>> {
    let mut out = BTreeMap::new();
    for row in rows
        .iter()
        .filter(|r| !r.postgres.is_empty() || r.postgres_memory_limit.is_some())
    {
        let mut split = Split {
            memory: row.postgres_memory_limit,
            ..Split::default()
        };
        if split.memory.is_some() && !own {
            bail!(
                "row {:?}: postgres_memory_limit gives the row a PostgreSQL of the lab's own, and this run uses yours (--database-url)",
                row.name
            );
        }
        for (name, value) in &row.postgres {
            let context: Option<String> = admin
                .query_opt("SELECT context FROM pg_settings WHERE name = $1", &[name])?
                .map(|r| r.get(0));
            let Some(context) = context else {
                bail!(
                    "row {:?}: postgres.{name}: PostgreSQL {} has no such setting",
                    row.name,
                    pg::server_version(admin)
                );
            };
            check_value(admin, name, value, &context, own).map_err(|e| {
                anyhow::anyhow!("row {:?}: postgres.{name} = {value:?}: {e:#}", row.name)
            })?;
            if SESSION_CONTEXTS.contains(&context.as_str()) {
                split.session.insert(name.clone(), value.clone());
            } else {
                split.server.insert(name.clone(), value.clone());
            }
        }
        out.insert(row.name.clone(), split);
    }
    Ok(out)
}

/// Whether PostgreSQL takes `value` for `name`: a session setting in a transaction
/// that is rolled back; a server setting through `ALTER SYSTEM` and its reset (in the
/// lab's own cluster only, which the run resets anyway).
fn check_value(
    admin: &mut Client,
    name: &str,
    value: &str,
    context: &str,
    own: bool,
) -> Result<()> {
    if SESSION_CONTEXTS.contains(&context) {
        let mut tx = admin.transaction()?;
        tx.query("SELECT set_config($1, $2, true)", &[&name, &value])
            .map_err(|e| anyhow::anyhow!("PostgreSQL refuses it: {}", db_message(&e)))?;
        tx.rollback()?;
        return Ok(());
    }
    if context == "internal" {
        bail!("PostgreSQL sets it itself: it cannot be changed");
    }
    if !own {
        bail!("it is a setting of the whole server ({context}), and this PostgreSQL is yours: run without --database-url, so the row gets a PostgreSQL of the lab's own");
    }
    let literal = value.replace('\'', "''");
    admin
        .batch_execute(&format!("ALTER SYSTEM SET {name} = '{literal}'"))
        .map_err(|e| anyhow::anyhow!("PostgreSQL refuses it: {}", db_message(&e)))?;
    admin.batch_execute(&format!("ALTER SYSTEM RESET {name}"))?;
    Ok(())
}

fn db_message(e: &postgres::Error) -> String {
    e.as_db_error()
        .map_or_else(|| e.to_string(), |d| d.message().to_string())
}

/// A cluster of the lab's own for one set of server settings. Stopped (immediately)
/// and removed when dropped.
pub struct Cluster {
    pub settings: BTreeMap<String, String>,
    /// Its pod's memory limit, bytes.
    pub memory: Option<u64>,
    dir: PathBuf,
    bin: PathBuf,
    /// A superuser URL over TCP.
    pub url: String,
    pub data: PathBuf,
    pub postmaster: u32,
    /// Its memory group, where it has a limit (dropped after the cluster stops).
    _group: Option<super::cgroup::MemoryGroup>,
}

/// The configuration every cluster of the lab starts with: what `scripts/lib.sh`'s
/// `pg_start` gives the run's own.
fn base_settings(port: u16, dir: &Path) -> Vec<(String, String)> {
    [
        ("listen_addresses", "127.0.0.1".to_string()),
        ("port", port.to_string()),
        ("unix_socket_directories", dir.display().to_string()),
        ("max_connections", "300".into()),
        ("shared_buffers", "256MB".into()),
        ("shared_preload_libraries", "pg_stat_statements".into()),
        ("pg_stat_statements.track_planning", "on".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

impl Cluster {
    /// Starts a cluster beside `beside` (the run's data directory: its parent holds
    /// both, and the script removes it) with the run's `[postgres]` and `settings` on
    /// top of the base configuration.
    pub fn start(
        beside: &Path,
        m: &Matrix,
        settings: &BTreeMap<String, String>,
        memory: Option<u64>,
        n: usize,
    ) -> Result<Self> {
        let main = pg::postmaster_pid(beside)?;
        let bin = std::fs::read_link(format!("/proc/{main}/exe"))
            .context("finding PostgreSQL's programs from the run's postmaster")?
            .parent()
            .map(Path::to_path_buf)
            .context("PostgreSQL's program folder")?;
        let parent = beside.parent().context("the run's PostgreSQL folder")?;
        let dir = parent.join(format!("row-cluster-{n}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        {
            use std::os::unix::fs::PermissionsExt;
            // Its Unix socket lives here: only the owner (and root) may reach it.
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
        }
        give_to_owner(&dir)?;
        let data = dir.join("data");
        // TCP connections authenticate with scram-sha-256 and a fresh password (the Unix
        // socket, in a folder only its owner and root can enter, is trusted): no other
        // local user is a superuser during the run, and the app role's password is checked.
        let password = crate::sql::random_password()?;
        let pwfile = dir.join("pwfile");
        write_private(&pwfile, &format!("{password}\n"))?;
        give_to_owner(&pwfile)?;
        let mut pwarg = std::ffi::OsString::from("--pwfile=");
        pwarg.push(&pwfile);
        let made = as_owner(
            &bin.join("initdb"),
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-U".as_ref(),
                "postgres".as_ref(),
                "--auth-local=trust".as_ref(),
                "--auth-host=scram-sha-256".as_ref(),
                &pwarg,
                "-E".as_ref(),
                "UTF8".as_ref(),
                "--no-sync".as_ref(),
            ],
        );
        let _ = std::fs::remove_file(&pwfile);
        made.context("initdb for a row's own PostgreSQL")?;
        let mut last = String::new();
        for _ in 0..3 {
            let port = super::ports::free_port()?;
            let mut conf = String::from("\n# perflab: this row's cluster\n");
            let all = base_settings(port, &dir)
                .into_iter()
                .chain(m.postgres.clone())
                .chain(settings.clone());
            for (k, v) in all {
                conf.push_str(&format!("{k} = '{}'\n", v.replace('\'', "''")));
            }
            // In postgresql.conf, not the auto file: the run's `ALTER SYSTEM RESET ALL`
            // must leave them.
            let mut file = std::fs::read_to_string(data.join("postgresql.conf"))?;
            if let Some(at) = file.find("\n# perflab: this row's cluster\n") {
                file.truncate(at);
            }
            file.push_str(&conf);
            std::fs::write(data.join("postgresql.conf"), file)?;
            let log = dir.join("server.log");
            let started = as_owner(
                &bin.join("pg_ctl"),
                &[
                    "-D".as_ref(),
                    data.as_os_str(),
                    "-l".as_ref(),
                    log.as_os_str(),
                    "-w".as_ref(),
                    "-t".as_ref(),
                    "60".as_ref(),
                    "start".as_ref(),
                ],
            );
            if started.is_ok() {
                let postmaster = match pg::postmaster_pid(&data) {
                    Ok(p) => p,
                    Err(e) => {
                        stop(&bin, &data, None);
                        return Err(e);
                    }
                };
                let group = match memory {
                    None => None,
                    Some(limit) => {
                        match super::cgroup::MemoryGroup::create(
                            &format!("postgres-{n}"),
                            limit,
                            &[postmaster],
                        ) {
                            Ok(g) => Some(g),
                            Err(e) => {
                                stop(&bin, &data, Some(postmaster));
                                return Err(e.context("PostgreSQL's memory limit"));
                            }
                        }
                    }
                };
                return Ok(Self {
                    settings: settings.clone(),
                    memory,
                    _group: group,
                    dir: dir.clone(),
                    bin: bin.clone(),
                    url: format!(
                        "postgres://postgres:{password}@127.0.0.1:{port}/postgres?sslmode=disable"
                    ),
                    data,
                    postmaster,
                });
            }
            // A start that timed out may still be coming up: stop it before anything else.
            stop(&bin, &data, pg::postmaster_pid(&data).ok());
            last = std::fs::read_to_string(&log).unwrap_or_default();
            if !last.contains("Address already in use") {
                break;
            }
        }
        let tail: Vec<&str> = last.lines().rev().take(5).collect();
        let _ = std::fs::remove_dir_all(&dir);
        bail!(
            "PostgreSQL with {} did not start: {}",
            settings
                .iter()
                .map(|(k, v)| format!("{k} = {v}"))
                .collect::<Vec<_>>()
                .join(", "),
            tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
        )
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        stop(&self.bin, &self.data, Some(self.postmaster));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Stops the cluster in `data` at once; if its postmaster `pid` outlives that, kills it.
fn stop(bin: &Path, data: &Path, pid: Option<u32>) {
    let _ = as_owner(
        &bin.join("pg_ctl"),
        &[
            "-D".as_ref(),
            data.as_os_str(),
            "-m".as_ref(),
            "immediate".as_ref(),
            "-w".as_ref(),
            "-t".as_ref(),
            "30".as_ref(),
            "stop".as_ref(),
        ],
    );
    if let Some(pid) = pid {
        for _ in 0..50 {
            if !Path::new(&format!("/proc/{pid}")).exists() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        // SAFETY: kill has no memory preconditions; the pid is the postmaster's.
        unsafe {
            libc::kill(pid as i32, libc::SIGKILL);
        }
    }
}

/// The clusters of a run's rows (one per distinct set of server settings).
#[derive(Default)]
pub struct Clusters {
    pub list: Vec<Cluster>,
    /// Each row's settings, split (rows without settings are absent).
    pub splits: BTreeMap<String, Split>,
}

impl Clusters {
    /// Starts a cluster for each distinct set of server settings among the rows.
    pub fn start(
        beside: Option<&Path>,
        m: &Matrix,
        splits: BTreeMap<String, Split>,
    ) -> Result<Self> {
        let mut list: Vec<Cluster> = Vec::new();
        for (row, split) in &splits {
            if !split.own_cluster()
                || list
                    .iter()
                    .any(|c| c.settings == split.server && c.memory == split.memory)
            {
                continue;
            }
            let beside = beside.context(
                "a row's server settings need the run's own cluster's data directory (--pg-data)",
            )?;
            let c = Cluster::start(beside, m, &split.server, split.memory, list.len() + 1)
                .map_err(|e| anyhow::anyhow!("row {row:?}: {e:#}"))?;
            eprintln!(
                "==> row {row:?}: a PostgreSQL of its own with {}",
                c.settings
                    .iter()
                    .map(|(k, v)| format!("{k} = {v}"))
                    .chain(c.memory.map(|b| format!(
                        "a memory limit of {} (cgroup v1)",
                        crate::pod::memory_quantity(b)
                    )))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            list.push(c);
        }
        Ok(Self { list, splits })
    }

    /// The cluster `row` uses (None: the run's).
    pub fn of(&self, row: &Row) -> Option<&Cluster> {
        let split = self.split_of(row)?;
        self.list
            .iter()
            .find(|c| c.settings == split.server && c.memory == split.memory)
    }

    /// The server settings of `row`'s own cluster (empty: the run's cluster).
    pub fn server(&self, row: &Row) -> BTreeMap<String, String> {
        self.split_of(row)
            .map(|s| s.server.clone())
            .unwrap_or_default()
    }

    fn split_of(&self, row: &Row) -> Option<&Split> {
        let name = row
            .name
            .strip_suffix(crate::blocks::AA_SUFFIX)
            .unwrap_or(&row.name);
        self.splits.get(name)
    }

    /// The settings `row`'s sessions start with.
    pub fn session(&self, row: &Row) -> BTreeMap<String, String> {
        self.split_of(row)
            .map(|s| s.session.clone())
            .unwrap_or_default()
    }
}

/// Runs a PostgreSQL program as the cluster's owner (`postgres` when we are root);
/// its output is dropped (a postmaster must not hold our pipes).
fn as_owner(program: &Path, args: &[&std::ffi::OsStr]) -> Result<()> {
    let mut cmd = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    };
    let status = cmd
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .with_context(|| format!("running {}", program.display()))?;
    if !status.success() {
        bail!("{} failed ({status})", program.display());
    }
    Ok(())
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Writes a file only its owner may read (mode 0600 from the start).
fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

fn give_to_owner(path: &Path) -> Result<()> {
    if is_root() {
        let status = Command::new("chown").arg("postgres:").arg(path).status()?;
        if !status.success() {
            bail!("chown postgres {}", path.display());
        }
    }
    Ok(())
}
