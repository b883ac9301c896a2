//! Effects with intervals: per block, the log ratio of a row to the one it is compared
//! with; over blocks, the geometric mean and a Student t interval, widened for the
//! number of comparisons made at once (Bonferroni, the simultaneous form of Holm's
//! correction), and a verdict kept as a value.
use serde::{Deserialize, Serialize};

/// A ratio with its interval (1.0 = no change).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Ratio {
    pub ratio: f64,
    pub ci_low: f64,
    pub ci_high: f64,
}

/// What an interval lets one say about a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// The interval excludes no change: a change, up or down.
    Changed,
    /// The whole interval lies within ±[`EQUIVALENCE`]: no change worth naming.
    Equivalent,
    /// The interval straddles no change and is wider than ±[`EQUIVALENCE`].
    NotResolved,
    /// Too few paired blocks to say anything (a quick run: one block).
    TooFewBlocks,
}

/// The band inside which a change counts as "≈".
pub const EQUIVALENCE: f64 = 0.05;

/// `change_vs_previous` in summary.json.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Change {
    #[serde(flatten)]
    pub ratio: Ratio,
    pub verdict: Verdict,
    /// How many comparisons the interval is corrected for.
    pub comparisons: usize,
    pub blocks: usize,
    /// The run's host adjustment applies, but not to this comparison: its two rows ran
    /// at different host speeds (`Blocks::host_moved`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub host_withheld: bool,
    /// From duets: the two rows loaded at the same time (`blocks::Duet`), one pair
    /// per duet; else from their windows one after the other.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub at_once: bool,
}

impl Change {
    /// The table's words: `+38% [+31, +45]`, `≈ (±5%)`, `not resolved [−9, +14]`.
    pub fn words(&self) -> String {
        let pct = |r: f64| (r - 1.0) * 100.0;
        let (lo, hi) = (pct(self.ratio.ci_low), pct(self.ratio.ci_high));
        match self.verdict {
            Verdict::Changed => format!(
                "{}% [{}, {}]",
                signed(pct(self.ratio.ratio)),
                signed(lo),
                signed(hi)
            ),
            Verdict::Equivalent => format!("≈ (±{:.0}%)", EQUIVALENCE * 100.0),
            Verdict::NotResolved => format!("not resolved [{}, {}]", signed(lo), signed(hi)),
            Verdict::TooFewBlocks => "— (one block)".into(),
        }
    }
}

/// `+38`, `−4` (a true minus sign), `+0`: a percentage change, rounded.
pub fn signed(pct: f64) -> String {
    let r = pct.round();
    if r < 0.0 {
        format!("−{:.0}", r.abs())
    } else {
        format!("+{:.0}", r.abs())
    }
}

/// The geometric mean of paired ratios `b / a` over blocks with a two-sided interval at
/// level 1 − `alpha` / `comparisons`. `None` with fewer than two pairs.
pub fn paired_ratio(pairs: &[(f64, f64)], alpha: f64, comparisons: usize) -> Option<Ratio> {
    let logs: Vec<f64> = pairs
        .iter()
        .filter(|(a, b)| *a > 0.0 && *b > 0.0 && a.is_finite() && b.is_finite())
        .map(|(a, b)| (b / a).ln())
        .collect();
    mean_interval(&logs, alpha, comparisons.max(1)).map(|(m, lo, hi)| Ratio {
        ratio: m.exp(),
        ci_low: lo.exp(),
        ci_high: hi.exp(),
    })
}

/// The judgment of a ratio's interval.
pub fn verdict(r: Option<&Ratio>) -> Verdict {
    match r {
        None => Verdict::TooFewBlocks,
        Some(r) if r.ci_low >= 1.0 - EQUIVALENCE && r.ci_high <= 1.0 + EQUIVALENCE => {
            Verdict::Equivalent
        }
        Some(r) if r.ci_low > 1.0 || r.ci_high < 1.0 => Verdict::Changed,
        Some(_) => Verdict::NotResolved,
    }
}

/// Mean of `x` and its two-sided t interval at level 1 − alpha/m.
pub fn mean_interval(x: &[f64], alpha: f64, m: usize) -> Option<(f64, f64, f64)> {
    let n = x.len();
    if n < 2 {
        return None;
    }
    let mean = x.iter().sum::<f64>() / n as f64;
    let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    let se = (var / n as f64).sqrt();
    let t = t_quantile(1.0 - alpha / (2.0 * m as f64), (n - 1) as f64);
    Some((mean, mean - t * se, mean + t * se))
}

