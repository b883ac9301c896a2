//! Measurement, the same on both targets: the search of a row and workload
//! ([`driver`], [`search`]), oha ([`oha`]) and merged percentiles ([`stats`]), CPU
//! accounting from /proc ([`procfs`]), the server as seen over HTTP ([`remote`]), and,
//! here, the verdict on one step (achieved rate, errors, exact mix, merged p99) and the
//! write-integrity check.
use std::collections::BTreeMap;

use serde::Serialize;

pub mod calibrate;
pub mod contract;
pub mod driver;
pub mod failure;
pub mod http;
pub mod ids;
pub mod oha;
pub mod procfs;
pub mod remote;
pub mod search;
pub mod speedo;
pub mod stats;

use crate::matrix::Load;
use crate::measure::failure::{StepFailure, Unsent};
use crate::measure::oha::{Method, SideResult};
use crate::measure::stats::Latencies;

/// Largest accepted distance between the achieved and the requested GET share...
pub const MIX_TOLERANCE: f64 = 0.01;
/// ... unless the step is so small that two requests are worth more than that: oha
/// schedules whole requests, so a 2-second step at 50/s cannot be exact to 1%.
pub const MIX_GRAIN_REQUESTS: f64 = 2.0;

/// Smallest share of the requests a step's rate schedules that the load generator must
/// have sent; below it the step fails and names the load generator as the limit.
pub const MIN_SENT: f64 = 0.99;

/// Largest 99th percentile of oha's scheduler lag (release − due; see
/// [`oha::Schedule`]) a step may have: a fifth of a 50 ms SLO. Beyond it the offered
/// rate was not what the timetable says, and the step fails naming the load generator.
pub const MAX_SCHEDULER_LAG_MS: f64 = 10.0;

#[derive(Debug, Clone, Serialize)]
pub struct SideCounts {
    pub method: String,
    pub rate: f64,
    pub connections: u32,
    pub replies: u64,
    pub good: u64,
    pub status: BTreeMap<u16, u64>,
    pub transport_errors: BTreeMap<String, u64>,
    pub p99_ms: Option<f64>,
    /// oha's scheduler against its timetable, in open loop.
    pub schedule: Option<crate::measure::oha::Schedule>,
}

/// CPU-seconds per wall second (1.0 = one core busy).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Cpu {
    pub server: Option<f64>,
    pub postgres: Option<f64>,
    pub oha: f64,
    pub server_peak_rss_kib: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Integrity {
    /// PATCHes answered 200.
    pub acked: u64,
    /// PATCHes answered otherwise or not at all (each may or may not have been applied).
    pub unacked: u64,
    /// Increase of sum(version) in PostgreSQL over the step (None where the load
    /// generator cannot see the database: on Kubernetes it is checked per Job instead).
    pub applied: Option<i64>,
    /// (GET 200, PATCH 200) by the server's own counters, with `metrics`.
    pub server_counts: Option<(u64, u64)>,
    pub oha_counts: (u64, u64),
    pub ok: bool,
    pub message: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub offered: f64,
    pub secs: f64,
    pub wall_secs: f64,
    /// Good (2xx) replies per second of the step.
    pub achieved: f64,
    pub achieved_ratio: f64,
    pub error_rate: f64,
    /// Share of GETs among all replies (the achieved mix).
    pub get_share: f64,
    pub p50_ms: Option<f64>,
    pub p90_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub p999_ms: Option<f64>,
    /// Requests oha sent (replies and transport errors), against `scheduled`.
    pub sent: u64,
    pub scheduled: f64,
    pub sides: Vec<SideCounts>,
    pub cpu: Cpu,
    pub integrity: Option<Integrity>,
    /// Average requests per coalesced batch (reads, writes), with `coalesce` + `metrics`.
    pub avg_batch: Option<(Option<f64>, Option<f64>)>,
    pub passed: bool,
    /// A re-run of the search's candidate (see `Search::confirm`).
    pub confirmation: bool,
    /// The per-id write check, where the database is reachable.
    pub ids: Option<crate::measure::ids::IdCheck>,
    /// Each CPU's busy share over the step (from /proc/stat), where the target's CPUs
    /// are this machine's.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cpu_busy: Vec<f64>,
    /// Checkpoints and autovacuum runs that happened during the step, where the
    /// database is reachable (the run's settings aim for none).
    pub background: Option<crate::measure::driver::Background>,
    /// Why the step failed (empty when it passed), as values ...
    #[serde(default)]
    pub failures: Vec<StepFailure>,
    /// ... and in words (`failures` rendered, for readers of steps.json).
    pub reasons: Vec<String>,
}

