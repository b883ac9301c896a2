//! A run against a PostgreSQL the user gave (`--database-url`) leaves it as it was.
//!
//! The run works in a database of its own (`perflab_run_<time>_<pid>`, and the blocks'
//! `…_blocks`, `…_blocks_noindex` and `…_blocks_<k>` for rows with session settings),
//! which it creates and drops: it never touches a
//! table it did not create. The app's role `perflab_app` is created if missing and
//! dropped at the end, or, if it was there, its password and settings are put back.
//! The server's settings (`ALTER SYSTEM`) change only with `--allow-settings`, and then
//! only those the matrix names: each one's entry in `postgresql.auto.conf` is put back
//! at the end (or removed, if it had none); no other entry is touched.
//!
//! What to undo is written to a journal of this run's own (mode 0600: it holds the
//! URL) before anything changes, and removed once undone: a run that fails undoes it on
//! its way out (Drop), and one killed by Ctrl-C is undone by `scripts/run-matrix.sh`'s
//! exit trap, which calls `lab restore --journal` with the path it gave the run.
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use postgres::Client;
use serde::{Deserialize, Serialize};

use super::pg;
use crate::sql::APP_USER;

/// What was there before, to put back.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Journal {
    /// The user's URL (a superuser's), through which everything is undone.
    pub admin_url: String,
    /// The databases the run may create, all dropped at the end.
    pub databases: Vec<String>,
    /// The app's role before the run: `None` when it did not exist.
    pub role: Option<RoleBefore>,
    /// The settings the run may change, each with its entry in `postgresql.auto.conf`
    /// before the run (`None`: no entry); `None` when it may change none.
    pub settings: Option<Vec<(String, Option<String>)>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RoleBefore {
    /// `pg_authid.rolpassword` (a hash), or none.
    pub password: Option<String>,
    /// Its settings for every database (`ALTER ROLE … SET`), as `name=value`.
    pub settings: Vec<String>,
}

/// The database a run of this process works in.
pub fn database_name() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!("perflab_run_{secs}_{}", std::process::id())
}

/// Where a run's journal is kept unless it is given one (the script gives its own).
pub fn journal_path(root: &Path) -> PathBuf {
    root.join("target")
        .join(format!("lab-sandbox-{}.json", std::process::id()))
}

/// What a run against `--database-url` changes, in words (for `--check`).
pub fn changes(allow_settings: bool) -> Vec<String> {
    vec![
        "creates a database of its own (perflab_run_<time>_<pid>, and …_blocks, …_blocks_noindex, …_blocks_<k> for the blocks) and drops them at the end".into(),
        format!("creates the role {APP_USER} if missing (dropped at the end), else sets its password and settings for the run and puts them back"),
        if allow_settings {
            "changes the server settings the matrix names ([postgres] and the rows', with ALTER SYSTEM) and no other, and puts each one's postgresql.auto.conf entry back at the end".into()
        } else {
            "leaves the server's settings alone, so it measures with yours (--allow-settings lets it apply the matrix's [postgres] and puts them back)".into()
        },
        "touches no table, role or database it did not create; a run stopped by Ctrl-C is undone by scripts/run-matrix.sh (or `lab restore`)".into(),
    ]
}

/// A run's database in the user's cluster, undone when dropped (or by [`Sandbox::done`]).
pub struct Sandbox {
    journal: Journal,
    path: PathBuf,
    url: String,
    undone: bool,
}

impl Sandbox {
    /// Notes what is there, writes the journal, then creates the run's database.
    /// `settings`: the names the run may change (`--allow-settings`), or none.
    pub fn enter(admin_url: &str, settings: Option<&[String]>, path: &Path) -> Result<Self> {
        if path.exists() {
            anyhow::bail!(
                "{} holds what an earlier run against a database of yours did not undo: run `target/release/lab restore --journal {}` first",
                path.display(),
                path.display()
            );
        }
        let mut admin = pg::connect(admin_url)?;
        let name = database_name();
        let url = pg::with_database(admin_url, &name)?;
        let journal = Journal {
            admin_url: admin_url.to_string(),
            databases: [
                name.clone(),
                format!("{name}_blocks"),
                format!("{name}_blocks_noindex"),
            ]
            .into_iter()
            .chain((1..=super::blocks::MAX_EXTRA_DATABASES).map(|k| format!("{name}_blocks_{k}")))
            .collect(),
            role: role_before(&mut admin)?,
            settings: match settings {
                Some(names) => Some(auto_conf(&mut admin, names)?),
                None => None,
            },
        };
        write_journal(path, &journal)?;
        let sandbox = Self {
            url,
            journal,
            path: path.to_path_buf(),
            undone: false,
        };
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .with_context(|| {
                format!("creating the run's database {name} (needs CREATEDB or a superuser)")
            })?;
        // The URL must lead there, not to one of yours (a parameter could override it).
        let mut ours = pg::connect(&sandbox.url)?;
        let current: String = ours.query_one("SELECT current_database()", &[])?.get(0);
        if current != name {
            anyhow::bail!(
                "the URL leads to database {current:?}, not the run's {name:?}: leave the database out of its parameters"
            );
        }
        eprintln!("==> working in a database of its own, {name}: yours are left alone; it is dropped at the end");
        Ok(sandbox)
    }

