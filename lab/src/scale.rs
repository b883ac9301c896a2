//! Curves: a matrix whose rows are points along one axis (`[scale] axis`), measured
//! in the blocks like any ladder (every point side by side, in random order, each
//! block once), and drawn against the axis. The axes: the users seeded (with uniform
//! or Zipf-distributed ids), the client connections, and the pod's CPU limit.
use std::path::Path;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use crate::matrix::{Matrix, Row};

/// Users a row may seed (≈ 100 bytes each on disk, with the index).
pub const MAX_USERS: i64 = 50_000_000;

/// Connections a row's windows may hold (the lab raises its file-descriptor limit for
/// them, and says so if it cannot).
pub const MAX_CONNECTIONS: u32 = 50_000;

/// The smallest memory limit a row's PostgreSQL may have (`postgres_memory_limit`):
/// its 256 MB of shared buffers and a few backends fit, with some page cache.
pub const MIN_POSTGRES_MEMORY: u64 = 384 * 1024 * 1024;

/// The exponent of the Zipf distribution (`ids = "zipf"`): the id of rank k is
/// requested in proportion to 1/k (with 10⁶ users, the top 1% get ≈ 68% of requests).
pub const ZIPF_EXPONENT: f64 = 1.0;

/// The most ids oha's URL file holds: beyond this many users they are drawn at random
/// from the distribution (oha picks a line at random per request, and keeps the file
/// in memory).
pub const MAX_URL_LINES: i64 = 1_000_000;

/// The axis a curve's rows are points on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Axis {
    /// Users seeded (`users` of each row).
    Users,
    /// Client connections of each window (`connections` of each row).
    Connections,
    /// The pod's CPU limit (`resources.cpu_limit` of each row).
    Cpus,
}

impl Axis {
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "users" => Ok(Axis::Users),
            "connections" => Ok(Axis::Connections),
            "cpus" => Ok(Axis::Cpus),
            _ => Err(format!("{s:?} is not an axis (users, connections or cpus)")),
        }
    }

    /// The axis in words, for a chart's x axis.
    pub fn label(self) -> &'static str {
        match self {
            Axis::Users => "users in the table",
            Axis::Connections => "client connections",
            Axis::Cpus => "the pod's CPU limit (CPUs)",
        }
    }

    /// Whether its points spread over decades (drawn on a log scale).
    pub fn logarithmic(self) -> bool {
        !matches!(self, Axis::Cpus)
    }

    /// A row's point on the axis.
    pub fn x(self, m: &Matrix, row: &Row) -> Option<f64> {
        self.x_of(row, m.load.users, m.blocks.connections)
    }

    /// A row's point, given the matrix's users and connections.
    fn x_of(self, row: &Row, users: i64, connections: u32) -> Option<f64> {
        match self {
            Axis::Users => Some(row.users.unwrap_or(users) as f64),
            Axis::Connections => Some(f64::from(row.connections.unwrap_or(connections))),
            Axis::Cpus => row.resources.as_ref().and_then(|r| r.cpu_limit),
        }
    }

    /// The series a row's point belongs to: rows that differ in more than the axis.
    pub fn series(self, row: &Row) -> String {
        match self {
            Axis::Users => match row.postgres_memory_limit {
                None => row.ids.label().into(),
                Some(b) => format!(
                    "{}, PostgreSQL memory limit {}",
                    row.ids.label(),
                    crate::pod::memory_quantity(b)
                ),
            },
            Axis::Connections if row.env.is_empty() => "the server's defaults".into(),
            Axis::Connections => row
                .env
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(", "),
            Axis::Cpus => "workers follow the limit".into(),
        }
    }
}

/// How a row's requests pick their ids.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Ids {
    /// Every user alike.
    #[default]
    Uniform,
    /// By rank, in proportion to 1/rank ([`ZIPF_EXPONENT`]); the ranks scattered over
    /// the table, so hot users are not neighbours on its pages.
    Zipf,
}

