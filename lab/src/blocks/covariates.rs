//! The covariates the effects are adjusted for: the hypervisor's steal share and the
//! host's speed (the speedometer's unit time, `measure::speedo`), both measured outside
//! the server and PostgreSQL in every window.
//!
//! Within each cell (row × workload), log throughput (and log server µs per request)
//! is regressed on the covariates, one set of slopes pooled over all cells of the run.
//! Randomization makes a covariate that the row does not cause independent of the row,
//! so adjusting for it removes noise, not effect (an ANCOVA); each window's value is
//! moved to no steal and the run's median unit time before the per-block ratios are
//! taken (the level does not change a ratio within a run; between runs it puts both at
//! their own reference). Whether the host covariate depends on the row is measured and
//! reported (`HostAdjustment::row_spread`).
use serde::{Deserialize, Serialize};

use super::Window;

/// The covariate adjustment for steal time.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StealAdjustment {
    /// The run's mean steal share.
    pub mean_steal: f64,
    /// d ln(throughput) / d steal, and the within-cell correlation it comes with.
    pub throughput_slope: f64,
    pub throughput_r: f64,
    /// d ln(server µs per request) / d steal, and its correlation.
    pub server_us_slope: f64,
    pub server_us_r: f64,
}

/// Which figure of the host's speed a run's adjustment uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HostSource {
    /// The speedometer's arithmetic unit, timed during the window (runs before the
    /// memory probe). The row can move it (its load shares the CPUs).
    #[default]
    Unit,
    /// The memory probe's ns per load, just before and after the window, nothing else
    /// running: the row cannot move it, except by what it leaves behind.
    Gap,
}

impl HostSource {
    /// A window's figure of this source.
    pub fn of(self, w: &Window) -> Option<f64> {
        match self {
            HostSource::Unit => w.host_unit_ns,
            HostSource::Gap => w.host_gap_ns,
        }
    }
}

/// The covariate adjustment for the host's speed: x = ln(figure / the run's median).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct HostAdjustment {
    /// Which figure: the memory probe between windows where every window has it.
    #[serde(default)]
    pub source: HostSource,
    /// The run's median figure, ns: every window is moved to it.
    pub reference_unit_ns: f64,
    /// d ln(throughput) / d ln(unit time), and the within-cell (simple) correlation.
    /// Measured here it is ≈ −11, not −1: the unit is a weak stand-in for what slows
    /// the stack, so any part of it the row caused would be multiplied as much; hence
    /// the checks of `applied` and `Blocks::host_moved`.
    pub throughput_slope: f64,
    pub throughput_r: f64,
    /// d ln(server µs per request) / d ln(unit time), and its correlation.
    pub server_us_slope: f64,
    pub server_us_r: f64,
    /// Within-cell spread of x (its standard deviation, on N − cells degrees of
    /// freedom): how much the host's speed moved from window to window.
    pub within_sd: f64,
    /// The standard deviation of the rows' mean x (each window taken relative to its
    /// block and workload, where every row has one window), and what chance alone
    /// gives it (the residual sd over √windows per row): a covariate the rows do not
    /// cause has the first near the second.
    pub row_sd: f64,
    pub row_sd_chance: f64,
}

/// How far the rows' mean host covariate may spread, in multiples of chance, for the
/// adjustment to be applied: beyond it the row may be moving the covariate, and an
/// adjustment could carry part of an effect away. 1.5 is about the 99th percentile of
/// the ratio for a dozen rows when the rows do not move it (√(χ²₁₁/11)).
pub const ROW_SD_LIMIT: f64 = 1.5;

impl HostAdjustment {
    /// Whether the windows are adjusted for the host's speed: only while the rows do
    /// not move the covariate beyond chance.
    pub fn applied(&self) -> bool {
        self.row_sd <= ROW_SD_LIMIT * self.row_sd_chance
    }
}

/// Which measure a factor adjusts.
#[derive(Debug, Clone, Copy)]
pub enum Measure {
    Throughput,
    ServerUs,
}

