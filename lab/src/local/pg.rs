//! The database side of a run: schema and seed (the one shared SQL), settings,
//! the integrity counter, and pinning a local cluster to its CPUs.
use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use postgres::{Client, NoTls};

use crate::experiment::{pending_restart_sql, refuse_pending, settings_sql};
use crate::measure::procfs;

use crate::sql::{random_password, APP_ROLE, APP_USER, INDEX, SCHEMA, SEED};

pub fn connect(url: &str) -> Result<Client> {
    Client::connect(url, NoTls)
        .with_context(|| format!("cannot connect to PostgreSQL at {}", redact(url)))
}

/// `url` without its password, for messages: `postgres://u:***@host/db`, or
/// `password=***` in a key=value string.
pub fn redact(url: &str) -> String {
    split_password(url).0.replace(PASSWORD_GONE, "***")
}

/// What stands where a password was, in [`split_password`]'s URL.
const PASSWORD_GONE: &str = "\u{0}gone";

/// `url` without its password, and the password: what a child process gets on its
/// command line (visible to every user of the machine) and in `PGPASSWORD` (not).
pub fn without_password(url: &str) -> (String, Option<String>) {
    let (kept, password) = split_password(url);
    if kept.contains("://") {
        return (kept.replace(&format!(":{PASSWORD_GONE}@"), "@"), password);
    }
    let gone = format!("password={PASSWORD_GONE}");
    let rest: Vec<&str> = kept.split_whitespace().filter(|t| *t != gone).collect();
    (rest.join(" "), password)
}

/// The password of a `postgres://` URL or key=value string, replaced by a marker.
fn split_password(url: &str) -> (String, Option<String>) {
    for scheme in ["postgres://", "postgresql://"] {
        if let Some(rest) = url.strip_prefix(scheme) {
            let Some((userinfo, host)) = rest.split_once('@') else {
                return (url.to_string(), None);
            };
            return match userinfo.split_once(':') {
                Some((user, password)) => (
                    format!("{scheme}{user}:{PASSWORD_GONE}@{host}"),
                    Some(password.to_string()),
                ),
                None => (url.to_string(), None),
            };
        }
    }
    let mut password = None;
    let kept: Vec<String> = url
        .split_whitespace()
        .map(|kv| match kv.strip_prefix("password=") {
            Some(p) => {
                password = Some(p.to_string());
                format!("password={PASSWORD_GONE}")
            }
            None => kv.to_string(),
        })
        .collect();
    (kept.join(" "), password)
}

/// Recreates `users` with `users` rows (ids 1..=users), the index when asked, and
/// fresh statistics; returns how long it took.
pub fn seed(client: &mut Client, users: i64, index: bool) -> Result<Duration> {
    let start = Instant::now();
    client
        .batch_execute(SCHEMA)
        .context("creating the schema")?;
    client
        .batch_execute(APP_ROLE)
        .context("creating the app's role and its grants")?;
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

/// Gives the app's role a fresh random password and returns the URL the server under
/// test connects with: `admin_url` with the app's role and password instead of the
/// superuser (which serves only the seed, the settings and pgbench). Call it after
/// [`seed`]: the role's grant is on the `users` table the seed creates.
pub fn app_login(client: &mut Client, admin_url: &str) -> Result<String> {
    let password = random_password()?;
    client
        .batch_execute(APP_ROLE)
        .context("creating the app's role")?;
    // Letters and digits only: safe in the URL. PostgreSQL is sent its SCRAM verifier,
    // never the password itself (a statement log would show it).
    client
        .batch_execute(&format!(
            "ALTER ROLE {APP_USER} PASSWORD '{}'",
            postgres_protocol::password::scram_sha_256(password.as_bytes())
        ))
        .context("setting the app role's password")?;
    app_url(admin_url, &password)
}

/// `url` (a `postgres://` URL or a key=value string) with the app's role and `password`.
pub fn app_url(url: &str, password: &str) -> Result<String> {
    if let Some(rest) = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))
    {
        let hostpart = rest.split_once('@').map_or(rest, |(_, h)| h);
        return Ok(format!("postgres://{APP_USER}:{password}@{hostpart}"));
    }
    if url.contains('=') {
        let kept: Vec<&str> = url
            .split_whitespace()
            .filter(|kv| !kv.starts_with("user=") && !kv.starts_with("password="))
            .collect();
        return Ok(format!(
            "{} user={APP_USER} password={password}",
            kept.join(" ")
        ));
    }
    bail!("cannot read {:?} as a PostgreSQL URL", redact(url))
}

