//! The tables: the SLO search's concise table and its reference line.
use super::*;

use crate::measure::stats::{compare, spread, Change, MIN_REPETITIONS};
use crate::results::{
    CommonLoad, ReferenceCommon, ReferenceResult, RowResult, Summary, WorkloadResult,
};

pub(super) fn qps_cell(w: &WorkloadResult) -> String {
    match w.qps() {
        None => "—".into(),
        Some(s) if w.searches.len() == 1 => fmt_qps(s.median),
        Some(s) => format!(
            "{} ({}–{})",
            fmt_qps(s.median),
            fmt_qps(s.min),
            fmt_qps(s.max)
        ),
    }
}

/// Per workload, the median over repetitions of one measure at the common rate, joined
/// with " / "; `*` marks a workload that ran at half the row's own capacity instead
/// (it could not sustain the common rate).
pub(super) fn common_cell(
    row: &RowResult,
    f: &dyn Fn(&CommonLoad) -> Option<f64>,
    digits: usize,
) -> String {
    join_workloads(
        row.workloads
            .iter()
            .map(|w| common_value(w, f, digits))
            .collect(),
    )
}

/// The server's CPU per request at the common rate, per workload: the total, then its
/// user + kernel parts (each the median of the repetitions), e.g. `66 (18+48)`.
pub(super) fn server_cell(row: &RowResult) -> String {
    join_workloads(
        row.workloads
            .iter()
            .map(|w| {
                let total = common_value(w, &|c| c.server_us_per_request, 0);
                let user = common_value(w, &|c| c.server_user_us_per_request, 0);
                let kernel = common_value(w, &|c| c.server_system_us_per_request, 0);
                if total == "—" || user == "—" || kernel == "—" {
                    total
                } else {
                    let (user, kernel) = (user.trim_end_matches('*'), kernel.trim_end_matches('*'));
                    format!("{total} ({user}+{kernel})")
                }
            })
            .collect(),
    )
}

/// One workload's median of `f` over its repetitions' common-rate windows (`*`: at half
/// the row's capacity), or "—".
pub(super) fn common_value(
    w: &WorkloadResult,
    f: &dyn Fn(&CommonLoad) -> Option<f64>,
    digits: usize,
) -> String {
    let runs: Vec<&CommonLoad> = w
        .searches
        .iter()
        .filter_map(|s| s.common.as_ref())
        .collect();
    let v: Vec<f64> = runs.iter().filter_map(|c| f(c)).collect();
    median_mark(&v, runs.iter().any(|c| c.reduced), digits)
}

/// The median of `v` with `digits` decimals, `*` when it was measured at a reduced
/// rate, or "—" without values.
pub(super) fn median_mark(v: &[f64], reduced: bool, digits: usize) -> String {
    spread(v).map_or("—".into(), |m| {
        format!(
            "{:.d$}{}",
            m.median,
            if reduced { "*" } else { "" },
            d = digits
        )
    })
}

/// The Notes cell: what limited each workload, in words, and any failure (at most
/// about 80 characters; the details are in results.md).
pub(super) fn notes_cell(s: &Summary, row: &RowResult) -> String {
    let mut parts = Vec::new();
    if !row.failures.is_empty() {
        parts.push("**FAILED** (see results.md)".to_string());
    }
    let limits: Vec<(String, &str)> = row
        .workloads
        .iter()
        .filter(|w| !w.searches.is_empty())
        .map(|w| (short(&w.name), limit_words(s, w)))
        .collect();
    match limits.as_slice() {
        [] => {}
        [(_, a), rest @ ..] if !rest.is_empty() && rest.iter().all(|(_, b)| b == a) => {
            parts.push(format!("limit: {a}"));
        }
        _ => parts.push(
            limits
                .iter()
                .map(|(w, l)| format!("{w}: {l}"))
                .collect::<Vec<_>>()
                .join(", "),
        ),
    }
    let bad: usize = row
        .workloads
        .iter()
        .flat_map(|w| &w.searches)
        .map(|x| x.integrity_failures.len())
        .sum();
    if bad > 0 {
        parts.push("**INTEGRITY FAILURE**".into());
    } else if is_reference(row) {
        // Its counts are checked, but its writes never reach PostgreSQL.
        parts.push("writes held in memory, not checked in PostgreSQL".into());
    } else if row
        .workloads
        .iter()
        .any(|w| w.searches.iter().any(|x| x.writes_checked > 0))
    {
        parts.push("writes intact".into());
    }
    parts.join("; ")
}

