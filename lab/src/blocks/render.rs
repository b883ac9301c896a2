//! The blocks in words: the headline table (saturation throughput with intervals, the
//! change per rung, the server's cost, the limit), the A/A line, the counters per
//! request and the method. Everything is read from typed values; nothing here is
//! parsed back.
use std::fmt::Write as _;

use super::covariates::{HostSource, ROW_SD_LIMIT};
use super::effects::Change;
use super::{aa_name, Blocks, CellResult, Interval};
use crate::results::{RowResult, Summary};

/// `18.2k`, `940`, `12.5`.
fn qps(q: f64) -> String {
    if q >= 10_000.0 {
        format!("{:.1}k", q / 1000.0)
    } else if q >= 100.0 {
        format!("{q:.0}")
    } else {
        format!("{q:.1}")
    }
}

/// A throughput cell: the median with its 95% interval over blocks; `≥` when the load
/// generator set it.
fn throughput_cell(c: &CellResult) -> String {
    let Some(t) = &c.throughput else {
        return "—".into();
    };
    let i = &t.interval;
    let ge = if c.lower_bound { "≥ " } else { "" };
    if c.windows < 2 {
        return format!("{ge}{}", qps(i.median));
    }
    format!(
        "{ge}{} [{}–{}]",
        qps(i.geomean),
        qps(i.ci_low),
        qps(i.ci_high)
    )
}

fn us(i: &Option<Interval>) -> String {
    i.map_or("—".into(), |i| {
        if i.median >= 100.0 {
            format!("{:.0}", i.median)
        } else {
            format!("{:.1}", i.median)
        }
    })
}

fn change(c: &Option<Change>) -> String {
    c.as_ref().map_or("—".into(), Change::words)
}

/// What a row adds to the one above it: its new features, or the index.
fn adds(prev: Option<&RowResult>, row: &RowResult) -> String {
    if row.is_reference() {
        return "reference, not a rung".into();
    }
    if row.external.is_some() {
        return "external".into();
    }
    let Some(prev) = prev else {
        return "baseline".into();
    };
    let mut v: Vec<String> = row
        .features
        .iter()
        .filter(|f| !prev.features.contains(f))
        .cloned()
        .collect();
    if row.index && !prev.index {
        v.insert(0, "index".into());
    }
    v.extend(
        row.settings
            .iter()
            .filter(|x| !prev.settings.contains(x))
            .cloned(),
    );
    if v.is_empty() {
        "—".into()
    } else {
        v.join(", ")
    }
}

/// One cell per workload, joined.
fn per_workload(b: &Blocks, row: &str, f: &dyn Fn(&CellResult) -> String) -> String {
    b.workloads
        .iter()
        .map(|w| b.cell(row, w).map_or("—".into(), f))
        .collect::<Vec<_>>()
        .join(" / ")
}

fn short(w: &str) -> String {
    w.split('-').next().unwrap_or(w).to_string()
}

