//! The search of one row and workload, shared by both targets: a closed-loop warm-up
//! probe, then the open-loop rate search whose steps are judged by `measure::evaluate`.
//! What differs between targets (whose CPU can be read, whether the database can be
//! asked how many writes it applied) is behind [`Probe`].
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};

use crate::matrix::{Load, Row, Workload};
use crate::measure::ids::{check_ids, IdCheck, PatchOutcomes};
use crate::measure::oha::{Method, Oha, Side, SideResult};
use crate::measure::procfs;
use crate::measure::remote::Scrape;
use crate::measure::search::Search;
use crate::measure::{check_integrity, evaluate, Step, WriteCounts};
use crate::results::{CommonLoad, SearchResult};

/// CPU clock ticks consumed so far, where the target can read them.
#[derive(Debug, Clone, Copy, Default)]
pub struct Ticks {
    pub server: Option<u64>,
    pub postgres: Option<u64>,
    /// The server's user and system time apart, where its process is visible.
    pub server_split: Option<procfs::CpuSplit>,
}

/// What a target can observe around a step.
pub trait Probe {
    fn ticks(&mut self) -> Ticks;
    fn server_peak_rss_kib(&mut self) -> Option<u64>;
    /// sum(version) over all users, where the database is reachable.
    fn applied_writes(&mut self) -> Result<Option<i64>>;
    /// The server's own counters, when it has `metrics`.
    fn scrape(&mut self) -> Result<Option<Scrape>>;
    /// Every user's `version`, where the database is reachable: the per-id write check.
    fn versions(&mut self) -> Result<Option<HashMap<i64, i64>>> {
        Ok(None)
    }
    /// Each CPU's (busy, total) ticks so far, where the target's CPUs are this
    /// machine's (see `procfs::cpu_times`).
    fn cpu_times(&mut self) -> Vec<(u64, u64)> {
        Vec::new()
    }
    /// The machine's speed on each of its CPUs (see `measure::calibrate`), where the
    /// target's CPUs are this machine's.
    fn machine_speed(&mut self) -> Result<crate::measure::calibrate::Machine> {
        Ok(Default::default())
    }
    /// Brings the database to the same state before every search, where it is
    /// reachable: dead rows vacuumed, dirty pages checkpointed.
    fn settle(&mut self) -> Result<()> {
        Ok(())
    }
    /// PostgreSQL's checkpoints and autovacuum runs on `users` so far, where reachable.
    fn background(&mut self) -> Result<Option<Background>> {
        Ok(None)
    }
    /// The stored email of each of `ids`, where the database is reachable.
    fn emails(&mut self, ids: &[i64]) -> Result<Option<HashMap<i64, String>>> {
        let _ = ids;
        Ok(None)
    }
    /// Whether the server is to be profiled (`--profile`, where it runs on this machine).
    fn profiles(&self) -> bool {
        false
    }
    /// Starts recording the server's profile for `secs` (see `local::profile`).
    fn profile_start(&mut self, tag: &str, secs: f64, title: &str) -> Result<()> {
        let _ = (tag, secs, title);
        Ok(())
    }
    /// Ends the recording; `requests` were answered in its window.
    fn profile_finish(&mut self, requests: u64) -> Result<Option<crate::results::ServerProfile>> {
        let _ = requests;
        Ok(None)
    }
}

/// PostgreSQL's background work that could decide a step (counters, or their change
/// over a step).
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Background {
    pub checkpoints: i64,
    pub autovacuums: i64,
}

/// PATCHes sent over a whole search, the probe included: what a per-Job integrity
/// check compares with the database's applied count.
#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct Tally {
    pub acked: u64,
    pub unacked: u64,
}

impl Tally {
    fn add(&mut self, results: &[(Side, SideResult)]) {
        for (side, r) in results {
            if side.method == Method::Patch {
                self.acked += r.count(200);
                self.unacked += r.replies() - r.count(200) + r.transport_errors();
            }
        }
    }
}