impl search::Measured for Step {
    fn offered(&self) -> f64 {
        self.offered
    }
    fn achieved(&self) -> f64 {
        self.achieved
    }
    fn passed(&self) -> bool {
        self.passed
    }
}

/// Judges a step from what the oha processes saw.
pub fn evaluate(
    offered: f64,
    secs: f64,
    target_get_share: f64,
    sides: &[(crate::measure::oha::Side, SideResult)],
    load: &Load,
) -> Step {
    let mut all = Latencies::new();
    let mut good = 0;
    let mut replies = 0;
    let mut failed = 0;
    let mut get_replies = 0;
    let mut counts = Vec::new();
    for (side, r) in sides {
        // Both histograms have the same bounds, so merging cannot fail.
        let _ = all.merge(&r.latencies);
        good += r.good();
        replies += r.replies();
        failed += (r.replies() - r.good()) + r.transport_errors();
        if side.method == Method::Get {
            get_replies += r.replies();
        }
        counts.push(SideCounts {
            method: side.method.to_string(),
            rate: side.rate,
            connections: side.connections,
            replies: r.replies(),
            good: r.good(),
            status: r.status.clone(),
            transport_errors: r.errors.clone(),
            p99_ms: r.latencies.quantile_ms(0.99),
            schedule: r.schedule,
        });
    }
    let attempted = replies + sides.iter().map(|(_, r)| r.transport_errors()).sum::<u64>();
    let achieved = good as f64 / secs;
    let achieved_ratio = if offered > 0.0 {
        achieved / offered
    } else {
        0.0
    };
    let error_rate = if attempted > 0 {
        failed as f64 / attempted as f64
    } else {
        1.0
    };
    let get_share = if replies > 0 {
        get_replies as f64 / replies as f64
    } else {
        0.0
    };
    let p99_ms = all.quantile_ms(0.99);
    let mut failures = Vec::new();
    if achieved_ratio < load.min_achieved {
        failures.push(StepFailure::Shortfall {
            achieved,
            ratio: achieved_ratio,
            min: load.min_achieved,
        });
    }
    // oha schedules ⌊T·q⌋ requests per process; those it did not send were never
    // offered, and the server cannot be blamed for them.
    let scheduled: f64 = sides.iter().map(|(s, _)| (s.rate * secs).floor()).sum();
    if offered > 0.0 && (attempted as f64) < MIN_SENT * scheduled {
        // oha's scheduler and its connections share one runtime: when oha is short of
        // CPU its scheduler runs late too. Released on time but never sent means the
        // requests queued for a free connection until the deadline: the server answered
        // too slowly for the side's connections (sized for its rate at the SLO, see
        // `driver::sides`). A late scheduler means oha.
        let schedules: Vec<_> = sides.iter().filter_map(|(_, r)| r.schedule).collect();
        let cause = if schedules
            .iter()
            .any(|s| s.lag_p99_ms > MAX_SCHEDULER_LAG_MS)
        {
            Unsent::LoadGenerator
        } else if schedules.is_empty() {
            Unsent::Unknown
        } else {
            Unsent::Connections
        };
        failures.push(StepFailure::Unsent {
            sent: attempted,
            scheduled,
            cause,
        });
    }
    for (side, r) in sides {
        match r.schedule {
            Some(s) if offered > 0.0 && s.lag_p99_ms > MAX_SCHEDULER_LAG_MS => {
                failures.push(StepFailure::SchedulerLag {
                    method: side.method.to_string(),
                    lag_p99_ms: s.lag_p99_ms,
                })
            }
            _ => {}
        }
    }
    if error_rate > load.error_budget {
        failures.push(StepFailure::Errors {
            rate: error_rate,
            budget: load.error_budget,
        });
    }
    match p99_ms {
        Some(p) if p <= load.slo_p99_ms => {}
        Some(p) => failures.push(StepFailure::P99 {
            ms: p,
            slo_ms: load.slo_p99_ms,
        }),
        None => failures.push(StepFailure::NoReplies),
    }
    let tolerance = MIX_TOLERANCE.max(MIX_GRAIN_REQUESTS / replies.max(1) as f64);
    if (get_share - target_get_share).abs() > tolerance {
        failures.push(StepFailure::Mix {
            get_share,
            want: target_get_share,
            tolerance,
        });
    }
    let reasons = failures.iter().map(ToString::to_string).collect();
    Step {
        offered,
        secs,
        wall_secs: secs,
        achieved,
        achieved_ratio,
        error_rate,
        get_share,
        p50_ms: all.quantile_ms(0.5),
        p90_ms: all.quantile_ms(0.9),
        p99_ms,
        p999_ms: all.quantile_ms(0.999),
        sent: attempted,
        scheduled,
        sides: counts,
        cpu: Cpu::default(),
        integrity: None,
        avg_batch: None,
        passed: failures.is_empty(),
        confirmation: false,
        ids: None,
        cpu_busy: Vec::new(),
        background: None,
        failures,
        reasons,
    }
}

