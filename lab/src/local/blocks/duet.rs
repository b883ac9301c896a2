//! Duets: a rung and the row it is compared with, loaded at the same time, each by
//! its own oha processes at the exact mix, both servers on the server CPUs. A slow
//! moment of the host slows both alike, so their ratio keeps little of it (measured
//! here: an A/A spread of 1.2% per pair at once against 6.6% one after the other,
//! `docs/studies.md`). What the ratio means: the two builds' relative speed under the
//! same contention, not each one's saturation throughput alone (the solo windows
//! give that).
use anyhow::Result;

use super::{sides, Lab, Load, Running};
use crate::blocks::design::{self, DuetCell, Split};
use crate::blocks::{Duet, DuetSide};
use crate::matrix::Workload;

/// Each row's split for a duet: half its solo connections, its minority at half its
/// solo rate (the probe at once then sets the rate from what each side gets).
fn halved(s: &Split) -> Split {
    let share = s.majority_share;
    let majority = if share < 1.0 {
        s.minority_rate * share / (1.0 - share)
    } else {
        0.0
    };
    design::split(share, (s.majority_connections / 2).max(2), majority / 2.0)
}

/// The pairs a block's duets load: each row of `up` (matrix order, the A/A copy
/// last) with the row it is compared with (`blocks::previous_of`; the ladder is the
/// rows that are neither references nor the A/A copy).
pub(super) fn pairs(lab: &Lab, aa: Option<&str>) -> Vec<(usize, usize)> {
    let rows: Vec<String> = lab.up.iter().map(|u| u.row.name.clone()).collect();
    let copy = aa.map(crate::blocks::aa_name);
    let ladder: Vec<String> = lab
        .up
        .iter()
        .filter(|u| !u.row.is_reference() && Some(&u.row.name) != copy.as_ref())
        .map(|u| u.row.name.clone())
        .collect();
    let versus = lab
        .up
        .iter()
        .filter_map(|u| Some((u.row.name.clone(), u.row.versus.clone()?)))
        .collect();
    (0..rows.len())
        .filter_map(|i| {
            let previous = crate::blocks::previous_of(&rows, &ladder, &versus, aa, i)?;
            Some((rows.iter().position(|r| *r == previous)?, i))
        })
        .collect()
}

impl Lab {
    /// `sum(version)` over the databases of `rows` that write to PostgreSQL (each
    /// database once), and whether each row is counted in it.
    fn applied_over(&mut self, rows: [usize; 2]) -> (Option<i64>, [bool; 2]) {
        let checked = rows.map(|r| self.up[r].row.writes_to_postgres() && self.up[r].db.is_some());
        let mut dbs: Vec<usize> = rows
            .iter()
            .zip(checked)
            .filter(|(_, c)| *c)
            .filter_map(|(r, _)| self.up[*r].db)
            .collect();
        dbs.dedup();
        if dbs.is_empty() {
            return (None, checked);
        }
        let mut total = 0;
        for db in dbs {
            match crate::local::pg::applied_writes(&mut self.dbs[db].client) {
                Ok(n) => total += n,
                Err(_) => return (None, checked),
            }
        }
        (Some(total), checked)
    }

    /// A row's server CPU time so far: its CPU group, else its process tree.
    fn server_ns(&self, row: usize) -> Option<u64> {
        let u = &self.up[row];
        match (&u.group, u.pid) {
            (Some(g), _) => g.usage_ns(),
            (None, Some(pid)) => super::tree_ns(pid),
            (None, None) => None,
        }
    }

    /// Both rows' loads at once: `first`'s oha processes started before `second`'s.
    fn at_once(
        &mut self,
        rows: [usize; 2],
        sides: [Vec<crate::measure::oha::Side>; 2],
        secs: f64,
        tags: [String; 2],
    ) -> Result<[Load; 2]> {
        let a: Running = self.spawn(rows[0], &sides[0], secs, &tags[0])?;
        let b: Running = self.spawn(rows[1], &sides[1], secs, &tags[1])?;
        // Both are waited for (or killed on drop) before either result is used.
        let (a, b) = (a.finish(), b.finish());
        Ok([a?, b?])
    }

    /// One duet: a probe of both at once (which sets each side's minority rate), then
    /// the window, with the write check over both.
    pub(super) fn duet(
        &mut self,
        d: DuetCell,
        w: &Workload,
        warm: [&Split; 2],
        secs: f64,
        block: u32,
        position: u32,
    ) -> Result<Duet> {
        let rows = [d.first, d.second];
        let tag = |r: usize| {
            format!(
                "b{block}-duet{position}-{}-{}",
                self.up[r].row.slug(),
                w.name
            )
        };
        let tags = rows.map(tag);
        let (applied_before, checked) = self.applied_over(rows);
        let halves = warm.map(halved);
        let probe = self.at_once(
            rows,
            halves.map(|h| sides(w, &h, true)),
            self.probe_secs,
            tags.clone().map(|t| format!("{t}-probe")),
        )?;
        let splits: Vec<Split> = probe
            .iter()
            .zip(&halves)
            .map(|(p, h)| {
                design::split(h.majority_share, h.majority_connections, p.majority_qps(w))
            })
            .collect();
        let before = rows.map(|r| self.server_ns(r));
        let loads = self.at_once(
            rows,
            [sides(w, &splits[0], true), sides(w, &splits[1], true)],
            secs,
            tags,
        )?;
        let after = rows.map(|r| self.server_ns(r));
        let (applied_after, _) = self.applied_over(rows);
        let side = |k: usize| {
            let l = &loads[k];
            DuetSide {
                row: self.up[rows[k]].row.name.clone(),
                get_ok: l.get_ok,
                patch_ok: l.patch_ok,
                failed: l.failed,
                patch_unacked: l.patch_unacked,
                throughput: l.throughput(),
                get_share: l.get_share(),
                server_ns: before[k].zip(after[k]).map(|(x, y)| y.saturating_sub(x)),
                checked: checked[k],
                probe: probe[k].as_probe(),
            }
        };
        Ok(Duet {
            block,
            position,
            workload: w.name.clone(),
            secs: loads[0].secs,
            sides: [side(0), side(1)],
            applied_writes: applied_before.zip(applied_after).map(|(x, y)| y - x),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_duet_side_gets_half_the_connections_and_half_the_minority_rate() {
        let solo = design::split(0.9, 128, 9000.0);
        let h = halved(&solo);
        assert_eq!(h.majority_connections, 64);
        assert!((h.minority_rate - solo.minority_rate / 2.0).abs() < 1e-9);
        assert!((h.majority_share - 0.9).abs() < 1e-12);
        let pure = design::split(1.0, 64, 5000.0);
        assert_eq!(halved(&pure).minority_rate, 0.0);
    }
}