    /// The settings the run may change (those of the names given that the server knows).
    pub fn settings(&self) -> Vec<String> {
        self.journal
            .settings
            .iter()
            .flatten()
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// The superuser URL of the run's database.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The run's database name (the blocks' are derived from it).
    pub fn name(&self) -> &str {
        &self.journal.databases[0]
    }

    /// Undoes the run now.
    pub fn done(mut self) -> Result<()> {
        self.undone = true;
        undo(&self.journal, &self.path)
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if !self.undone {
            if let Err(e) = undo(&self.journal, &self.path) {
                eprintln!("warning: could not undo the run's changes to your PostgreSQL: {e:#}; the journal {} says what is left", self.path.display());
            }
        }
    }
}

/// `lab restore`: undoes what the journal at `path` lists (nothing without one).
pub fn restore(path: &Path) -> Result<bool> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(false);
    };
    let journal: Journal =
        serde_json::from_str(&text).with_context(|| format!("reading {}", path.display()))?;
    undo(&journal, path)?;
    Ok(true)
}

fn write_journal(path: &Path, journal: &Journal) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(serde_json::to_string_pretty(journal)?.as_bytes())?;
    Ok(())
}

fn role_before(admin: &mut Client) -> Result<Option<RoleBefore>> {
    let Some(row) = admin.query_opt(
        "SELECT rolpassword FROM pg_authid WHERE rolname = $1",
        &[&APP_USER],
    )?
    else {
        return Ok(None);
    };
    let settings: Vec<String> = admin
        .query_opt(
            "SELECT coalesce(s.setconfig, '{}') FROM pg_db_role_setting s \
             JOIN pg_roles r ON r.oid = s.setrole WHERE r.rolname = $1 AND s.setdatabase = 0",
            &[&APP_USER],
        )?
        .map(|r| r.get(0))
        .unwrap_or_default();
    Ok(Some(RoleBefore {
        password: row.get(0),
        settings,
    }))
}

/// Each of `names` the server knows (a module's setting is unknown where the module is
/// not loaded) with its entry in `postgresql.auto.conf` (the last one, as the server
/// reads it), or `None`.
fn auto_conf(admin: &mut Client, names: &[String]) -> Result<Vec<(String, Option<String>)>> {
    let known: Vec<String> = admin
        .query(
            "SELECT name FROM pg_settings WHERE name = ANY($1)",
            &[&names.iter().map(|n| n.to_lowercase()).collect::<Vec<_>>()],
        )?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let names: Vec<&String> = names
        .iter()
        .filter(|n| known.contains(&n.to_lowercase()))
        .collect();
    let rows = admin.query(
        "SELECT name, setting FROM pg_file_settings \
         WHERE sourcefile LIKE '%postgresql.auto.conf' ORDER BY seqno",
        &[],
    )?;
    Ok(names
        .iter()
        .map(|n| {
            let value = rows
                .iter()
                .filter(|r| r.get::<_, String>(0).eq_ignore_ascii_case(n))
                .map(|r| r.get::<_, String>(1))
                .next_back();
            ((*n).clone(), value)
        })
        .collect())
}

fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// Settings whose value is a list: set back element by element (one quoted literal
/// would become one element: `'a, b'`, a single library or schema named "a, b").
const LIST_SETTINGS: [&str; 8] = [
    "search_path",
    "shared_preload_libraries",
    "session_preload_libraries",
    "local_preload_libraries",
    "temp_tablespaces",
    "log_destination",
    "unix_socket_directories",
    "listen_addresses",
];

/// `value` of setting `name` as the right-hand side of `SET name = …`.
fn value_sql(name: &str, value: &str) -> String {
    if LIST_SETTINGS.iter().any(|l| l.eq_ignore_ascii_case(name)) {
        let items: Vec<String> = value
            .split(',')
            .map(|v| v.trim().trim_matches('"'))
            .filter(|v| !v.is_empty())
            .map(literal)
            .collect();
        if items.is_empty() {
            return "''".into();
        }
        return items.join(", ");
    }
    literal(value)
}

