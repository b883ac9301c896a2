//! Driving oha. One oha process sends one method, so a mix runs a GET and a PATCH
//! process side by side, each open-loop at its share of the offered rate
//! (`-q`, `--latency-correction`), and their per-request data are merged afterwards.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::measure::stats::Latencies;

/// How long past its `-z` an oha process may run (its start-up with many connections,
/// its last replies, its SQLite log) before the lab stops it: oha in rate mode can wait
/// forever for requests on connections the server closed, and no load loop here runs
/// unbounded.
pub const GRACE_SECS: f64 = 20.0;

/// Waits for oha, stopping it (and failing) once it has run `secs` + [`GRACE_SECS`].
pub fn wait_bounded(mut child: std::process::Child, secs: f64) -> Result<std::process::Output> {
    let deadline =
        std::time::Instant::now() + std::time::Duration::from_secs_f64(secs + GRACE_SECS);
    loop {
        if child.try_wait().context("waiting for oha")?.is_some() {
            return child.wait_with_output().context("waiting for oha");
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "oha did not finish within {:.0} s of its {secs} s and was stopped (it waits for replies on connections the server closed)",
                GRACE_SECS
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// What one oha process saw.
#[derive(Debug, Clone, Default)]
pub struct SideResult {
    /// Replies by HTTP status.
    pub status: BTreeMap<u16, u64>,
    /// Requests that got no reply, by oha's error message.
    pub errors: BTreeMap<String, u64>,
    /// Latency of every reply (corrected for coordinated omission).
    pub latencies: Latencies,
    /// How late oha's scheduler released requests against its rate's timetable (see
    /// [`Schedule`]); None in closed loop.
    pub schedule: Option<Schedule>,
}

/// The open-loop scheduler, seen from oha's per-request records: request i of a rate q
/// is due at i/q after oha's start; its `start_latency_correction` is when the
/// scheduler released it, and its `start` when a connection took it (both in seconds
/// from the same start as the timetable).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Schedule {
    /// 99th percentile and maximum of release − due, in ms.
    pub lag_p99_ms: f64,
    pub lag_max_ms: f64,
    /// 99th percentile of start − release: waiting for a free connection, in ms.
    pub wait_p99_ms: f64,
}

impl Schedule {
    /// From the release times and connection waits (seconds) of every reply of a side
    /// at `qps`, `missing` requests having got no reply (oha records replies only).
    /// A reply ranked k had at least k and at most k + `missing` requests due before
    /// it, so its lag is taken as release − (k + missing)/q, at least 0: the lower
    /// bound, so that errors (judged on their own) never pass for a late scheduler.
    pub fn from_records(
        mut released: Vec<f64>,
        mut waits: Vec<f64>,
        missing: u64,
        qps: f64,
    ) -> Option<Self> {
        if released.is_empty() || qps <= 0.0 {
            return None;
        }
        released.sort_by(f64::total_cmp);
        let mut lags: Vec<f64> = released
            .iter()
            .enumerate()
            .map(|(k, t)| (t - (k as u64 + missing) as f64 / qps).max(0.0))
            .collect();
        lags.sort_by(f64::total_cmp);
        waits.sort_by(f64::total_cmp);
        Some(Self {
            lag_p99_ms: quantile(&lags, 0.99) * 1000.0,
            lag_max_ms: lags.last().copied().unwrap_or(0.0) * 1000.0,
            wait_p99_ms: quantile(&waits, 0.99).max(0.0) * 1000.0,
        })
    }
}

/// The q-quantile of sorted values (nearest rank); 0 when empty.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
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

/// The HTTP method one oha process sends: the API's two.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Method {
    #[serde(rename = "GET")]
    Get,
    #[serde(rename = "PATCH")]
    Patch,
}

impl Method {
    /// As HTTP spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Patch => "PATCH",
        }
    }
    /// As file names spell it.
    pub fn lower(self) -> &'static str {
        match self {
            Method::Get => "get",
            Method::Patch => "patch",
        }
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One process of a pair; `rate` 0 runs it closed loop.
#[derive(Debug, Clone, Serialize)]
pub struct Side {
    pub method: Method,
    pub rate: f64,
    pub connections: u32,
}

/// Everything oha needs that does not change from step to step.
pub struct Oha {
    pub binary: PathBuf,
    pub cpus: Option<String>,
    /// A niceness for oha (negative: ahead of the other processes on its CPUs, so the
    /// load generator is not what a shared CPU starves first); None: inherited.
    pub nice: Option<i32>,
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

