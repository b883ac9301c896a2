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
}