pub struct Driver<'a> {
    pub oha: &'a Oha,
    pub load: &'a Load,
    /// Where oha's raw outputs and the step files go.
    pub raw: &'a Path,
    pub progress: &'a dyn Fn(&str),
    /// The emails of oha's bodies file, read at the first email check.
    pub sent_emails: std::sync::OnceLock<Result<HashSet<String>, String>>,
}

impl<'a> Driver<'a> {
    pub fn new(oha: &'a Oha, load: &'a Load, raw: &'a Path, progress: &'a dyn Fn(&str)) -> Self {
        Driver {
            oha,
            load,
            raw,
            progress,
            sent_emails: Default::default(),
        }
    }
}

/// The GET and PATCH processes of a mix at `rate` (0: closed loop).
///
/// `connections` are shared out by the mix (at least [`MIN_SIDE_CONNECTIONS`] each), and
/// in open loop each side also gets `rate_side × SLO` connections (Little's law; the
/// majority up to [`MAX_SIDE_CONNECTIONS`]): while its requests take no longer than the
/// SLO on average, its connections carry its rate, and once they take longer the step
/// fails on p99 anyway. So the minority method (PATCH at 90/10, whose commits are slower
/// than the reads a share of connections would be sized by) is never starved before the
/// SLO is. At the cap, the majority side carries
/// its rate while its mean latency is under `cap / rate` (19 ms at 27k/s), well above
/// what a step within a 50 ms p99 shows.
pub fn sides(w: &Workload, rate: f64, connections: u32, slo_p99_ms: f64) -> Vec<Side> {
    let mut v = Vec::new();
    let share = w.get_share();
    let conns = |s: f64| {
        let by_share = ((f64::from(connections) * s).round() as u32).max(MIN_SIDE_CONNECTIONS);
        let by_slo = (rate * s * slo_p99_ms / 1000.0).ceil() as u32;
        // The minority is never capped: it is the side the rule is for.
        let by_slo = if s < 0.5 {
            by_slo
        } else {
            by_slo.min(MAX_SIDE_CONNECTIONS)
        };
        by_share.max(by_slo)
    };
    if w.get_percent > 0 {
        v.push(Side {
            method: Method::Get,
            rate: rate * share,
            connections: conns(share),
        });
    }
    if w.patch_percent > 0 {
        v.push(Side {
            method: Method::Patch,
            rate: rate * (1.0 - share),
            connections: conns(1.0 - share),
        });
    }
    v
}

/// Most connections the SLO rule gives the majority side: within the usual open-file
/// limits of oha and the server, which hold both sides' connections.
pub const MAX_SIDE_CONNECTIONS: u32 = 512;

/// Fewest connections a side of a mix gets.
pub const MIN_SIDE_CONNECTIONS: u32 = 8;

