//! Statistics: latency histograms merged from per-request data, and summaries of
//! repeated measurements.
use anyhow::{Context, Result};
use hdrhistogram::Histogram;

/// Request latencies in microseconds (1 µs to 1 hour, 3 significant figures).
#[derive(Debug, Clone)]
pub struct Latencies(Histogram<u64>);

impl Default for Latencies {
    fn default() -> Self {
        Self::new()
    }
}

impl Latencies {
    pub fn new() -> Self {
        // Bounds are constants that hdrhistogram accepts; no request path can fail here.
        Self(Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds"))
    }

    pub fn record_secs(&mut self, secs: f64) {
        let micros = (secs * 1e6).round().clamp(1.0, 3_600_000_000.0) as u64;
        self.0.saturating_record(micros);
    }

    /// Adds every sample of `other`: the p99 of the merge is the p99 of all requests,
    /// never an average of two percentiles.
    pub fn merge(&mut self, other: &Latencies) -> Result<()> {
        self.0.add(&other.0).context("merging latency histograms")
    }

    pub fn count(&self) -> u64 {
        self.0.len()
    }

    /// The given quantile (0..=1) in milliseconds, or `None` without samples.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        (self.count() > 0).then(|| self.0.value_at_quantile(q) as f64 / 1000.0)
    }
}

/// Median, min and max of repeated measurements.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

pub fn spread(values: &[f64]) -> Option<Spread> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Some(Spread {
        median,
        min: v[0],
        max: v[n - 1],
    })
}

/// Whether a change between two sets of repetitions clears the noise.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Change {
    /// The new range lies wholly above or below the old one: the change is real.
    Significant(f64),
    /// The ranges overlap: within noise ("≈").
    Noise(f64),
    /// Too few repetitions on a side (fewer than [`MIN_REPETITIONS`]) to judge.
    Unjudged(f64),
}

/// Repetitions a side needs before a change is judged.
pub const MIN_REPETITIONS: usize = 3;

/// The rule every "change" in the tables follows: the change of the medians, in
/// percent, called significant only when the min–max ranges of the repetitions do not
/// overlap. With 3 repetitions a side, two samples of the same build are wholly apart
/// by chance in 2 of the 20 equally likely orderings (10%); with 5, in 2 of 252 (0.8%).
pub fn compare(old: &[f64], new: &[f64]) -> Option<Change> {
    let (a, b) = (spread(old)?, spread(new)?);
    if a.median <= 0.0 {
        return None;
    }
    let pct = (b.median / a.median - 1.0) * 100.0;
    Some(
        if old.len() < MIN_REPETITIONS || new.len() < MIN_REPETITIONS {
            Change::Unjudged(pct)
        } else if b.min > a.max || b.max < a.min {
            Change::Significant(pct)
        } else {
            Change::Noise(pct)
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_p99_is_that_of_all_requests() {
        // 900 fast GETs (1 ms) and 100 slow PATCHes (100 ms): 10% are slow, so the
        // p99 of all requests is slow, while the mean of the two p99s would be 50 ms.
        let mut gets = Latencies::new();
        for _ in 0..900 {
            gets.record_secs(0.001);
        }
        let mut patches = Latencies::new();
        for _ in 0..100 {
            patches.record_secs(0.100);
        }
        let mut all = Latencies::new();
        all.merge(&gets).unwrap();
        all.merge(&patches).unwrap();
        assert_eq!(all.count(), 1000);
        let p99 = all.quantile_ms(0.99).unwrap();
        assert!((p99 - 100.0).abs() < 0.2, "{p99}");
        let p50 = all.quantile_ms(0.50).unwrap();
        assert!((p50 - 1.0).abs() < 0.01, "{p50}");
        // With 1% slow, p99 sits at the boundary; with 0.5% it is fast.
        let mut few = gets.clone();
        for _ in 0..4 {
            few.record_secs(0.5);
        }
        assert!(few.quantile_ms(0.99).unwrap() < 1.1);
    }

    #[test]
    fn empty_histograms_have_no_quantiles() {
        assert_eq!(Latencies::new().quantile_ms(0.99), None);
    }

    #[test]
    fn spread_of_repetitions() {
        assert_eq!(spread(&[]), None);
        let s = spread(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        assert_eq!(spread(&[4.0, 1.0]).unwrap().median, 2.5);
    }

    #[test]
    fn changes_are_significant_only_when_ranges_part() {
        let base = [100.0, 104.0, 98.0];
        assert_eq!(
            compare(&base, &[130.0, 125.0, 128.0])
                .map(|c| matches!(c, Change::Significant(p) if p > 25.0)),
            Some(true)
        );
        assert!(
            matches!(compare(&base, &[90.0, 93.0, 91.0]), Some(Change::Significant(p)) if p < 0.0)
        );
        // Medians 3% apart, ranges overlapping: noise.
        assert!(matches!(
            compare(&base, &[99.0, 103.0, 110.0]),
            Some(Change::Noise(_))
        ));
        // One repetition cannot judge noise, however large the change.
        assert!(
            matches!(compare(&[100.0], &[150.0]), Some(Change::Unjudged(p)) if (p - 50.0).abs() < 1e-9)
        );
        assert_eq!(compare(&[0.0, 0.0, 0.0], &base), None);
        assert_eq!(compare(&[], &base), None);
    }
}
