//! Two runs side by side (`lab compare OLD NEW`), and the repeatability of runs
//! (`lab repeatability RUN...`). Every change is judged by the one rule of the tables,
//! [`stats::compare`]: significant only when the repetitions' ranges do not overlap.
//! Between two runs the machine itself drifts, which no run's repetitions show, so a
//! change must also clear a noise floor between runs ([`NOISE_FLOOR_PCT`]).
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::measure::stats::{compare, spread, Change};
use crate::results::{Summary, WorkloadResult};

/// A run folder (holding `summary.json`) or a `summary.json` itself.
pub fn load(path: &Path) -> Result<Summary> {
    let file: PathBuf = if path.is_dir() {
        path.join("summary.json")
    } else {
        path.to_path_buf()
    };
    let text =
        std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", file.display()))
}

/// The samples of one measure over a workload's repetitions.
fn capacities(w: &WorkloadResult) -> Vec<f64> {
    w.searches.iter().map(|s| s.qps).collect()
}

fn server_us(w: &WorkloadResult) -> Vec<f64> {
    w.searches
        .iter()
        .filter_map(|s| s.common.as_ref()?.server_us_per_request)
        .collect()
}

fn postgres_us(w: &WorkloadResult) -> Vec<f64> {
    w.searches
        .iter()
        .filter_map(|s| s.common.as_ref()?.postgres_us_per_request)
        .collect()
}

/// The default noise floor between two runs, in percent: two full default runs of one
/// commit on this machine, one after the other, differed by up to 26% in a median whose
/// repetitions' ranges were apart (`results/repeatability.md`). A change smaller than
/// this is called "≈" however tight the ranges; on a quieter machine lower it.
pub const NOISE_FLOOR_PCT: f64 = 30.0;

/// One measure of one row and workload, old against new.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    pub row: String,
    pub workload: String,
    pub measure: &'static str,
    /// Whether a higher value is better (capacity) or worse (CPU per request).
    pub higher_is_better: bool,
    pub old: Vec<f64>,
    pub new: Vec<f64>,
    pub change: Option<Change>,
    /// The ranges were apart but the change was under the noise floor between runs
    /// (then `change` is `Noise`).
    pub under_floor: bool,
}

impl Line {
    /// The change in percent, signed so that a positive value is an improvement.
    fn gain(&self) -> Option<f64> {
        let d = match self.change? {
            Change::Significant(d) | Change::Noise(d) | Change::Unjudged(d) => d,
        };
        Some(if self.higher_is_better { d } else { -d })
    }

    /// A significant change for the worse by more than `pct` percent.
    pub fn regressed(&self, pct: f64) -> bool {
        matches!(self.change, Some(Change::Significant(_))) && self.gain().is_some_and(|g| g < -pct)
    }
}

/// Whether the CPU per request of two workloads' repetitions compare: all measured at
/// one and the same common rate, none at a reduced one (fixed costs spread differently
/// over other rates).
pub fn same_common_rate(a: &WorkloadResult, b: &WorkloadResult) -> bool {
    let rates: Vec<(f64, bool)> = a
        .searches
        .iter()
        .chain(&b.searches)
        .filter_map(|s| s.common.as_ref().map(|c| (c.offered, c.reduced)))
        .collect();
    rates
        .first()
        .is_some_and(|first| rates.iter().all(|r| r.0 == first.0 && !r.1))
}