    /// oha for one side over `secs`, its JSON summary to `json`: open loop at the
    /// side's rate, closed loop when it is 0.
    pub fn command(&self, side: &Side, secs: f64, json: &Path) -> Command {
        let mut argv: Vec<std::ffi::OsString> = Vec::new();
        if let Some(n) = self.nice {
            argv.extend(["nice".into(), "-n".into(), n.to_string().into()]);
        }
        if let Some(cpus) = &self.cpus {
            argv.extend(["taskset".into(), "-c".into(), cpus.into()]);
        }
        argv.push(self.binary.clone().into());
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..]);
        cmd.args(["--no-tui", "-w", "--disable-compression"])
            .arg("-z")
            .arg(format!("{}ms", (secs * 1000.0).round() as u64));
        if side.rate > 0.0 {
            cmd.arg("-q").arg(format!("{:.3}", side.rate));
        }
        cmd.arg("-c")
            .arg(side.connections.to_string())
            .args(["--output-format", "json", "-o"])
            .arg(json)
            .args(["-m", side.method.as_str()]);
        if side.method == Method::Patch {
            cmd.args(["-T", "application/json", "-Z"])
                .arg(&self.bodies_file);
        }
        cmd.arg("--urls-from-file").arg(&self.urls_file);
        cmd
    }

    /// Runs the sides concurrently for `secs` seconds; raw outputs go to `dir/tag-*`.
    pub fn run(&self, sides: &[Side], secs: f64, dir: &Path, tag: &str) -> Result<Vec<SideResult>> {
        let mut running = Vec::new();
        for side in sides {
            let db = db_path(dir, tag, side.method);
            let json = db.with_extension("json");
            let _ = std::fs::remove_file(&db);
            let mut cmd = self.command(side, secs, &json);
            cmd.arg("--latency-correction").arg("--db-url").arg(&db);
            cmd.stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped());
            let child = cmd
                .spawn()
                .with_context(|| format!("starting {}", self.binary.display()))?;
            running.push((child, json, db));
        }
        // On any error the sides not yet waited for are stopped: an oha left running
        // would load the server during the next window.
        struct StopRest(Vec<Option<std::process::Child>>);
        impl Drop for StopRest {
            fn drop(&mut self) {
                for mut c in self.0.drain(..).flatten() {
                    let _ = c.kill();
                    let _ = c.wait();
                }
            }
        }
        let (children, files): (Vec<_>, Vec<_>) = running
            .into_iter()
            .map(|(c, j, d)| (Some(c), (j, d)))
            .unzip();
        let mut rest = StopRest(children);
        let mut results = Vec::new();
        for (k, (json, db)) in files.into_iter().enumerate() {
            let child = rest.0[k].take().context("oha was waited for twice")?;
            let out = wait_bounded(child, secs)?;
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
            read_records(&db, side_rate(sides, results.len()), &mut side)?;
            results.push(side);
        }
        Ok(results)
    }
}

/// Where a run tagged `tag` leaves the per-request log of its `method` side.
pub fn db_path(dir: &Path, tag: &str, method: Method) -> PathBuf {
    dir.join(format!("{tag}-{}.sqlite", method.lower()))
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

fn side_rate(sides: &[Side], i: usize) -> f64 {
    sides.get(i).map_or(0.0, |s| s.rate)
}

/// Per-request latencies and the scheduler's timetable from oha's SQLite output
/// (`--db-url`).
fn read_records(db: &Path, qps: f64, into: &mut SideResult) -> Result<()> {
    into.latencies = Latencies::new();
    if !db.exists() {
        return Ok(()); // no reply at all: oha writes no database
    }
    let conn =
        rusqlite::Connection::open(db).with_context(|| format!("opening {}", db.display()))?;
    let mut stmt = conn.prepare("SELECT duration, start, start_latency_correction FROM oha")?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, f64>(0)?,
            r.get::<_, f64>(1)?,
            r.get::<_, Option<f64>>(2)?,
        ))
    })?;
    let (mut released, mut waits) = (Vec::new(), Vec::new());
    for row in rows {
        let (duration, start, release) = row?;
        into.latencies.record_secs(duration);
        if let Some(release) = release {
            released.push(release);
            waits.push(start - release);
        }
    }
    into.schedule = Schedule::from_records(released, waits, into.transport_errors(), qps);
    Ok(())
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

    #[test]
    fn scheduler_lag_is_release_time_against_the_rates_timetable() {
        // 1000/s: due every ms; released on time (50 µs after due).
        let on_time: Vec<f64> = (0..1000).map(|i| 0.000_05 + i as f64 / 1000.0).collect();
        let s = Schedule::from_records(on_time.clone(), vec![0.0; 1000], 0, 1000.0).unwrap();
        assert!(s.lag_max_ms < 0.06, "{s:?}");
        // Ten requests got no reply: the later replies rank lower than their due
        // index, and the lower bound does not count that as lag.
        let with_gaps: Vec<f64> = on_time
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 100 != 0)
            .map(|(_, t)| *t)
            .collect();
        let s = Schedule::from_records(with_gaps, vec![0.0; 990], 10, 1000.0).unwrap();
        assert!(s.lag_p99_ms < 0.06, "{s:?}");
        // The scheduler stalls 30 ms at request 500 and catches up by request 540.
        let mut late = on_time;
        for (i, t) in late.iter_mut().enumerate().take(540).skip(500) {
            *t += (30.0 - (i - 500) as f64 * 0.75) / 1000.0;
        }
        let waits: Vec<f64> = (0..1000)
            .map(|i| if i < 980 { 0.001 } else { 0.2 })
            .collect();
        let s = Schedule::from_records(late, waits, 0, 1000.0).unwrap();
        assert!((s.lag_max_ms - 30.0).abs() < 0.1, "{s:?}");
        assert!(s.lag_p99_ms > 20.0, "{s:?}");
        assert!((s.wait_p99_ms - 200.0).abs() < 1e-6, "{s:?}");
        assert_eq!(Schedule::from_records(vec![], vec![], 0, 1000.0), None);
    }
}