impl Ids {
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "uniform" => Ok(Ids::Uniform),
            "zipf" => Ok(Ids::Zipf),
            _ => Err(format!("{s:?} is not an id distribution (uniform or zipf)")),
        }
    }

    pub fn is_uniform(&self) -> bool {
        *self == Ids::Uniform
    }

    pub fn label(self) -> &'static str {
        match self {
            Ids::Uniform => "uniform ids",
            Ids::Zipf => "Zipf ids",
        }
    }

    /// The ids of oha's URL file for a table of `users`: every id once where the
    /// distribution is uniform and the table small enough, else [`MAX_URL_LINES`] ids
    /// drawn from it (deterministically).
    pub fn ids(self, users: i64) -> Vec<i64> {
        let users = users.max(1);
        let mut rng = XorShift(0x2545_F491_4F6C_DD1D ^ users as u64);
        match self {
            Ids::Uniform if users <= MAX_URL_LINES => (1..=users).collect(),
            Ids::Uniform => (0..MAX_URL_LINES)
                .map(|_| 1 + (rng.next() % users as u64) as i64)
                .collect(),
            Ids::Zipf => {
                let cdf = zipf_cdf(users as usize, ZIPF_EXPONENT);
                let step = scatter_step(users);
                (0..MAX_URL_LINES)
                    .map(|_| {
                        let u = rng.unit() * cdf[cdf.len() - 1];
                        let rank = cdf.partition_point(|&c| c < u) as i64;
                        // Rank k (0-based) → a scattered id: a bijection of 0..users.
                        1 + ((rank as i128 * step as i128) % users as i128) as i64
                    })
                    .collect()
            }
        }
    }
}

/// The cumulative weights of ranks 1..=n under 1/k^s.
fn zipf_cdf(n: usize, s: f64) -> Vec<f64> {
    let mut acc = 0.0;
    (1..=n)
        .map(|k| {
            acc += (k as f64).powf(-s);
            acc
        })
        .collect()
}

/// A multiplier coprime with `users`, so that rank × step mod users visits every id.
fn scatter_step(users: i64) -> i64 {
    let gcd = |mut a: i64, mut b: i64| {
        while b != 0 {
            (a, b) = (b, a % b);
        }
        a
    };
    [1_000_003_i64, 999_983, 7_919, 104_729]
        .into_iter()
        .find(|p| gcd(*p, users) == 1)
        .unwrap_or(1)
}

/// A small, deterministic generator (xorshift64*).
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// In (0, 1].
    fn unit(&mut self) -> f64 {
        ((self.next() >> 11) as f64 + 1.0) / (1u64 << 53) as f64
    }
}

/// Writes oha's URL file for `base` (`http://host:port`): one `/users/{id}` per id.
pub fn write_urls(path: &Path, base: &str, ids: Ids, users: i64) -> Result<()> {
    use std::io::Write as _;
    let mut u = std::io::BufWriter::new(std::fs::File::create(path)?);
    for id in ids.ids(users) {
        writeln!(u, "{base}/users/{id}")?;
    }
    u.flush()?;
    Ok(())
}

/// Rows that set `users`, `ids` or `connections` are measured by the blocks alone:
/// the SLO search seeds and loads every row alike.
pub fn check_blocks_only(m: &Matrix) -> Result<()> {
    let own = m.rows.iter().find(|r| {
        r.users.is_some()
            || !r.ids.is_uniform()
            || r.connections.is_some()
            || r.postgres_memory_limit.is_some()
    });
    if let (Some(r), true) = (own, m.load.repetitions > 0) {
        bail!(
            "row {:?} sets `users`, `ids`, `connections` or `postgres_memory_limit`, which the blocks measure alone: set [load] repetitions = 0",
            r.name
        );
    }
    Ok(())
}

/// One measured point of a curve.
#[derive(Debug, Clone)]
pub struct Point<'a> {
    pub row: &'a str,
    pub series: String,
    pub workload: &'a str,
    pub x: f64,
    pub cell: &'a crate::blocks::CellResult,
    /// The share of its closed-loop windows' requests that failed (503s of the
    /// server's bounds among them), median over blocks.
    pub closed_failed: Option<f64>,
    /// Connections the server refused per closed-loop window (past its bounds), median.
    pub refused: Option<f64>,
}

