//! `lab loadgen`: the load generator's side of the Kubernetes target. It runs inside the
//! load-generator Job, next to oha, and does exactly what the local target does per row
//! (probe, rate search, step verdicts, the server's own counters when it has `metrics`),
//! then prints one result line that the runner reads back from `kubectl logs`.
//!
//! The Job cannot reach PostgreSQL (the NetworkPolicy admits only the app and the seed
//! step), so the database's applied-writes count is taken by the runner around the whole
//! Job and compared with the [`Tally`] reported here.
use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::matrix::{Load, Row, Workload};
use crate::measure::driver::{write_inputs, Driver, Probe, Tally, Ticks};
use crate::measure::oha::Oha;
use crate::measure::remote::{Remote, Scrape};
use crate::results::SearchResult;

/// The marker of the one line of the Job's log that carries its result.
pub const MARKER: &str = "PERFLAB-RESULT ";

/// What one Job measures: one row, one repetition, every workload.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    pub row: Row,
    pub load: Load,
    pub workloads: Vec<Workload>,
    pub repetition: u32,
    /// Earlier repetitions' results by workload: they seed the search.
    #[serde(default)]
    pub hints: BTreeMap<String, f64>,
}

/// What one Job reports.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub row: String,
    pub repetition: u32,
    pub oha: String,
    /// One search per workload, in the plan's order.
    pub searches: Vec<(String, SearchResult)>,
    /// Every PATCH the Job sent, probe included.
    pub tally: Tally,
    /// Set when the Job could not measure (server never ready, wrong features...).
    pub error: Option<String>,
}

impl Report {
    pub fn line(&self) -> Result<String> {
        Ok(format!("{MARKER}{}", serde_json::to_string(self)?))
    }

    /// Finds the result line in a Job's log.
    pub fn from_log(log: &str) -> Result<Self> {
        let line = log
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix(MARKER))
            .context("the load generator's log has no result line (did the Job finish?)")?;
        serde_json::from_str(line).context("the load generator's result line is not valid")
    }
}

/// Neither the server's nor PostgreSQL's processes are visible from the Job: the
/// server reports its own CPU time and peak memory on `/stats`, and its counters on
/// `/metrics`; PostgreSQL's CPU is not seen.
struct RemoteProbe<'a> {
    remote: &'a Remote,
    metrics: bool,
    /// From the latest `/stats` sample.
    peak_rss_kib: Option<u64>,
}

impl Probe for RemoteProbe<'_> {
    /// One `/stats` request per sample: the peak RSS comes with the CPU ticks.
    fn ticks(&mut self) -> Ticks {
        let stats = self.remote.stats().unwrap_or_default();
        self.peak_rss_kib = stats.peak_rss_kib;
        Ticks {
            server: stats.cpu_ticks,
            ..Ticks::default()
        }
    }
    fn server_peak_rss_kib(&mut self) -> Option<u64> {
        self.peak_rss_kib
    }
    fn applied_writes(&mut self) -> Result<Option<i64>> {
        Ok(None)
    }
    fn scrape(&mut self) -> Result<Option<Scrape>> {
        if self.metrics {
            self.remote.scrape().map(Some)
        } else {
            Ok(None)
        }
    }
}