impl Driver<'_> {
    /// Every workload of one row, in order: one search each, seeded by `hints` (best
    /// QPS of earlier repetitions, by workload). Both targets measure a row this way.
    pub fn search_row(
        &self,
        probe: &mut dyn Probe,
        row: &Row,
        workloads: &[Workload],
        rep: u32,
        hints: &BTreeMap<String, f64>,
        tally: &mut Tally,
    ) -> Result<Vec<(String, SearchResult)>> {
        workloads
            .iter()
            .map(|w| {
                let hint = hints.get(&w.name).copied();
                let mut result = self.search(probe, row, w, rep, hint, tally)?;
                if self.load.common_qps > 0.0 {
                    if let Some(capacity) = result.offered {
                        let (mut common, failures) =
                            self.common_load(probe, row, w, rep, capacity, tally, false)?;
                        result.integrity_failures.extend(failures);
                        // The profile: a second window at the same rate, with perf
                        // attached, so that its overhead is not in the measured one.
                        if rep == 1 && probe.profiles() {
                            let (profiled, failures) =
                                self.common_load(probe, row, w, rep, capacity, tally, true)?;
                            common.profile = profiled.profile;
                            result.integrity_failures.extend(failures);
                        }
                        result.common = Some(common);
                    }
                }
                Ok((w.name.clone(), result))
            })
            .collect()
    }

    /// Probe, then search the highest rate that passes; `hint` is an earlier
    /// repetition's result for the same row and workload.
    pub fn search(
        &self,
        probe: &mut dyn Probe,
        row: &Row,
        w: &Workload,
        rep: u32,
        hint: Option<f64>,
        tally: &mut Tally,
    ) -> Result<SearchResult> {
        let l = self.load;
        let metrics = row.serves_metrics();
        // Warm-up and probe: a closed-loop run (every connection busy) warms caches and
        // connections, and its throughput (an upper bound of what passes the SLO) seeds
        // the first repetition's search. Not measured.
        let mut hint = hint;
        let mut integrity_failures = Vec::new();
        if l.warmup_secs > 0.0 {
            let plan = sides(w, 0.0, l.connections, l.slo_p99_ms);
            let before = if w.writes() { probe.versions()? } else { None };
            let results = self.oha.run(&plan, l.warmup_secs, self.raw, "probe")?;
            let paired: Vec<_> = plan.into_iter().zip(results).collect();
            // The probe's writes are checked per id like any step's.
            if let Some(before) = before {
                let ids = self.check_ids(probe, &before, &paired, "probe")?;
                if !ids.ok {
                    integrity_failures.push(format!("in the warm-up probe: {}", ids.describe()));
                }
            }
            for (side, _) in &paired {
                let _ = std::fs::remove_file(crate::measure::oha::db_path(
                    self.raw,
                    "probe",
                    side.method,
                ));
            }
            tally.add(&paired);
            let good: u64 = paired.iter().map(|(_, r)| r.good()).sum();
            let rate = good as f64 / l.warmup_secs;
            (self.progress)(&format!(
                "  {} {} rep {rep} probe (closed loop): {rate:.0}/s good",
                row.name, w.name
            ));
            if hint.is_none() && rate >= crate::measure::search::MIN_QPS {
                hint = Some(rate);
            }
        }
        // After the warm-up, so that every search's first step finds the same state
        // (VACUUM and CHECKPOINT keep the warm cache).
        probe.settle()?;
        let machine = probe.machine_speed()?;
        let mut s = Search::new(l.start_qps, hint, l.max_qps, l.precision, l.max_steps)
            .confirm(l.confirmations);
        let mut steps: Vec<Step> = Vec::new();
        let mut writes_checked = 0;
        while let Some(rate) = s.next_rate() {
            let tag = format!("rep{rep}-{}-{}-step{}", row.slug(), w.name, steps.len() + 1);
            let confirming = s.confirming();
            let mut step = self.measure_step(probe, w, rate, metrics, &tag, tally)?;
            step.confirmation = confirming;
            if let Some(i) = &step.integrity {
                writes_checked += i.acked;
                if !i.ok {
                    eprintln!("!!! INTEGRITY FAILURE at {tag}: {}", i.message);
                    integrity_failures.push(format!("at {:.0} offered: {}", rate, i.message));
                }
            }
            (self.progress)(&format!(
                "  {} {} rep {rep} step {}{}: offered {:.0}/s → {:.0}/s good, p99 {} ms, mix {:.1}% GET, errors {:.2}% → {}",
                row.name,
                w.name,
                steps.len() + 1,
                if confirming { " (confirming)" } else { "" },
                rate,
                step.achieved,
                step.p99_ms.map_or("n/a".into(), |p| format!("{p:.1}")),
                step.get_share * 100.0,
                step.error_rate * 100.0,
                if step.passed { "pass".to_string() } else { format!("FAIL ({})", step.reasons.join("; ")) }
            ));
            s.record(rate, step.passed);
            steps.push(step);
        }
        std::fs::write(
            self.raw
                .join(format!("rep{rep}-{}-{}-steps.json", row.slug(), w.name)),
            serde_json::to_string_pretty(&steps)?,
        )?;
        let mut result = summarize(&s, &steps, rep, integrity_failures, writes_checked);
        result.machine_ns_per_thousand = machine.alu_ns_per_thousand;
        result.machine_memory_ns_per_read = machine.memory_ns_per_read;
        result.machine_fsync_us = machine.fsync_us;
        Ok(result)
    }

    fn measure_step(
        &self,
        probe: &mut dyn Probe,
        w: &Workload,
        rate: f64,
        metrics: bool,
        tag: &str,
        tally: &mut Tally,
    ) -> Result<Step> {
        let l = self.load;
        let plan = sides(w, rate, l.connections, l.slo_p99_ms);
        let (writes_before, versions_before) = if w.writes() {
            (probe.applied_writes()?, probe.versions()?)
        } else {
            (None, None)
        };
        let served_before = if metrics { probe.scrape()? } else { None };
        let background_before = probe.background()?;
        let (t0, oha0, cpus0) = (
            probe.ticks(),
            procfs::reaped_children_ticks(),
            probe.cpu_times(),
        );
        let start = Instant::now();
        let results = self.oha.run(&plan, l.duration_secs, self.raw, tag)?;
        let wall = start.elapsed().as_secs_f64();
        let (t1, oha1, cpus1) = (
            probe.ticks(),
            procfs::reaped_children_ticks(),
            probe.cpu_times(),
        );
        let background = match background_before {
            Some(a) => probe.background()?.map(|b| Background {
                checkpoints: b.checkpoints - a.checkpoints,
                autovacuums: b.autovacuums - a.autovacuums,
            }),
            None => None,
        };
        let paired: Vec<(Side, SideResult)> = plan.into_iter().zip(results).collect();
        let ids = match versions_before {
            Some(before) => Some(self.check_ids(probe, &before, &paired, tag)?),
            None => None,
        };
        for (side, _) in &paired {
            let _ = std::fs::remove_file(crate::measure::oha::db_path(self.raw, tag, side.method));
        }
        tally.add(&paired);
        let mut step = evaluate(rate, l.duration_secs, w.get_share(), &paired, l);
        step.wall_secs = wall;
        step.background = background;
        step.cpu_busy = procfs::busy_shares(&cpus0, &cpus1);
        // Every party's CPU over the same window: from just before oha starts to just
        // after it exits (oha's figure includes writing its per-request log).
        let per_sec = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a) as f64 / procfs::TICKS_PER_SEC / wall),
            _ => None,
        };
        step.cpu.server = per_sec(t0.server, t1.server);
        step.cpu.postgres = per_sec(t0.postgres, t1.postgres);
        step.cpu.oha = oha1.saturating_sub(oha0) as f64 / procfs::TICKS_PER_SEC / wall;
        step.cpu.server_peak_rss_kib = probe.server_peak_rss_kib();
        let applied = match writes_before {
            Some(before) => probe.applied_writes()?.map(|after| after - before),
            None => None,
        };
        let after = match served_before {
            Some(_) => probe.scrape()?,
            None => None,
        };
        let served = served_before
            .zip(after)
            .map(|(a, b)| (b.served.0 - a.served.0, b.served.1 - a.served.1));
        if let Some((a, b)) = served_before.zip(after) {
            let avg = |x: (u64, u64), y: (u64, u64)| {
                let batches = y.0.saturating_sub(x.0);
                (batches > 0).then(|| y.1.saturating_sub(x.1) as f64 / batches as f64)
            };
            let read = avg(a.read_batches, b.read_batches);
            let write = avg(a.write_batches, b.write_batches);
            if read.is_some() || write.is_some() {
                step.avg_batch = Some((read, write));
            }
        }
        if w.writes() && (applied.is_some() || served.is_some()) {
            let find = |m: Method| paired.iter().find(|(s, _)| s.method == m).map(|(_, r)| r);
            let (get, patch) = (find(Method::Get), find(Method::Patch));
            let acked = patch.map_or(0, |p| p.count(200));
            let unacked = patch.map_or(0, |p| p.replies() - p.count(200) + p.transport_errors());
            let transport: u64 = paired.iter().map(|(_, r)| r.transport_errors()).sum();
            step.integrity = Some(check_integrity(&WriteCounts {
                acked,
                unacked,
                transport_errors: transport,
                applied,
                oha_counts: (get.map_or(0, |g| g.count(200)), acked),
                server_counts: served,
            }));
        }
        if let Some(ids) = ids {
            let integrity = step.integrity.get_or_insert_with(|| {
                check_integrity(&WriteCounts {
                    acked: ids.acked,
                    ..WriteCounts::default()
                })
            });
            if !ids.ok {
                integrity.ok = false;
                integrity.message = format!("{}; per id: {}", integrity.message, ids.describe());
            }
            step.ids = Some(ids);
        }
        Ok(step)
    }

    /// The cost of a request at the run's common rate (`common_qps`, the same for every
    /// row; half the row's own confirmed capacity when that is lower, and marked):
    /// CPU per request of each party, the merged percentiles, each CPU's busy share.
    /// CPU per request is CPU time over requests answered, so oha's start-up and drain
    /// around the window add nothing to it.
    #[allow(clippy::too_many_arguments)]
    fn common_load(
        &self,
        probe: &mut dyn Probe,
        row: &Row,
        w: &Workload,
        rep: u32,
        capacity: f64,
        tally: &mut Tally,
        profiled: bool,
    ) -> Result<(CommonLoad, Vec<String>)> {
        let l = self.load;
        let (rate, reduced) = crate::measure::search::common_rate(capacity, l.common_qps);
        let plan = sides(w, rate, l.connections, l.slo_p99_ms);
        let window = if profiled { "profile" } else { "common" };
        let tag = format!("rep{rep}-{}-{}-{window}", row.slug(), w.name);
        let before = if w.writes() { probe.versions()? } else { None };
        let (t0, oha0, cpus0) = (
            probe.ticks(),
            procfs::reaped_children_ticks(),
            probe.cpu_times(),
        );
        if profiled {
            let title = format!("{} · {} at {rate:.0}/s", row.name, w.name);
            probe.profile_start(
                &format!("{}-{}", row.slug(), w.name),
                l.common_secs + 1.0,
                &title,
            )?;
        }
        let results = self.oha.run(&plan, l.common_secs, self.raw, &tag)?;
        let (t1, oha1, cpus1) = (
            probe.ticks(),
            procfs::reaped_children_ticks(),
            probe.cpu_times(),
        );
        let paired: Vec<(Side, SideResult)> = plan.into_iter().zip(results).collect();
        // Its writes are checked per id like any step's.
        let mut failures = Vec::new();
        if let Some(before) = before {
            let ids = self.check_ids(probe, &before, &paired, &tag)?;
            if !ids.ok {
                failures.push(format!(
                    "{} ({rate:.0}/s): {}",
                    if profiled {
                        "in the profiled window at the common rate"
                    } else {
                        "at the common rate"
                    },
                    ids.describe()
                ));
            }
        }
        for (side, _) in &paired {
            let _ = std::fs::remove_file(crate::measure::oha::db_path(self.raw, &tag, side.method));
        }
        // Its PATCHes count in the Job's write check (Kubernetes) like any step's.
        tally.add(&paired);
        let step = evaluate(rate, l.common_secs, w.get_share(), &paired, l);
        let mut all = crate::measure::stats::Latencies::new();
        let mut replies = 0;
        for (_, r) in &paired {
            let _ = all.merge(&r.latencies);
            replies += r.replies();
        }
        let per_request = |ticks: u64| {
            (replies > 0).then(|| ticks as f64 / procfs::TICKS_PER_SEC * 1e6 / replies as f64)
        };
        let delta = |a: Option<u64>, b: Option<u64>| Some(b?.saturating_sub(a?));
        let split = t0.server_split.zip(t1.server_split);
        let common = CommonLoad {
            offered: rate,
            reduced,
            secs: l.common_secs,
            achieved: step.achieved,
            passed: step.passed,
            reasons: step.reasons.clone(),
            p50_ms: all.quantile_ms(0.50),
            p90_ms: all.quantile_ms(0.90),
            p99_ms: all.quantile_ms(0.99),
            p999_ms: all.quantile_ms(0.999),
            p9999_ms: all.quantile_ms(0.9999),
            server_us_per_request: delta(t0.server, t1.server).and_then(per_request),
            server_user_us_per_request: split
                .and_then(|(a, b)| per_request(b.user.saturating_sub(a.user))),
            server_system_us_per_request: split
                .and_then(|(a, b)| per_request(b.system.saturating_sub(a.system))),
            postgres_us_per_request: delta(t0.postgres, t1.postgres).and_then(per_request),
            oha_us_per_request: per_request(oha1.saturating_sub(oha0)),
            cpu_busy: procfs::busy_shares(&cpus0, &cpus1),
            profile: None,
        };
        if profiled {
            let mut common = common;
            common.profile = probe.profile_finish(replies)?;
            (self.progress)(&format!(
                "  {} {} rep {rep} profile at {rate:.0}/s: {}",
                row.name,
                w.name,
                common
                    .profile
                    .as_ref()
                    .map_or("not recorded".to_string(), |p| format!(
                        "{:.0} ms of CPU sampled, {} syscalls and {} context switches per request",
                        p.cpu_ns as f64 / 1e6,
                        p.syscalls_per_request
                            .map_or("n/a".into(), |x| format!("{x:.1}")),
                        p.context_switches_per_request
                            .map_or("n/a".into(), |x| format!("{x:.2}")),
                    )),
            ));
            return Ok((common, failures));
        }
        (self.progress)(&format!(
            "  {} {} rep {rep} common load {rate:.0}/s{}: p99 {} ms, server {} µs/request, PostgreSQL {} µs/request",
            row.name,
            w.name,
            if reduced { " (half its capacity)" } else { "" },
            common.p99_ms.map_or("n/a".into(), |p| format!("{p:.1}")),
            common.server_us_per_request.map_or("n/a".into(), |p| format!("{p:.0}")),
            common.postgres_us_per_request.map_or("n/a".into(), |p| format!("{p:.0}")),
        ));
        Ok((common, failures))
    }

    /// Each id the step's PATCHes touched, from oha's per-request records, against
    /// `version` before and after.
    fn check_ids(
        &self,
        probe: &mut dyn Probe,
        before: &HashMap<i64, i64>,
        paired: &[(Side, SideResult)],
        tag: &str,
    ) -> Result<IdCheck> {
        let after = probe
            .versions()?
            .context("the database answered versions before the step, not after")?;
        let mut patches = PatchOutcomes::default();
        for (side, r) in paired.iter().filter(|(s, _)| s.method == Method::Patch) {
            let db = crate::measure::oha::db_path(self.raw, tag, side.method);
            for (url, status) in crate::measure::oha::read_outcomes(&db)? {
                patches.record(&url, status)?;
            }
            patches.transport_errors += r.transport_errors();
        }
        let mut c = check_ids(before, &after, &patches);
        let written = crate::measure::ids::written_ids(before, &after);
        if let Some(stored) = probe.emails(&written)? {
            let sent = self.sent_emails.get_or_init(|| {
                std::fs::read_to_string(&self.oha.bodies_file)
                    .map_err(anyhow::Error::from)
                    .and_then(|b| crate::measure::ids::sent_emails(&b))
                    .map_err(|e| format!("reading {}: {e:#}", self.oha.bodies_file.display()))
            });
            let sent = sent.as_ref().map_err(|e| anyhow::anyhow!("{e}"))?;
            crate::measure::ids::check_emails(&mut c, &stored, sent);
        }
        Ok(c)
    }
}