/// A window's mean steal share over its CPUs.
pub fn steal_of(w: &Window) -> f64 {
    if w.cpu_steal.is_empty() {
        0.0
    } else {
        w.cpu_steal.iter().sum::<f64>() / w.cpu_steal.len() as f64
    }
}

/// A window's host covariate: ln(figure / reference); 0 without one.
fn host_of(w: &Window, reference: f64, source: HostSource) -> f64 {
    source
        .of(w)
        .filter(|u| *u > 0.0 && reference > 0.0)
        .map_or(0.0, |u| (u / reference).ln())
}

/// The factor that moves a window's `measure` to no steal and the reference speed.
pub fn factor(
    steal: Option<&StealAdjustment>,
    host: Option<&HostAdjustment>,
    w: &Window,
    measure: Measure,
) -> f64 {
    let mut e = 0.0;
    if let Some(a) = steal {
        let slope = match measure {
            Measure::Throughput => a.throughput_slope,
            Measure::ServerUs => a.server_us_slope,
        };
        e -= slope * steal_of(w);
    }
    if let Some(h) = host.filter(|h| h.applied()) {
        let slope = match measure {
            Measure::Throughput => h.throughput_slope,
            Measure::ServerUs => h.server_us_slope,
        };
        e -= slope * host_of(w, h.reference_unit_ns, h.source);
    }
    e.exp()
}

/// Within-cell sums of one measure against the covariates.
struct Sums {
    /// Centered cross-products of the covariates (k × k).
    xx: Vec<Vec<f64>>,
    /// Of each covariate with ln y.
    xy: Vec<f64>,
    yy: f64,
    /// Degrees of freedom: windows used minus cells used.
    df: f64,
}

/// A window's covariates and ln y, grouped by cell.
type Cells<'a> = std::collections::BTreeMap<(&'a str, &'a str), Vec<(Vec<f64>, f64)>>;

/// Pooled within-cell sums of ln `f` on `xs` over the windows that have `f`, in cells
/// of at least two windows.
fn sums(ws: &[Window], f: fn(&Window) -> Option<f64>, xs: &[&dyn Fn(&Window) -> f64]) -> Sums {
    let k = xs.len();
    let mut cells: Cells = Default::default();
    for w in ws {
        if let Some(v) = f(w).filter(|v| *v > 0.0) {
            cells
                .entry((w.row.as_str(), w.workload.as_str()))
                .or_default()
                .push((xs.iter().map(|x| x(w)).collect(), v.ln()));
        }
    }
    let mut s = Sums {
        xx: vec![vec![0.0; k]; k],
        xy: vec![0.0; k],
        yy: 0.0,
        df: 0.0,
    };
    for v in cells.values().filter(|v| v.len() > 1) {
        let n = v.len() as f64;
        s.df += n - 1.0;
        let mx: Vec<f64> = (0..k)
            .map(|i| v.iter().map(|p| p.0[i]).sum::<f64>() / n)
            .collect();
        let my = v.iter().map(|p| p.1).sum::<f64>() / n;
        for (x, y) in v {
            for i in 0..k {
                s.xy[i] += (x[i] - mx[i]) * (y - my);
                for j in 0..k {
                    s.xx[i][j] += (x[i] - mx[i]) * (x[j] - mx[j]);
                }
            }
            s.yy += (y - my).powi(2);
        }
    }
    s
}

/// The slopes (multiple regression) and each covariate's within-cell correlation with
/// ln y; None without variation in y or a singular system.
fn slopes(s: &Sums) -> Option<Vec<(f64, f64)>> {
    if s.yy <= 0.0 {
        return None;
    }
    let beta = match s.xy.len() {
        1 => vec![s.xy[0] / s.xx[0][0]],
        2 => {
            let det = s.xx[0][0] * s.xx[1][1] - s.xx[0][1] * s.xx[1][0];
            if det.abs() <= 1e-9 * s.xx[0][0] * s.xx[1][1] {
                return None;
            }
            vec![
                (s.xx[1][1] * s.xy[0] - s.xx[0][1] * s.xy[1]) / det,
                (s.xx[0][0] * s.xy[1] - s.xx[1][0] * s.xy[0]) / det,
            ]
        }
        _ => return None,
    };
    Some(
        beta.into_iter()
            .enumerate()
            .map(|(i, b)| (b, s.xy[i] / (s.xx[i][i] * s.yy).sqrt()))
            .collect(),
    )
}

