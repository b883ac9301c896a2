//! A curve's table (`[scale]`): one line per point, in the axis' order within each
//! series, with what the axis teaches derived from the measured cells.
use std::fmt::Write as _;

use crate::blocks::Interval;
use crate::results::Summary;
use crate::scale::{Axis, Point};

use super::fmt_qps;

fn with_interval(i: Option<Interval>, digits: usize) -> String {
    i.map_or("—".into(), |i| {
        format!(
            "{:.d$} [{:.d$}, {:.d$}]",
            i.geomean,
            i.ci_low,
            i.ci_high,
            d = digits
        )
    })
}

fn axis_value(axis: Axis, x: f64) -> String {
    match axis {
        Axis::Cpus => format!("{x} CPU"),
        _ if x >= 1e6 => format!("{}M", x / 1e6),
        _ if x >= 1e3 => format!("{}k", x / 1e3),
        _ => format!("{x}"),
    }
}

/// What the axis teaches at a point, against the series' first point.
fn derived(axis: Axis, first: &Point, p: &Point) -> String {
    let tp = |q: &Point| q.cell.throughput.as_ref().map(|t| t.interval.geomean);
    match axis {
        Axis::Users => p
            .cell
            .counters
            .pg_buffer_reads
            .map_or("—".into(), |r| format!("{r:.2} reads/request")),
        Axis::Cpus => match (tp(first), tp(p)) {
            (Some(a), Some(b)) if first.x > 0.0 && p.x > 0.0 => format!(
                "{} QPS per CPU; efficiency {:.0}%",
                fmt_qps(b / p.x),
                (b / p.x) / (a / first.x) * 100.0
            ),
            _ => "—".into(),
        },
        Axis::Connections => {
            let refused = p
                .refused
                .filter(|n| *n > 0.0)
                .map(|n| format!("; {n:.0} connections refused per closed-loop window"))
                .unwrap_or_default();
            let fixed = |q: &Point| {
                let f = q.cell.fixed.as_ref()?;
                Some((f.server_rss_mib?.median, f.server_fds?.median))
            };
            match (fixed(first), fixed(p)) {
                (Some((m0, f0)), Some((m1, f1))) if f1 > f0 + 50.0 => format!(
                    "{:.1} KiB per connection held{refused}",
                    (m1 - m0) * 1024.0 / (f1 - f0)
                ),
                _ if !refused.is_empty() => refused.trim_start_matches("; ").to_string(),
                _ => "—".into(),
            }
        }
    }
}

/// The curve's table, where the run's matrix has `[scale]`.
pub fn curve_table(s: &Summary) -> Option<String> {
    let (axis, mut points) = crate::scale::curve(s)?;
    points.sort_by(|a, b| {
        (&a.series, a.workload)
            .cmp(&(&b.series, b.workload))
            .then(a.x.total_cmp(&b.x))
    });
    let at = points
        .iter()
        .find_map(|p| {
            p.cell
                .fixed
                .as_ref()
                .map(|f| format!("{:.0}/s", f.offered_qps))
        })
        .unwrap_or_else(|| "the fixed rate".into());
    let mut out = format!(
        "| Series | Workload | {} | Saturation throughput, requests/s [95%] | p99 at {at}, ms [95%] | p50 at {at}, ms | Server µs/request at {at} | PostgreSQL µs/request at {at} | Server MiB at {at} (closed loop) | Server file descriptors at {at} | Failed at {at} (closed loop) | {} |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n",
        axis.label(),
        match axis {
            Axis::Users => "Shared-buffer reads",
            Axis::Cpus => "Per CPU of the limit",
            Axis::Connections => "Memory per connection (vs. the first point)",
        }
    );
    for p in &points {
        let first = points
            .iter()
            .find(|q| q.series == p.series && q.workload == p.workload)
            .unwrap_or(p);
        let f = p.cell.fixed.as_ref();
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} ({}) | {} | {} ({}) | {} |",
            p.series,
            p.workload,
            axis_value(axis, p.x),
            with_interval(p.cell.throughput.as_ref().map(|t| t.interval), 0),
            with_interval(f.and_then(|f| f.p99_ms), 2),
            f.and_then(|f| f.p50_ms)
                .map_or("—".into(), |i| format!("{:.2}", i.geomean)),
            f.and_then(|f| f.server_us_per_request)
                .map_or("—".into(), |i| format!("{:.0}", i.geomean)),
            f.and_then(|f| f.postgres_us_per_request)
                .map_or("—".into(), |i| format!("{:.0}", i.geomean)),
            f.and_then(|f| f.server_rss_mib)
                .map_or("—".into(), |i| format!("{:.1}", i.median)),
            p.cell
                .server_rss_mib
                .map_or("—".into(), |i| format!("{:.1}", i.median)),
            f.and_then(|f| f.server_fds)
                .map_or("—".into(), |i| format!("{:.0}", i.median)),
            f.map_or("—".into(), |f| format!("{:.2}%", f.failed_share * 100.0)),
            p.closed_failed
                .map_or("—".into(), |x| format!("{:.1}%", x * 100.0)),
            derived(axis, first, p),
        );
    }
    Some(out)
}
