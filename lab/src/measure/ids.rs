//! Write integrity per id: from the load generator's per-request records (URL and
//! status of every reply), each id's acknowledged and otherwise-answered PATCHes, and
//! the check against each row's `version` before and after. Unlike a comparison of
//! sums, a lost write on one id and a doubled write on another cannot cancel out.
use std::collections::HashMap;

use anyhow::{Context, Result};
use serde::Serialize;

/// What the PATCHes of a window got, per id.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PatchOutcomes {
    /// PATCHes answered 200, by id.
    pub acked: HashMap<i64, u64>,
    /// PATCHes answered otherwise, by id (each may or may not have been applied).
    pub other: HashMap<i64, u64>,
    /// PATCHes without a reply (oha logs replies only, so these have no id).
    pub transport_errors: u64,
}

impl PatchOutcomes {
    /// Counts one reply to a PATCH of `url` (`…/users/ID`).
    pub fn record(&mut self, url: &str, status: u16) -> Result<()> {
        let id = id_of(url).with_context(|| format!("no id in {url:?}"))?;
        let into = if status == 200 {
            &mut self.acked
        } else {
            &mut self.other
        };
        *into.entry(id).or_insert(0) += 1;
        Ok(())
    }
}

/// The id at the end of an oha URL (`…/users/ID`).
fn id_of(url: &str) -> Option<i64> {
    url.rsplit('/').next()?.parse().ok()
}

/// The per-id write check over a step or a whole soak.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct IdCheck {
    pub ids_written: usize,
    /// PATCHes answered 200.
    pub acked: u64,
    /// PATCHes answered otherwise (each may or may not have been applied).
    pub other_replies: u64,
    /// PATCHes without a reply (not attributable to an id: oha logs replies only).
    pub transport_errors: u64,
    /// Versions added in PostgreSQL.
    pub applied: i64,
    /// Ids with fewer stored writes than acknowledged ones: (id, acked, applied).
    pub lost: Vec<(i64, u64, i64)>,
    /// Stored writes beyond what an id's PATCHes answered 200 or otherwise explain; only
    /// PATCHes without a reply may account for them.
    pub unexplained: i64,
    pub ok: bool,
}

/// Checks every id: `applied(id) ≥ acked(id)`, and the writes beyond
/// `acked(id) + other(id)`, summed over ids, do not exceed the PATCHes that got no reply.
/// Unlike a comparison of sums, a lost write and a doubled one cannot cancel out.
pub fn check_ids(
    before: &HashMap<i64, i64>,
    after: &HashMap<i64, i64>,
    patches: &PatchOutcomes,
) -> IdCheck {
    let PatchOutcomes {
        acked,
        other,
        transport_errors,
    } = patches;
    let transport_errors = *transport_errors;
    let mut c = IdCheck {
        transport_errors,
        ..IdCheck::default()
    };
    let mut ids: Vec<i64> = after.keys().copied().collect();
    ids.sort_unstable();
    for id in ids {
        let applied = after[&id] - before.get(&id).copied().unwrap_or(0);
        let (a, o) = (
            acked.get(&id).copied().unwrap_or(0),
            other.get(&id).copied().unwrap_or(0),
        );
        c.acked += a;
        c.other_replies += o;
        c.applied += applied;
        if applied != 0 || a + o > 0 {
            c.ids_written += 1;
        }
        if applied < a as i64 {
            c.lost.push((id, a, applied));
        }
        c.unexplained += (applied - (a + o) as i64).max(0);
    }
    c.ok = c.lost.is_empty() && c.unexplained <= transport_errors as i64;
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map<V: Copy>(pairs: &[(i64, V)]) -> HashMap<i64, V> {
        pairs.iter().copied().collect()
    }

    fn outcomes(
        acked: HashMap<i64, u64>,
        other: HashMap<i64, u64>,
        transport_errors: u64,
    ) -> PatchOutcomes {
        PatchOutcomes {
            acked,
            other,
            transport_errors,
        }
    }

    #[test]
    fn a_lost_write_and_a_doubled_one_do_not_cancel_out() {
        let before = map(&[(1, 1), (2, 1)]);
        // id 1: two acknowledged, one stored (lost); id 2: one acknowledged, two stored.
        let after = map(&[(1, 2), (2, 3)]);
        let acked = map(&[(1, 2u64), (2, 1)]);
        let c = check_ids(&before, &after, &outcomes(acked, HashMap::new(), 0));
        assert_eq!(c.applied, 3);
        assert_eq!(c.acked, 3, "the sums agree...");
        assert_eq!(c.lost, vec![(1, 2, 1)], "...yet id 1 lost a write");
        assert_eq!(c.unexplained, 1, "...and id 2 has one too many");
        assert!(!c.ok);
    }

    #[test]
    fn unanswered_patches_may_explain_extra_writes_and_other_replies_may_be_absent() {
        let before = map(&[(1, 1), (2, 1), (3, 1)]);
        let after = map(&[(1, 3), (2, 1), (3, 2)]);
        let acked = map(&[(1, 1u64)]);
        // id 2 got a 503 that was not applied; id 3's write had no reply at all.
        let other = map(&[(2, 1u64)]);
        let c = check_ids(&before, &after, &outcomes(acked.clone(), other.clone(), 2));
        assert!(c.lost.is_empty());
        assert_eq!(c.unexplained, 2);
        assert!(c.ok);
        assert!(!check_ids(&before, &after, &outcomes(acked, other, 1)).ok);
    }

    #[test]
    fn ids_come_from_the_url() {
        assert_eq!(id_of("http://127.0.0.1:1234/users/42"), Some(42));
        assert_eq!(id_of("http://127.0.0.1:1234/users/x"), None);
    }

    #[test]
    fn replies_are_counted_per_id() {
        let mut p = PatchOutcomes::default();
        p.record("http://h/users/7", 200).unwrap();
        p.record("http://h/users/7", 503).unwrap();
        p.record("http://h/users/8", 200).unwrap();
        assert_eq!(p.acked, map(&[(7, 1), (8, 1)]));
        assert_eq!(p.other, map(&[(7, 1)]));
        assert!(p.record("http://h/users/x", 200).is_err());
    }
}
