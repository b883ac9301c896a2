//! Write integrity per id: from the load generator's per-request records (URL and
//! status of every reply), each id's acknowledged and otherwise-answered PATCHes, and
//! the check against each row's `version` before and after. Unlike a comparison of
//! sums, a lost write on one id and a doubled write on another cannot cancel out.
use std::collections::{HashMap, HashSet};

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
    /// Ids written whose stored email was checked against the bodies sent.
    pub emails_checked: usize,
    /// Written ids whose stored email is none of the bodies sent: (id, email), first few.
    pub foreign_emails: Vec<(i64, String)>,
    pub ok: bool,
}

impl IdCheck {
    /// What failed, for a note: lost writes, unexplained ones, foreign emails.
    pub fn describe(&self) -> String {
        format!(
            "{} ids lost an acknowledged write {:?}, {} writes unexplained (at most {} PATCHes had no reply), {} of {} written ids hold an email nobody sent {:?}",
            self.lost.len(),
            self.lost.iter().take(5).collect::<Vec<_>>(),
            self.unexplained,
            self.transport_errors,
            self.foreign_emails.len(),
            self.emails_checked,
            self.foreign_emails,
        )
    }
}

/// The ids a check saw written (`version` moved), whose stored email must be one the
/// load generator sent.
pub fn written_ids(before: &HashMap<i64, i64>, after: &HashMap<i64, i64>) -> Vec<i64> {
    let mut ids: Vec<i64> = after
        .iter()
        .filter(|(id, v)| before.get(id).is_none_or(|b| b != *v))
        .map(|(id, _)| *id)
        .collect();
    ids.sort_unstable();
    ids
}

/// Adds the email check to `c`: every written id's stored email must be one of the
/// bodies sent. oha picks a body at random for each PATCH, independently of its URL, so
/// which of them an id got cannot be known; a torn, stale-seed or foreign value can.
pub fn check_emails(c: &mut IdCheck, stored: &HashMap<i64, String>, sent: &HashSet<String>) {
    let mut foreign: Vec<(i64, String)> = stored
        .iter()
        .filter(|(_, e)| !sent.contains(*e))
        .map(|(id, e)| (*id, e.clone()))
        .collect();
    foreign.sort();
    c.emails_checked += stored.len();
    if !foreign.is_empty() {
        c.ok = false;
    }
    foreign.truncate(5);
    c.foreign_emails.extend(foreign);
}

/// The emails in a bodies file (`{"email":"…"}` per line), as sent by oha's `-Z`.
pub fn sent_emails(bodies: &str) -> Result<HashSet<String>> {
    bodies
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: serde_json::Value =
                serde_json::from_str(l).with_context(|| format!("body {l:?}"))?;
            v["email"]
                .as_str()
                .map(str::to_string)
                .with_context(|| format!("no email in body {l:?}"))
        })
        .collect()
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
    fn a_written_id_must_hold_one_of_the_emails_sent() {
        let before = map(&[(1, 1), (2, 1), (3, 1)]);
        let after = map(&[(1, 2), (2, 1), (3, 3)]);
        assert_eq!(written_ids(&before, &after), vec![1, 3]);
        let sent = sent_emails("{\"email\":\"a@x.org\"}\n{\"email\":\"b@x.org\"}\n").unwrap();
        let acked = map(&[(1, 1u64), (3, 2)]);
        let mut c = check_ids(&before, &after, &outcomes(acked, HashMap::new(), 0));
        assert!(c.ok);
        let good: HashMap<i64, String> =
            [(1, "a@x.org".to_string()), (3, "b@x.org".to_string())].into();
        check_emails(&mut c, &good, &sent);
        assert!(c.ok);
        assert_eq!(c.emails_checked, 2);
        // Versions agree, yet id 3 holds its seed email: the write bumped the version only.
        let stale: HashMap<i64, String> = [
            (1, "a@x.org".to_string()),
            (3, "user3@example.com".to_string()),
        ]
        .into();
        check_emails(&mut c, &stale, &sent);
        assert!(!c.ok);
        assert_eq!(c.foreign_emails, vec![(3, "user3@example.com".to_string())]);
        assert!(sent_emails("{\"name\":1}").is_err());
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