/// The search's result: its best passing step, and what failed just above it.
fn summarize(
    s: &Search,
    steps: &[Step],
    rep: u32,
    integrity_failures: Vec<String>,
    writes_checked: u64,
) -> SearchResult {
    // The confirmed rate's weakest passing step: what the build sustained every time.
    let best = s.weakest_at_best(steps);
    let limit_step = steps
        .iter()
        .filter(|st| !st.passed && s.best().is_none_or(|b| st.offered > b))
        .min_by(|a, c| a.offered.total_cmp(&c.offered));
    let limit =
        limit_step.map(|st| format!("{} at {:.0}/s offered", st.reasons.join(", "), st.offered));
    let limit_failures = Some(limit_step.map_or_else(Vec::new, |st| st.failures.clone()));
    let limit_cpu = limit_step.map(|st| (st.cpu.server, st.cpu.postgres, st.cpu.oha));
    let cpu_busy_at_limit = limit_step
        .or(best)
        .map(|st| st.cpu_busy.clone())
        .unwrap_or_default();
    SearchResult {
        repetition: rep,
        qps: best.map_or(0.0, |b| b.achieved),
        offered: best.map(|b| b.offered),
        p99_ms: best.and_then(|b| b.p99_ms),
        get_share: best.map(|b| b.get_share),
        cpu_server: best.and_then(|b| b.cpu.server),
        cpu_postgres: best.and_then(|b| b.cpu.postgres),
        cpu_oha: best.map(|b| b.cpu.oha),
        server_peak_rss_kib: best.and_then(|b| b.cpu.server_peak_rss_kib),
        avg_batch: best.and_then(|b| b.avg_batch),
        cpu_postgres_job: None,
        common: None,
        limit,
        limit_failures,
        limit_cpu,
        cpu_busy_at_limit,
        machine_ns_per_thousand: Vec::new(),
        machine_memory_ns_per_read: Vec::new(),
        machine_fsync_us: None,
        steps: s.steps() as usize,
        integrity_failures,
        writes_checked,
    }
}