/// Every row (by name) and workload present in both runs, each measure that both have
/// (CPU per request only where [`same_common_rate`]); a significant change smaller than
/// `floor` percent is demoted to noise.
pub fn lines(old: &Summary, new: &Summary, floor: f64) -> Vec<Line> {
    type Measure = (&'static str, bool, fn(&WorkloadResult) -> Vec<f64>);
    let measures: [Measure; 3] = [
        ("capacity (QPS)", true, capacities),
        ("server µs/request", false, server_us),
        ("PostgreSQL µs/request", false, postgres_us),
    ];
    let mut out = Vec::new();
    for row in &new.rows {
        let Some(old_row) = old.rows.iter().find(|r| r.name == row.name) else {
            continue;
        };
        for w in &row.workloads {
            let Some(old_w) = old_row.workloads.iter().find(|x| x.name == w.name) else {
                continue;
            };
            for (measure, higher_is_better, f) in measures {
                let (a, b) = (f(old_w), f(w));
                if a.is_empty()
                    || b.is_empty()
                    || (!higher_is_better && !same_common_rate(old_w, w))
                {
                    continue;
                }
                let (change, under_floor) = match compare(&a, &b) {
                    Some(Change::Significant(d)) if d.abs() < floor => {
                        (Some(Change::Noise(d)), true)
                    }
                    c => (c, false),
                };
                out.push(Line {
                    row: row.name.clone(),
                    workload: w.name.clone(),
                    measure,
                    higher_is_better,
                    change,
                    under_floor,
                    old: a,
                    new: b,
                });
            }
        }
    }
    out
}

/// What differs between the two runs' conditions, each a reason to distrust a change.
pub fn warnings(old: &Summary, new: &Summary) -> Vec<String> {
    let (a, b) = (&old.environment, &new.environment);
    let mut w = Vec::new();
    let mut differ = |what: &str, x: String, y: String| {
        if x != y {
            w.push(format!("{what} differs: {x} → {y}"));
        }
    };
    differ("machine", a.host.describe(), b.host.describe());
    differ(
        "pinning (server / PostgreSQL / oha CPUs)",
        format!("{:?}", a.host.pinning()),
        format!("{:?}", b.host.pinning()),
    );
    differ("PostgreSQL", a.postgres.clone(), b.postgres.clone());
    differ("oha", a.oha.clone(), b.oha.clone());
    differ("rustc", a.rustc.clone(), b.rustc.clone());
    differ("users", a.users.to_string(), b.users.to_string());
    differ(
        "step length (s)",
        a.duration_secs.to_string(),
        b.duration_secs.to_string(),
    );
    differ(
        "repetitions",
        a.repetitions.to_string(),
        b.repetitions.to_string(),
    );
    differ("quick", a.quick.to_string(), b.quick.to_string());
    for section in ["load", "local", "postgres"] {
        for key in differing_keys(&old.matrix[section], &new.matrix[section]) {
            differ(
                &format!("matrix [{section}] {key}"),
                old.matrix[section][&key].to_string(),
                new.matrix[section][&key].to_string(),
            );
        }
    }
    w
}

/// The keys two JSON objects both have with different values (a key only one of them
/// has is a field an older run did not record, not a difference).
fn differing_keys(a: &serde_json::Value, b: &serde_json::Value) -> Vec<String> {
    match (a.as_object(), b.as_object()) {
        (Some(a), Some(b)) => a
            .iter()
            .filter(|(k, v)| b.get(*k).is_some_and(|w| w != *v))
            .map(|(k, _)| k.clone())
            .collect(),
        _ => Vec::new(),
    }
}

fn cell(v: &[f64], digits: usize) -> String {
    match spread(v) {
        Some(s) if v.len() > 1 => {
            format!("{:.d$} ({:.d$}–{:.d$})", s.median, s.min, s.max, d = digits)
        }
        Some(s) => format!("{:.d$}", s.median, d = digits),
        None => "—".into(),
    }
}

fn verdict(l: &Line, floor: f64) -> String {
    match l.change {
        Some(Change::Noise(d)) if l.under_floor => {
            format!("≈ ({d:+.1}%: ranges apart, under the {floor:.0}% floor between runs)")
        }
        Some(Change::Significant(d)) => format!("{d:+.1}% significant"),
        Some(Change::Noise(d)) => format!("≈ ({d:+.1}%, within noise)"),
        Some(Change::Unjudged(d)) => format!("{d:+.1}% (not judged: under 3 repetitions)"),
        None => "n/a".into(),
    }
}

/// The markdown report of `lines`, with the warnings first and, per measure, the
/// largest distance between the two runs' medians.
pub fn report(old: &Summary, new: &Summary, lines: &[Line], fail_above: f64, floor: f64) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Comparing {} (commit `{}`) → {} (commit `{}`)\n",
        old.environment.date,
        old.environment.git_commit,
        new.environment.date,
        new.environment.git_commit
    );
    for w in warnings(old, new) {
        let _ = writeln!(out, "> warning: {w}");
    }
    let _ = writeln!(
        out,
        "A change is significant when the repetitions' min–max ranges do not overlap and the medians differ by at least {floor:.0}% (the noise floor between runs: the machine drifts between runs in ways one run's repetitions do not show). A significant change for the worse beyond {fail_above:.0}% is a **REGRESSION**, so in effect a change for the worse of at least {:.0}%.",
        floor.max(fail_above)
    );
    out.push_str("\n| Row | Workload | Measure | Old median (min–max) | New median (min–max) | Change |\n|---|---|---|---:|---:|---|\n");
    for l in lines {
        let digits = usize::from(!l.higher_is_better);
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {}{} |",
            l.row,
            l.workload,
            l.measure,
            cell(&l.old, digits),
            cell(&l.new, digits),
            verdict(l, floor),
            if l.regressed(fail_above) {
                " **REGRESSION**"
            } else {
                ""
            }
        );
    }
    out.push('\n');
    for measure in [
        "capacity (QPS)",
        "server µs/request",
        "PostgreSQL µs/request",
    ] {
        let of: Vec<&Line> = lines.iter().filter(|l| l.measure == measure).collect();
        let worst = of
            .iter()
            .filter_map(|l| l.gain().map(|g| (g.abs(), *l)))
            .max_by(|a, b| a.0.total_cmp(&b.0));
        if let Some((d, l)) = worst {
            let significant = of
                .iter()
                .filter(|l| matches!(l.change, Some(Change::Significant(_))))
                .count();
            let _ = writeln!(
                out,
                "- {measure}: the medians differ by at most {d:.1}% ({} / {}); {significant} of {} changes significant.",
                l.row,
                l.workload,
                of.len()
            );
        }
    }
    out
}

