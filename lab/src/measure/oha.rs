//! Driving oha. One oha process sends one method, so a mix runs a GET and a PATCH
//! process side by side, each open-loop at its share of the offered rate
//! (`-q`, `--latency-correction`), and their per-request data are merged afterwards.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::measure::stats::Latencies;

/// What one oha process saw.
#[derive(Debug, Clone, Default)]
pub struct SideResult {
    /// Replies by HTTP status.
    pub status: BTreeMap<u16, u64>,
    /// Requests that got no reply, by oha's error message.
    pub errors: BTreeMap<String, u64>,
    /// Latency of every reply (corrected for coordinated omission).
    pub latencies: Latencies,
}

impl SideResult {
    pub fn good(&self) -> u64 {
        self.status
            .iter()
            .filter(|(s, _)| (200..300).contains(*s))
            .map(|(_, n)| n)
            .sum()
    }
    pub fn replies(&self) -> u64 {
        self.status.values().sum()
    }
    pub fn transport_errors(&self) -> u64 {
        self.errors.values().sum()
    }
    pub fn count(&self, status: u16) -> u64 {
        self.status.get(&status).copied().unwrap_or(0)
    }
}

/// One process of a pair; `rate` 0 runs it closed loop.
#[derive(Debug, Clone, Serialize)]
pub struct Side {
    pub method: &'static str,
    pub rate: f64,
    pub connections: u32,
}

/// Everything oha needs that does not change from step to step.
pub struct Oha {
    pub binary: PathBuf,
    pub cpus: Option<String>,
    pub urls_file: PathBuf,
    pub bodies_file: PathBuf,
}

impl Oha {
    pub fn version(&self) -> String {
        Command::new(&self.binary)
            .arg("--version")
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_else(|| "unknown".into())
    }

    /// Runs the sides concurrently for `secs` seconds; raw outputs go to `dir/tag-*`.
    pub fn run(&self, sides: &[Side], secs: f64, dir: &Path, tag: &str) -> Result<Vec<SideResult>> {
        let mut running = Vec::new();
        for side in sides {
            let db = db_path(dir, tag, side.method);
            let json = db.with_extension("json");
            let _ = std::fs::remove_file(&db);
            let mut cmd = match &self.cpus {
                Some(cpus) => {
                    let mut c = Command::new("taskset");
                    c.arg("-c").arg(cpus).arg(&self.binary);
                    c
                }
                None => Command::new(&self.binary),
            };
            cmd.args([
                "--no-tui",
                "--latency-correction",
                "-w",
                "--disable-compression",
            ])
            .arg("-z")
            .arg(format!("{}ms", (secs * 1000.0).round() as u64))
            .arg("-q")
            .arg(format!("{:.3}", side.rate))
            .arg("-c")
            .arg(side.connections.to_string())
            .args(["--output-format", "json", "-o"])
            .arg(&json)
            .arg("--db-url")
            .arg(&db)
            .args(["-m", side.method]);
            if side.method == "PATCH" {
                cmd.args(["-T", "application/json", "-Z"])
                    .arg(&self.bodies_file);
            }
            cmd.arg("--urls-from-file").arg(&self.urls_file);
            cmd.stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped());
            let child = cmd
                .spawn()
                .with_context(|| format!("starting {}", self.binary.display()))?;
            running.push((child, json, db));
        }
        let mut results = Vec::new();
        for (child, json, db) in running {
            let out = child.wait_with_output().context("waiting for oha")?;
            if !out.status.success() {
                bail!(
                    "oha failed ({}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            let summary = std::fs::read_to_string(&json)
                .with_context(|| format!("reading {}", json.display()))?;
            let mut side =
                parse_summary(&summary).with_context(|| format!("parsing {}", json.display()))?;
            side.latencies = read_latencies(&db)?;
            results.push(side);
        }
        Ok(results)
    }
}

/// Where a run tagged `tag` leaves the per-request log of its `method` side.
pub fn db_path(dir: &Path, tag: &str, method: &str) -> PathBuf {
    dir.join(format!("{tag}-{}.sqlite", method.to_lowercase()))
}

/// (URL, status) of every reply in a per-request log (transport errors are not in it).
pub fn read_outcomes(db: &Path) -> Result<Vec<(String, u16)>> {
    if !db.exists() {
        return Ok(Vec::new());
    }
    let conn =
        rusqlite::Connection::open(db).with_context(|| format!("opening {}", db.display()))?;
    let mut stmt = conn.prepare("SELECT url, status FROM oha")?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, u16>(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Status and error counts from oha's JSON summary.
pub fn parse_summary(text: &str) -> Result<SideResult> {
    let v: serde_json::Value = serde_json::from_str(text)?;
    let mut out = SideResult::default();
    if let Some(map) = v["statusCodeDistribution"].as_object() {
        for (k, n) in map {
            out.status
                .insert(k.parse().context("status code")?, n.as_u64().unwrap_or(0));
        }
    } else {
        bail!("no statusCodeDistribution in oha's output");
    }
    if let Some(map) = v["errorDistribution"].as_object() {
        for (k, n) in map {
            out.errors.insert(k.clone(), n.as_u64().unwrap_or(0));
        }
    }
    Ok(out)
}

/// Per-request latencies from oha's SQLite output (`--db-url`).
fn read_latencies(db: &Path) -> Result<Latencies> {
    let mut lat = Latencies::new();
    if !db.exists() {
        return Ok(lat); // no reply at all: oha writes no database
    }
    let conn =
        rusqlite::Connection::open(db).with_context(|| format!("opening {}", db.display()))?;
    let mut stmt = conn.prepare("SELECT duration FROM oha")?;
    let rows = stmt.query_map([], |r| r.get::<_, f64>(0))?;
    for d in rows {
        lat.record_secs(d?);
    }
    Ok(lat)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_oha_summary_counts() {
        let text = r#"{"summary":{"successRate":1.0},"statusCodeDistribution":{"200":95,"503":3,"404":2},
            "errorDistribution":{"connection closed":4,"aborted due to deadline":1}}"#;
        let s = parse_summary(text).unwrap();
        assert_eq!(s.good(), 95);
        assert_eq!(s.replies(), 100);
        assert_eq!(s.transport_errors(), 5);
        assert_eq!(s.count(503), 3);
        assert!(parse_summary("{}").is_err());
    }
}