/// `url` (a `postgres://` URL or a key=value string) naming database `db` instead.
pub fn with_database(url: &str, db: &str) -> Result<String> {
    if let Some(rest) = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))
    {
        let (before_query, query) = rest
            .split_once('?')
            .map_or((rest, None), |(a, q)| (a, Some(q)));
        let authority = before_query
            .split_once('/')
            .map_or(before_query, |(a, _)| a);
        // A `dbname` parameter would win over the path: it goes.
        let kept: Vec<&str> = query
            .into_iter()
            .flat_map(|q| q.split('&'))
            .filter(|kv| !kv.is_empty() && !kv.starts_with("dbname="))
            .collect();
        let query = if kept.is_empty() {
            String::new()
        } else {
            format!("?{}", kept.join("&"))
        };
        return Ok(format!("postgres://{authority}/{db}{query}"));
    }
    if url.contains('=') {
        if url.contains("dbname =") || url.contains("dbname= ") {
            bail!("write dbname=NAME without spaces in the key=value string");
        }
        let kept: Vec<&str> = url
            .split_whitespace()
            .filter(|kv| !kv.starts_with("dbname="))
            .collect();
        return Ok(format!("{} dbname={db}", kept.join(" ")));
    }
    bail!("cannot read the PostgreSQL URL as a URL or key=value string")
}

/// What a run may do to the server's settings (`ALTER SYSTEM`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SettingsScope {
    /// The script's own throwaway cluster: anything (`ALTER SYSTEM RESET ALL` first).
    All,
    /// Your cluster with `--allow-settings`: these names only (reset, then set), each
    /// put back at the end.
    Only(Vec<String>),
    /// Your cluster without it: nothing.
    Nothing,
}

impl SettingsScope {
    /// Applies `settings` within the scope (nothing for [`SettingsScope::Nothing`]).
    pub fn apply(&self, client: &mut Client, settings: &BTreeMap<String, String>) -> Result<()> {
        match self {
            SettingsScope::All => apply_settings(client, settings),
            SettingsScope::Only(names) => {
                if let Some(other) = settings.keys().find(|k| !names.contains(k)) {
                    bail!("setting {other} is not among those the run said it would change");
                }
                run_settings(
                    client,
                    settings,
                    &crate::experiment::scoped_settings_sql(settings, names),
                )
            }
            SettingsScope::Nothing => Ok(()),
        }
    }

    /// Whether `name` may be changed.
    pub fn allows(&self, name: &str) -> bool {
        match self {
            SettingsScope::All => true,
            SettingsScope::Only(names) => names.iter().any(|n| n == name),
            SettingsScope::Nothing => false,
        }
    }
}

/// Resets settings made by earlier rows, then applies `settings` (ALTER SYSTEM + reload),
/// with the statements both targets run.
pub fn apply_settings(client: &mut Client, settings: &BTreeMap<String, String>) -> Result<()> {
    run_settings(client, settings, &settings_sql(settings))
}

fn run_settings(
    client: &mut Client,
    settings: &BTreeMap<String, String>,
    statements: &[String],
) -> Result<()> {
    for statement in statements {
        client
            .batch_execute(statement)
            .with_context(|| format!("{statement} (needs a superuser)"))?;
    }
    std::thread::sleep(Duration::from_millis(200));
    let pending: String = client
        .query_one(&pending_restart_sql(settings), &[])?
        .get(0);
    refuse_pending(&pending)
}

/// Sum of all `version` counters: how many updates PostgreSQL has applied.
pub fn applied_writes(client: &mut Client) -> Result<i64> {
    Ok(client
        .query_one("SELECT coalesce(sum(version), 0)::bigint FROM users", &[])?
        .get(0))
}

