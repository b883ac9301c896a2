//! What limited a window, as a value: judged from each CPU's busy share over the load
//! window only (steal excluded) and each party's share of the saturated CPUs, never
//! from text. The Notes render it in words.
use serde::{Deserialize, Serialize};

/// What set a window's throughput.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Limit {
    /// The CPUs the server runs on were saturated, mostly by the server.
    ServerCpu,
    /// The server's pod used its CPU limit: throttled in most quota periods.
    CpuQuota,
    /// The saturated CPUs were mostly PostgreSQL's.
    PostgresCpu,
    /// The saturated CPUs were mostly the load generator's: the cell is a lower bound.
    LoadGenerator,
    /// No CPU was saturated: the closed loop's connections were waiting (commits,
    /// locks, the disk, connection set-up).
    Connections,
    /// An open-loop window whose p99 was over the SLO.
    LatencySlo,
    /// More failed requests than the error budget.
    Errors,
}

impl Limit {
    pub fn words(self) -> &'static str {
        match self {
            Limit::ServerCpu => "server CPU",
            Limit::CpuQuota => "server's CPU limit (throttled)",
            Limit::PostgresCpu => "PostgreSQL CPU",
            Limit::LoadGenerator => "load generator (a lower bound)",
            Limit::Connections => "waiting, no CPU saturated",
            Limit::LatencySlo => "p99 over the SLO",
            Limit::Errors => "errors",
        }
    }
}

/// A server throttled in at least this share of its quota periods was held by its CPU
/// limit.
pub const THROTTLED: f64 = 0.5;

/// A CPU counts as saturated from this busy share (load window only, steal excluded).
pub const SATURATED: f64 = 0.9;

/// One party's CPU time on each CPU over the window, as shares of the window.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Shares {
    pub server: Vec<f64>,
    pub postgres: Vec<f64>,
    pub oha: Vec<f64>,
}

/// What the judgment reads.
#[derive(Debug, Clone)]
pub struct Evidence<'a> {
    /// Each CPU's busy share (steal excluded), over the load window.
    pub busy: &'a [f64],
    /// Each party's share of each CPU (empty where per-CPU accounting is missing).
    pub shares: &'a Shares,
    /// Failed requests over all requests.
    pub error_rate: f64,
    pub error_budget: f64,
    /// For an open-loop window: p99 and the SLO, ms.
    pub p99_over_slo: bool,
    /// How many CPUs oha may use.
    pub oha_cpus: usize,
    /// oha ran ahead of the others on its CPUs (a raised priority): then only a CPU of
    /// its own that it used up makes it the limit.
    pub oha_ahead: bool,
    /// The share of the server's CPU-quota periods it was throttled in (a pod with a
    /// CPU limit), where counted.
    pub throttled: Option<f64>,
}

/// The limit of one window.
pub fn judge(e: &Evidence) -> Limit {
    if e.error_rate > e.error_budget {
        return Limit::Errors;
    }
    if e.p99_over_slo {
        return Limit::LatencySlo;
    }
    if e.throttled.is_some_and(|t| t >= THROTTLED) {
        return Limit::CpuQuota;
    }
    let oha_total: f64 = e.shares.oha.iter().sum();
    if e.oha_cpus > 0 && oha_total >= SATURATED * e.oha_cpus as f64 {
        return Limit::LoadGenerator;
    }
    let saturated: Vec<usize> = (0..e.busy.len())
        .filter(|c| e.busy[*c] >= SATURATED)
        .collect();
    if saturated.is_empty() {
        return Limit::Connections;
    }
    let on = |v: &[f64]| {
        saturated
            .iter()
            .map(|c| v.get(*c).copied().unwrap_or(0.0))
            .sum::<f64>()
    };
    let (server, postgres, oha) = (
        on(&e.shares.server),
        on(&e.shares.postgres),
        on(&e.shares.oha),
    );
    let oha = if e.oha_ahead { 0.0 } else { oha };
    if server >= postgres && server >= oha {
        Limit::ServerCpu
    } else if postgres >= oha {
        Limit::PostgresCpu
    } else {
        Limit::LoadGenerator
    }
}

