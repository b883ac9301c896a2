//! results.md: the environment header, the tables and charts, a section per row with
//! its details, the reference, integrity.
use super::*;

use crate::measure::stats::{compare, spread, Change, MIN_REPETITIONS};
use crate::results::{Host, RowResult, Summary, WorkloadResult};

/// How fast the machine itself was over the run: the fixed loop timed on every CPU
/// before each search, overall and by repetition (None when not measured).
pub(super) fn machine_speed_line(s: &Summary) -> Option<String> {
    let searches: Vec<_> = s
        .rows
        .iter()
        .flat_map(|r| &r.workloads)
        .flat_map(|w| &w.searches)
        .filter(|x| !x.machine_ns_per_thousand.is_empty())
        .collect();
    let mut reps: Vec<u32> = searches.iter().map(|x| x.repetition).collect();
    reps.sort_unstable();
    reps.dedup();
    // One probe's values over the run: median, range, spread, and the median by
    // repetition (a drift between repetitions shows there).
    let describe = |f: &dyn Fn(&crate::results::SearchResult) -> Vec<f64>, digits: usize| {
        let all: Vec<f64> = searches.iter().flat_map(|x| f(x)).collect();
        let total = spread(&all)?;
        let by_rep: Vec<String> = reps
            .iter()
            .filter_map(|rep| {
                let v: Vec<f64> = searches
                    .iter()
                    .filter(|x| x.repetition == *rep)
                    .flat_map(|x| f(x))
                    .collect();
                spread(&v).map(|m| format!("{:.d$}", m.median, d = digits))
            })
            .collect();
        Some(format!(
            "{:.d$} ({:.d$}–{:.d$}, spread {:.0}%; by repetition {})",
            total.median,
            total.min,
            total.max,
            (total.max - total.min) / total.median * 100.0,
            by_rep.join(" / "),
            d = digits
        ))
    };
    let alu = describe(&|x| x.machine_ns_per_thousand.clone(), 0)?;
    let memory = describe(&|x| x.machine_memory_ns_per_read.clone(), 1);
    let fsync = describe(&|x| x.machine_fsync_us.into_iter().collect(), 0);
    Some(format!(
        "- The machine itself, timed before each search: a fixed CPU loop {alu} ns per 1000 iterations; a random memory read {} ns; an 8 KiB write + fdatasync {} µs. When the rows' repetitions disagree while these hold steady, the noise is not in raw CPU speed.\n",
        memory.unwrap_or_else(|| "n/a".into()),
        fsync.unwrap_or_else(|| "n/a".into()),
    ))
}

/// How background work was kept out of the steps, where the lab did so: on this
/// machine (the lab reaches the database before every search) with autovacuum off.
pub(super) fn background_sentence(s: &Summary) -> &'static str {
    let off = s.matrix["postgres"]["autovacuum"].as_str() == Some("off");
    match (&s.environment.host, off) {
        (Host::Machine { .. }, true) => " Before every search (after its warm-up) the database is vacuumed and checkpointed, with autovacuum off and checkpoints spaced beyond a search; each step records any checkpoint or autovacuum it saw.",
        (Host::Machine { .. }, false) => " Before every search (after its warm-up) the database is vacuumed and checkpointed; autovacuum stays on.",
        _ => "",
    }
}

