//! The design of a run of blocks: which (row, workload) cells a block measures, in
//! what order, and how a mix is kept exact in a closed loop.
use serde::{Deserialize, Serialize};

/// One cell of the design: a row (by its index among the block rows) and a workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Cell {
    pub row: usize,
    pub workload: usize,
}

/// A small, seedable generator (SplitMix64): the order of every block is reproducible
/// from the seed recorded in summary.json.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in 0..n (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    /// Fisher–Yates.
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i + 1);
            v.swap(i, j);
        }
    }
}

/// Every block's order: each block holds every cell exactly once, in a fresh random
/// order drawn from `seed`. The workloads come in a random order and each workload's
/// rows together, in a random order of their own: the windows a comparison pairs (the
/// same workload, adjacent rows) stay close in time, so the machine's drift within a
/// block adds less to their ratio.
pub fn blocks(rows: usize, workloads: usize, count: usize, seed: u64) -> Vec<Vec<Cell>> {
    per_workload(workloads, count, seed, |rng| {
        let mut rs: Vec<usize> = (0..rows).collect();
        rng.shuffle(&mut rs);
        rs
    })
}

/// `count` blocks: in each, the workloads in a random order, each one's rows together
/// in the order `rows` draws for it.
fn per_workload(
    workloads: usize,
    count: usize,
    seed: u64,
    mut rows: impl FnMut(&mut Rng) -> Vec<usize>,
) -> Vec<Vec<Cell>> {
    let mut rng = Rng::new(seed);
    (0..count)
        .map(|_| {
            let mut ws: Vec<usize> = (0..workloads).collect();
            rng.shuffle(&mut ws);
            let mut block = Vec::new();
            for workload in ws {
                block.extend(rows(&mut rng).into_iter().map(|row| Cell { row, workload }));
            }
            block
        })
        .collect()
}

/// How a block orders one workload's rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Order {
    /// A fresh random permutation (runs before the walk).
    #[default]
    Shuffle,
    /// The rows in matrix order, the A/A copy beside its original (before or after it
    /// at random), cut at a random row and walked in a random direction, wrapping
    /// around: every rung is measured next to the row it is compared with (except at
    /// the cut), so the machine's drift between them is one window's, not a block's.
    /// Measured in the committed runs, the noise of a same-workload pair grew from
    /// 8–9% (adjacent) to 11–12% (the shuffle's typical distance) and 13% (8 apart).
    Walk,
}

impl Order {
    pub fn parse(s: &str) -> Result<Order, String> {
        match s {
            "walk" => Ok(Order::Walk),
            "shuffle" => Ok(Order::Shuffle),
            _ => Err(format!("{s:?} is not an order (walk or shuffle)")),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Order::Shuffle => "shuffle",
            Order::Walk => "walk",
        }
    }
}

/// Every block's order as a walk (`Order::Walk`): the workloads in a random order,
/// each one's rows walked along the ladder. `aa` is (the copy, its original).
pub fn walks(
    rows: usize,
    aa: Option<(usize, usize)>,
    workloads: usize,
    count: usize,
    seed: u64,
) -> Vec<Vec<Cell>> {
    let ladder: Vec<usize> = (0..rows)
        .filter(|r| aa.is_none_or(|(c, _)| c != *r))
        .collect();
    per_workload(workloads, count, seed, |rng| {
        let mut seq = ladder.clone();
        if let Some((copy, original)) = aa {
            let at = seq.iter().position(|r| *r == original).unwrap_or(0);
            seq.insert(at + rng.below(2), copy);
        }
        if !seq.is_empty() {
            let cut = rng.below(seq.len());
            seq.rotate_left(cut);
        }
        if rng.below(2) == 1 {
            seq.reverse();
        }
        seq
    })
}

/// One duet of a block: rows `first` and `second` loaded at once in `workload`, the
/// load of `first` started first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DuetCell {
    pub first: usize,
    pub second: usize,
    pub workload: usize,
}