/// The fewest repetitions any of a row's workloads has.
pub(super) fn fewest_repetitions(row: &RowResult) -> usize {
    row.workloads
        .iter()
        .map(|w| w.searches.len())
        .min()
        .unwrap_or(0)
}

/// The Change cell: per workload, the capacity's change from the previous row
/// ("≈" within noise) and, when significant, the server's CPU per request.
pub(super) fn change_cell(prev: Option<&RowResult>, row: &RowResult) -> String {
    if is_reference(row) {
        return REFERENCE_CHANGE.into();
    }
    let Some(prev) = prev else {
        return "—".into();
    };
    if row.workloads.is_empty() {
        return "—".into();
    }
    let reps = fewest_repetitions(row);
    if reps < MIN_REPETITIONS {
        return format!("not judged ({reps} rep.)");
    }
    let qps = |w: &WorkloadResult| w.searches.iter().map(|s| s.qps).collect::<Vec<_>>();
    let cpu = |w: &WorkloadResult| {
        w.searches
            .iter()
            .filter_map(|s| s.common.as_ref()?.server_us_per_request)
            .collect::<Vec<_>>()
    };
    let mut parts = Vec::new();
    for (a, b) in prev.workloads.iter().zip(&row.workloads) {
        let mut cell = format!(
            "{} {}",
            short(&b.name),
            match compare(&qps(a), &qps(b)) {
                Some(Change::Significant(d)) => format!("{d:+.0}%"),
                Some(_) => "≈".into(),
                None => "n/a".into(),
            }
        );
        if crate::compare::same_common_rate(a, b) {
            if let Some(Change::Significant(d)) = compare(&cpu(a), &cpu(b)) {
                let _ = write!(cell, " (µs {d:+.0}%)");
            }
        }
        parts.push(cell);
    }
    parts.join(", ")
}

/// The results table (Markdown), rows in matrix order, then the pgbench reference:
/// capacities, the cost at the common rate, the change and the limit in a few words.
pub fn table(s: &Summary) -> String {
    match &s.blocks {
        // Blocks alone (repetitions = 0, a curve): no search, no secondary table.
        Some(b) if s.rows.iter().all(|r| r.workloads.iter().all(|w| w.searches.is_empty())) => {
            crate::blocks::render::table(s, b)
        }
        Some(b) => format!(
            "{}\n**This machine's capacity** (secondary: the open-loop SLO search, one per row and repetition):\n\n{}",
            crate::blocks::render::table(s, b),
            slo_table(s)
        ),
        None => slo_table(s),
    }
}