/// Every user's `version`: how many updates each id has had.
pub fn versions(client: &mut Client) -> Result<std::collections::HashMap<i64, i64>> {
    Ok(client
        .query("SELECT id, version FROM users", &[])?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}

/// The same database state before every search: the previous search's dead rows
/// vacuumed and its dirty pages written, so neither autovacuum (off for the run, see
/// matrix.toml) nor a checkpoint is owed to an earlier search.
pub fn settle(client: &mut Client) -> Result<()> {
    // Two calls: one multi-statement string would run as one transaction, where
    // VACUUM is refused.
    client
        .batch_execute("VACUUM users")
        .context("VACUUM before a search")?;
    client
        .batch_execute("CHECKPOINT")
        .context("CHECKPOINT before a search")
}

/// Checkpoints so far (timed and requested) and autovacuum runs on `users`. The
/// checkpoint counters moved to `pg_stat_checkpointer` in PostgreSQL 17.
pub fn background(client: &mut Client) -> Result<crate::measure::driver::Background> {
    let version: i32 = client
        .query_one("SELECT current_setting('server_version_num')::int", &[])?
        .get(0);
    let checkpoints = if version >= 170_000 {
        "SELECT num_timed + num_requested FROM pg_stat_checkpointer"
    } else {
        "SELECT checkpoints_timed + checkpoints_req FROM pg_stat_bgwriter"
    };
    let row = client.query_one(
        &format!(
            "SELECT ({checkpoints}), \
             coalesce((SELECT autovacuum_count FROM pg_stat_user_tables WHERE relname = 'users'), 0)"
        ),
        &[],
    )?;
    Ok(crate::measure::driver::Background {
        checkpoints: row.get(0),
        autovacuums: row.get(1),
    })
}

/// The stored email of each of `ids`.
pub fn emails(client: &mut Client, ids: &[i64]) -> Result<std::collections::HashMap<i64, String>> {
    Ok(client
        .query("SELECT id, email FROM users WHERE id = ANY($1)", &[&ids])?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_stay_out_of_messages_and_command_lines() {
        let url = "postgres://admin:s3cret@127.0.0.1:5432/db?sslmode=disable";
        assert_eq!(
            redact(url),
            "postgres://admin:***@127.0.0.1:5432/db?sslmode=disable"
        );
        assert_eq!(
            without_password(url),
            (
                "postgres://admin@127.0.0.1:5432/db?sslmode=disable".to_string(),
                Some("s3cret".to_string())
            )
        );
        let kv = "host=db password=s3cret user=admin";
        assert_eq!(redact(kv), "host=db password=*** user=admin");
        assert_eq!(
            without_password(kv),
            ("host=db user=admin".to_string(), Some("s3cret".to_string()))
        );
        let bare = "postgres://postgres@127.0.0.1:1/postgres";
        assert_eq!(without_password(bare), (bare.to_string(), None));
        let Err(e) = connect("postgres://u:s3cret@127.0.0.1:1/x") else {
            panic!("nothing listens on port 1")
        };
        let e = format!("{e:#}");
        assert!(!e.contains("s3cret") && e.contains("u:***@"), "{e}");
    }

    #[test]
    fn the_app_url_swaps_in_the_app_role() {
        assert_eq!(
            app_url("postgres://postgres@127.0.0.1:5432/postgres", "pw").unwrap(),
            "postgres://perflab_app:pw@127.0.0.1:5432/postgres"
        );
        assert_eq!(
            app_url("postgresql://admin:secret@db:6432/x?sslmode=require", "pw").unwrap(),
            "postgres://perflab_app:pw@db:6432/x?sslmode=require"
        );
        assert_eq!(
            app_url("host=db user=admin password=s dbname=x", "pw").unwrap(),
            "host=db dbname=x user=perflab_app password=pw"
        );
        assert!(app_url("nonsense", "pw").is_err());
        assert_eq!(
            with_database("postgres://a:b@h:1/postgres?sslmode=disable", "x").unwrap(),
            "postgres://a:b@h:1/x?sslmode=disable"
        );
        assert_eq!(
            with_database("postgres://h:1", "x").unwrap(),
            "postgres://h:1/x"
        );
        assert_eq!(
            with_database("host=h dbname=p user=u", "x").unwrap(),
            "host=h user=u dbname=x"
        );
        let a = random_password().unwrap();
        assert_eq!(a.len(), 24);
        assert!(a.bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_ne!(a, random_password().unwrap());
    }
}
