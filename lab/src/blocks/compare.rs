//! Two runs with blocks, side by side: per row, workload and measure, the change of
//! the geometric mean between the runs with an interval whose width comes from the
//! data: the within-run variance of each run's blocks, plus the between-run variance
//! that the cells' differences show beyond it (the machine drifts between runs in a
//! way no run's blocks can show). No fixed floor.
use std::fmt::Write as _;

use super::effects::{signed, t_quantile};
use super::{Blocks, Window};

/// A measure compared between runs.
#[derive(Debug, Clone, Copy)]
pub struct Measure {
    pub name: &'static str,
    pub higher_is_better: bool,
    /// A window's value, moved to no steal and the run's reference host speed (see
    /// `Blocks::derive`).
    pub of: fn(&Blocks, &Window) -> Option<f64>,
}

pub const MEASURES: [Measure; 3] = [
    Measure {
        name: "throughput (req/s)",
        higher_is_better: true,
        of: |b, w| Some(b.adjusted_throughput(w)),
    },
    Measure {
        name: "server µs/request",
        higher_is_better: false,
        of: Blocks::adjusted_server_us,
    },
    Measure {
        name: "PostgreSQL µs/request",
        higher_is_better: false,
        of: |_, w| w.postgres_us(),
    },
];

/// Smaller values are not compared: a measure that is ≈ 0 (PostgreSQL's µs per
/// request of a server that does not use it) has no meaningful ratio.
const MIN_VALUE: f64 = 1.0;

/// One cell and measure, old against new.
#[derive(Debug, Clone)]
pub struct Line {
    pub row: String,
    pub workload: String,
    pub measure: Measure,
    /// Geometric means.
    pub old: f64,
    pub new: f64,
    /// new / old, with its 95% interval (within- and between-run variance).
    pub ratio: f64,
    pub ci_low: f64,
    pub ci_high: f64,
}

impl Line {
    /// The change in percent, positive for the better.
    pub fn gain(&self) -> f64 {
        let pct = (self.ratio - 1.0) * 100.0;
        if self.measure.higher_is_better {
            pct
        } else {
            -pct
        }
    }
    /// The interval excludes no change.
    pub fn significant(&self) -> bool {
        self.ci_low > 1.0 || self.ci_high < 1.0
    }
    /// A significant change for the worse by more than `pct` percent.
    pub fn regressed(&self, pct: f64) -> bool {
        self.significant() && self.gain() < -pct
    }
}

/// Logs of a measure over one cell's windows.
fn logs(b: &Blocks, row: &str, workload: &str, m: &Measure) -> Vec<f64> {
    b.windows
        .iter()
        .filter(|w| w.row == row && w.workload == workload)
        .filter_map(|w| (m.of)(b, w))
        // Under 1 µs of PostgreSQL per request is no work (the memory store's).
        .filter(|v| *v >= MIN_VALUE)
        .map(f64::ln)
        .collect()
}

fn mean_var(x: &[f64]) -> Option<(f64, f64)> {
    let n = x.len();
    if n < 2 {
        return None;
    }
    let mean = x.iter().sum::<f64>() / n as f64;
    let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    Some((mean, var))
}

/// The variance of a measure between runs beyond what the blocks of each run explain:
/// the median of d² − se² over the cells, d being a cell's difference of mean logs
/// and se its within-run standard error (at least 0). Taken around no change, not
/// around the mean of d, so a shift of the whole machine between runs counts; the
/// median, so that one real regression does not widen every other cell. Returns it
/// with the median within-run standard error of d.
pub fn between_run_variance(cells: &[(f64, f64)]) -> (f64, f64) {
    let mut excess: Vec<f64> = cells.iter().map(|(d, se2)| d * d - se2).collect();
    excess.sort_by(f64::total_cmp);
    let between = super::effects::median(&excess).unwrap_or(0.0).max(0.0);
    let mut se: Vec<f64> = cells.iter().map(|(_, se2)| se2.sqrt()).collect();
    se.sort_by(f64::total_cmp);
    (between, se.get(se.len() / 2).copied().unwrap_or(0.0))
}

