//! Why a step of the SLO search failed, as values: the search, the limit judgment and
//! the Notes read these, and only `Display` turns them into words (the words a step's
//! `reasons` and a search's `limit` carry in `steps.json` and `summary.json`).
use std::fmt;

use serde::{Deserialize, Serialize};

use super::MAX_SCHEDULER_LAG_MS;

/// What held back requests that oha scheduled but never sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Unsent {
    /// oha's scheduler ran late: the load generator was the limit.
    LoadGenerator,
    /// No per-request records to tell.
    Unknown,
    /// Released on time, they waited for a free connection: the server was too slow
    /// for the side's connections.
    Connections,
}

/// One reason a step failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum StepFailure {
    /// Good replies per second fell short of the offered rate.
    Shortfall {
        achieved: f64,
        ratio: f64,
        min: f64,
    },
    /// Fewer requests were sent than oha scheduled.
    Unsent {
        sent: u64,
        scheduled: f64,
        cause: Unsent,
    },
    /// One method's scheduler ran late at p99.
    SchedulerLag {
        method: String,
        lag_p99_ms: f64,
    },
    /// More failures than the error budget.
    Errors {
        rate: f64,
        budget: f64,
    },
    /// The p99 over the SLO.
    P99 {
        ms: f64,
        slo_ms: f64,
    },
    NoReplies,
    /// The achieved mix off the workload's.
    Mix {
        get_share: f64,
        want: f64,
        tolerance: f64,
    },
}

impl StepFailure {
    /// The load generator, not the server side, was the limit.
    pub fn load_generator(&self) -> bool {
        matches!(
            self,
            StepFailure::SchedulerLag { .. }
                | StepFailure::Unsent {
                    cause: Unsent::LoadGenerator,
                    ..
                }
        )
    }
}

impl fmt::Display for StepFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StepFailure::Shortfall {
                achieved,
                ratio,
                min,
            } => write!(
                f,
                "achieved {achieved:.0}/s is {:.1}% of offered (< {:.0}%)",
                ratio * 100.0,
                min * 100.0
            ),
            StepFailure::Unsent {
                sent,
                scheduled,
                cause,
            } => {
                let why = match cause {
                    Unsent::LoadGenerator => {
                        "the load generator fell behind: oha, not the server, was the limit"
                    }
                    Unsent::Unknown => {
                        "no per-request records to tell whether oha or the server held them back"
                    }
                    Unsent::Connections => {
                        "released on time, they waited for a free connection: the server answered too slowly for its connections"
                    }
                };
                write!(
                    f,
                    "sent only {sent} of {scheduled:.0} scheduled requests ({:.1}%: {why})",
                    100.0 * *sent as f64 / scheduled
                )
            }
            StepFailure::SchedulerLag { method, lag_p99_ms } => write!(
                f,
                "the load generator's {method} scheduler ran {lag_p99_ms:.1} ms late at p99 (> {MAX_SCHEDULER_LAG_MS} ms): oha, not the server, was the limit"
            ),
            StepFailure::Errors { rate, budget } => write!(
                f,
                "{:.2}% errors (> {:.2}%)",
                rate * 100.0,
                budget * 100.0
            ),
            StepFailure::P99 { ms, slo_ms } => write!(f, "p99 {ms:.1} ms > {slo_ms} ms"),
            StepFailure::NoReplies => f.write_str("no replies"),
            StepFailure::Mix {
                get_share,
                want,
                tolerance,
            } => write!(
                f,
                "mix {:.1}% GET (want {:.0}% ± {:.1})",
                get_share * 100.0,
                want * 100.0,
                tolerance * 100.0
            ),
        }
    }
}

/// What limited a search, judged from its first failing step's failures: the class
/// the Notes name when the CPUs do not name a party.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SearchLimit {
    LoadGenerator,
    Connections,
    P99,
    /// No step failed: the search reached its ceiling.
    Ceiling,
    Other,
}

impl SearchLimit {
    pub fn of(failures: &[StepFailure]) -> SearchLimit {
        if failures.is_empty() {
            SearchLimit::Ceiling
        } else if failures.iter().any(StepFailure::load_generator) {
            SearchLimit::LoadGenerator
        } else if failures.iter().any(|f| {
            matches!(
                f,
                StepFailure::Unsent {
                    cause: Unsent::Connections,
                    ..
                }
            )
        }) {
            SearchLimit::Connections
        } else if failures
            .iter()
            .any(|f| matches!(f, StepFailure::P99 { .. }))
        {
            SearchLimit::P99
        } else {
            SearchLimit::Other
        }
    }

    /// The same class for a search recorded before the failures were kept as values
    /// (schema 4 and older): read once from its stored words, here only.
    pub fn of_legacy_words(limit: Option<&str>) -> SearchLimit {
        let limit = limit.unwrap_or("");
        if limit.contains("scheduler ran") {
            SearchLimit::LoadGenerator
        } else if limit.contains("free connection") {
            SearchLimit::Connections
        } else if limit.contains("p99") {
            SearchLimit::P99
        } else if limit.is_empty() {
            SearchLimit::Ceiling
        } else {
            SearchLimit::Other
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_the_ones_steps_have_always_carried() {
        let lag = StepFailure::SchedulerLag {
            method: "GET".into(),
            lag_p99_ms: 12.04,
        };
        assert_eq!(
            lag.to_string(),
            "the load generator's GET scheduler ran 12.0 ms late at p99 (> 10 ms): oha, not the server, was the limit"
        );
        assert_eq!(
            StepFailure::P99 {
                ms: 80.0,
                slo_ms: 50.0
            }
            .to_string(),
            "p99 80.0 ms > 50 ms"
        );
        assert_eq!(
            StepFailure::Mix {
                get_share: 0.875,
                want: 0.9,
                tolerance: 0.01
            }
            .to_string(),
            "mix 87.5% GET (want 90% ± 1.0)"
        );
    }

    #[test]
    fn the_limit_is_judged_from_values() {
        let p99 = StepFailure::P99 {
            ms: 80.0,
            slo_ms: 50.0,
        };
        let waited = StepFailure::Unsent {
            sent: 90,
            scheduled: 100.0,
            cause: Unsent::Connections,
        };
        let behind = StepFailure::Unsent {
            sent: 90,
            scheduled: 100.0,
            cause: Unsent::LoadGenerator,
        };
        assert_eq!(SearchLimit::of(&[]), SearchLimit::Ceiling);
        assert_eq!(
            SearchLimit::of(std::slice::from_ref(&p99)),
            SearchLimit::P99
        );
        assert_eq!(
            SearchLimit::of(&[p99.clone(), waited.clone()]),
            SearchLimit::Connections
        );
        assert_eq!(
            SearchLimit::of(&[waited, behind, p99]),
            SearchLimit::LoadGenerator
        );
        assert_eq!(
            SearchLimit::of(&[StepFailure::NoReplies]),
            SearchLimit::Other
        );
        // The reworded words of a failure do not change a judgment taken from values.
        assert_eq!(
            SearchLimit::of_legacy_words(Some("p99 80.0 ms > 50 ms at 900/s offered")),
            SearchLimit::P99
        );
    }
}
