//! The open-loop rate search: find the highest offered rate that a build sustains
//! (every criterion of a step passing). Pure logic, so it is tested on synthetic servers.
//!
//! Without a hint it doubles from the start rate until a step fails (or quarters down
//! until one passes), then bisects geometrically between the best passing and the lowest
//! failing rate until they are within `precision` of each other or the steps run out
//! (while no rate has passed, the budget is doubled).
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
    /// Re-runs a candidate must pass in a row to be confirmed (0: none).
    confirmations: u32,
    /// Every rate that passed while exploring.
    passed: Vec<f64>,
    phase: Phase,
    confirm_steps: u32,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    /// Doubling, then bisecting.
    Explore,
    /// Re-running `rate`, which has passed `passes` re-runs in a row so far.
    Confirm { rate: f64, passes: u32 },
    /// Over: the confirmed rate, if any.
    Done(Option<f64>),
}

/// The lowest rate worth trying; below it a build is reported as sustaining nothing.
pub const MIN_QPS: f64 = 5.0;

/// A step of a search, by either load generator (oha's `Step`, pgbench's).
pub trait Measured {
    fn offered(&self) -> f64;
    fn achieved(&self) -> f64;
    fn passed(&self) -> bool;
}

/// The rate at which a build's cost is compared: the run's common rate where the
/// build's capacity reaches it; else half its capacity (and `true`: reduced).
pub fn common_rate(capacity: f64, common_qps: f64) -> (f64, bool) {
    if capacity >= common_qps {
        (common_qps, false)
    } else {
        ((capacity / 2.0).round().max(MIN_QPS), true)
    }
}

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
            confirmations: 0,
            passed: Vec::new(),
            phase: Phase::Explore,
            confirm_steps: 0,
        }
    }

    /// Requires the candidate to pass `k` re-runs in a row before it counts. A re-run
    /// that fails rules the rate out, and the search steps down (to the highest rate
    /// below it that passed, else one precision step lower) and confirms again, within
    /// a budget of `4 k` re-runs.
    pub fn confirm(mut self, k: u32) -> Self {
        self.confirmations = k;
        self
    }

    /// Where exploring would go next, or `None` when exploring is over.
    fn explore_next(&self) -> Option<f64> {
        // Until a rate passes, the search goes on descending for up to twice its budget:
        // a build whose first steps all fail (on a busy machine, a late load generator)
        // still gets a rate it sustains, and a build that sustains nothing still ends.
        let budget = if self.pass.is_some() {
            self.max_steps
        } else {
            2 * self.max_steps
        };
        if self.steps >= budget {
            return None;
        }
        match (self.pass, self.fail) {
            (Some(p), Some(f)) if f / p <= self.precision => None,
            (Some(p), _) if p >= self.max_qps => None,
            (None, Some(f)) if f <= MIN_QPS => None,
            _ => Some(self.next.round().max(MIN_QPS)),
        }
    }

    /// The next rate to offer, or `None` when the search is over.
    pub fn next_rate(&self) -> Option<f64> {
        match self.phase {
            Phase::Explore => self.explore_next(),
            Phase::Confirm { rate, .. } => Some(rate),
            Phase::Done(_) => None,
        }
    }

    /// Whether the next rate is a confirmation re-run.
    pub fn confirming(&self) -> bool {
        matches!(self.phase, Phase::Confirm { .. })
    }

    /// Records the verdict of a step at `rate`.
    pub fn record(&mut self, rate: f64, passed: bool) {
        self.steps += 1;
        match self.phase {
            Phase::Explore => {
                self.explore(rate, passed);
                if self.explore_next().is_none() {
                    self.phase = match self.pass {
                        None => Phase::Done(None),
                        Some(p) if self.confirmations == 0 => Phase::Done(Some(p)),
                        Some(p) => Phase::Confirm { rate: p, passes: 0 },
                    };
                }
            }
            Phase::Confirm { rate: r, passes } => {
                self.confirm_steps += 1;
                if passed {
                    self.phase = if passes + 1 >= self.confirmations {
                        Phase::Done(Some(r))
                    } else {
                        Phase::Confirm {
                            rate: r,
                            passes: passes + 1,
                        }
                    };
                } else {
                    self.fail = Some(self.fail.map_or(r, |f| f.min(r)));
                    self.phase = self.step_down(r);
                }
                if self.confirm_steps >= 4 * self.confirmations && self.confirming() {
                    self.phase = Phase::Done(None);
                }
            }
            Phase::Done(_) => {}
        }
    }

    /// After `failed` failed a re-run: the highest explored pass below every failure,
    /// else one precision step below.
    fn step_down(&self, failed: f64) -> Phase {
        let ceiling = self.fail.map_or(failed, |f| f.min(failed));
        let below = self
            .passed
            .iter()
            .copied()
            .filter(|p| *p < ceiling)
            .reduce(f64::max);
        let rate = below.unwrap_or((failed / self.precision).round());
        if rate < MIN_QPS {
            Phase::Done(None)
        } else {
            Phase::Confirm { rate, passes: 0 }
        }
    }

    fn explore(&mut self, rate: f64, passed: bool) {
        if passed {
            self.passed.push(rate);
            self.pass = Some(self.pass.map_or(rate, |p| p.max(rate)));
        } else {
            self.fail = Some(self.fail.map_or(rate, |f| f.min(rate)));
        }
        self.next = match (self.pass, self.fail) {
            (Some(p), Some(f)) if p < f => (p * f).sqrt(),
            // A pass above a fail (noise): probe above the pass; confirmation decides.
            (Some(p), Some(_)) => {
                self.fail = None;
                (p * self.growth).min(self.max_qps)
            }
            (Some(p), None) => (p * self.growth).min(self.max_qps),
            (None, Some(f)) => (f / (self.growth * self.growth)).max(MIN_QPS),
            (None, None) => self.next,
        };
    }

    /// The highest rate that counts: with confirmation, the confirmed rate once the
    /// search is over; without, the highest offered rate that passed.
    pub fn best(&self) -> Option<f64> {
        match self.phase {
            Phase::Done(best) => best,
            _ if self.confirmations == 0 => self.pass,
            _ => None,
        }
    }

    /// Of `steps`, the weakest (lowest achieved) that passed at the best rate: what
    /// the build sustained every time it was offered that rate.
    pub fn weakest_at_best<'a, T: Measured>(&self, steps: &'a [T]) -> Option<&'a T> {
        let best = self.best()?;
        steps
            .iter()
            .filter(|st| st.passed() && st.offered() == best)
            .min_by(|x, y| x.achieved().total_cmp(&y.achieved()))
    }

    pub fn steps(&self) -> u32 {
        self.steps
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct S(f64, f64, bool);
    impl Measured for S {
        fn offered(&self) -> f64 {
            self.0
        }
        fn achieved(&self) -> f64 {
            self.1
        }
        fn passed(&self) -> bool {
            self.2
        }
    }

    #[test]
    fn the_best_rate_keeps_its_weakest_passing_step_and_the_common_rate_halves() {
        // Without confirmation the best rate is the highest that passed.
        let mut s = Search::new(1000.0, None, 10_000.0, 1.1, 3);
        let steps = [
            S(1000.0, 990.0, true),
            S(1000.0, 970.0, true),
            S(2000.0, 1500.0, false),
        ];
        for st in &steps {
            s.record(st.0, st.2);
        }
        let best = s.weakest_at_best(&steps).expect("a rate passed");
        assert_eq!((best.0, best.1), (1000.0, 970.0));
        assert_eq!(common_rate(5000.0, 1500.0), (1500.0, false));
        assert_eq!(common_rate(1000.0, 1500.0), (500.0, true));
        assert_eq!(common_rate(10.0, 1500.0), (MIN_QPS, true));
    }

    /// Runs a search against a server that sustains exactly `capacity`.
    fn run(capacity: f64, hint: Option<f64>, max_steps: u32) -> (Option<f64>, u32, Vec<f64>) {
        let mut s = Search::new(200.0, hint, 60_000.0, 1.1, max_steps);
        let mut tried = Vec::new();
        while let Some(rate) = s.next_rate() {
            tried.push(rate);
            s.record(rate, rate <= capacity);
            assert!(tried.len() <= 2 * max_steps as usize);
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
    fn a_search_whose_budget_ran_out_failing_descends_until_a_rate_passes() {
        // The CI case: a hint near 11.6k/s, and every step above 3.5k/s failed.
        let (best, steps, tried) = run(2_500.0, Some(11_614.0), 3);
        let best = best.expect("a rate passes below the failures");
        assert!(best <= 2_500.0, "{best} {tried:?}");
        assert!(steps > 3 && steps <= 6, "{steps} {tried:?}");
        // Something passed within the budget: the budget holds.
        let (_, steps, _) = run(9_000.0, Some(9_500.0), 3);
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

    /// Runs a confirming search against `verdict(rate, step)`.
    fn confirmed(k: u32, verdict: impl Fn(f64, usize) -> bool) -> (Option<f64>, Vec<f64>) {
        let mut s = Search::new(200.0, None, 60_000.0, 1.1, 20).confirm(k);
        let mut tried = Vec::new();
        while let Some(rate) = s.next_rate() {
            let passed = verdict(rate, tried.len());
            tried.push(rate);
            s.record(rate, passed);
            assert!(tried.len() <= 20 + 4 * k as usize, "{tried:?}");
        }
        (s.best(), tried)
    }

    #[test]
    fn a_steady_build_is_confirmed_at_its_candidate() {
        let (best, tried) = confirmed(2, |rate, _| rate <= 5_000.0);
        let best = best.expect("confirmed");
        assert!(
            (5_000.0 / 1.1..=5_000.0).contains(&best),
            "{best} {tried:?}"
        );
        // The last two steps re-ran the candidate.
        let n = tried.len();
        assert_eq!((tried[n - 1], tried[n - 2]), (best, best), "{tried:?}");
    }

    #[test]
    fn a_lucky_pass_is_not_a_capacity() {
        // The build sustains 4000; one step at 6000 passes by luck (the 4th step).
        let (best, tried) = confirmed(2, |rate, i| rate <= 4_000.0 || (i == 3 && rate > 4_000.0));
        let best = best.expect("a lower rate is confirmed");
        assert!(best <= 4_000.0, "{best} {tried:?}");
    }

    #[test]
    fn a_rate_that_passed_and_failed_is_not_confirmed() {
        // Passes while exploring, fails its first re-run: the search steps down.
        let mut s = Search::new(1000.0, None, 60_000.0, 1.1, 3).confirm(2);
        s.record(1000.0, true);
        s.record(2000.0, false);
        s.record(1414.0, true);
        assert_eq!(s.next_rate(), Some(1414.0), "the candidate is re-run");
        s.record(1414.0, false);
        assert_eq!(s.next_rate(), Some(1000.0), "steps down to the pass below");
        s.record(1000.0, true);
        assert_eq!(s.best(), None, "one re-run is not two");
        s.record(1000.0, true);
        assert_eq!(s.best(), Some(1000.0));
        assert_eq!(s.next_rate(), None);
    }

    #[test]
    fn confirmation_has_a_budget() {
        // A build that passes exploring and never again: nothing is confirmed, in bounds.
        let (best, tried) = confirmed(2, |_, i| i < 3);
        assert_eq!(best, None, "{tried:?}");
    }
}