/// A cell's limit: the one most of its windows had (ties: the first in enum order).
pub fn majority(limits: &[Limit]) -> Option<Limit> {
    let mut counts: std::collections::BTreeMap<Limit, usize> = Default::default();
    for l in limits {
        *counts.entry(*l).or_default() += 1;
    }
    let best = counts.values().copied().max()?;
    counts.into_iter().find(|(_, n)| *n == best).map(|(l, _)| l)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shares(server: [f64; 2], postgres: [f64; 2], oha: [f64; 2]) -> Shares {
        Shares {
            server: server.to_vec(),
            postgres: postgres.to_vec(),
            oha: oha.to_vec(),
        }
    }

    fn evidence<'a>(busy: &'a [f64], shares: &'a Shares) -> Evidence<'a> {
        Evidence {
            busy,
            shares,
            error_rate: 0.0,
            error_budget: 0.001,
            p99_over_slo: false,
            oha_cpus: 1,
            oha_ahead: false,
            throttled: None,
        }
    }

    #[test]
    fn a_server_throttled_in_most_periods_is_held_by_its_quota() {
        // Half a CPU used, nothing saturated: without the quota it would read as waiting.
        let s = shares([0.5, 0.0], [0.2, 0.2], [0.0, 0.5]);
        let e = evidence(&[0.7, 0.7], &s);
        assert_eq!(judge(&e), Limit::Connections);
        let held = Evidence {
            throttled: Some(0.9),
            ..e.clone()
        };
        assert_eq!(judge(&held), Limit::CpuQuota);
        let seldom = Evidence {
            throttled: Some(0.1),
            ..e
        };
        assert_eq!(judge(&seldom), Limit::Connections);
    }

    #[test]
    fn a_server_cpu_that_is_fully_busy_is_named_server_cpu() {
        let s = shares([0.7, 0.0], [0.3, 0.4], [0.0, 0.5]);
        let e = evidence(&[1.0, 0.9], &s);
        // CPU 1 counts too (0.9): server 0.7, PostgreSQL 0.7, oha 0.5 — a tie goes to
        // the server; with CPU 1 idle-ish, PostgreSQL's CPU-1 time does not count.
        assert_eq!(judge(&e), Limit::ServerCpu);
        let e = Evidence {
            busy: &[1.0, 0.6],
            ..e
        };
        assert_eq!(judge(&e), Limit::ServerCpu);
    }

    #[test]
    fn postgres_oha_waiting_and_errors_are_told_apart() {
        let s = shares([0.3, 0.0], [0.65, 0.3], [0.0, 0.65]);
        let base = evidence(&[0.98, 0.5], &s);
        assert_eq!(judge(&base), Limit::PostgresCpu);
        assert_eq!(
            judge(&Evidence {
                busy: &[0.5, 0.97],
                ..base.clone()
            }),
            Limit::LoadGenerator
        );
        assert_eq!(
            judge(&Evidence {
                busy: &[0.6, 0.7],
                ..base.clone()
            }),
            Limit::Connections
        );
        assert_eq!(
            judge(&Evidence {
                error_rate: 0.01,
                ..base.clone()
            }),
            Limit::Errors
        );
        // oha ahead of PostgreSQL on CPU 1: the CPU is full, but oha had what it asked.
        assert_eq!(
            judge(&Evidence {
                busy: &[0.5, 0.97],
                oha_ahead: true,
                ..base.clone()
            }),
            Limit::PostgresCpu
        );
        // ... unless it used up its CPU.
        let full = shares([0.3, 0.0], [0.6, 0.05], [0.0, 0.95]);
        assert_eq!(
            judge(&Evidence {
                busy: &[0.9, 1.0],
                shares: &full,
                oha_ahead: true,
                ..base.clone()
            }),
            Limit::LoadGenerator
        );
        assert_eq!(
            majority(&[Limit::ServerCpu, Limit::LoadGenerator, Limit::LoadGenerator]),
            Some(Limit::LoadGenerator)
        );
        assert_eq!(majority(&[]), None);
    }
}