/// `http://host:port` → a socket address, retried while DNS catches up.
fn resolve(url: &str, within: Duration) -> Result<SocketAddr> {
    let authority = url
        .strip_prefix("http://")
        .with_context(|| format!("--url must start with http://, got {url:?}"))?
        .trim_end_matches('/');
    let start = Instant::now();
    loop {
        match authority.to_socket_addrs() {
            Ok(mut addrs) => {
                if let Some(a) = addrs.next() {
                    return Ok(a);
                }
            }
            Err(e) if start.elapsed() > within => {
                bail!("could not resolve {authority}: {e}")
            }
            Err(_) => {}
        }
        if start.elapsed() > within {
            bail!("{authority} resolved to no address");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

pub struct Options {
    pub url: String,
    pub plan: PathBuf,
    pub oha: PathBuf,
    pub work: PathBuf,
    pub ready_within: Duration,
}

/// Runs the plan and prints the result line on stdout; progress goes to stderr.
pub fn run(o: &Options) -> Result<Report> {
    let text = std::fs::read_to_string(&o.plan)
        .with_context(|| format!("reading the plan {}", o.plan.display()))?;
    let plan: Plan = serde_json::from_str(&text).context("the plan is not valid")?;
    let oha = Oha {
        binary: o.oha.clone(),
        nice: None,
        cpus: None,
        urls_file: o.work.join("urls.txt"),
        bodies_file: o.work.join("bodies.txt"),
    };
    let mut report = Report {
        row: plan.row.name.clone(),
        repetition: plan.repetition,
        oha: oha.version(),
        searches: vec![],
        tally: Tally::default(),
        error: None,
    };
    if let Err(e) = measure(o, &plan, &oha, &mut report) {
        report.error = Some(format!("{e:#}"));
    }
    println!("{}", report.line()?);
    Ok(report)
}

fn measure(o: &Options, plan: &Plan, oha: &Oha, report: &mut Report) -> Result<()> {
    let addr = resolve(&o.url, o.ready_within)?;
    let remote = Remote { addr };
    remote
        .wait_ready(plan.row.ready_path(), o.ready_within)
        .with_context(|| format!("{} was not ready", o.url))?;
    crate::measure::contract::check_server(&remote, &plan.row, plan.load.users)?;
    // Its PATCHes are in the database's count of the Job's writes.
    report.tally.acked += crate::measure::contract::PROBE_PATCHES;
    std::fs::create_dir_all(&o.work)
        .and_then(|()| std::fs::create_dir_all(o.work.join("raw")))
        .with_context(|| format!("creating {} (it must be writable)", o.work.display()))?;
    write_inputs(
        &oha.urls_file,
        &oha.bodies_file,
        &format!("http://{addr}"),
        plan.load.users,
    )
    .with_context(|| format!("writing oha's inputs into {}", o.work.display()))?;
    let started = Instant::now();
    let progress = |m: &str| eprintln!("[{:>5.1} min] {m}", started.elapsed().as_secs_f64() / 60.0);
    let raw = o.work.join("raw");
    let driver = Driver::new(oha, &plan.load, &raw, &progress);
    let mut probe = RemoteProbe {
        remote: &remote,
        metrics: plan.row.serves_metrics(),
        peak_rss_kib: None,
    };
    report.searches = driver.search_row(
        &mut probe,
        &plan.row,
        &plan.workloads,
        plan.repetition,
        &plan.hints,
        &mut report.tally,
    )?;
    Ok(())
}

/// Where the plan is read from in the Job (the perflab-run ConfigMap).
pub fn default_plan() -> &'static Path {
    Path::new("/etc/perflab/plan.json")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_result_line_among_progress() {
        let r = Report {
            row: "all".into(),
            repetition: 2,
            oha: "oha 1.16.0".into(),
            searches: vec![],
            tally: Tally {
                acked: 7,
                unacked: 1,
            },
            error: None,
        };
        let log = format!("[  0.1 min] probe\n{}\ntrailing noise\n", r.line().unwrap());
        let back = Report::from_log(&log).unwrap();
        assert_eq!(back.tally, r.tally);
        assert_eq!(back.repetition, 2);
        assert!(Report::from_log("no result here").is_err());
        assert!(Report::from_log("PERFLAB-RESULT {not json").is_err());
    }

    #[test]
    fn resolves_only_http_urls() {
        assert!(resolve("https://x:1", Duration::ZERO).is_err());
        let a = resolve("http://127.0.0.1:8080/", Duration::ZERO).unwrap();
        assert_eq!(a.port(), 8080);
    }
}