/// The SLO search's table: capacities, the cost at the common rate, the change and
/// the limit in a few words.
pub(super) fn slo_table(s: &Summary) -> String {
    let names: Vec<String> = s.workloads.iter().map(|w| short(w)).collect();
    let names = names.join(" / ");
    let common = s.matrix["load"]["common_qps"]
        .as_f64()
        .map_or("the common rate".to_string(), |q| format!("{q:.0}/s"));
    // No features column: the row's name says what changed, and each row's section in
    // results.md says what it was built with.
    let mut out = String::from("| Row |");
    for w in &s.workloads {
        let _ = write!(out, " {} capacity (QPS) |", title(w));
    }
    let _ = writeln!(
        out,
        " p99 at {common}, ms ({names}) | Server µs/req, user+kernel ({names}) | PostgreSQL µs/req ({names}) | Change vs previous row | Notes |"
    );
    out.push_str("|---|");
    for _ in &s.workloads {
        out.push_str("---:|");
    }
    out.push_str("---:|---:|---:|---|---|\n");
    let mut prev: Option<&RowResult> = None;
    for row in &s.rows {
        let _ = write!(out, "| {} |", row.name);
        if row.workloads.is_empty() {
            for _ in &s.workloads {
                out.push_str(" failed |");
            }
        }
        for w in &row.workloads {
            let _ = write!(out, " {} |", qps_cell(w));
        }
        let _ = writeln!(
            out,
            " {} | {} | {} | {} | {} |",
            common_cell(row, &|c| c.p99_ms, 1),
            server_cell(row),
            common_cell(row, &|c| c.postgres_us_per_request, 0),
            change_cell(prev, row),
            notes_cell(s, row)
        );
        if row.failures.is_empty() {
            prev = Some(row);
        }
    }
    if !s.reference.is_empty() || s.reference_error.is_some() {
        out.push_str(&reference_line(s));
    }
    let reduced = s
        .rows
        .iter()
        .flat_map(|r| &r.workloads)
        .flat_map(|w| &w.searches)
        .any(|x| x.common.as_ref().is_some_and(|c| c.reduced));
    out.push_str("\nCapacity: median (min–max) over the repetitions. µs/req: CPU time per request answered, at the common rate; the server's also split into user + kernel time (medians each, so the parts may not add up exactly). Change: capacity, \"≈\" within noise; \"µs\": the server's CPU per request, when significant.");
    if reduced {
        out.push_str(&format!(
            " `*`: the row could not sustain {common} and ran at half its own capacity."
        ));
    }
    out.push('\n');
    out
}

/// Whether the pgbench line was searched like the rows (schema 3), not closed loop.
pub(super) fn reference_is_open_loop(s: &Summary) -> bool {
    s.reference
        .iter()
        .any(|r| r.offered.is_some() || r.steps > 0)
}

/// The pgbench line of the table: the database's own capacity and cost, per workload.
pub(super) fn reference_line(s: &Summary) -> String {
    let open_loop = reference_is_open_loop(s);
    let mut out = String::from("| *PostgreSQL alone (pgbench, prepared, no HTTP)* |");
    let mut p99 = Vec::new();
    let mut us = Vec::new();
    for w in &s.workloads {
        let runs: Vec<&ReferenceResult> = s.reference.iter().filter(|r| &r.workload == w).collect();
        match spread(&runs.iter().map(|r| r.tps).collect::<Vec<_>>()) {
            Some(t) if runs.len() > 1 => {
                let _ = write!(
                    out,
                    " {} ({}–{}) |",
                    fmt_qps(t.median),
                    fmt_qps(t.min),
                    fmt_qps(t.max)
                );
            }
            Some(t) => {
                let _ = write!(out, " {} |", fmt_qps(t.median));
            }
            None => out.push_str(" — |"),
        }
        let at: Vec<&ReferenceCommon> = runs.iter().filter_map(|r| r.common.as_ref()).collect();
        let median = |f: &dyn Fn(&ReferenceCommon) -> Option<f64>, digits: usize| {
            let v: Vec<f64> = at.iter().filter_map(|c| f(c)).collect();
            median_mark(&v, at.iter().any(|c| c.reduced), digits)
        };
        p99.push(median(&|c| c.p99_ms, 1));
        us.push(median(&|c| c.postgres_us_per_transaction, 0));
    }
    let note = match (&s.reference_error, open_loop) {
        (Some(_), _) => "**FAILED** (see results.md)",
        (None, true) => "the database's own capacity, searched like the rows",
        (None, false) => "closed loop: for scale only",
    };
    let _ = writeln!(
        out,
        " {} | — | {} | — | {note} |",
        join_workloads(p99),
        join_workloads(us)
    );
    out
}
