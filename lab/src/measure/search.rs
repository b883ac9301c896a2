//! The open-loop rate search: find the highest offered rate that a build sustains
//! (every criterion of a step passing). Pure logic, so it is tested on synthetic servers.
//!
//! Without a hint it doubles from the start rate until a step fails (or quarters down
//! until one passes), then bisects geometrically between the best passing and the lowest
//! failing rate until they are within `precision` of each other or the steps run out.
//! A hint (the previous repetition's result for the same row and workload) starts the
//! search just below it and grows more gently, which saves steps.

#[derive(Debug, Clone)]
pub struct Search {
    pass: Option<f64>,
    fail: Option<f64>,
    next: f64,
    growth: f64,
    steps: u32,
    max_steps: u32,
    precision: f64,
    max_qps: f64,
}

/// The lowest rate worth trying; below it a build is reported as sustaining nothing.
pub const MIN_QPS: f64 = 5.0;

impl Search {
    pub fn new(
        start: f64,
        hint: Option<f64>,
        max_qps: f64,
        precision: f64,
        max_steps: u32,
    ) -> Self {
        let (next, growth) = match hint {
            Some(h) if h >= MIN_QPS => (h * 0.85, 1.3),
            _ => (start, 2.0),
        };
        Self {
            pass: None,
            fail: None,
            next: next.clamp(MIN_QPS, max_qps),
            growth,
            steps: 0,
            max_steps,
            precision,
            max_qps,
        }
    }

    /// The next rate to offer, or `None` when the search is over.
    pub fn next_rate(&self) -> Option<f64> {
        if self.steps >= self.max_steps {
            return None;
        }
        match (self.pass, self.fail) {
            (Some(p), Some(f)) if f / p <= self.precision => None,
            (Some(p), _) if p >= self.max_qps => None,
            (None, Some(f)) if f <= MIN_QPS => None,
            _ => Some(self.next.round().max(MIN_QPS)),
        }
    }

    /// Records the verdict of a step at `rate`.
    pub fn record(&mut self, rate: f64, passed: bool) {
        self.steps += 1;
        if passed {
            self.pass = Some(self.pass.map_or(rate, |p| p.max(rate)));
        } else {
            self.fail = Some(self.fail.map_or(rate, |f| f.min(rate)));
        }
        self.next = match (self.pass, self.fail) {
            (Some(p), Some(f)) if p < f => (p * f).sqrt(),
            // A pass above a fail (noise): trust the pass and probe above it.
            (Some(p), Some(_)) => {
                self.fail = None;
                (p * self.growth).min(self.max_qps)
            }
            (Some(p), None) => (p * self.growth).min(self.max_qps),
            (None, Some(f)) => (f / (self.growth * self.growth)).max(MIN_QPS),
            (None, None) => self.next,
        };
    }

    /// The highest offered rate that passed, if any.
    pub fn best(&self) -> Option<f64> {
        self.pass
    }

    pub fn steps(&self) -> u32 {
        self.steps
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a search against a server that sustains exactly `capacity`.
    fn run(capacity: f64, hint: Option<f64>, max_steps: u32) -> (Option<f64>, u32, Vec<f64>) {
        let mut s = Search::new(200.0, hint, 60_000.0, 1.1, max_steps);
        let mut tried = Vec::new();
        while let Some(rate) = s.next_rate() {
            tried.push(rate);
            s.record(rate, rate <= capacity);
            assert!(tried.len() <= max_steps as usize);
        }
        (s.best(), s.steps(), tried)
    }

    #[test]
    fn converges_near_capacity_from_below() {
        for capacity in [300.0, 1_000.0, 7_500.0, 16_000.0] {
            let (best, _, tried) = run(capacity, None, 20);
            let best = best.expect("something passes");
            assert!(best <= capacity, "{capacity}: {best} {tried:?}");
            assert!(best >= capacity / 1.1 - 1.0, "{capacity}: {best} {tried:?}");
        }
    }

    #[test]
    fn finds_slow_builds_by_descending() {
        let (best, _, tried) = run(40.0, None, 20);
        let best = best.expect("passes at low rate");
        assert!((30.0..=40.0).contains(&best), "{best} {tried:?}");
        assert_eq!(tried[0], 200.0);
        assert!(tried[1] < 200.0);
    }

    #[test]
    fn a_build_that_sustains_nothing_has_no_best() {
        let (best, steps, _) = run(1.0, None, 20);
        assert_eq!(best, None);
        assert!(steps <= 20);
    }

    #[test]
    fn stops_at_the_ceiling_and_the_step_budget() {
        let (best, _, tried) = run(1e9, None, 20);
        assert_eq!(best, Some(60_000.0));
        assert_eq!(*tried.last().unwrap(), 60_000.0);
        let (_, steps, _) = run(5_000.0, None, 3);
        assert_eq!(steps, 3);
    }

    #[test]
    fn a_hint_saves_steps() {
        let (_, cold, _) = run(9_000.0, None, 30);
        let (best, warm, _) = run(9_000.0, Some(8_800.0), 30);
        assert!(warm < cold, "hinted {warm} vs cold {cold}");
        assert!(best.unwrap() >= 9_000.0 / 1.1);
    }

    #[test]
    fn noise_never_reports_a_failed_rate() {
        // A flaky server: passes at 1000, fails at 1500, then passes at 1600.
        let mut s = Search::new(1000.0, None, 60_000.0, 1.1, 10);
        s.record(1000.0, true);
        s.record(1500.0, false);
        s.record(1600.0, true);
        assert_eq!(s.best(), Some(1600.0));
        assert!(s.next_rate().unwrap() > 1600.0);
    }
}