/// The change from the previous row in full: every measure's percentage and verdict.
pub(super) fn change_detail(prev: Option<&RowResult>, row: &RowResult) -> String {
    if is_reference(row) {
        return REFERENCE_CHANGE.into();
    }
    let Some(prev) = prev else {
        return "—".into();
    };
    let mut parts = Vec::new();
    let qps = |w: &WorkloadResult| w.searches.iter().map(|s| s.qps).collect::<Vec<_>>();
    let cpu = |w: &WorkloadResult| {
        w.searches
            .iter()
            .filter_map(|s| s.common.as_ref()?.server_us_per_request)
            .collect::<Vec<_>>()
    };
    let label = |what: &str, c: Option<Change>| match c {
        Some(Change::Significant(d)) => format!("{what} {d:+.0}%"),
        Some(Change::Noise(d)) => format!("{what} ≈ ({d:+.0}%, within noise)"),
        // One or two repetitions cannot tell a change from noise: no number is shown.
        Some(Change::Unjudged(_)) => {
            format!("{what} not judged (under {MIN_REPETITIONS} repetitions)")
        }
        None => format!("{what} n/a"),
    };
    if row.workloads.is_empty() {
        return "—".into();
    }
    let reps = fewest_repetitions(row);
    if reps < MIN_REPETITIONS {
        return format!(
            "not judged: {reps} repetition(s) cannot tell a change from noise (needs {MIN_REPETITIONS})"
        );
    }
    for (a, b) in prev.workloads.iter().zip(&row.workloads) {
        let name = short(&b.name);
        parts.push(label(&name, compare(&qps(a), &qps(b))));
        let (ca, cb) = (cpu(a), cpu(b));
        if !ca.is_empty() && !cb.is_empty() && crate::compare::same_common_rate(a, b) {
            parts.push(label(&format!("{name} server µs/req"), compare(&ca, &cb)));
        }
    }
    if parts.is_empty() {
        "—".into()
    } else {
        parts.join(", ")
    }
}

/// results.md's section on the pgbench line: how it was measured and what it used.
pub(super) fn reference_detail(s: &Summary) -> String {
    let open_loop = reference_is_open_loop(s);
    let mut out = String::from("### PostgreSQL alone (pgbench)\n\n");
    if let Some(e) = &s.reference_error {
        let _ = writeln!(out, "- **FAILED: {e}**");
    }
    if open_loop {
        let clients = s.reference.first().map_or(0, |r| r.clients);
        let _ = writeln!(out, "- The database's own capacity, searched like the rows: `pgbench -R` steps, latency from each transaction's scheduled start, pinned where oha is, {clients} clients (the rows' pool: {}); pgbench's arrivals are Poisson, burstier than oha's timetable.", s.environment.pool_size);
    } else {
        out.push_str("- The database's own ceiling on this hardware, for scale (closed loop: not measured like the rows).\n");
    }
    for r in &s.reference {
        let _ = write!(
            out,
            "- {} / repetition {}: {} TPS{}, p99 {} ms, {} clients, CPU cores used: PG {} / pgbench {:.2}",
            r.workload,
            r.repetition,
            fmt_qps(r.tps),
            r.offered.map_or(String::new(), |o| format!(" at {o:.0}/s offered")),
            r.p99_ms.map_or("n/a".into(), fmt_ms),
            r.clients,
            r.cpu_postgres.map_or("n/a".into(), |x| format!("{x:.2}")),
            r.cpu_pgbench
        );
        if let Some(c) = &r.common {
            let _ = write!(
                out,
                "; at {:.0}/s{}: p50/p90/p99/p99.9 {} ms, PostgreSQL {} µs and pgbench {:.0} µs per transaction",
                c.offered,
                if c.reduced { " (half its capacity)" } else { "" },
                percentiles(&[c.p50_ms, c.p90_ms, c.p99_ms, c.p999_ms]),
                c.postgres_us_per_transaction.map_or("n/a".into(), |u| format!("{u:.0}")),
                c.pgbench_us_per_transaction
            );
        }
        out.push('\n');
    }
    out
}

/// "0.2 / 0.4 / 1.4 / 8.3" (n/a where missing).
pub(super) fn percentiles(v: &[Option<f64>]) -> String {
    v.iter()
        .map(|p| p.map_or("n/a".into(), |p| format!("{p:.1}")))
        .collect::<Vec<_>>()
        .join(" / ")
}