/// Within-run repeatability: per row and workload, the spread of the repetitions'
/// capacities as (max − min) / median.
pub fn repeatability(runs: &[(String, Summary)]) -> String {
    let mut out = String::from(
        "| Run | Step (s) | Reps | Row | Workload | Capacity median (min–max) | Spread (max−min)/median | Server µs/req spread |\n|---|---:|---:|---|---|---:|---:|---:|\n",
    );
    let mut totals = Vec::new();
    for (name, s) in runs {
        let mut spreads = Vec::new();
        for row in &s.rows {
            for w in &row.workloads {
                let caps = capacities(w);
                let width = |v: &[f64]| {
                    spread(v)
                        .filter(|x| x.median > 0.0 && v.len() > 1)
                        .map(|x| (x.max - x.min) / x.median * 100.0)
                };
                let cap_width = width(&caps);
                if let Some(c) = cap_width {
                    spreads.push(c);
                }
                let _ = writeln!(
                    out,
                    "| {name} | {} | {} | {} | {} | {} | {} | {} |",
                    s.environment.duration_secs,
                    w.searches.len(),
                    row.name,
                    w.name,
                    cell(&caps, 0),
                    cap_width.map_or("—".into(), |c| format!("{c:.1}%")),
                    width(&server_us(w)).map_or("—".into(), |c| format!("{c:.1}%"))
                );
            }
        }
        if let Some(m) = spread(&spreads) {
            totals.push(format!(
                "- {name} ({} s steps): median spread {:.1}%, largest {:.1}%",
                s.environment.duration_secs, m.median, m.max
            ));
        }
    }
    out.push('\n');
    out.push_str(&totals.join("\n"));
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(caps: &[f64], us: &[f64]) -> Summary {
        let searches: Vec<serde_json::Value> = caps
            .iter()
            .zip(us)
            .enumerate()
            .map(|(i, (q, u))| {
                serde_json::json!({
                    "repetition": i + 1, "qps": q, "offered": q, "p99_ms": 3.0, "get_share": 0.9,
                    "cpu_server": null, "cpu_postgres": null, "cpu_oha": 0.1,
                    "server_peak_rss_kib": null, "limit": null, "steps": 3,
                    "integrity_failures": [], "writes_checked": 0,
                    "common": {
                        "offered": 1500.0, "reduced": false, "secs": 10.0, "achieved": 1500.0,
                        "passed": true, "reasons": [], "p50_ms": 1.0, "p90_ms": 1.0, "p99_ms": 2.0,
                        "p999_ms": 3.0, "server_us_per_request": u,
                        "server_user_us_per_request": null, "server_system_us_per_request": null,
                        "postgres_us_per_request": 100.0, "oha_us_per_request": 30.0, "cpu_busy": []
                    }
                })
            })
            .collect();
        let committed = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../results/20261129T020005Z/summary.json"),
        )
        .unwrap();
        let mut v: serde_json::Value = serde_json::from_str(&committed).unwrap();
        v["rows"] = serde_json::json!([{
            "name": "+pool", "features": ["pool"], "index": true, "note": null, "failures": [],
            "workloads": [{"name": "read-heavy", "searches": searches}]
        }]);
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn same_code_is_within_noise_and_a_crafted_regression_is_caught() {
        let old = summary(&[10_000.0, 10_400.0, 9_800.0], &[80.0, 82.0, 79.0]);
        let same = summary(&[10_200.0, 9_900.0, 10_300.0], &[81.0, 80.0, 83.0]);
        let l = lines(&old, &same, 0.0);
        assert_eq!(l.len(), 3, "capacity, server and PostgreSQL µs");
        assert!(l.iter().all(|l| !l.regressed(5.0)), "{l:?}");
        assert!(matches!(l[0].change, Some(Change::Noise(_))));
        // 20% fewer QPS and 25% more server CPU per request, ranges apart.
        let worse = summary(&[8_000.0, 8_200.0, 7_900.0], &[100.0, 101.0, 99.0]);
        let l = lines(&old, &worse, 0.0);
        assert!(l[0].regressed(5.0) && l[1].regressed(5.0), "{l:?}");
        assert!(
            !l[0].regressed(25.0),
            "below the threshold it is reported, not failed"
        );
        let text = report(&old, &worse, &l, 5.0, 0.0);
        assert!(text.contains("**REGRESSION**"), "{text}");
        // Better is never a regression.
        assert!(lines(&worse, &old, 0.0).iter().all(|l| !l.regressed(5.0)));
        // Under the default floor between runs, 20% is noise; 40% fewer QPS is not.
        let l = lines(&old, &worse, NOISE_FLOOR_PCT);
        assert!(l.iter().all(|l| !l.regressed(5.0)), "{l:?}");
        assert!(l[0].under_floor && l[1].under_floor, "{l:?}");
        let much_worse = summary(&[6_000.0, 6_200.0, 5_900.0], &[80.0, 81.0, 79.0]);
        let l = lines(&old, &much_worse, NOISE_FLOOR_PCT);
        assert!(l[0].regressed(5.0) && !l[1].regressed(5.0), "{l:?}");
    }

    /// The two committed full runs of one commit: every row "≈" under the default floor.
    #[test]
    fn two_committed_runs_of_one_commit_are_within_noise() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../results");
        let old = load(&dir.join("20261129T042103Z")).unwrap();
        let new = load(&dir.join("20261129T045528Z")).unwrap();
        assert_eq!(old.environment.git_commit, new.environment.git_commit);
        let l = lines(&old, &new, NOISE_FLOOR_PCT);
        assert!(l.len() >= 40, "{}", l.len());
        let significant: Vec<&Line> = l
            .iter()
            .filter(|l| matches!(l.change, Some(Change::Significant(_))))
            .collect();
        assert!(significant.is_empty(), "{significant:?}");
        // Without the floor, the ranges alone call some of them changes.
        assert!(lines(&old, &new, 0.0)
            .iter()
            .any(|l| matches!(l.change, Some(Change::Significant(_)))));
        // A third run of the same server code (a later harness), out of sample.
        let third = load(&dir.join("20261129T065413Z")).unwrap();
        let l = lines(&new, &third, NOISE_FLOOR_PCT);
        assert!(l.len() >= 40, "{}", l.len());
        assert!(
            l.iter()
                .all(|l| !matches!(l.change, Some(Change::Significant(_)))),
            "{l:?}"
        );
    }

    #[test]
    fn differing_conditions_are_warned_about() {
        let a = summary(&[1.0], &[1.0]);
        let mut b = a.clone();
        assert!(warnings(&a, &b).is_empty());
        b.environment.oha = "oha 1.17.0".into();
        b.environment.duration_secs = 5.0;
        b.matrix["load"]["slo_p99_ms"] = serde_json::json!(100.0);
        // A key the older run did not record is no difference.
        b.matrix["load"]["a_new_key"] = serde_json::json!(1);
        let w = warnings(&a, &b);
        assert_eq!(w.len(), 3, "{w:?}");
        assert!(w[0].starts_with("oha differs"));
        assert!(
            w[2].starts_with("matrix [load] slo_p99_ms differs: 50.0 → 100.0"),
            "{w:?}"
        );
    }

    #[test]
    fn repeatability_is_the_spread_of_the_repetitions() {
        let s = summary(&[9_000.0, 10_000.0, 11_000.0], &[80.0, 80.0, 88.0]);
        let text = repeatability(&[("a".into(), s)]);
        assert!(text.contains("| 20.0% | 10.0% |"), "{text}");
        assert!(text.contains("median spread 20.0%"), "{text}");
    }
}