/// Every block's duets: each pair (a row, the row it is compared with) once per
/// workload, in a fresh random order, and which of the two starts first drawn at
/// random (the side that starts first runs ≈ 1% slower here: a role bias that the
/// draw turns into noise instead of an effect).
pub fn duets(
    pairs: &[(usize, usize)],
    workloads: usize,
    count: usize,
    seed: u64,
) -> Vec<Vec<DuetCell>> {
    let mut rng = Rng::new(seed ^ 0xD0E7_D0E7);
    (0..count)
        .map(|_| {
            let mut block: Vec<DuetCell> = (0..workloads)
                .flat_map(|workload| {
                    pairs.iter().map(move |&(a, b)| DuetCell {
                        first: a,
                        second: b,
                        workload,
                    })
                })
                .collect();
            rng.shuffle(&mut block);
            for d in &mut block {
                if rng.below(2) == 1 {
                    std::mem::swap(&mut d.first, &mut d.second);
                }
            }
            block
        })
        .collect()
}

/// How a mix is driven in a closed loop: the majority method closed-loop on a fixed
/// number of connections, the minority open-loop at the rate that keeps the mix, from
/// the majority's throughput measured just before (oha's two processes would each run
/// at their own latency if both were closed, so a split of connections alone does not
/// keep a mix).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Split {
    /// The majority's share of requests (0.9 at 90/10).
    pub majority_share: f64,
    pub majority_connections: u32,
    /// The minority's open-loop rate, requests/s (0: a pure workload, no minority).
    pub minority_rate: f64,
    pub minority_connections: u32,
}