/// The headline table.
pub fn table(s: &Summary, b: &Blocks) -> String {
    let names = b
        .workloads
        .iter()
        .map(|w| short(w))
        .collect::<Vec<_>>()
        .join(" / ");
    let mut out = String::from("| Row | Adds |");
    for w in &b.workloads {
        let mut t = w.clone();
        if let Some(f) = t.get_mut(0..1) {
            f.make_ascii_uppercase();
        }
        let _ = write!(out, " {t} throughput, req/s [95% CI] |");
    }
    // Runs with duets get a column of changes measured at once (others render as before).
    let duets = !b.duets.is_empty();
    let _ = write!(out, " Change vs previous row ({names}) |");
    if duets {
        let _ = write!(out, " Change at once, duets ({names}) |");
    }
    let _ = writeln!(
        out,
        " Server µs/req ({names}) | Req/s per server CPU ({names}) | PostgreSQL µs/req ({names}) | Limit ({names}) |"
    );
    out.push_str("|---|---|");
    for _ in &b.workloads {
        out.push_str("---:|");
    }
    out.push_str(if duets { "---|---|" } else { "---|" });
    out.push_str("---:|---:|---:|---|\n");
    let mut prev: Option<&RowResult> = None;
    for row in &s.rows {
        let measured = b.rows.contains(&row.name);
        let versus = row
            .versus
            .as_ref()
            .and_then(|v| s.rows.iter().find(|r| &r.name == v));
        let adds = match versus {
            Some(v) => format!("vs {}: {}", v.name, adds(Some(v), row)),
            None => adds(prev, row),
        };
        let _ = write!(out, "| {} | {adds} |", row.name);
        if !measured || !row.failures.is_empty() {
            for _ in &b.workloads {
                out.push_str(" failed |");
            }
            if duets {
                out.push_str(" — |");
            }
            out.push_str(" — | — | — | — | **FAILED** (see results.md) |\n");
            continue;
        }
        for w in &b.workloads {
            let _ = write!(
                out,
                " {} |",
                b.cell(&row.name, w).map_or("—".into(), throughput_cell)
            );
        }
        let _ = write!(
            out,
            " {} |",
            per_workload(b, &row.name, &|c| change(&c.change_vs_previous))
        );
        if duets {
            let _ = write!(
                out,
                " {} |",
                per_workload(b, &row.name, &|c| change(&c.change_at_once))
            );
        }
        let _ = writeln!(
            out,
            " {} | {} | {} | {} |",
            per_workload(b, &row.name, &|c| us(&c.server_us_per_request)),
            per_workload(b, &row.name, &|c| c.qps_per_cpu.map_or("—".into(), qps)),
            per_workload(b, &row.name, &|c| us(&c.postgres_us_per_request)),
            per_workload(b, &row.name, &|c| c
                .limit
                .map_or("—".into(), |l| l.words().to_string())),
        );
        prev = Some(row);
    }
    out.push('\n');
    out.push_str(&aa_line(b));
    out.push_str(&legend(b));
    out
}

/// The rungs of the ladder: measured rows that are neither references nor the A/A copy.
fn rungs<'a>(s: &'a Summary, b: &Blocks) -> Vec<&'a RowResult> {
    let copy = b.settings.aa.as_deref().map(aa_name);
    s.rows
        .iter()
        .filter(|r| b.rows.contains(&r.name) && r.failures.is_empty())
        .filter(|r| !b.references.contains(&r.name) && Some(&r.name) != copy.as_ref())
        .collect()
}