/// A run's curve, where its matrix has `[scale]`: the axis and every cell with its
/// point, in matrix order.
pub fn curve(s: &crate::results::Summary) -> Option<(Axis, Vec<Point<'_>>)> {
    let axis: Axis = serde_json::from_value(s.matrix.get("scale")?.clone()).ok()?;
    let rows: Vec<Row> = serde_json::from_value(s.matrix.get("rows")?.clone()).ok()?;
    let users = s.matrix["load"]["users"].as_i64()?;
    let connections = s.matrix["blocks"]["connections"].as_u64()? as u32;
    let b = s.blocks.as_ref()?;
    let mut points = Vec::new();
    for row in &rows {
        let x = axis.x_of(row, users, connections)?;
        for c in b.cells.iter().filter(|c| c.row == row.name) {
            let (mut failed, mut refused) = (Vec::new(), Vec::new());
            for w in b
                .windows
                .iter()
                .filter(|w| w.row == c.row && w.workload == c.workload)
            {
                failed.push(w.failed as f64 / (w.failed + w.requests()).max(1) as f64);
                refused.extend(w.counts.server_refused.map(|n| n as f64));
            }
            points.push(Point {
                refused: crate::blocks::effects::median(&refused),
                closed_failed: crate::blocks::effects::median(&failed),
                row: &c.row,
                series: axis.series(row),
                workload: &c.workload,
                x,
                cell: c,
            });
        }
    }
    Some((axis, points))
}

/// A curve's rows: each with its point on the axis, at least two distinct points.
pub fn check(m: &Matrix, axis: Axis) -> Result<()> {
    let mut xs = Vec::new();
    for row in &m.rows {
        match axis.x(m, row) {
            Some(x) => xs.push(x),
            None => bail!(
                "row {:?}: a curve along the CPU limit needs `resources` with a `cpu_limit` in every row",
                row.name
            ),
        }
    }
    xs.sort_by(f64::total_cmp);
    xs.dedup();
    if xs.len() < 2 {
        bail!("[scale]: a curve needs rows at two points of its axis at least");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_ids_cover_a_small_table_exactly_and_sample_a_large_one() {
        assert_eq!(Ids::Uniform.ids(5), vec![1, 2, 3, 4, 5]);
        let big = Ids::Uniform.ids(10_000_000);
        assert_eq!(big.len() as i64, MAX_URL_LINES);
        assert!(big.iter().all(|&i| (1..=10_000_000).contains(&i)));
        // Spread over the table: every tenth has a fair share.
        let top = big.iter().filter(|&&i| i > 9_000_000).count() as f64 / big.len() as f64;
        assert!((top - 0.1).abs() < 0.01, "{top}");
    }

    #[test]
    fn zipf_ids_are_skewed_scattered_and_in_range() {
        let users = 1_000_000;
        let ids = Ids::Zipf.ids(users);
        assert!(ids.iter().all(|&i| (1..=users).contains(&i)));
        let mut counts = std::collections::HashMap::new();
        for &i in &ids {
            *counts.entry(i).or_insert(0u64) += 1;
        }
        let mut by = counts.values().copied().collect::<Vec<_>>();
        by.sort_unstable_by(|a, b| b.cmp(a));
        // The top 1% of users (10⁴) get H(10⁴)/H(10⁶) ≈ 68% of the requests.
        let top: u64 = by.iter().take(10_000).sum();
        let share = top as f64 / ids.len() as f64;
        assert!((share - 0.68).abs() < 0.03, "{share}");
        // The hottest id is not id 1: ranks are scattered over the table.
        let hottest = counts.iter().max_by_key(|(_, c)| **c).map(|(i, _)| *i);
        assert_eq!(hottest, Some(1));
        let second = 1 + (scatter_step(users) % users);
        assert!(counts.get(&second).copied().unwrap_or(0) > counts.len() as u64 / 1000);
    }

    #[test]
    fn axes_parse_and_name_their_points() {
        assert_eq!(Axis::parse("users"), Ok(Axis::Users));
        assert!(Axis::parse("memory")
            .unwrap_err()
            .contains("users, connections or cpus"));
        assert!(Ids::parse("pareto")
            .unwrap_err()
            .contains("uniform or zipf"));
        assert!(Axis::Users.logarithmic() && !Axis::Cpus.logarithmic());
    }
}