/// results.md's section on one row: its hypothesis, then per workload the capacity of
/// every repetition, what limited it, its CPU, memory and batches, the cost at the
/// common rate, and the change from the previous row in full.
pub(super) fn row_detail(s: &Summary, prev: Option<&RowResult>, row: &RowResult) -> String {
    let features = row.build_label();
    let mut out = format!("### {} — {features}; {}\n\n", row.name, row.index_label());
    if let Some(n) = &row.note {
        let _ = writeln!(out, "_{n}_\n");
    }
    for f in &row.failures {
        let _ = writeln!(out, "- **FAILED: {f}**");
    }
    for w in &row.workloads {
        let _ = writeln!(
            out,
            "- **{}**: capacity {} QPS; limit: {} — {}.",
            w.name,
            qps_cell(w),
            limit_words(s, w),
            bottleneck(s, w)
        );
        let mut reps: Vec<&crate::results::SearchResult> = w.searches.iter().collect();
        reps.sort_by_key(|x| x.repetition);
        for x in reps {
            let cores = |v: Option<f64>| v.map_or("n/a".into(), |x| format!("{x:.2}"));
            let _ = write!(
                out,
                "  - repetition {}: {} QPS{}, p99 {} ms, {} steps; CPU cores server {} / PG {} / oha {}",
                x.repetition,
                fmt_qps(x.qps),
                x.offered.map_or(String::new(), |o| format!(" at {o:.0}/s offered")),
                x.p99_ms.map_or("n/a".into(), fmt_ms),
                x.steps,
                cores(x.cpu_server),
                cores(x.cpu_postgres),
                cores(x.cpu_oha),
            );
            // The server's cost of a request at its capacity: its cores over the QPS.
            if let Some(c) = x.cpu_server.filter(|_| x.qps > 0.0) {
                let _ = write!(
                    out,
                    " (server {:.0} µs/request at capacity)",
                    c * 1e6 / x.qps
                );
            }
            if let Some(kib) = x.server_peak_rss_kib {
                let _ = write!(out, "; RSS {:.0} MiB", kib as f64 / 1024.0);
            }
            if let Some((r, wr)) = x.avg_batch {
                let f = |v: Option<f64>| v.map_or("n/a".into(), |x| format!("{x:.1}"));
                let _ = write!(out, "; avg batch {} GETs, {} PATCHes", f(r), f(wr));
            }
            if let Some(limit) = &x.limit {
                let _ = write!(out, "; first failing step: {limit}");
            }
            if let Some(c) = &x.common {
                let us = |v: Option<f64>| v.map_or("n/a".into(), |x| format!("{x:.0}"));
                let _ = write!(
                    out,
                    "; at {:.0}/s{}: p50/p90/p99/p99.9 {} ms, CPU per request server {} (user {}, system {}) / PG {} / oha {} µs",
                    c.offered,
                    if c.reduced { " (half its capacity)" } else { "" },
                    percentiles(&[c.p50_ms, c.p90_ms, c.p99_ms, c.p999_ms]),
                    us(c.server_us_per_request),
                    us(c.server_user_us_per_request),
                    us(c.server_system_us_per_request),
                    us(c.postgres_us_per_request),
                    us(c.oha_us_per_request),
                );
            }
            out.push_str(".\n");
        }
        if let Some(p) = w
            .searches
            .iter()
            .find_map(|x| x.common.as_ref()?.profile.as_ref())
        {
            let per = |v: Option<f64>, d: usize| v.map_or("n/a".into(), |x| format!("{x:.d$}"));
            let _ = writeln!(
                out,
                "  - profile at the common rate: [flame graph]({}) ({:.0} ms of server CPU sampled over {} requests); per request {} system calls and {} context switches.",
                p.flame_graph,
                p.cpu_ns as f64 / 1e6,
                p.requests,
                per(p.syscalls_per_request, 1),
                per(p.context_switches_per_request, 2)
            );
        }
    }
    if prev.is_some() {
        let _ = writeln!(
            out,
            "- Change vs previous row: {}.",
            change_detail(prev, row)
        );
    }
    let checked: u64 = row
        .workloads
        .iter()
        .flat_map(|w| &w.searches)
        .map(|x| x.writes_checked)
        .sum();
    let bad: usize = row
        .workloads
        .iter()
        .flat_map(|w| &w.searches)
        .map(|x| x.integrity_failures.len())
        .sum();
    if bad > 0 {
        let _ = writeln!(out, "- **INTEGRITY FAILURE in {bad} steps** (below).");
    } else if checked > 0 {
        let _ = writeln!(
            out,
            "- Integrity: {checked} acknowledged writes checked, all intact."
        );
    }
    out.push('\n');
    out
}

