//! What limited a search, from its CPU figures and its first failing step's failures.
use super::*;

use crate::measure::failure::SearchLimit;
use crate::results::{Summary, WorkloadResult};

/// What limited a build: each CPU's busy share (or, where not measured, each party's CPU) at its limit, and why the next rate failed.
/// CPU use is in cores (1.0 = one core busy); parties may share CPUs (e.g. PostgreSQL
/// floating over all of them), so the whole machine is judged as well as each party.
pub(super) fn bottleneck(s: &Summary, w: &WorkloadResult) -> String {
    let Some(m) = w.median_search() else {
        return String::new();
    };
    let cpus = |list: &str| crate::matrix::parse_cpu_list(list).unwrap_or_default();
    let [server_cpus, postgres_cpus, oha_cpus] = s.environment.host.pinning().unwrap_or([""; 3]);
    // Judge saturation where the build gave out (the first failing rate above the best),
    // else at the best step.
    let (server, postgres, oha) = match m.limit_cpu {
        Some((s, p, o)) => (s, p, Some(o)),
        None => (m.cpu_server, m.cpu_postgres, m.cpu_oha),
    };
    let parties = [
        ("server", server, cpus(server_cpus)),
        ("PostgreSQL", postgres, cpus(postgres_cpus)),
        ("oha", oha, cpus(oha_cpus)),
    ];
    let mut all: Vec<usize> = parties.iter().flat_map(|(_, _, c)| c.clone()).collect();
    all.sort_unstable();
    all.dedup();
    let total: f64 = parties.iter().filter_map(|(_, u, _)| *u).sum();
    let mut parts = Vec::new();
    let saturated: Vec<String> = parties
        .iter()
        .filter_map(|(who, u, c)| {
            let u = (*u)?;
            (!c.is_empty() && u / c.len() as f64 >= 0.85).then(|| {
                format!(
                    "{who} ({:.0}% of its {} CPU)",
                    u / c.len() as f64 * 100.0,
                    c.len()
                )
            })
        })
        .collect();
    let busy = &m.cpu_busy_at_limit;
    if !busy.is_empty() {
        // Judged from the CPUs themselves (/proc/stat), naming who is pinned where.
        let on = |cpu: usize| -> String {
            let who: Vec<&str> = parties
                .iter()
                .filter(|(_, _, c)| c.contains(&cpu))
                .map(|(who, _, _)| *who)
                .collect();
            if who.is_empty() {
                String::new()
            } else {
                format!(" ({})", who.join(", "))
            }
        };
        let hot: Vec<String> = busy
            .iter()
            .enumerate()
            .filter(|(_, b)| **b >= SATURATED)
            .map(|(cpu, b)| format!("CPU {cpu} {:.0}%{}", b * 100.0, on(cpu)))
            .collect();
        let all: Vec<String> = busy
            .iter()
            .enumerate()
            .map(|(cpu, b)| format!("{cpu}: {:.0}%", b * 100.0))
            .collect();
        if hot.is_empty() {
            parts.push(format!("no CPU saturated (busy {})", all.join(", ")));
        } else {
            parts.push(format!("saturated: {}", hot.join(", ")));
        }
    } else if !saturated.is_empty() {
        parts.push(format!("saturated: {}", saturated.join(", ")));
    } else if !all.is_empty() && total / all.len() as f64 >= 0.8 {
        parts.push(format!(
            "all {} CPUs busy ({:.0}%)",
            all.len(),
            total / all.len() as f64 * 100.0
        ));
    } else {
        let unseen: Vec<&str> = parties
            .iter()
            .filter(|(_, u, _)| u.is_none())
            .map(|(who, _, _)| *who)
            .collect();
        if unseen.is_empty() {
            parts.push("no CPU saturated".into());
        } else {
            parts.push(format!(
                "CPU of {} not measured on this target",
                unseen.join(" and ")
            ));
        }
    }
    let cores = |v: Option<f64>| v.map_or("n/a".into(), |x| format!("{x:.2}"));
    parts.push(format!(
        "CPU cores used at the limit: server {} / PG {} / oha {}",
        cores(server),
        cores(postgres),
        cores(oha)
    ));
    if let Some(pg) = m.cpu_postgres_job {
        parts.push(format!("PG {pg:.2} cores averaged over the whole Job"));
    }
    if let Some(kib) = m.server_peak_rss_kib {
        parts.push(format!("server peak RSS {:.0} MiB", kib as f64 / 1024.0));
    }
    if let Some((reads, writes)) = m.avg_batch {
        let f = |v: Option<f64>| v.map_or("n/a".into(), |x| format!("{x:.1}"));
        parts.push(format!(
            "avg batch: {} GETs, {} PATCHes",
            f(reads),
            f(writes)
        ));
    }
    let oha_cpus = cpus(oha_cpus).len().max(1) as f64;
    if oha.is_some_and(|o| o / oha_cpus >= OHA_NEAR_LIMIT) {
        parts.push("oha near its own limit: a lower bound".into());
    }
    if let Some(limit) = &m.limit {
        parts.push(format!("above: {limit}"));
    }
    parts.join("; ")
}

