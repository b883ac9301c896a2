//! The database side of a run: schema and seed (the one shared SQL), settings,
//! the integrity counter, and pinning a local cluster to its CPUs.
use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use postgres::{Client, NoTls};

use crate::procfs;

pub const SCHEMA: &str = include_str!("../../sql/schema.sql");
pub const INDEX: &str = include_str!("../../sql/index.sql");
pub const SEED: &str = include_str!("../../sql/seed.sql");

pub fn connect(url: &str) -> Result<Client> {
    Client::connect(url, NoTls).with_context(|| format!("cannot connect to PostgreSQL at {url}"))
}

/// Recreates `users` with `users` rows (ids 1..=users), the index when asked, and
/// fresh statistics; returns how long it took.
pub fn seed(client: &mut Client, users: i64, index: bool) -> Result<Duration> {
    let start = Instant::now();
    client
        .batch_execute(SCHEMA)
        .context("creating the schema")?;
    client.execute(SEED, &[&users]).context("seeding users")?;
    if index {
        client.batch_execute(INDEX).context("creating the index")?;
    }
    client
        .batch_execute("VACUUM ANALYZE users")
        .context("VACUUM ANALYZE")?;
    // Start every row from a clean checkpoint, so the previous row's dirty pages are
    // not written during this row's measurement.
    client.batch_execute("CHECKPOINT").context("CHECKPOINT")?;
    Ok(start.elapsed())
}

/// Resets settings made by earlier rows, then applies `settings` (ALTER SYSTEM + reload).
pub fn apply_settings(client: &mut Client, settings: &BTreeMap<String, String>) -> Result<()> {
    client
        .batch_execute("ALTER SYSTEM RESET ALL")
        .context("ALTER SYSTEM RESET ALL (needs a superuser)")?;
    for (name, value) in settings {
        let quoted = value.replace('\'', "''");
        client
            .batch_execute(&format!("ALTER SYSTEM SET {name} = '{quoted}'"))
            .with_context(|| format!("setting {name} = {value}"))?;
    }
    client.batch_execute("SELECT pg_reload_conf()")?;
    std::thread::sleep(Duration::from_millis(200));
    // Only settings of ours count: a cluster started with command-line options reports
    // those as pending a restart after any reload.
    let names: Vec<String> = settings.keys().cloned().collect();
    let pending: Vec<String> = client
        .query(
            "SELECT name FROM pg_settings WHERE pending_restart AND name = ANY($1)",
            &[&names],
        )?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if !pending.is_empty() {
        bail!(
            "these settings need a PostgreSQL restart and cannot be set per run: {}",
            pending.join(", ")
        );
    }
    Ok(())
}

/// Sum of all `version` counters: how many updates PostgreSQL has applied.
pub fn applied_writes(client: &mut Client) -> Result<i64> {
    Ok(client
        .query_one("SELECT coalesce(sum(version), 0)::bigint FROM users", &[])?
        .get(0))
}

pub fn server_version(client: &mut Client) -> String {
    client
        .query_one("SHOW server_version", &[])
        .map(|r| r.get::<_, String>(0))
        .unwrap_or_else(|_| "unknown".into())
}

/// Pins the postmaster (whose future backends inherit it) and its live children.
pub fn pin(postmaster: u32, cpus: &str) -> Result<()> {
    let mut pids = vec![postmaster];
    pids.extend(procfs::children(postmaster));
    for pid in pids {
        let status = Command::new("taskset")
            .args(["-a", "-p", "-c", cpus, &pid.to_string()])
            .stdout(std::process::Stdio::null())
            .status()
            .context("running taskset")?;
        if !status.success() {
            bail!("taskset could not pin PostgreSQL process {pid} to CPUs {cpus}");
        }
    }
    Ok(())
}

/// The postmaster's pid from a data directory's `postmaster.pid`.
pub fn postmaster_pid(data_dir: &std::path::Path) -> Result<u32> {
    let text = std::fs::read_to_string(data_dir.join("postmaster.pid"))
        .with_context(|| format!("reading {}/postmaster.pid", data_dir.display()))?;
    text.lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .context("postmaster.pid has no pid")
}