/// The geometric mean and the two-sided t interval of the mean of the logs, back on
/// the measure's scale: (geometric mean, low, high).
pub fn geometric_interval(x: &[f64], alpha: f64) -> Option<(f64, f64, f64)> {
    let logs: Vec<f64> = x.iter().filter(|v| **v > 0.0).map(|v| v.ln()).collect();
    let (m, lo, hi) = mean_interval(&logs, alpha, 1)?;
    Some((m.exp(), lo.exp(), hi.exp()))
}

pub fn median(x: &[f64]) -> Option<f64> {
    if x.is_empty() {
        return None;
    }
    let mut v = x.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// Holm's step-down adjustment of p-values (returned in the input order).
pub fn holm(p: &[f64]) -> Vec<f64> {
    let m = p.len();
    let mut order: Vec<usize> = (0..m).collect();
    order.sort_by(|a, b| p[*a].total_cmp(&p[*b]));
    let mut out = vec![0.0; m];
    let mut running: f64 = 0.0;
    for (rank, &i) in order.iter().enumerate() {
        running = running.max(((m - rank) as f64 * p[i]).min(1.0));
        out[i] = running;
    }
    out
}

/// Two-sided p-value of a one-sample t test of mean 0.
pub fn t_test_p(x: &[f64]) -> Option<f64> {
    let n = x.len();
    if n < 2 {
        return None;
    }
    let mean = x.iter().sum::<f64>() / n as f64;
    let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    if var == 0.0 {
        return Some(if mean == 0.0 { 1.0 } else { 0.0 });
    }
    let t = mean / (var / n as f64).sqrt();
    Some(2.0 * (1.0 - t_cdf(t.abs(), (n - 1) as f64)))
}

/// Student t CDF with `df` degrees of freedom.
pub fn t_cdf(t: f64, df: f64) -> f64 {
    let x = df / (df + t * t);
    let tail = 0.5 * incomplete_beta(df / 2.0, 0.5, x);
    if t >= 0.0 {
        1.0 - tail
    } else {
        tail
    }
}

/// The p-quantile of Student's t with `df` degrees of freedom (bisection on the CDF).
pub fn t_quantile(p: f64, df: f64) -> f64 {
    if p == 0.5 {
        return 0.0;
    }
    if p < 0.5 {
        return -t_quantile(1.0 - p, df);
    }
    let (mut lo, mut hi) = (0.0, 1.0);
    while t_cdf(hi, df) < p && hi < 1e6 {
        hi *= 2.0;
    }
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if t_cdf(mid, df) < p {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

/// The regularized incomplete beta function I_x(a, b) (continued fraction, Lentz).
fn incomplete_beta(a: f64, b: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let ln_front = ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln();
    if x < (a + 1.0) / (a + b + 2.0) {
        ln_front.exp() * beta_fraction(a, b, x) / a
    } else {
        1.0 - ln_front.exp() * beta_fraction(b, a, 1.0 - x) / b
    }
}

fn beta_fraction(a: f64, b: f64, x: f64) -> f64 {
    const TINY: f64 = 1e-300;
    let (qab, qap, qam) = (a + b, a + 1.0, a - 1.0);
    let mut c = 1.0;
    let mut d = 1.0 - qab * x / qap;
    if d.abs() < TINY {
        d = TINY;
    }
    d = 1.0 / d;
    let mut h = d;
    for m in 1..300 {
        let m = f64::from(m);
        let m2 = 2.0 * m;
        let aa = m * (b - m) * x / ((qam + m2) * (a + m2));
        d = 1.0 + aa * d;
        d = if d.abs() < TINY { TINY } else { d };
        c = 1.0 + aa / c;
        c = if c.abs() < TINY { TINY } else { c };
        d = 1.0 / d;
        h *= d * c;
        let aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2));
        d = 1.0 + aa * d;
        d = if d.abs() < TINY { TINY } else { d };
        c = 1.0 + aa / c;
        c = if c.abs() < TINY { TINY } else { c };
        d = 1.0 / d;
        let del = d * c;
        h *= del;
        if (del - 1.0).abs() < 1e-14 {
            break;
        }
    }
    h
}

/// ln Γ(x) (Lanczos, g = 7).
fn ln_gamma(x: f64) -> f64 {
    const G: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        let pi = std::f64::consts::PI;
        return (pi / (pi * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut a = G[0];
    let t = x + 7.5;
    for (i, g) in G.iter().enumerate().skip(1) {
        a += g / (x + i as f64);
    }
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn t_quantiles_match_the_tables() {
        // Values from standard t tables.
        for (p, df, want) in [
            (0.975, 1.0, 12.7062),
            (0.975, 7.0, 2.3646),
            (0.975, 30.0, 2.0423),
            (0.995, 5.0, 4.0321),
            (0.9975, 7.0, 4.0293),
        ] {
            let got = t_quantile(p, df);
            assert!(
                (got - want).abs() < 1e-3,
                "t({p}, {df}) = {got}, want {want}"
            );
        }
        assert!((t_cdf(0.0, 4.0) - 0.5).abs() < 1e-12);
    }

    #[test]
    fn a_paired_ratio_is_the_geometric_mean_with_a_t_interval() {
        // Logs of b/a: ln 1.1 + {−0.02, 0, +0.02}: mean ln 1.1, sd 0.02, se 0.02/√3.
        let pairs: Vec<(f64, f64)> = [-0.02, 0.0, 0.02]
            .iter()
            .map(|d: &f64| (100.0, 100.0 * (1.1f64.ln() + d).exp()))
            .collect();
        let r = paired_ratio(&pairs, 0.05, 1).unwrap();
        assert!((r.ratio - 1.1).abs() < 1e-9);
        // t(0.975, 2) = 4.3027: half-width 4.3027 × 0.02 / √3 = 0.049684 in logs.
        let half = 4.302_653 * 0.02 / 3f64.sqrt();
        assert!(
            (r.ci_low - (1.1f64.ln() - half).exp()).abs() < 1e-5,
            "{r:?}"
        );
        assert!(
            (r.ci_high - (1.1f64.ln() + half).exp()).abs() < 1e-5,
            "{r:?}"
        );
        // Corrected for 10 comparisons: t(0.9975, 2) = 14.089 makes it wider.
        let wide = paired_ratio(&pairs, 0.05, 10).unwrap();
        let half10 = 14.089 * 0.02 / 3f64.sqrt();
        assert!(
            (wide.ci_high - (1.1f64.ln() + half10).exp()).abs() < 1e-3,
            "{wide:?}"
        );
        assert_eq!(paired_ratio(&pairs[..1], 0.05, 1), None);
    }

    #[test]
    fn verdicts_follow_the_interval() {
        let r = |ratio, ci_low, ci_high| Ratio {
            ratio,
            ci_low,
            ci_high,
        };
        assert_eq!(verdict(Some(&r(1.38, 1.31, 1.45))), Verdict::Changed);
        assert_eq!(verdict(Some(&r(0.9, 0.85, 0.95))), Verdict::Changed);
        assert_eq!(verdict(Some(&r(1.0, 0.97, 1.04))), Verdict::Equivalent);
        assert_eq!(verdict(Some(&r(1.02, 0.91, 1.14))), Verdict::NotResolved);
        assert_eq!(verdict(None), Verdict::TooFewBlocks);
        let c = |ratio: Ratio| Change {
            verdict: verdict(Some(&ratio)),
            ratio,
            comparisons: 1,
            blocks: 8,
            host_withheld: false,
            at_once: false,
        };
        assert_eq!(c(r(1.38, 1.31, 1.45)).words(), "+38% [+31, +45]");
        assert_eq!(c(r(0.9, 0.85, 0.95)).words(), "−10% [−15, −5]");
        assert_eq!(c(r(1.0, 0.97, 1.04)).words(), "≈ (±5%)");
        assert_eq!(c(r(1.02, 0.91, 1.14)).words(), "not resolved [−9, +14]");
    }

    #[test]
    fn holm_adjusts_step_down() {
        // Hand-computed: sorted 0.01, 0.02, 0.04 → 3×0.01, max(0.03, 2×0.02), max(0.04, 0.04).
        let adj = holm(&[0.04, 0.01, 0.02]);
        assert_eq!(adj, vec![0.04, 0.03, 0.04]);
        let p = t_test_p(&[0.1, 0.12, 0.08, 0.11]).unwrap();
        assert!(p < 0.01, "{p}");
        assert!(t_test_p(&[0.1, -0.1, 0.05, -0.05]).unwrap() > 0.5);
    }
}