/// The whole `results.md`.
pub fn results_md(s: &Summary) -> String {
    let e = &s.environment;
    let mut out = String::from("# Results\n\n");
    out.push_str(
        "Generated by `./scripts/run-matrix.sh` from measurements only; do not edit by hand.\n\
         Absolute numbers are specific to this machine and run: compare rows **within one run** only.\n\n",
    );
    let _ = match &e.started {
        Some(started) => writeln!(
            out,
            "- Date: started {started} (its results/ folder), finished {} ({:.0} min)",
            e.date,
            e.elapsed_secs / 60.0
        ),
        None => writeln!(
            out,
            "- Date: {} (run took {:.0} min)",
            e.date,
            e.elapsed_secs / 60.0
        ),
    };
    let target = match e.host {
        Host::Machine { .. } => "local",
        Host::Cluster { .. } => "k8s",
        Host::Service { .. } => "a running service (--url)",
    };
    let _ = writeln!(
        out,
        "- Git commit: `{}`; target: {target}; matrix: `{}`{}",
        e.git_commit,
        e.matrix_file,
        if e.quick {
            " (**--quick**: short smoke run, not for publishing)"
        } else {
            ""
        }
    );
    match &e.host {
        Host::Cluster { kubernetes } => {
            let _ = writeln!(
                out,
                "- Cluster: Kubernetes {kubernetes}; the app and PostgreSQL on app nodes (Guaranteed QoS, whole CPUs), oha on the tainted load-generator node; no pgbench reference on this target"
            );
            let _ = writeln!(
                out,
                "- Software: {}, PostgreSQL {}, {}",
                e.rustc, e.postgres, e.oha
            );
            let _ = writeln!(
                out,
                "- Data: {} users, seeded afresh for every row; CPUs: the app pod, the PostgreSQL pod, the load-generator node; POOL_SIZE {}",
                e.users, e.pool_size
            );
        }
        Host::Service {
            machine,
            database_checked,
        } => {
            let _ = writeln!(
                out,
                "- Service: already running, measured by URL; oha on {machine}, not pinned; no pgbench reference on this target"
            );
            let _ = writeln!(out, "- Software: PostgreSQL {}, {}", e.postgres, e.oha);
            let _ = writeln!(
                out,
                "- Data: the service's own database, users 1..{}, not seeded by the lab; {}",
                e.users,
                if *database_checked {
                    "read (never changed) for the per-id write checks"
                } else {
                    "not reached (no --database-url): writes are not checked"
                }
            );
        }
        Host::Machine {
            cpu_model,
            cpus,
            memory_gib,
            kernel,
            pgbench,
            server_cpus,
            postgres_cpus,
            oha_cpus,
        } => {
            let _ = writeln!(
                out,
                "- Machine: {cpus} × {cpu_model}, {memory_gib:.1} GiB RAM, Linux {kernel}"
            );
            let _ = writeln!(
                out,
                "- Software: {}, PostgreSQL {}, {}, pgbench {pgbench}",
                e.rustc, e.postgres, e.oha
            );
            let _ = writeln!(out, "- Data: {} users, seeded afresh for every row; CPUs: server {server_cpus}, PostgreSQL {postgres_cpus}, oha {oha_cpus}; POOL_SIZE {}", e.users, e.pool_size);
        }
    }
    let _ = writeln!(
        out,
        "- Method: open-loop rate search with two oha processes (GET and PATCH) at the exact mix, {} s per step, \
         {} repetition(s) interleaved across rows, median (min–max) shown. A step passes when good replies ≥ {:.0}% of \
         the offered rate, errors ≤ {:.2}%, the mix is exact within ±1 point (or 2 requests, in steps too small for 1 point to be a whole request), and the p99 of all requests (merged \
         per-request data, latency-corrected) ≤ {} ms. QPS is the good-reply rate of the confirmed step; p99 is at that step. {} oha connections shared by the mix, and each side at least its rate × the SLO (the majority at most {}; so the minority method's connections are never the limit).{}",
        e.duration_secs, e.repetitions, e.min_achieved * 100.0, e.error_budget * 100.0, e.slo_p99_ms, e.connections,
        crate::measure::driver::MAX_SIDE_CONNECTIONS,
        background_sentence(s)
    );
    let load = &s.matrix["load"];
    let _ = writeln!(
        out,
        "- Capacity: the search's best rate is re-run and counts only after {} passing re-runs in a row (0: not confirmed, as in --quick); a step also fails when oha sent under 99% of the requests its rate schedules, or when its scheduler released them over 10 ms late at p99 (then the note names the load generator as the limit). Cost: after its search, each row runs each workload at {} requests/s for {} s (`*`: a row below that rate ran at half its own capacity); CPU per request is each party's CPU time over the requests answered. Changes are significant only when the rows' min–max ranges do not overlap (\"≈\": within noise), and not judged below 3 repetitions.",
        load["confirmations"].as_u64().unwrap_or(0),
        load["common_qps"].as_f64().map_or("—".into(), |q| format!("{q:.0}")),
        load["common_secs"].as_f64().map_or("—".into(), |q| format!("{q}")),
    );
    if let Some(line) = machine_speed_line(s) {
        out.push_str(&line);
    }
    if let Some(b) = &s.blocks {
        out.push_str(&crate::blocks::render::method(b));
    }
    out.push('\n');
    if let Some(curve) = curve_table(s) {
        out.push_str("## The curve (blocks)\n\nOne build at each point of the axis, every point side by side in each block. Each closed-loop window is followed by an open-loop window at the fixed rate (oha's latency correction: latency from each request's scheduled time); memory and file descriptors are the server's highest over the window (sampled every 100 ms).\n\n");
        out.push_str(&curve);
        out.push('\n');
    }
    out.push_str(&table(s));
    out.push('\n');
    if let Some(b) = &s.blocks {
        out.push_str("## The mechanism, counted per request (blocks)\n\n");
        out.push_str(&crate::blocks::render::counters(b));
        out.push('\n');
        out.push_str(&crate::blocks::render::mechanisms(b));
        out.push('\n');
        let throttling = crate::blocks::render::throttling(b);
        if !throttling.is_empty() {
            out.push_str("## CPU throttling under the pods' limits (blocks)\n\nThe server's CPU group (`cpu.stat`: `nr_throttled` of `nr_periods`, `throttled_time`), per row that sets `resources`, summed over its windows. A CPU limit of L CPUs lets the server run L × 100 ms per 100 ms period; once used, its threads wait for the next period.\n\n");
            out.push_str(&throttling);
            out.push('\n');
        }
    }
    out.push_str(&crate::charts::markdown(s));
    out.push_str("\n## Rows in detail\n\n");
    let mut prev: Option<&RowResult> = None;
    for row in &s.rows {
        out.push_str(&row_detail(s, prev, row));
        if row.failures.is_empty() {
            prev = Some(row);
        }
    }
    if !s.reference.is_empty() || s.reference_error.is_some() {
        out.push_str(&reference_detail(s));
        out.push('\n');
    }
    let failures = s.integrity_failures();
    out.push_str("## Integrity\n\n");
    if failures.is_empty()
        && matches!(
            e.host,
            Host::Service {
                database_checked: false,
                ..
            }
        )
    {
        out.push_str("The writes were **not checked**: the run had no `--database-url` to the service's database, so no PATCH could be compared with what it stored. Give the database's URL (read only is enough) to check every PATCH per id.\n");
    } else if failures.is_empty() && matches!(e.host, Host::Cluster { .. }) {
        out.push_str("Every load-generator Job was checked: PATCHes answered 200 over the whole Job = updates applied by PostgreSQL (sum of `version`, read in the PostgreSQL pod before and after the Job; the Job itself cannot reach the database), and, with `metrics`, the server's own counts = oha's at every step. All checks passed.\n");
    } else if failures.is_empty() {
        out.push_str("Every write-bearing window was checked per id (the warm-up probe, every step, the common-rate window): from oha's per-request records, each id's stored `version` grew by at least its PATCHes answered 200 and by at most those plus its PATCHes answered otherwise, with extra writes only up to the PATCHes that got no reply; every written id holds an email that was sent; and, with `metrics`, the server's own counts = oha's.");
        if s.blocks.is_some() {
            out.push_str(" Every block window of a row that writes to PostgreSQL was checked in total: `sum(version)` grew by at least the PATCHes answered 200 and at most those plus the PATCHes answered otherwise or not at all.");
        }
        out.push_str(" All checks passed.\n");
    } else {
        out.push_str(
            "**INTEGRITY FAILURES** — these numbers must not be trusted until explained:\n\n",
        );
        for f in failures {
            let _ = writeln!(out, "- {f}");
        }
    }
    out
}