/// The headline: four bullets from the run's typed values — the biggest resolved win
/// per workload, the top rung's throughput and cost, and where its limit is.
pub fn headline(s: &Summary, b: &Blocks) -> String {
    use super::effects::Verdict;
    let rungs = rungs(s, b);
    let mut out = String::new();
    for w in &b.workloads {
        let best = rungs
            .iter()
            .filter_map(|r| {
                let c = b.cell(&r.name, w)?.change_vs_previous.as_ref()?;
                (c.verdict == Verdict::Changed && c.ratio.ratio > 1.0).then_some((r, c))
            })
            .max_by(|a, b| a.1.ratio.ratio.total_cmp(&b.1.ratio.ratio));
        let _ = match best {
            Some((r, c)) => writeln!(
                out,
                "- **Biggest win, {w}: {}**, {} over the row above (95% interval over {} blocks).",
                r.name,
                c.words(),
                c.blocks
            ),
            None => writeln!(out, "- **{w}:** no rung resolved a win in this run."),
        };
    }
    if !b.duets.is_empty() {
        let tally: Vec<String> = b
            .workloads
            .iter()
            .map(|w| {
                let verdicts: Vec<Verdict> = rungs
                    .iter()
                    .filter_map(|r| Some(b.cell(&r.name, w)?.change_at_once?.verdict))
                    .collect();
                let n = |v: Verdict| verdicts.iter().filter(|x| **x == v).count();
                format!(
                    "{}: {} changed, {} ≈ (±5%), {} not resolved",
                    short(w),
                    n(Verdict::Changed),
                    n(Verdict::Equivalent),
                    n(Verdict::NotResolved) + n(Verdict::TooFewBlocks)
                )
            })
            .collect();
        let _ = writeln!(
            out,
            "- **Rungs against the row above, at once (duets, which follow the server's CPU per request):** {}.",
            tally.join("; ")
        );
    }
    if let Some(top) = rungs.iter().max_by(|x, y| {
        let t = |r: &&RowResult| {
            b.workloads
                .iter()
                .filter_map(|w| b.cell(&r.name, w)?.throughput.as_ref())
                .map(|t| t.interval.geomean.max(t.interval.median).ln())
                .sum::<f64>()
        };
        t(x).total_cmp(&t(y))
    }) {
        let each = |f: &dyn Fn(&CellResult) -> Option<String>| -> String {
            b.workloads
                .iter()
                .map(|w| {
                    let v = b.cell(&top.name, w).and_then(f).unwrap_or("—".into());
                    format!("{v} {}", short(w))
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(
            out,
            "- **Fastest: {}**, {} req/s; {} req/s per server CPU.",
            top.name,
            each(&|c| c.throughput.as_ref().map(|_| throughput_cell(c))),
            each(&|c| c.qps_per_cpu.map(qps)),
        );
        let _ = writeln!(
            out,
            "- **Where the fastest build's limit is:** {}.",
            each(&|c| c.limit.map(|l| l.words().to_string()))
        );
    }
    out.push('\n');
    out
}

/// The run's own false-alarm check.
pub fn aa_line(b: &Blocks) -> String {
    let solo = aa_words(b, b.aa_check.as_ref(), false);
    match (&b.aa_check_at_once, b.duets.is_empty()) {
        (_, true) => solo,
        (None, false) => solo + "A/A check at once: not enough duets for an interval.\n\n",
        (Some(aa), false) => solo + &aa_words(b, Some(aa), true),
    }
}

/// One A/A check in words, from the windows one after the other or from the duets.
fn aa_words(b: &Blocks, check: Option<&super::AaCheck>, at_once: bool) -> String {
    let Some(aa) = check else {
        return if b.settings.aa.is_some() {
            "A/A check: not enough blocks for an interval.\n\n".into()
        } else {
            String::new()
        };
    };
    let pct = |r: f64| (r - 1.0) * 100.0;
    let per: Vec<String> = aa
        .workloads
        .iter()
        .map(|(w, r)| {
            format!(
                "{} {:+.1}% [{:+.1}, {:+.1}]",
                short(w),
                pct(r.ratio),
                pct(r.ci_low),
                pct(r.ci_high)
            )
        })
        .collect();
    let holds = aa.ratio.ci_low <= 1.0 && aa.ratio.ci_high >= 1.0;
    format!(
        "A/A check{} ({:?} measured twice under two names, {}): {:+.1}% [{:+.1}, {:+.1}] over both workloads ({}); {}.\n\n",
        if at_once { " at once (the pair's duets)" } else { "" },
        aa.row,
        aa_name(&aa.row),
        pct(aa.ratio.ratio),
        pct(aa.ratio.ci_low),
        pct(aa.ratio.ci_high),
        per.join(", "),
        if holds {
            "its interval contains no change, as it must"
        } else {
            "**its interval excludes no change: a false alarm, so read the other verdicts with that in mind**"
        }
    )
}

fn legend(b: &Blocks) -> String {
    let blocks = b.windows.iter().map(|w| w.block).max().unwrap_or(0);
    let m = b
        .cells
        .iter()
        .filter_map(|c| c.change_vs_previous.map(|x| x.comparisons))
        .max()
        .unwrap_or(1);
    let no_steal = if b.host.is_some() {
        " Steal did not vary within cells: no adjustment for it."
    } else {
        " Effects are not adjusted for steal (too few blocks to fit it)."
    };
    let host = b.host.map_or(String::new(), |h| {
        let (how, figure) = match h.source {
            HostSource::Unit => ("a thread on each CPU times a fixed unit of arithmetic every 20 ms, and its median over a window", "unit time"),
            HostSource::Gap => ("a thread on each CPU times a chain of dependent loads through 64 MiB just before and just after each window, while nothing else runs, and its mean", "load time"),
        };
        let measured = format!(
            " The host's speed is a second covariate, measured outside the server and PostgreSQL: {how} varied by {:.1}% (sd) within a cell; log throughput moved by {:.2} per unit of log {figure} (simple r = {:.2}), log server µs/req by {:.2} (r = {:.2}).",
            h.within_sd * 100.0, h.throughput_slope, h.throughput_r, h.server_us_slope, h.server_us_r
        );
        let rows = format!(
            "the rows' mean {figure}s spread by {:.2}% (sd) where chance alone gives {:.2}%",
            h.row_sd * 100.0,
            h.row_sd_chance * 100.0
        );
        if h.applied() {
            let withheld: Vec<String> = b
                .cells
                .iter()
                .filter(|c| c.change_vs_previous.is_some_and(|x| x.host_withheld))
                .map(|c| format!("{} {}", c.row, short(&c.workload)))
                .collect();
            let withheld = if withheld.is_empty() {
                " Every comparison ran its two rows at speeds that differ by no more than chance (paired, 95%).".to_string()
            } else {
                format!(" Not adjusted for it, because their two rows ran at different speeds (paired, 95%): {}.", withheld.join(", "))
            };
            let reference = match h.source {
                HostSource::Unit => format!("{:.0} µs", h.reference_unit_ns / 1000.0),
                HostSource::Gap => format!("{:.0} ns", h.reference_unit_ns),
            };
            format!("{measured} Every window is moved to the run's median {figure} ({reference}) before the ratios; {rows}: no evidence beyond chance that the row moves it.{withheld}")
        } else {
            format!("{measured} The windows are not adjusted for it: {rows}, more than {ROW_SD_LIMIT}× chance, so the row may be moving it.")
        }
    });
    let steal = b.steal.map_or(
        no_steal.to_string(),
        |a| format!(
            " Effects and the A/A check are adjusted for the hypervisor's steal (randomization makes it independent of the row, so this removes noise, not effect): within a cell, log throughput fell by {:.2} per unit of steal (r = {:.2}) and log server µs/req rose by {:.2} (r = {:.2}); every window is moved to no steal (the run's mean was {:.1}%) before the ratios. The throughput and µs columns are as measured.",
            -a.throughput_slope, a.throughput_r, a.server_us_slope, a.server_us_r, a.mean_steal * 100.0
        ),
    );
    format!(
        "Throughput: good replies per second in {} s closed-loop windows ({} connections on the majority method, the minority open-loop at the rate that keeps the mix), geometric mean over {blocks} randomized block(s) [its 95% interval]. Change: geometric mean of the per-block ratios to the row above, with a t interval corrected for the {m} comparisons of a workload (Bonferroni); \"≈ (±5%)\": the whole interval lies within ±5%; \"not resolved\": the interval straddles no change and is wider. µs/req: CPU time per good reply from each party's CPU group over the window. Req/s per server CPU = 10⁶ / server µs per request. Limit: the party that used most of the saturated CPUs (≥ 90% busy, steal excluded).{steal}{host}\n",
        b.settings.window_secs, b.settings.connections
    ) + &duet_legend(b)
}

/// What the change columns mean when they come from duets (nothing for runs without).
fn duet_legend(b: &Blocks) -> String {
    let Some(secs) = b.settings.duet_secs.filter(|_| !b.duets.is_empty()) else {
        return String::new();
    };
    format!(
        "\n**Change at once (duets).** Each block also loads every rung at the same time as the row it is compared with (the A/A copy with its original): {secs} s windows, each side on half the connections at the exact mix (its minority rate set by a probe of both at once), both servers sharing the server CPUs, which side starts first drawn at random; {} duets in all. The column is the per-duet throughput ratio (one per block, the same interval and correction; no host or steal adjustment, since both sides share the moment). What it measures: the two servers get equal shares of the server CPU, so their throughput ratio follows the inverse ratio of their server CPU per request ({agree}), while work saved in PostgreSQL (an index, prepared plans) is shared by both sides and barely shows. Read it as the change in the server's requests per CPU-second, measured precisely, and \"Change vs previous row\" as the change in this machine's saturation throughput.\n",
        b.duets.len(),
        agree = duet_cpu_agreement(b)
    )
}

/// How closely a duet's throughput ratio followed the inverse ratio of the two servers'
/// CPU per request in this run: the median and largest gap over the comparisons (as a
/// log ratio, in %).
fn duet_cpu_agreement(b: &Blocks) -> String {
    let mut gaps: Vec<f64> = b
        .cells
        .iter()
        .filter_map(|c| {
            let t = c.change_at_once?.ratio.ratio;
            let u = c.server_us_at_once?.ratio.ratio;
            Some((t.ln() + u.ln()).abs() * 100.0)
        })
        .collect();
    match super::effects::median(&gaps) {
        Some(m) => {
            gaps.sort_by(f64::total_cmp);
            format!(
                "in this run the two ratios differ by a median of {m:.1}% over the {} comparisons, at most {:.0}%; `server_us_at_once` in summary.json",
                gaps.len(),
                gaps.last().copied().unwrap_or(0.0)
            )
        }
        None => "`server_us_at_once` in summary.json".into(),
    }
}

/// The counters per request, for the detail of results.md.
pub fn counters(b: &Blocks) -> String {
    let mut out = String::from(
        "| Row | Workload | Backends started / req | Write transactions / PATCH | WAL bytes / PATCH | Statements / req | Plans / req | Server system calls / req | Server context switches / req | Server run-queue delay, µs / req | Achieved GET share (min–max) |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let f = |v: Option<f64>, d: usize| v.map_or("—".into(), |v| format!("{v:.d$}"));
    for row in &b.rows {
        for w in &b.workloads {
            let Some(c) = b.cell(row, w) else { continue };
            let k = &c.counters;
            let _ = writeln!(
                out,
                "| {row} | {w} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                f(k.pg_backends_started, 3),
                f(k.pg_commits_per_patch, 3),
                f(k.pg_wal_bytes_per_patch, 0),
                f(k.pg_statements, 2),
                f(k.pg_plans, 3),
                f(k.server_syscalls, 2),
                f(k.server_context_switches, 2),
                f(k.server_run_delay_us, 1),
                c.get_share_range.map_or("—".into(), |(lo, hi)| format!(
                    "{:.1}–{:.1}%",
                    lo * 100.0,
                    hi * 100.0
                )),
            );
        }
    }
    out
}

/// The servers' CPU throttling under their pods' CPU limits, per row and workload
/// (rows that set `resources` only); empty when no row does.
pub fn throttling(b: &Blocks) -> String {
    let mut out = String::new();
    for row in &b.rows {
        for w in &b.workloads {
            let windows: Vec<_> = b
                .windows
                .iter()
                .filter(|x| &x.row == row && &x.workload == w)
                .filter_map(|x| Some((x.throttling?, x.wall_secs)))
                .collect();
            if windows.is_empty() {
                continue;
            }
            let periods: u64 = windows.iter().map(|(t, _)| t.periods).sum();
            let throttled: u64 = windows.iter().map(|(t, _)| t.throttled).sum();
            let ns: u64 = windows.iter().map(|(t, _)| t.throttled_ns).sum();
            let secs: f64 = windows.iter().map(|(_, s)| s).sum();
            if out.is_empty() {
                out.push_str("| Row | Workload | Windows | Quota periods throttled | Throttled time, ms per s |\n|---|---|---:|---:|---:|\n");
            }
            let _ = writeln!(
                out,
                "| {row} | {w} | {} | {} | {:.1} |",
                windows.len(),
                if periods == 0 {
                    "— (no quota)".to_string()
                } else {
                    format!(
                        "{:.1}% of {periods}",
                        throttled as f64 * 100.0 / periods as f64
                    )
                },
                ns as f64 / 1e6 / secs.max(1e-9)
            );
        }
    }
    out
}

/// Each rung's hypothesis checked against the counter it names (`moves` in the
/// matrix): the medians over blocks, the row above's → this row's, and the paired
/// ratio with its 95% interval.
pub fn mechanisms(b: &Blocks) -> String {
    let mut out = String::new();
    for (row, counter) in &b.hypotheses {
        let Some(k) = b.rows.iter().position(|r| r == row) else {
            continue;
        };
        let previous = match (b.versus.get(row), k.checked_sub(1)) {
            (Some(v), _) => v,
            (None, Some(p)) => &b.rows[p],
            (None, None) => continue,
        };
        for w in &b.workloads {
            let Some((old, new, ratio)) = b.counter_change(previous, row, w, *counter) else {
                continue;
            };
            let moved = match ratio {
                Some((d, lo, hi)) if hi < 0.0 || lo > 0.0 => {
                    format!("moved by {d:+.3} [{lo:+.3}, {hi:+.3}]")
                }
                Some((d, lo, hi)) => {
                    format!("did not move beyond noise: {d:+.3} [{lo:+.3}, {hi:+.3}]")
                }
                None => "one block: not judged".into(),
            };
            let _ = writeln!(
                out,
                "- **{row}**, {w}: {} {old:.3} → {new:.3} (against {previous}), {moved}; throughput {}.",
                counter.name(),
                b.cell(row, w).map_or("—".into(), |c| change(&c.change_vs_previous)),
            );
        }
    }
    if out.is_empty() {
        out.push_str("No row of this matrix names the counter its hypothesis moves (`moves`).\n");
    }
    out
}

/// The method paragraph.
pub fn method(b: &Blocks) -> String {
    let blocks = b.windows.iter().map(|w| w.block).max().unwrap_or(0);
    format!(
        "- Blocks (the headline): every build started once, side by side, each on its own port, pinned to the server CPUs and in its own CPU-accounting group (PostgreSQL and oha in theirs); {blocks} block(s), each measuring every row × workload once in a fresh random order (seed {}), one {} s window each; the blocks took {:.1} min. A window drives the majority method closed-loop on {} connections and the minority open-loop at the rate that keeps the mix (set in a warm-up, never from a block), so the achieved mix is recorded per window. Rows with and without the index use their own database; VACUUM and CHECKPOINT after every block. PostgreSQL's counters are exact at any moment (transaction ids, the WAL position, `pg_stat_statements`) and cover the probe and the window; the window's last sessions are counted {} ms after it. WAL syncs are not counted: PostgreSQL 15 reports them up to 10 s late.\n",
        b.seed,
        b.settings.window_secs,
        b.elapsed_secs / 60.0,
        b.settings.connections,
        super::STATS_FLUSH_MS,
    ) + &b.settings.duet_secs.filter(|_| !b.duets.is_empty()).map_or(String::new(), |secs| {
        format!("- Duets: after its windows, each block loads every pair (a rung and the row it is compared with) at once, {secs} s each, in a fresh random order with the side that starts first drawn at random (seed {}); each side's achieved mix and its server's CPU are recorded per duet, and the write check covers both.\n", b.seed)
    })
}