/// Every cell and measure both runs have, and per measure (between-run variance,
/// median within-run standard error), both of the difference of mean logs.
pub fn lines(old: &Blocks, new: &Blocks) -> (Vec<Line>, Vec<(Measure, f64, f64)>) {
    let mut out = Vec::new();
    let mut spreads = Vec::new();
    for m in MEASURES {
        // (row, workload, mean old, mean new, se², df) per cell.
        let mut cells = Vec::new();
        for row in new.rows.iter().filter(|r| old.rows.contains(r)) {
            for workload in new.workloads.iter().filter(|w| old.workloads.contains(w)) {
                let (a, b) = (logs(old, row, workload, &m), logs(new, row, workload, &m));
                let (Some((ma, va)), Some((mb, vb))) = (mean_var(&a), mean_var(&b)) else {
                    continue;
                };
                let (sa, sb) = (va / a.len() as f64, vb / b.len() as f64);
                // Welch–Satterthwaite degrees of freedom.
                let df = (sa + sb).powi(2)
                    / (sa.powi(2) / (a.len() - 1) as f64 + sb.powi(2) / (b.len() - 1) as f64)
                        .max(1e-300);
                cells.push((row.clone(), workload.clone(), ma, mb, sa + sb, df.max(1.0)));
            }
        }
        if cells.is_empty() {
            continue;
        }
        let d_se: Vec<(f64, f64)> = cells.iter().map(|c| (c.3 - c.2, c.4)).collect();
        let (between, within) = between_run_variance(&d_se);
        spreads.push((m, between, within));
        // Bonferroni over the cells of a measure: a gate that looks at dozens of cells
        // must not fail on chance.
        let k = cells.len() as f64;
        for (row, workload, ma, mb, se2, df) in cells {
            let half = t_quantile(1.0 - 0.025 / k, df) * (se2 + between).sqrt();
            let d = mb - ma;
            out.push(Line {
                row,
                workload,
                measure: m,
                old: ma.exp(),
                new: mb.exp(),
                ratio: d.exp(),
                ci_low: (d - half).exp(),
                ci_high: (d + half).exp(),
            });
        }
    }
    (out, spreads)
}

/// The markdown report.
pub fn report(lines: &[Line], spreads: &[(Measure, f64, f64)], fail_above: f64) -> String {
    let mut out = String::from(
        "**Blocks** (the headline): per cell, the change of the geometric mean between the runs (each run's windows moved to no steal, and to its own median host speed where it has one, with its own fitted slopes) with an interval from both runs' block-to-block variance plus the variance between runs that the cells' differences show beyond it, at 95% for all the cells of a measure together (Bonferroni):\n\n",
    );
    for (m, between, within) in spreads {
        let _ = writeln!(
            out,
            "- {}: within-run standard error of a cell's change {:.1}% (median), between-run standard deviation {:.1}%.",
            m.name,
            within * 100.0,
            between.sqrt() * 100.0
        );
    }
    let _ = writeln!(
        out,
        "\nA change is significant when its interval excludes no change; a significant change for the worse beyond {fail_above:.0}% is a **REGRESSION**.\n"
    );
    out.push_str(
        "| Row | Workload | Measure | Old | New | Change [95% CI] |\n|---|---|---|---:|---:|---|\n",
    );
    for l in lines {
        let pct = |r: f64| (r - 1.0) * 100.0;
        let _ = writeln!(
            out,
            "| {} | {} | {} | {:.1} | {:.1} | {}% [{}, {}]{}{} |",
            l.row,
            l.workload,
            l.measure.name,
            l.old,
            l.new,
            signed(pct(l.ratio)),
            signed(pct(l.ci_low)),
            signed(pct(l.ci_high)),
            if l.significant() { " significant" } else { "" },
            if l.regressed(fail_above) {
                " **REGRESSION**"
            } else {
                ""
            }
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn between_run_variance_is_what_the_differences_show_beyond_the_blocks() {
        // Differences ±0.1 with se² 0.004: 0.01 − 0.004 = 0.006 each.
        let cells = [(0.1, 0.004), (-0.1, 0.004), (0.1, 0.004), (-0.1, 0.004)];
        let (between, within) = between_run_variance(&cells);
        assert!((between - 0.006).abs() < 1e-12, "{between}");
        assert!((within - 0.004f64.sqrt()).abs() < 1e-12);
        // A shift of the whole machine (every cell −8%) is between-run variance too.
        let shifted = [(-0.08, 0.0001); 6];
        let (between, _) = between_run_variance(&shifted);
        assert!((between - (0.0064 - 0.0001)).abs() < 1e-12, "{between}");
        // One outlying cell does not widen the others (the median).
        let mut one = vec![(0.0, 0.001); 5];
        one.push((0.5, 0.001));
        assert_eq!(between_run_variance(&one).0, 0.0);
        // Differences within what the blocks explain: nothing between runs.
        assert_eq!(between_run_variance(&[(0.01, 0.01), (0.02, 0.01)]).0, 0.0);
    }

    #[test]
    fn a_real_regression_of_eight_percent_is_flagged_at_five() {
        let m = MEASURES[0];
        let line = |ratio: f64, lo: f64, hi: f64| Line {
            row: "r".into(),
            workload: "w".into(),
            measure: m,
            old: 100.0,
            new: 100.0 * ratio,
            ratio,
            ci_low: lo,
            ci_high: hi,
        };
        assert!(line(0.92, 0.88, 0.96).regressed(5.0));
        assert!(
            !line(0.97, 0.94, 0.995).regressed(5.0),
            "significant but under 5%"
        );
        assert!(!line(0.92, 0.80, 1.05).regressed(5.0), "not significant");
        let cpu = Line {
            measure: MEASURES[1],
            ..line(1.10, 1.04, 1.16)
        };
        assert!(cpu.regressed(5.0), "CPU per request up 10% is worse");
    }
}