/// Fits the adjustments a run's windows allow: a covariate takes part only when it
/// varies within cells (steal is often 0 throughout; runs before the speedometer have
/// no unit times).
pub fn fit(ws: &[Window]) -> (Option<StealAdjustment>, Option<HostAdjustment>) {
    // The host covariate needs every window to carry it: the memory probe between
    // windows where the run has it, else the speedometer's unit.
    let source = if ws.iter().all(|w| w.host_gap_ns.is_some()) {
        HostSource::Gap
    } else {
        HostSource::Unit
    };
    let mut units: Vec<f64> = ws.iter().filter_map(|w| source.of(w)).collect();
    units.sort_by(f64::total_cmp);
    let reference = units.get(units.len() / 2).copied().unwrap_or(0.0);
    let host_used = !units.is_empty() && units.len() == ws.len();
    let steal = |w: &Window| steal_of(w);
    let host = |w: &Window| host_of(w, reference, source);
    let varies = |x: &dyn Fn(&Window) -> f64| {
        let s = sums(ws, |w| Some(w.throughput), &[x]);
        s.xx[0][0] > 1e-12
    };
    let mut xs: Vec<&dyn Fn(&Window) -> f64> = Vec::new();
    let steal_used = varies(&steal);
    if steal_used {
        xs.push(&steal);
    }
    let host_used = host_used && varies(&host);
    if host_used {
        xs.push(&host);
    }
    if xs.is_empty() {
        return (None, None);
    }
    let t = slopes(&sums(ws, |w| Some(w.throughput), &xs));
    let u = slopes(&sums(ws, Window::server_us, &xs));
    let (Some(t), Some(u)) = (t, u) else {
        return (None, None);
    };
    let n = ws.len().max(1) as f64;
    let steal_adj = steal_used.then(|| StealAdjustment {
        mean_steal: ws.iter().map(steal_of).sum::<f64>() / n,
        throughput_slope: t[0].0,
        throughput_r: t[0].1,
        server_us_slope: u[0].0,
        server_us_r: u[0].1,
    });
    let i = usize::from(steal_used);
    let host_adj = host_used.then(|| {
        let s = sums(ws, |w| Some(w.throughput), &[&host]);
        let within_sd = (s.xx[0][0] / s.df.max(1.0)).sqrt();
        let (row_sd, row_sd_chance) = row_spread(ws, reference, source);
        HostAdjustment {
            source,
            reference_unit_ns: reference,
            throughput_slope: t[i].0,
            throughput_r: t[i].1,
            server_us_slope: u[i].0,
            server_us_r: u[i].1,
            within_sd,
            row_sd,
            row_sd_chance,
        }
    });
    (steal_adj, host_adj)
}