/// The split for a majority measured at `majority_qps` with `connections`, for a mix
/// whose majority share is `share` (≥ 0.5). The minority's connections cover its rate
/// at twice the closed loop's mean latency (connections / throughput), at least 4.
pub fn split(share: f64, connections: u32, majority_qps: f64) -> Split {
    let minority_share = 1.0 - share;
    let minority_rate = if minority_share <= 0.0 || majority_qps <= 0.0 {
        0.0
    } else {
        majority_qps * minority_share / share
    };
    let latency = if majority_qps > 0.0 {
        f64::from(connections) / majority_qps
    } else {
        1.0
    };
    let minority_connections = ((minority_rate * latency * 2.0).ceil() as u32).max(4);
    Split {
        majority_share: share,
        majority_connections: connections,
        minority_rate,
        minority_connections: if minority_rate > 0.0 {
            minority_connections
        } else {
            0
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duets_pair_each_rung_once_per_workload_with_roles_drawn() {
        let pairs = [(0, 1), (1, 2), (2, 3), (1, 4)];
        let b = duets(&pairs, 2, 400, 3);
        assert_eq!(b, duets(&pairs, 2, 400, 3), "reproducible from the seed");
        let mut first_is_a = 0;
        let mut leading = [0usize; 8];
        for block in &b {
            assert_eq!(block.len(), 8);
            let mut seen: Vec<(usize, usize, usize)> = block
                .iter()
                .map(|d| {
                    let (a, b) = (d.first.min(d.second), d.first.max(d.second));
                    (a, b, d.workload)
                })
                .collect();
            seen.sort_unstable();
            seen.dedup();
            assert_eq!(seen.len(), 8, "every pair × workload once");
            first_is_a += block
                .iter()
                .filter(|d| pairs.contains(&(d.first, d.second)))
                .count();
            let k = pairs
                .iter()
                .position(|&(a, b)| {
                    (a, b)
                        == (
                            block[0].first.min(block[0].second),
                            block[0].first.max(block[0].second),
                        )
                })
                .unwrap();
            leading[k + 4 * block[0].workload] += 1;
        }
        let share = first_is_a as f64 / (400.0 * 8.0);
        assert!((share - 0.5).abs() < 0.04, "roles drawn at random: {share}");
        assert!(
            leading.iter().all(|n| (25..=75).contains(n)),
            "orders drawn: {leading:?}"
        );
    }

    #[test]
    fn a_walk_measures_every_rung_beside_the_row_above() {
        // 12 rows; row 11 is the A/A copy of row 3.
        let b = walks(12, Some((11, 3)), 2, 400, 9);
        let (mut cut, mut pairs, mut first) = (0, 0, [0usize; 12]);
        let (mut copy_before, mut reversed) = (0, 0);
        for block in &b {
            let mut seen: Vec<Cell> = block.clone();
            seen.sort_by_key(|c| (c.row, c.workload));
            seen.dedup();
            assert_eq!(seen.len(), 24, "every cell once");
            for half in block.chunks(12) {
                assert!(half.iter().all(|c| c.workload == half[0].workload));
                first[half[0].row] += 1;
                let pos = |r: usize| half.iter().position(|c| c.row == r).unwrap() as i64;
                // Rungs 1..=10 against the row above; the copy against its original.
                for r in (1..11).chain([11]) {
                    let above = if r == 11 { 3 } else { r - 1 };
                    pairs += 1;
                    if (pos(r) - pos(above)).abs() != 1 {
                        cut += 1;
                    }
                }
                copy_before += usize::from(pos(11) < pos(3));
                reversed += usize::from(pos(1) < pos(0));
            }
        }
        // At most two pairs per walk are split (the cut, and the copy's neighbour).
        assert!(cut <= 2 * 800, "{cut} of {pairs}");
        assert!(cut < pairs / 5, "{cut} of {pairs}");
        // Direction, the copy's side and the starting row are balanced.
        assert!((300..500).contains(&copy_before), "{copy_before}");
        assert!((300..500).contains(&reversed), "{reversed}");
        assert!(first.iter().all(|n| (30..110).contains(n)), "{first:?}");
        assert_eq!(b, walks(12, Some((11, 3)), 2, 400, 9));
        assert_eq!(Order::parse("walk"), Ok(Order::Walk));
        assert!(Order::parse("random").is_err());
    }

    #[test]
    fn every_block_holds_every_cell_once_in_its_own_order() {
        let b = blocks(12, 2, 8, 42);
        assert_eq!(b.len(), 8);
        for block in &b {
            let mut seen: Vec<Cell> = block.clone();
            seen.sort_by_key(|c| (c.row, c.workload));
            seen.dedup();
            assert_eq!(seen.len(), 24);
        }
        // Orders differ between blocks, and the same seed gives the same design.
        assert_ne!(b[0], b[1]);
        assert_eq!(b, blocks(12, 2, 8, 42));
        assert_ne!(b, blocks(12, 2, 8, 43));
        // A workload's cells stay together.
        for block in &b {
            let changes = block
                .windows(2)
                .filter(|p| p[0].workload != p[1].workload)
                .count();
            assert_eq!(changes, 1);
        }
        // Over many blocks each row is first about equally often (no position bias).
        let many = blocks(4, 1, 4000, 7);
        let mut first = [0; 4];
        for block in &many {
            first[block[0].row] += 1;
        }
        assert!(first.iter().all(|n| (850..1150).contains(n)), "{first:?}");
    }

    #[test]
    fn the_split_keeps_the_mix() {
        // 90/10 with the majority at 9000/s: the minority at 1000/s is 10% of 10000.
        let s = split(0.9, 64, 9000.0);
        assert!((s.minority_rate - 1000.0).abs() < 1e-9);
        let share = 9000.0 / (9000.0 + s.minority_rate);
        assert!((share - 0.9).abs() < 1e-12);
        // Its connections: 1000/s × (64 / 9000 s) × 2 = 14.2 → 15.
        assert_eq!(s.minority_connections, 15);
        // A slow row still gets a few connections; a pure workload none.
        assert_eq!(split(0.9, 64, 100.0).minority_connections, 15);
        assert_eq!(split(0.9, 64, 10.0).minority_connections, 15);
        let pure = split(1.0, 64, 5000.0);
        assert_eq!((pure.minority_rate, pure.minority_connections), (0.0, 0));
    }
}