/// Every id once (oha picks a random line per request, so ids are uniform; past
/// `scale::MAX_URL_LINES` users, that many drawn uniformly) and a set of distinct valid
/// emails (oha picks a random body line per PATCH).
pub fn write_inputs(urls: &Path, bodies: &Path, base: &str, users: i64) -> Result<()> {
    write_inputs_with(urls, bodies, base, users, crate::scale::Ids::Uniform)
}

/// [`write_inputs`] with the ids drawn from `ids`.
pub fn write_inputs_with(
    urls: &Path,
    bodies: &Path,
    base: &str,
    users: i64,
    ids: crate::scale::Ids,
) -> Result<()> {
    use std::io::Write as _;
    crate::scale::write_urls(urls, base, ids, users)?;
    let mut b = std::io::BufWriter::new(std::fs::File::create(bodies)?);
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for i in 0..10_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        writeln!(
            b,
            "{{\"email\":\"bench{i}.{:x}@example.com\"}}",
            x & 0xffff_ffff
        )?;
    }
    b.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mix(get: u32) -> Workload {
        Workload {
            name: "mix".into(),
            get_percent: get,
            patch_percent: 100 - get,
        }
    }

    #[test]
    fn the_minority_method_gets_enough_connections_for_its_rate_at_the_slo() {
        // 90/10 at 20k/s: PATCH carries 2000/s; at a 50 ms SLO it needs 100 connections,
        // far more than its 10% of 96.
        let s = sides(&mix(90), 20_000.0, 96, 50.0);
        let patch = s.iter().find(|s| s.method == Method::Patch).unwrap();
        assert!((patch.rate - 2000.0).abs() < 1e-6);
        assert_eq!(patch.connections, 100);
        // The rule holds for every mix and rate: the minority's connections carry its
        // rate at the SLO.
        for get in [10, 30, 70, 90] {
            for rate in [100.0, 1_500.0, 7_777.0, 40_000.0] {
                let s = sides(&mix(get), rate, 96, 50.0);
                let minority = s.iter().min_by(|a, b| a.rate.total_cmp(&b.rate)).unwrap();
                assert!(
                    f64::from(minority.connections) >= minority.rate * 0.050,
                    "{minority:?}"
                );
                for side in &s {
                    assert!(side.connections >= MIN_SIDE_CONNECTIONS);
                }
            }
        }
    }

    #[test]
    fn low_rates_and_closed_loop_share_connections_by_the_mix() {
        let s = sides(&mix(90), 1_000.0, 96, 50.0);
        assert_eq!(
            (s[0].connections, s[1].connections),
            (86, MIN_SIDE_CONNECTIONS.max(10))
        );
        let s = sides(&mix(90), 30_000.0, 96, 50.0);
        assert_eq!(
            (s[0].connections, s[1].connections),
            (MAX_SIDE_CONNECTIONS, 150)
        );
        let closed = sides(&mix(10), 0.0, 96, 50.0);
        assert_eq!((closed[0].connections, closed[1].connections), (10, 86));
    }
}