/// The standard deviation of the rows' mean x and what chance gives it. Each window's
/// x is taken relative to the mean of its block and workload (every row has one window
/// there, so the host's drift and the workload cancel); the residuals around the rows'
/// means give the chance level: their sd over √(windows per row).
fn row_spread(ws: &[Window], reference: f64, source: HostSource) -> (f64, f64) {
    use std::collections::BTreeMap;
    let mut strata: BTreeMap<(u32, &str), (f64, f64)> = BTreeMap::new();
    for w in ws {
        let e = strata.entry((w.block, w.workload.as_str())).or_default();
        e.0 += host_of(w, reference, source);
        e.1 += 1.0;
    }
    let r = |w: &Window| {
        let (sum, n) = strata[&(w.block, w.workload.as_str())];
        host_of(w, reference, source) - sum / n
    };
    let mut rows: BTreeMap<&str, (f64, f64)> = BTreeMap::new();
    for w in ws {
        let e = rows.entry(w.row.as_str()).or_default();
        e.0 += r(w);
        e.1 += 1.0;
    }
    let k = rows.len() as f64;
    let df = ws.len() as f64 - strata.len() as f64 - (k - 1.0);
    if k < 2.0 || df < 1.0 {
        return (0.0, 0.0);
    }
    let mean_of = |row: &str| rows[row].0 / rows[row].1;
    let residual: f64 = ws.iter().map(|w| (r(w) - mean_of(&w.row)).powi(2)).sum();
    let means: Vec<f64> = rows.values().map(|(s, n)| s / n).collect();
    let m = means.iter().sum::<f64>() / k;
    let sd = (means.iter().map(|v| (v - m).powi(2)).sum::<f64>() / (k - 1.0)).sqrt();
    let per_row = ws.len() as f64 / k;
    (sd, (residual / df / per_row).sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blocks::tests::window;

    /// Two rows, B 20% faster; each window's throughput follows the host's unit time
    /// (slope −1) and loses exp(−4 × steal), both different in every window.
    fn run(with_host: bool) -> Vec<Window> {
        let mut ws = Vec::new();
        for k in 1..=6u32 {
            for (i, (row, base)) in [("A", 1000.0), ("B", 1200.0)].iter().enumerate() {
                let steal = 0.01 * f64::from((k * 7 + i as u32 * 3) % 5);
                let unit = 1000.0 * (1.0 + 0.03 * f64::from((k * 5 + i as u32) % 4));
                let host = if with_host {
                    (unit / 1000.0_f64).ln()
                } else {
                    0.0
                };
                let mut w = window(k, row, base * (-4.0 * steal - host).exp(), 1_000_000_000);
                w.cpu_steal = vec![steal, steal];
                w.host_unit_ns = with_host.then_some(unit);
                ws.push(w);
            }
        }
        ws
    }

    #[test]
    fn both_slopes_are_recovered_and_adjusted_away() {
        let ws = run(true);
        let (s, h) = fit(&ws);
        let (s, h) = (s.expect("steal varies"), h.expect("the host varies"));
        assert!((s.throughput_slope + 4.0).abs() < 1e-9, "{s:?}");
        assert!((h.throughput_slope + 1.0).abs() < 1e-9, "{h:?}");
        // Adjusted, every window of a row has the same throughput up to the level.
        let adj: Vec<f64> = ws
            .iter()
            .filter(|w| w.row == "A")
            .map(|w| w.throughput * factor(Some(&s), Some(&h), w, Measure::Throughput))
            .collect();
        assert!(
            adj.iter().all(|v| (v / adj[0] - 1.0).abs() < 1e-9),
            "{adj:?}"
        );
    }

    #[test]
    fn without_unit_times_only_steal_is_fitted_as_before() {
        let ws = run(false);
        let (s, h) = fit(&ws);
        assert!(h.is_none());
        let s = s.expect("steal varies");
        assert!((s.throughput_slope + 4.0).abs() < 1e-9, "{s:?}");
    }

    #[test]
    fn a_covariate_the_row_moves_is_not_applied() {
        let mut ws = run(true);
        // Row B's windows all 5% slower on the speedometer: the row sets it.
        for w in ws.iter_mut().filter(|w| w.row == "B") {
            w.host_unit_ns = w.host_unit_ns.map(|u| u * 1.05);
        }
        let (s, h) = fit(&ws);
        let h = h.expect("fitted and recorded");
        assert!(!h.applied(), "{h:?}");
        let w = &ws[1];
        let with = factor(s.as_ref(), Some(&h), w, Measure::Throughput);
        let without = factor(s.as_ref(), None, w, Measure::Throughput);
        assert_eq!(with, without);
        // Unmoved, the same run is adjusted.
        assert!(fit(&run(true)).1.unwrap().applied());
    }

    #[test]
    fn nothing_is_fitted_without_variation() {
        let mut ws = run(false);
        for w in &mut ws {
            w.cpu_steal = vec![0.0, 0.0];
        }
        assert_eq!(fit(&ws), (None, None));
    }
}