/// The statements that put the journal's state back, in order.
pub fn undo_sql(j: &Journal) -> Vec<String> {
    let mut v: Vec<String> = j
        .databases
        .iter()
        .map(|d| format!("DROP DATABASE IF EXISTS {d} WITH (FORCE)"))
        .collect();
    match &j.role {
        None => v.push(format!("DROP ROLE IF EXISTS {APP_USER}")),
        Some(before) => {
            v.push(match &before.password {
                Some(hash) => format!("ALTER ROLE {APP_USER} PASSWORD {}", literal(hash)),
                None => format!("ALTER ROLE {APP_USER} PASSWORD NULL"),
            });
            v.push(format!("ALTER ROLE {APP_USER} RESET ALL"));
            for entry in &before.settings {
                if let Some((name, value)) = entry.split_once('=') {
                    v.push(format!(
                        "ALTER ROLE {APP_USER} SET {name} = {}",
                        value_sql(name, value)
                    ));
                }
            }
        }
    }
    if let Some(settings) = &j.settings {
        for (name, before) in settings {
            v.push(match before {
                Some(value) => format!("ALTER SYSTEM SET {name} = {}", value_sql(name, value)),
                None => format!("ALTER SYSTEM RESET {name}"),
            });
        }
        v.push("SELECT pg_reload_conf()".into());
    }
    v
}

/// Runs [`undo_sql`] (each statement on its own: one failing does not stop the rest),
/// then removes the journal if all went well.
fn undo(j: &Journal, path: &Path) -> Result<()> {
    let mut admin = pg::connect(&j.admin_url)?;
    // A setting the server no longer knows (its module unloaded) holds nothing to reset.
    let failed: Vec<String> = undo_sql(j)
        .into_iter()
        .filter_map(|s| match admin.batch_execute(&s) {
            Err(e)
                if s.starts_with("ALTER SYSTEM RESET ")
                    && e.code() == Some(&postgres::error::SqlState::UNDEFINED_OBJECT) =>
            {
                None
            }
            Err(e) => Some(format!("{s}: {e}")),
            Ok(()) => None,
        })
        .collect();
    if !failed.is_empty() {
        anyhow::bail!("undoing the run: {}", failed.join("; "));
    }
    let _ = std::fs::remove_file(path);
    eprintln!(
        "==> your PostgreSQL is as it was: the run's databases are dropped{}{}",
        if j.role.is_none() {
            ", its role dropped"
        } else {
            ", the role's password and settings put back"
        },
        if j.settings.is_some() {
            ", the settings it changed put back"
        } else {
            ""
        }
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn undoing_puts_back_what_was_there() {
        let j = Journal {
            admin_url: "postgres://u@h/db".into(),
            databases: vec!["perflab_run_1_2".into(), "perflab_run_1_2_blocks".into()],
            role: Some(RoleBefore {
                password: Some("SCRAM-SHA-256$4096:x$y:z".into()),
                settings: vec!["search_path=\"$user\", b".into(), "work_mem=7MB".into()],
            }),
            settings: Some(vec![
                ("work_mem".into(), Some("7MB".into())),
                ("autovacuum".into(), None),
            ]),
        };
        let sql = undo_sql(&j);
        assert_eq!(
            sql[0],
            "DROP DATABASE IF EXISTS perflab_run_1_2 WITH (FORCE)"
        );
        let has = |s: &str| sql.iter().any(|x| x == s);
        assert!(has(
            "ALTER ROLE perflab_app PASSWORD 'SCRAM-SHA-256$4096:x$y:z'"
        ));
        assert!(
            has("ALTER ROLE perflab_app SET search_path = '$user', 'b'"),
            "a list goes back element by element: {sql:?}"
        );
        assert!(has("ALTER ROLE perflab_app SET work_mem = '7MB'"));
        assert!(has("ALTER SYSTEM SET work_mem = '7MB'"));
        assert!(has("ALTER SYSTEM RESET autovacuum"));
        assert!(
            !has("ALTER SYSTEM RESET ALL"),
            "no entry it did not set is touched"
        );
        assert_eq!(sql.last().unwrap(), "SELECT pg_reload_conf()");
        let fresh = Journal {
            role: None,
            settings: None,
            ..j
        };
        let sql = undo_sql(&fresh);
        assert!(sql.contains(&"DROP ROLE IF EXISTS perflab_app".to_string()));
        assert!(!sql.iter().any(|s| s.contains("ALTER SYSTEM")));
    }
}