/// What limited a workload's capacity, in words: "load generator", "server CPU",
/// "PostgreSQL CPU", "p99 SLO" (no CPU saturated), "connections" (requests waited for
/// a free connection, no CPU saturated), "errors or rate" (the error budget or the
/// achieved rate), "search ceiling" (the highest rate searched passed), judged at the
/// median repetition's limit.
pub fn limit_words(s: &Summary, w: &WorkloadResult) -> &'static str {
    let Some(m) = w.median_search() else {
        return "not measured";
    };
    let limit = match &m.limit_failures {
        Some(f) => SearchLimit::of(f),
        None => SearchLimit::of_legacy_words(m.limit.as_deref()),
    };
    let cpus = |list: &str| crate::matrix::parse_cpu_list(list).unwrap_or_default();
    let pinning = s.environment.host.pinning();
    let (server, postgres, oha) = match m.limit_cpu {
        Some((s, p, o)) => (s, p, Some(o)),
        None => (m.cpu_server, m.cpu_postgres, m.cpu_oha),
    };
    let oha_cpus = pinning.map_or(1, |p| cpus(p[2]).len().max(1)) as f64;
    if limit == SearchLimit::LoadGenerator || oha.is_some_and(|o| o / oha_cpus >= OHA_NEAR_LIMIT) {
        return "load generator";
    }
    // The parties on the saturated CPUs; the one that used most CPU is named.
    let hot: Vec<usize> = m
        .cpu_busy_at_limit
        .iter()
        .enumerate()
        .filter(|(_, b)| **b >= SATURATED)
        .map(|(cpu, _)| cpu)
        .collect();
    let parties = [("server", server, 0), ("PostgreSQL", postgres, 1)];
    let on_hot = |i: usize| match pinning {
        Some(p) => cpus(p[i]).iter().any(|c| hot.contains(c)),
        None => false,
    };
    let busiest = parties
        .iter()
        .filter(|(_, used, i)| used.is_some() && on_hot(*i))
        .max_by(|a, b| a.1.unwrap_or(0.0).total_cmp(&b.1.unwrap_or(0.0)));
    if let Some((who, _, _)) = busiest {
        return if *who == "server" {
            "server CPU"
        } else {
            "PostgreSQL CPU"
        };
    }
    if m.cpu_busy_at_limit.is_empty() {
        // No per-CPU figures (a cluster): a party near all of its CPU.
        if server.is_some_and(|x| x >= CLUSTER_SERVER_NEAR_LIMIT) {
            return "server CPU";
        }
    }
    match limit {
        SearchLimit::Connections => "connections",
        SearchLimit::P99 => "p99 SLO",
        SearchLimit::Ceiling => "search ceiling",
        SearchLimit::LoadGenerator | SearchLimit::Other => "errors or rate",
    }
}