/// What a write check compares, over a step or a whole Job.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct WriteCounts {
    /// PATCHes answered 200.
    pub acked: u64,
    /// PATCHes answered otherwise or not at all.
    pub unacked: u64,
    /// Requests (of either method) that got no reply at all.
    pub transport_errors: u64,
    /// Increase of sum(version) in PostgreSQL; `None` where it cannot be read.
    pub applied: Option<i64>,
    /// (GET, PATCH) answered 200, by oha.
    pub oha_counts: (u64, u64),
    /// The same by the server's own counters, with `metrics`.
    pub server_counts: Option<(u64, u64)>,
}

/// Every acknowledged write must have been applied exactly once. A PATCH that failed
/// or got no reply may or may not have been applied, so with failures the applied count
/// must lie between the acknowledged count and acknowledged + failed. The server's own
/// counters (with `metrics`) must match oha's when no reply was lost in transit.
pub fn check_integrity(c: &WriteCounts) -> Integrity {
    let WriteCounts {
        acked,
        unacked,
        transport_errors,
        applied,
        oha_counts,
        server_counts,
    } = *c;
    let mut problems = Vec::new();
    let lo = acked as i64;
    let hi = (acked + unacked) as i64;
    match applied {
        Some(applied) if applied < lo => problems.push(format!(
            "{} acknowledged writes were lost ({applied} applied, {acked} acknowledged)",
            lo - applied
        )),
        Some(applied) if applied > hi => problems.push(format!("{} writes applied that no request explains ({applied} applied, {acked} acknowledged, {unacked} failed)", applied - hi)),
        _ => {}
    }
    if let Some((sg, sp)) = server_counts {
        let (og, op) = oha_counts;
        let agree = if transport_errors == 0 {
            sg == og && sp == op
        } else {
            sg >= og && sp >= op
        };
        if !agree {
            problems.push(format!(
                "server counted {sg} GET / {sp} PATCH 200s, oha {og} / {op}"
            ));
        }
    }
    let ok = problems.is_empty();
    let applied_text = applied.map_or("applied count checked per Job".into(), |a| {
        format!("{a} applied")
    });
    let message = if ok {
        if unacked == 0 {
            format!("{acked} acknowledged writes, {applied_text}")
        } else {
            format!("{acked} acknowledged + {unacked} failed writes, {applied_text}")
        }
    } else {
        problems.join("; ")
    };
    Integrity {
        acked,
        unacked,
        applied,
        server_counts,
        oha_counts,
        ok,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matrix::Matrix;
    use crate::measure::oha::Side;

    fn load() -> Load {
        Matrix::parse(include_str!("../../../tests/ci-matrix.toml"))
            .unwrap()
            .load
    }

    fn side(method: &str, ok: u64, errors: u64, latency: f64) -> (Side, SideResult) {
        let method = if method == "GET" {
            Method::Get
        } else {
            Method::Patch
        };
        let mut r = SideResult::default();
        r.status.insert(200, ok);
        if errors > 0 {
            r.status.insert(503, errors);
        }
        for _ in 0..ok + errors {
            r.latencies.record_secs(latency);
        }
        (
            Side {
                method,
                rate: 0.0,
                connections: 1,
            },
            r,
        )
    }

    #[test]
    fn a_step_the_load_generator_did_not_send_fails_and_says_so() {
        let at = |mut s: (Side, SideResult), rate: f64| {
            s.0.rate = rate;
            s
        };
        // 900/s + 100/s for 2 s schedule 2000 requests.
        let sent_all = [
            at(side("GET", 1800, 0, 0.002), 900.0),
            at(side("PATCH", 200, 0, 0.004), 100.0),
        ];
        assert!(evaluate(1000.0, 2.0, 0.9, &sent_all, &load()).passed);
        let behind = [
            at(side("GET", 1710, 0, 0.002), 900.0),
            at(side("PATCH", 190, 0, 0.004), 100.0),
        ];
        let s = evaluate(1000.0, 2.0, 0.9, &behind, &load());
        assert!(!s.passed);
        assert!(
            s.reasons
                .iter()
                .any(|r| r.starts_with("sent only 1900 of 2000")),
            "{:?}",
            s.reasons
        );
    }

    #[test]
    fn a_step_whose_scheduler_lagged_fails_and_names_the_load_generator() {
        let lagging = |lag: f64| {
            let mut get = side("GET", 1800, 0, 0.002);
            get.0.rate = 900.0;
            get.1.schedule = Some(crate::measure::oha::Schedule {
                lag_p99_ms: lag,
                lag_max_ms: lag,
                wait_p99_ms: 0.0,
            });
            let mut patch = side("PATCH", 200, 0, 0.004);
            patch.0.rate = 100.0;
            evaluate(1000.0, 2.0, 0.9, &[get, patch], &load())
        };
        assert!(lagging(MAX_SCHEDULER_LAG_MS).passed);
        let s = lagging(MAX_SCHEDULER_LAG_MS + 5.0);
        assert!(!s.passed);
        assert!(
            s.reasons
                .iter()
                .any(|r| r.contains("GET scheduler ran 15.0 ms late")
                    && r.contains("oha, not the server")),
            "{:?}",
            s.reasons
        );
    }

    #[test]
    fn an_exact_mix_within_slo_passes() {
        let s = evaluate(
            1000.0,
            2.0,
            0.9,
            &[side("GET", 1800, 0, 0.002), side("PATCH", 200, 0, 0.004)],
            &load(),
        );
        assert!(s.passed, "{:?}", s.reasons);
        assert_eq!(s.achieved, 1000.0);
        assert!((s.get_share - 0.9).abs() < 1e-9);
    }

    #[test]
    fn each_criterion_fails_a_step() {
        let l = load();
        let short = evaluate(
            1000.0,
            2.0,
            0.9,
            &[side("GET", 1600, 0, 0.002), side("PATCH", 180, 0, 0.002)],
            &l,
        );
        assert!(
            !short.passed && short.reasons[0].contains("offered"),
            "{:?}",
            short.reasons
        );
        let errors = evaluate(
            1000.0,
            2.0,
            0.9,
            &[side("GET", 1800, 0, 0.002), side("PATCH", 150, 50, 0.002)],
            &l,
        );
        assert!(
            errors.reasons.iter().any(|r| r.contains("errors")),
            "{:?}",
            errors.reasons
        );
        let slow = evaluate(
            1000.0,
            2.0,
            0.9,
            &[side("GET", 1800, 0, 0.002), side("PATCH", 200, 0, 0.5)],
            &l,
        );
        assert!(
            slow.reasons.iter().any(|r| r.contains("p99")),
            "{:?}",
            slow.reasons
        );
        let mix = evaluate(
            1000.0,
            2.0,
            0.9,
            &[side("GET", 1900, 0, 0.002), side("PATCH", 100, 0, 0.002)],
            &l,
        );
        assert!(
            mix.reasons.iter().any(|r| r.contains("mix")),
            "{:?}",
            mix.reasons
        );
    }

    #[test]
    fn integrity_rules() {
        let c = |acked, unacked, applied, server, transport| {
            check_integrity(&WriteCounts {
                acked,
                unacked,
                transport_errors: transport,
                applied: Some(applied),
                oha_counts: (900, 100),
                server_counts: server,
            })
        };
        assert!(c(100, 0, 100, Some((900, 100)), 0).ok);
        assert!(!c(100, 0, 99, None, 0).ok, "a lost write");
        assert!(!c(100, 0, 101, None, 0).ok, "a phantom write");
        assert!(c(100, 5, 103, None, 2).ok, "failed writes may land");
        assert!(!c(100, 0, 100, Some((899, 100)), 0).ok, "counters disagree");
        let i = c(100, 0, 98, None, 0);
        assert!(i.message.contains("lost"), "{}", i.message);
    }
}
