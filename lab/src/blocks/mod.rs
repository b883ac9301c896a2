//! Randomized blocks, side by side: every build started once, each in its own CPU
//! group; a block measures every row × workload once in a fresh random order, as a
//! short closed-loop window at the exact mix (the saturation throughput); effects are
//! per-block ratios with intervals. The design is in [`design`], the arithmetic in
//! [`effects`], the typed limit in [`judge`]; the local target runs it
//! (`crate::local::blocks`).
use serde::{Deserialize, Serialize};

pub mod compare;
pub mod covariates;
pub mod design;
pub mod effects;
pub mod judge;
pub mod render;

/// How long after a window PostgreSQL's counters are read, ms (a session is counted
/// when it ends).
pub const STATS_FLUSH_MS: u64 = 300;

use covariates::Measure;
pub use covariates::{HostAdjustment, StealAdjustment};
use effects::{Change, Ratio};
use judge::{Limit, Shares};

/// The blocks of a run and the rows that could not take part in them (name, why).
pub type Outcome = (Blocks, Vec<(String, String)>);

/// A run's block settings (`[blocks]` in the matrix).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Settings {
    /// Blocks per run (0: no blocks).
    pub blocks: u32,
    /// Length of each closed-loop window, s.
    pub window_secs: f64,
    /// Closed-loop connections of the majority method.
    pub connections: u32,
    /// The row measured twice, under two names: the run's own check of false alarms.
    pub aa: Option<String>,
    /// The family-wise error rate of the intervals (0.05: 95%).
    pub alpha: f64,
    /// Each closed-loop window is followed by one at this offered rate (open loop): its
    /// p99, CPU per request and the server's memory at a rate every row can carry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fixed_qps: Option<f64>,
    /// Length of each fixed-rate window, s.
    #[serde(default = "default_fixed_secs")]
    pub fixed_secs: f64,
    /// How a block orders its windows (runs before the walk: shuffled).
    #[serde(default)]
    pub order: design::Order,
    /// Each block also loads every rung at once with the row it is compared with, in
    /// windows of this length, s (a duet: `Duet`); None: no duets (and in runs before them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duet_secs: Option<f64>,
}

fn default_fixed_secs() -> f64 {
    3.0
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            blocks: 0,
            window_secs: 4.0,
            connections: 64,
            aa: None,
            alpha: 0.05,
            fixed_qps: None,
            fixed_secs: default_fixed_secs(),
            order: design::Order::Walk,
            duet_secs: None,
        }
    }
}

/// The name of the A/A copy of `row`.
pub fn aa_name(row: &str) -> String {
    format!("{row}{AA_SUFFIX}")
}

/// What [`aa_name`] appends to the row it copies.
pub const AA_SUFFIX: &str = " (A/A copy)";

/// A counter a rung's hypothesis says it moves (`moves` in a matrix row).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Counter {
    /// PostgreSQL backends started per request (`pool`: 1 → 0).
    PgBackendsStarted,
    /// Write transactions committed per PATCH (`coalesce`: well under 1).
    PgCommitsPerPatch,
    /// WAL bytes per PATCH.
    PgWalBytesPerPatch,
    /// Statements planned per request (`prepared`: → 0).
    PgPlans,
    /// Statements executed per request (`coalesce`: one per batch).
    PgStatements,
    /// Shared-buffer hits per request (`index`: a scan of every page → a few pages).
    PgBufferHits,
    /// The server's read/write system calls per request (`pipeline`).
    ServerSyscalls,
    /// The server's context switches per request (`current-thread`).
    ServerContextSwitches,
    /// Shared-buffer misses (reads from the page cache or disk) per request
    /// (`shared_buffers` below the working set).
    PgBufferReads,
    /// The share of the server's CPU-quota periods in which it was throttled (a pod's
    /// CPU limit).
    ServerThrottledPeriods,
    /// Time the server's threads waited on a run queue per request, µs (a pod's CPU
    /// request: its weight against the others on the CPU).
    ServerRunDelay,
}

impl Counter {
    pub fn name(self) -> &'static str {
        match self {
            Counter::PgBackendsStarted => "PostgreSQL backends started per request",
            Counter::PgCommitsPerPatch => "write transactions per PATCH",
            Counter::PgWalBytesPerPatch => "WAL bytes per PATCH",
            Counter::PgPlans => "statements planned per request",
            Counter::PgStatements => "statements per request",
            Counter::PgBufferHits => "shared-buffer hits per request",
            Counter::ServerSyscalls => "server system calls per request",
            Counter::ServerContextSwitches => "server context switches per request",
            Counter::PgBufferReads => "shared-buffer reads per request",
            Counter::ServerThrottledPeriods => "share of CPU-quota periods throttled",
            Counter::ServerRunDelay => "server run-queue wait per request, µs",
        }
    }

    /// Its value over one window (and its probe).
    pub fn of(self, w: &Window) -> Option<f64> {
        let (requests, patches) = w.counted();
        let per = |x: Option<i64>, n: u64| x.filter(|_| n > 0).map(|x| x as f64 / n as f64);
        let c = &w.counts;
        match self {
            Counter::PgBackendsStarted => per(c.pg_backends_started, requests),
            Counter::PgCommitsPerPatch => per(c.pg_commits, patches),
            Counter::PgWalBytesPerPatch => per(c.pg_wal_bytes, patches),
            Counter::PgPlans => per(c.pg_plans, requests),
            Counter::PgStatements => per(c.pg_statements, requests),
            Counter::PgBufferHits => per(c.pg_buffer_hits, requests),
            // The server's counters cover the window alone.
            Counter::ServerSyscalls => per(c.server_syscalls.map(|x| x as i64), w.requests()),
            Counter::ServerContextSwitches => {
                per(c.server_context_switches.map(|x| x as i64), w.requests())
            }
            Counter::PgBufferReads => per(c.pg_buffer_reads, requests),
            Counter::ServerRunDelay => {
                per(c.server_run_delay_ns.map(|x| x as i64), w.requests()).map(|ns| ns / 1000.0)
            }
            // A pod without a CPU limit has no quota periods: never throttled.
            Counter::ServerThrottledPeriods => w
                .throttling
                .map(|t| t.throttled as f64 / t.periods.max(1) as f64),
        }
    }
}

/// Counters of one party over a window (deltas), where readable.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Counts {
    pub server_syscalls: Option<u64>,
    pub server_context_switches: Option<u64>,
    /// Time the server's threads waited on a run queue, ns.
    pub server_run_delay_ns: Option<u64>,
    pub pg_backends_started: Option<i64>,
    /// Write transactions committed (transaction ids assigned).
    pub pg_commits: Option<i64>,
    pub pg_wal_records: Option<i64>,
    pub pg_wal_bytes: Option<i64>,
    /// Not measured (None): PostgreSQL 15 reports WAL syncs up to 10 s late, into
    /// another window; kept so that the name stays in `summary.json`.
    pub pg_wal_syncs: Option<i64>,
    pub pg_plans: Option<i64>,
    pub pg_statements: Option<i64>,
    pub pg_buffer_hits: Option<i64>,
    pub pg_buffer_reads: Option<i64>,
    /// Connections the server closed at once past its bounds (its `/metrics`, where
    /// the build has them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_refused: Option<u64>,
}

/// What the probe just before a window answered (its counters are in the window's).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Probe {
    pub get_ok: u64,
    pub patch_ok: u64,
    pub patch_unacked: u64,
}

/// One measured window.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Window {
    pub block: u32,
    /// Its place in the block's order (0-based).
    pub position: u32,
    pub row: String,
    pub workload: String,
    /// Load time (oha's own), s.
    pub secs: f64,
    /// From spawning oha to its exit, s: the span the CPU figures cover.
    pub wall_secs: f64,
    pub get_ok: u64,
    pub patch_ok: u64,
    /// Non-2xx replies and transport errors.
    pub failed: u64,
    /// PATCHes answered with something other than 200, or not at all.
    pub patch_unacked: u64,
    /// The probe before the window: counted in `counts` and `applied_writes`.
    #[serde(default)]
    pub probe: Probe,
    /// Good replies per second of load time.
    pub throughput: f64,
    /// GETs among the good replies.
    pub get_share: f64,
    pub server_ns: Option<u64>,
    pub postgres_ns: Option<u64>,
    pub oha_ns: Option<u64>,
    /// Each CPU's busy share (steal excluded).
    pub cpu_busy: Vec<f64>,
    /// Each CPU's share stolen by the hypervisor.
    #[serde(default)]
    pub cpu_steal: Vec<f64>,
    /// The host speedometer's median unit time over the window, ns (`measure::speedo`;
    /// None in runs before it, or with too few units).
    #[serde(default)]
    pub host_unit_ns: Option<f64>,
    /// The host's memory latency between windows, ns per dependent load: the mean of
    /// a probe just before the window and one just after it, nothing else running
    /// (`measure::speedo::MemoryProbe`; None in runs before it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_gap_ns: Option<f64>,
    pub shares: Shares,
    /// The server's CPU throttling in the window, where its row sets a pod's resources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttling: Option<crate::pod::Throttling>,
    pub counts: Counts,
    /// `sum(version)` grew by this much (None: not checked, e.g. the memory store).
    pub applied_writes: Option<i64>,
    pub limit: Limit,
    /// The server's resident memory, highest over the window (sampled every 100 ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_rss_bytes: Option<u64>,
    /// The window at the fixed rate that followed it (`[blocks] fixed_qps`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fixed: Option<FixedWindow>,
}

/// One open-loop window at the run's fixed rate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FixedWindow {
    pub offered_qps: f64,
    pub secs: f64,
    pub connections: u32,
    /// Good replies per second.
    pub achieved_qps: f64,
    pub good: u64,
    /// Non-2xx replies and transport errors (refused connections among them).
    pub failed: u64,
    /// Over every request of both methods, from each request's scheduled time
    /// (oha's latency correction), ms.
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub server_ns: Option<u64>,
    pub postgres_ns: Option<u64>,
    pub server_rss_bytes: Option<u64>,
    /// The server's open file descriptors, highest over the window: the client
    /// connections it actually held (plus its pool and a few files).
    pub server_fds: Option<u64>,
    /// PATCHes answered 200, and answered otherwise or not at all.
    pub patch_ok: u64,
    pub patch_unacked: u64,
    /// `sum(version)` grew by this much over it (None: not checked).
    pub applied_writes: Option<i64>,
}

impl FixedWindow {
    pub fn server_us(&self) -> Option<f64> {
        (self.good > 0).then(|| self.server_ns.map(|n| n as f64 / 1e3 / self.good as f64))?
    }
    pub fn postgres_us(&self) -> Option<f64> {
        (self.good > 0).then(|| self.postgres_ns.map(|n| n as f64 / 1e3 / self.good as f64))?
    }
}

/// One side of a duet: a row's load in a window shared with another row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DuetSide {
    pub row: String,
    pub get_ok: u64,
    pub patch_ok: u64,
    /// Non-2xx replies and transport errors.
    pub failed: u64,
    /// PATCHes answered with something other than 200, or not at all.
    pub patch_unacked: u64,
    /// Good replies per second of load time.
    pub throughput: f64,
    /// GETs among the good replies.
    pub get_share: f64,
    /// Its server's CPU time over the window (its CPU group).
    pub server_ns: Option<u64>,
    /// Its PATCHes reach the database `Duet::applied_writes` counts (with its probe's).
    pub checked: bool,
    /// The probe just before the window (in `applied_writes`).
    pub probe: Probe,
}

impl DuetSide {
    pub fn requests(&self) -> u64 {
        self.get_ok + self.patch_ok
    }
    pub fn server_us(&self) -> Option<f64> {
        let n = self.requests();
        (n > 0).then_some(())?;
        self.server_ns.map(|ns| ns as f64 / 1000.0 / n as f64)
    }
}

/// Two rows loaded at the same time, each by its own oha processes at the exact mix
/// (duet benchmarking: Bulej et al., ICPE 2020): a slow moment of the host slows both,
/// so their ratio keeps little of it. `sides[0]` is the row whose load started first
/// (drawn at random).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Duet {
    pub block: u32,
    /// Its place among the block's duets (0-based).
    pub position: u32,
    pub workload: String,
    pub secs: f64,
    pub sides: [DuetSide; 2],
    /// `sum(version)` grew by this much over the probe and the window, in the
    /// databases of the checked sides (None: no side checked).
    pub applied_writes: Option<i64>,
}

impl Duet {
    /// The sides of rows `a` and `b`, in that order, if this duet is theirs.
    pub fn of(&self, a: &str, b: &str, workload: &str) -> Option<(&DuetSide, &DuetSide)> {
        if self.workload != workload {
            return None;
        }
        let [x, y] = &self.sides;
        match (x.row == a && y.row == b, x.row == b && y.row == a) {
            (true, _) => Some((x, y)),
            (_, true) => Some((y, x)),
            _ => None,
        }
    }

    /// What the write check found wrong, if anything.
    pub fn integrity(&self) -> Option<String> {
        let applied = self.applied_writes?;
        let checked = self.sides.iter().filter(|s| s.checked);
        let (ok, other) = checked.fold((0, 0), |(ok, other), s| {
            (
                ok + s.patch_ok + s.probe.patch_ok,
                other + s.patch_unacked + s.probe.patch_unacked,
            )
        });
        let (lo, hi) = (ok as i64, (ok + other) as i64);
        (applied < lo || applied > hi).then(|| {
            format!(
                "block {} duet {}: {ok} PATCHes answered 200 ({other} others) but sum(version) grew by {applied}",
                self.block, self.position
            )
        })
    }
}

impl Window {
    pub fn requests(&self) -> u64 {
        self.get_ok + self.patch_ok
    }
    fn per_request(&self, ns: Option<u64>) -> Option<f64> {
        let n = self.requests();
        (n > 0).then_some(())?;
        ns.map(|ns| ns as f64 / 1000.0 / n as f64)
    }
    pub fn server_us(&self) -> Option<f64> {
        self.per_request(self.server_ns)
    }
    pub fn postgres_us(&self) -> Option<f64> {
        self.per_request(self.postgres_ns)
    }
    /// Requests and PATCHes the counters cover: the window's and its probe's.
    pub fn counted(&self) -> (u64, u64) {
        (
            self.requests() + self.probe.get_ok + self.probe.patch_ok,
            self.patch_ok + self.probe.patch_ok,
        )
    }

    /// What the per-window integrity check found wrong, if anything (the probe's
    /// PATCHes included).
    pub fn integrity(&self) -> Option<String> {
        if let Some(f) = &self.fixed {
            if let Some(applied) = f.applied_writes {
                let (lo, hi) = (f.patch_ok as i64, (f.patch_ok + f.patch_unacked) as i64);
                if applied < lo || applied > hi {
                    return Some(format!(
                        "block {} window {} at the fixed rate: {} PATCHes answered 200 ({} others) but sum(version) grew by {applied}",
                        self.block, self.position, f.patch_ok, f.patch_unacked
                    ));
                }
            }
        }
        let applied = self.applied_writes?;
        let ok = self.patch_ok + self.probe.patch_ok;
        let other = self.patch_unacked + self.probe.patch_unacked;
        let (lo, hi) = (ok as i64, (ok + other) as i64);
        (applied < lo || applied > hi).then(|| {
            format!(
                "block {} window {}: {ok} PATCHes answered 200 ({other} others) but sum(version) grew by {applied}",
                self.block, self.position
            )
        })
    }
}

/// A measure's middle and interval over blocks.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Interval {
    pub median: f64,
    /// The geometric mean over blocks: the centre of the interval (the median can
    /// fall outside it with few blocks).
    #[serde(default)]
    pub geomean: f64,
    /// The 95% t interval of the geometric mean.
    pub ci_low: f64,
    pub ci_high: f64,
}

/// A counter's medians over blocks (the row above's, this row's) and the mean per-block
/// difference with its 95% interval (mean, low, high), where there are two blocks.
pub type CounterChange = (f64, f64, Option<(f64, f64, f64)>);

/// The throughput with its unit, as other tools read it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Throughput {
    #[serde(flatten)]
    pub interval: Interval,
    pub unit: String,
}

/// Counters per request (per PATCH for commits and WAL syncs), medians over blocks.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PerRequest {
    pub server_syscalls: Option<f64>,
    pub server_context_switches: Option<f64>,
    pub server_run_delay_us: Option<f64>,
    pub pg_backends_started: Option<f64>,
    pub pg_commits: Option<f64>,
    pub pg_commits_per_patch: Option<f64>,
    pub pg_wal_syncs: Option<f64>,
    pub pg_wal_syncs_per_patch: Option<f64>,
    pub pg_wal_bytes_per_patch: Option<f64>,
    pub pg_plans: Option<f64>,
    pub pg_statements: Option<f64>,
    pub pg_buffer_hits: Option<f64>,
    pub pg_buffer_reads: Option<f64>,
}

/// One row and workload over the blocks: the names summary.json promises.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CellResult {
    pub row: String,
    pub workload: String,
    pub windows: usize,
    pub throughput: Option<Throughput>,
    /// Requests per second per CPU-second of the server: 10⁶ / server µs per request.
    pub qps_per_cpu: Option<f64>,
    /// The open-loop p99 at the run's common rate (from the SLO phase), ms.
    pub p99_ms_at_fixed_rate: Option<f64>,
    pub server_us_per_request: Option<Interval>,
    pub postgres_us_per_request: Option<Interval>,
    pub change_vs_previous: Option<Change>,
    pub change_vs_baseline: Option<Change>,
    /// The server's CPU per request against the previous row's.
    pub server_us_vs_previous: Option<Change>,
    /// Throughput against the previous row's in their duets: the two loaded at once
    /// (`Duet`; absent in runs without duets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change_at_once: Option<Change>,
    /// The server's CPU per request against the previous row's, in their duets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_us_at_once: Option<Change>,
    pub counters: PerRequest,
    pub limit: Option<Limit>,
    /// Most of its windows were limited by the load generator: ≥.
    pub lower_bound: bool,
    /// The achieved GET share, lowest and highest over its windows.
    pub get_share_range: Option<(f64, f64)>,
    /// The server's peak resident memory in the closed-loop windows, MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_rss_mib: Option<Interval>,
    /// Its windows at the fixed rate (`[blocks] fixed_qps`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fixed: Option<FixedCell>,
}

/// A cell's windows at the fixed rate, over the blocks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FixedCell {
    pub offered_qps: f64,
    pub connections: u32,
    pub windows: usize,
    pub p50_ms: Option<Interval>,
    pub p99_ms: Option<Interval>,
    pub server_us_per_request: Option<Interval>,
    pub postgres_us_per_request: Option<Interval>,
    pub server_rss_mib: Option<Interval>,
    /// The server's open file descriptors at their peak: the connections it held.
    pub server_fds: Option<Interval>,
    /// Good replies over the offered rate, median over blocks.
    pub achieved_share: f64,
    /// Failed requests over all requests, median over blocks.
    pub failed_share: f64,
}

/// The row `rows[i]` is compared with: the row its `versus` names, else the rung above
/// it on `ladder` (matrix order, failed rows left out); the A/A copy, its original;
/// a row off the ladder (a reference), the row above it in `rows`. The effects and
/// the duets both pair rows by this rule.
pub fn previous_of(
    rows: &[String],
    ladder: &[String],
    versus: &std::collections::BTreeMap<String, String>,
    aa: Option<&str>,
    i: usize,
) -> Option<String> {
    let row = &rows[i];
    if let Some(v) = versus.get(row) {
        return Some(v.clone());
    }
    if let Some(k) = ladder.iter().position(|r| r == row) {
        return k.checked_sub(1).map(|k| ladder[k].clone());
    }
    if let Some(a) = aa.filter(|a| aa_name(a) == *row) {
        return Some(a.to_string());
    }
    (i > 0).then(|| rows[i - 1].clone())
}

/// A measure's median and the 95% interval of its geometric mean over blocks.
fn interval_of(v: &[f64], alpha: f64) -> Option<Interval> {
    let med = effects::median(v)?;
    Some(match effects::geometric_interval(v, alpha) {
        Some((g, lo, hi)) => Interval {
            median: med,
            geomean: g,
            ci_low: lo,
            ci_high: hi,
        },
        None => Interval {
            median: med,
            geomean: med,
            ci_low: med,
            ci_high: med,
        },
    })
}

/// The fixed-rate windows of one cell, summarised.
fn fixed_cell(ws: &[&Window], alpha: f64) -> Option<FixedCell> {
    let fs: Vec<&FixedWindow> = ws.iter().filter_map(|w| w.fixed.as_ref()).collect();
    let first = fs.first()?;
    let of = |f: &dyn Fn(&FixedWindow) -> Option<f64>| {
        let v: Vec<f64> = fs
            .iter()
            .filter_map(|w| f(w))
            .filter(|x| *x > 0.0)
            .collect();
        interval_of(&v, alpha)
    };
    let med = |f: &dyn Fn(&FixedWindow) -> f64| {
        let v: Vec<f64> = fs.iter().map(|w| f(w)).collect();
        effects::median(&v).unwrap_or(0.0)
    };
    Some(FixedCell {
        offered_qps: first.offered_qps,
        connections: first.connections,
        windows: fs.len(),
        p50_ms: of(&|w| w.p50_ms),
        p99_ms: of(&|w| w.p99_ms),
        server_us_per_request: of(&|w| w.server_us()),
        postgres_us_per_request: of(&|w| w.postgres_us()),
        server_rss_mib: of(&|w| w.server_rss_bytes.map(|b| b as f64 / 1048576.0)),
        server_fds: of(&|w| w.server_fds.map(|n| n as f64)),
        achieved_share: med(&|w| w.achieved_qps / w.offered_qps.max(1e-9)),
        failed_share: med(&|w| w.failed as f64 / (w.failed + w.good).max(1) as f64),
    })
}

/// The blocks of one run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Blocks {
    pub settings: Settings,
    pub seed: u64,
    /// The rows measured, in matrix order, the A/A copy last.
    pub rows: Vec<String>,
    /// Rows in `rows` that are references (not rungs).
    pub references: Vec<String>,
    pub workloads: Vec<String>,
    pub windows: Vec<Window>,
    /// Rungs loaded at once with the rows they are compared with (`Settings::duet_secs`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub duets: Vec<Duet>,
    pub cells: Vec<CellResult>,
    pub aa_check: Option<AaCheck>,
    /// The A/A check from the pair's duets (runs with duets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aa_check_at_once: Option<AaCheck>,
    /// The minority rate each cell ran at, from the warm-up (requests/s).
    pub splits: Vec<(String, String, design::Split)>,
    /// Each rung's hypothesis: the counter it should move.
    #[serde(default)]
    pub hypotheses: Vec<(String, Counter)>,
    /// Rows that ran in a PostgreSQL cluster of their own (their server settings).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub own_clusters: Vec<String>,
    /// Rows compared with an earlier row than the one above (`versus` in the matrix).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub versus: std::collections::BTreeMap<String, String>,
    pub elapsed_secs: f64,
    /// How the effects are adjusted for the hypervisor's steal (derived).
    #[serde(default)]
    pub steal: Option<StealAdjustment>,
    /// How the effects are adjusted for the host's speed (derived; runs with the
    /// speedometer only).
    #[serde(default)]
    pub host: Option<HostAdjustment>,
}

/// The A/A pair: one build under two names.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AaCheck {
    pub row: String,
    /// Per workload, the throughput ratio copy / original.
    pub workloads: Vec<(String, Ratio)>,
    /// Both workloads' blocks together.
    #[serde(flatten)]
    pub ratio: Ratio,
}

impl Blocks {
    /// The windows of one cell, by block.
    fn cell_windows<'a>(
        &'a self,
        row: &'a str,
        workload: &'a str,
    ) -> impl Iterator<Item = &'a Window> {
        self.windows
            .iter()
            .filter(move |w| w.row == row && w.workload == workload)
    }

    /// A window's throughput moved to no steal and the run's reference host speed
    /// (unchanged without an adjustment).
    pub fn adjusted_throughput(&self, w: &Window) -> f64 {
        self.adjusted(w, Measure::Throughput, self.host.as_ref())
            .unwrap_or(w.throughput)
    }

    /// A window's server µs per request, moved likewise.
    pub fn adjusted_server_us(&self, w: &Window) -> Option<f64> {
        self.adjusted(w, Measure::ServerUs, self.host.as_ref())
    }

    /// A window's measure moved to no steal and, with `host`, to the reference speed.
    fn adjusted(&self, w: &Window, measure: Measure, host: Option<&HostAdjustment>) -> Option<f64> {
        let value = match measure {
            Measure::Throughput => w.throughput,
            Measure::ServerUs => w.server_us()?,
        };
        Some(value * covariates::factor(self.steal.as_ref(), host, w, measure))
    }

    /// Whether rows `a` and `b` ran at different host speeds in a workload: the paired
    /// ratio of their unit times, over the blocks, has a 95% interval that excludes 1
    /// (uncorrected, so the guard errs towards not adjusting). Where they did, the row
    /// may be moving the speedometer, and their comparison is not adjusted for it.
    fn host_moved(&self, a: &str, b: &str, workload: &str) -> bool {
        let source = self.host.map_or(covariates::HostSource::Unit, |h| h.source);
        let pairs = self.pairs(a, b, workload, &|w| source.of(w));
        effects::paired_ratio(&pairs, self.settings.alpha, 1)
            .is_some_and(|r| r.ci_low > 1.0 || r.ci_high < 1.0)
    }

    /// (a, b) of a measure over the blocks where both rows have a window.
    fn pairs(
        &self,
        a: &str,
        b: &str,
        workload: &str,
        f: &dyn Fn(&Window) -> Option<f64>,
    ) -> Vec<(f64, f64)> {
        let mut out = Vec::new();
        for wa in self.cell_windows(a, workload) {
            if let Some(wb) = self.cell_windows(b, workload).find(|w| w.block == wa.block) {
                if let (Some(x), Some(y)) = (f(wa), f(wb)) {
                    out.push((x, y));
                }
            }
        }
        out
    }

    /// (a, b) of a measure over the duets of rows `a` and `b`: one pair per duet.
    fn duet_pairs(&self, a: &str, b: &str, workload: &str, measure: Measure) -> Vec<(f64, f64)> {
        let of = |s: &DuetSide| match measure {
            Measure::Throughput => Some(s.throughput).filter(|t| *t > 0.0),
            Measure::ServerUs => s.server_us(),
        };
        self.duets
            .iter()
            .filter_map(|d| d.of(a, b, workload))
            .filter_map(|(x, y)| Some((of(x)?, of(y)?)))
            .collect()
    }

    /// Row `b` against row `a` in one workload: from their windows one after the other
    /// (adjusted where the run's adjustments apply), or, `at_once`, from their duets
    /// (nothing to adjust: both sides share the moment; None without duets).
    fn change(
        &self,
        a: &str,
        b: &str,
        workload: &str,
        measure: Measure,
        m: usize,
        at_once: bool,
    ) -> Option<Change> {
        let host = self
            .host
            .as_ref()
            .filter(|h| !at_once && h.applied() && !self.host_moved(a, b, workload));
        let f = |w: &Window| self.adjusted(w, measure, host);
        let pairs = if at_once {
            self.duet_pairs(a, b, workload, measure)
        } else {
            self.pairs(a, b, workload, &f)
        };
        let ratio = effects::paired_ratio(&pairs, self.settings.alpha, m);
        Some(Change {
            verdict: effects::verdict(ratio.as_ref()),
            ratio: ratio.or_else(|| {
                let (x, y) = pairs.first()?;
                Some(Ratio {
                    ratio: y / x,
                    ci_low: y / x,
                    ci_high: y / x,
                })
            })?,
            comparisons: m,
            blocks: pairs.len(),
            host_withheld: !at_once && self.host.is_some_and(|h| h.applied()) && host.is_none(),
            at_once,
        })
    }

    /// Fills `cells` and `aa_check` from the windows. `ladder` are the rows compared
    /// with the one above (matrix order, failed rows left out); `p99` gives a cell's
    /// open-loop p99 at the common rate where the run has one.
    pub fn derive(&mut self, ladder: &[String], p99: &dyn Fn(&str, &str) -> Option<f64>) {
        let alpha = self.settings.alpha;
        // The adjustments need a run of several blocks to fit their slopes on.
        (self.steal, self.host) = (None, None);
        if self.windows.iter().map(|w| w.block).max().unwrap_or(0) >= 3 {
            (self.steal, self.host) = covariates::fit(&self.windows);
        }
        let m = ladder.len().saturating_sub(1).max(1);
        let mut cells = Vec::new();
        for workload in &self.workloads {
            for (i, row) in self.rows.iter().enumerate() {
                let ws: Vec<&Window> = self.cell_windows(row, workload).collect();
                let tp: Vec<f64> = ws.iter().map(|w| w.throughput).collect();
                let interval = |v: &[f64]| interval_of(v, alpha);
                let server: Vec<f64> = ws.iter().filter_map(|w| w.server_us()).collect();
                let postgres: Vec<f64> = ws.iter().filter_map(|w| w.postgres_us()).collect();
                let limits: Vec<Limit> = ws.iter().map(|w| w.limit).collect();
                let limit = judge::majority(&limits);
                let previous = previous_of(
                    &self.rows,
                    ladder,
                    &self.versus,
                    self.settings.aa.as_deref(),
                    i,
                );
                let server_interval = interval(&server);
                let shares: Vec<f64> = ws.iter().map(|w| w.get_share).collect();
                cells.push(CellResult {
                    row: row.clone(),
                    workload: workload.clone(),
                    windows: ws.len(),
                    throughput: interval(&tp).map(|interval| Throughput {
                        interval,
                        unit: "requests/s".into(),
                    }),
                    qps_per_cpu: server_interval.map(|s| 1e6 / s.median),
                    p99_ms_at_fixed_rate: p99(row, workload),
                    server_us_per_request: server_interval,
                    postgres_us_per_request: interval(&postgres),
                    change_vs_previous: previous
                        .as_ref()
                        .and_then(|p| self.change(p, row, workload, Measure::Throughput, m, false)),
                    change_at_once: previous
                        .as_ref()
                        .and_then(|p| self.change(p, row, workload, Measure::Throughput, m, true)),
                    server_us_at_once: previous
                        .as_ref()
                        .and_then(|p| self.change(p, row, workload, Measure::ServerUs, m, true)),
                    change_vs_baseline: ladder
                        .first()
                        .filter(|b| *b != row)
                        .and_then(|b| self.change(b, row, workload, Measure::Throughput, m, false)),
                    server_us_vs_previous: previous
                        .as_ref()
                        .and_then(|p| self.change(p, row, workload, Measure::ServerUs, m, false)),
                    counters: per_request(&ws),
                    lower_bound: limit == Some(Limit::LoadGenerator),
                    limit,
                    get_share_range: shares
                        .iter()
                        .copied()
                        .reduce(f64::min)
                        .zip(shares.iter().copied().reduce(f64::max)),
                    server_rss_mib: interval(
                        &ws.iter()
                            .filter_map(|w| w.server_rss_bytes)
                            .map(|b| b as f64 / 1048576.0)
                            .collect::<Vec<_>>(),
                    ),
                    fixed: fixed_cell(&ws, alpha),
                });
            }
        }
        self.cells = cells;
        self.aa_check = self.aa(false);
        self.aa_check_at_once = self.aa(true);
    }

    /// The A/A check: per block, the copy's log ratio to its original averaged over
    /// the workloads (the block is the unit, not the window), from their windows one
    /// after the other or, `at_once`, from their duets.
    fn aa(&self, at_once: bool) -> Option<AaCheck> {
        let alpha = self.settings.alpha;
        let a = self.settings.aa.as_ref()?;
        let copy = aa_name(a);
        let mut per = Vec::new();
        let mut by_block: std::collections::BTreeMap<u32, Vec<f64>> = Default::default();
        for workload in &self.workloads {
            let mut blocks_pairs: Vec<(u32, f64, f64)> = Vec::new();
            if at_once {
                for d in &self.duets {
                    if let Some((x, y)) = d.of(a, &copy, workload) {
                        blocks_pairs.push((d.block, x.throughput, y.throughput));
                    }
                }
            } else {
                for wa in self.cell_windows(a, workload) {
                    if let Some(wb) = self
                        .cell_windows(&copy, workload)
                        .find(|w| w.block == wa.block)
                    {
                        let (x, y) = (self.adjusted_throughput(wa), self.adjusted_throughput(wb));
                        blocks_pairs.push((wa.block, x, y));
                    }
                }
            }
            let pairs: Vec<(f64, f64)> = blocks_pairs.iter().map(|(_, x, y)| (*x, *y)).collect();
            // One block gives no interval, in a workload or over both.
            per.push((workload.clone(), effects::paired_ratio(&pairs, alpha, 1)?));
            for (block, x, y) in blocks_pairs {
                if x > 0.0 && y > 0.0 {
                    by_block.entry(block).or_default().push((y / x).ln());
                }
            }
        }
        let logs: Vec<f64> = by_block
            .values()
            .map(|v| v.iter().sum::<f64>() / v.len() as f64)
            .collect();
        let (m, lo, hi) = effects::mean_interval(&logs, alpha, 1)?;
        Some(AaCheck {
            row: a.clone(),
            workloads: per,
            ratio: Ratio {
                ratio: m.exp(),
                ci_low: lo.exp(),
                ci_high: hi.exp(),
            },
        })
    }

    /// A counter of `row` against `previous` in one workload: the medians over blocks
    /// and the mean per-block difference (this row − the previous) with its 95%
    /// interval, as (mean, low, high). A difference, not a ratio: the counters the
    /// hypotheses name often fall to 0.
    pub fn counter_change(
        &self,
        previous: &str,
        row: &str,
        workload: &str,
        c: Counter,
    ) -> Option<CounterChange> {
        let a: Vec<f64> = self
            .cell_windows(previous, workload)
            .filter_map(|w| c.of(w))
            .collect();
        let b: Vec<f64> = self
            .cell_windows(row, workload)
            .filter_map(|w| c.of(w))
            .collect();
        let mut pairs = Vec::new();
        for wa in self.cell_windows(previous, workload) {
            if let Some(wb) = self
                .cell_windows(row, workload)
                .find(|w| w.block == wa.block)
            {
                if let (Some(x), Some(y)) = (c.of(wa), c.of(wb)) {
                    pairs.push(y - x);
                }
            }
        }
        Some((
            effects::median(&a)?,
            effects::median(&b)?,
            effects::mean_interval(&pairs, self.settings.alpha, 1),
        ))
    }

    pub fn cell(&self, row: &str, workload: &str) -> Option<&CellResult> {
        self.cells
            .iter()
            .find(|c| c.row == row && c.workload == workload)
    }

    pub fn integrity_failures(&self) -> Vec<String> {
        let windows = self.windows.iter().filter_map(|w| {
            w.integrity()
                .map(|f| format!("{} / {} / {f}", w.row, w.workload))
        });
        let duets = self.duets.iter().filter_map(|d| {
            d.integrity().map(|f| {
                format!(
                    "{} with {} / {} / {f}",
                    d.sides[0].row, d.sides[1].row, d.workload
                )
            })
        });
        windows.chain(duets).collect()
    }
}

/// Medians over a cell's windows of each counter per request.
fn per_request(ws: &[&Window]) -> PerRequest {
    let med = |f: &dyn Fn(&Window) -> Option<f64>| {
        let v: Vec<f64> = ws.iter().filter_map(|w| f(w)).collect();
        effects::median(&v)
    };
    let of = |c: Counter| med(&|w| c.of(w));
    // The rest, divided the way `Counter::of` divides: PostgreSQL's counters over the
    // probe and the window, the server's over the window alone.
    let per = |x: Option<i64>, n: u64| x.filter(|_| n > 0).map(|x| x as f64 / n as f64);
    PerRequest {
        server_syscalls: of(Counter::ServerSyscalls),
        server_context_switches: of(Counter::ServerContextSwitches),
        server_run_delay_us: of(Counter::ServerRunDelay),
        pg_backends_started: of(Counter::PgBackendsStarted),
        pg_commits: med(&|w| per(w.counts.pg_commits, w.counted().0)),
        pg_commits_per_patch: of(Counter::PgCommitsPerPatch),
        pg_wal_syncs: med(&|w| per(w.counts.pg_wal_syncs, w.counted().0)),
        pg_wal_syncs_per_patch: med(&|w| per(w.counts.pg_wal_syncs, w.counted().1)),
        pg_wal_bytes_per_patch: of(Counter::PgWalBytesPerPatch),
        pg_plans: of(Counter::PgPlans),
        pg_statements: of(Counter::PgStatements),
        pg_buffer_hits: of(Counter::PgBufferHits),
        pg_buffer_reads: med(&|w| per(w.counts.pg_buffer_reads, w.counted().0)),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A run of one workload with these rows and windows, nothing derived yet.
    fn blocks_of(
        settings: Settings,
        rows: Vec<String>,
        references: Vec<String>,
        windows: Vec<Window>,
    ) -> Blocks {
        Blocks {
            settings,
            seed: 1,
            rows,
            references,
            workloads: vec!["read-heavy".into()],
            windows,
            duets: vec![],
            cells: vec![],
            aa_check: None,
            aa_check_at_once: None,
            splits: vec![],
            hypotheses: vec![],
            own_clusters: Vec::new(),
            versus: Default::default(),
            elapsed_secs: 0.0,
            steal: None,
            host: None,
        }
    }

    pub(crate) fn window(block: u32, row: &str, throughput: f64, server_ns: u64) -> Window {
        let n = (throughput * 4.0) as u64;
        Window {
            block,
            position: 0,
            row: row.into(),
            workload: "read-heavy".into(),
            secs: 4.0,
            wall_secs: 4.05,
            get_ok: n * 9 / 10,
            patch_ok: n - n * 9 / 10,
            failed: 0,
            patch_unacked: 0,
            probe: Probe::default(),
            throughput,
            get_share: 0.9,
            server_ns: Some(server_ns),
            postgres_ns: None,
            oha_ns: None,
            cpu_busy: vec![1.0, 0.8],
            cpu_steal: vec![0.0, 0.0],
            host_unit_ns: None,
            host_gap_ns: None,
            shares: Shares::default(),
            throttling: None,
            counts: Counts {
                pg_commits: Some((n - n * 9 / 10) as i64),
                ..Default::default()
            },
            applied_writes: Some((n - n * 9 / 10) as i64),
            limit: Limit::ServerCpu,
            server_rss_bytes: None,
            fixed: None,
        }
    }

    #[test]
    fn steal_is_fitted_within_cells_and_adjusted_away() {
        // Two rows, B 20% faster; each window loses exp(−4 × steal) to the hypervisor,
        // with steal different in every window.
        let mut ws = Vec::new();
        for k in 1..=6u32 {
            for (row, base) in [("A", 1000.0), ("B", 1200.0)] {
                let steal =
                    f64::from((k * 7 + row.len() as u32 * 3 + u32::from(row == "B") * 5) % 11)
                        / 100.0;
                let mut w = window(k, row, base * (-4.0 * steal).exp(), 1_000_000_000);
                w.cpu_steal = vec![steal, steal];
                ws.push(w);
            }
        }
        let a = covariates::fit(&ws).0.unwrap();
        assert!((a.throughput_slope + 4.0).abs() < 1e-9, "{a:?}");
        assert!((a.throughput_r + 1.0).abs() < 1e-9, "{a:?}");
        let mut b = blocks_of(
            Settings::default(),
            vec!["A".into(), "B".into()],
            vec![],
            ws,
        );
        b.derive(&["A".into(), "B".into()], &|_, _| None);
        assert!(b.steal.is_some());
        let c = b
            .cell("B", "read-heavy")
            .unwrap()
            .change_vs_previous
            .unwrap();
        // Adjusted, every block's ratio is exactly 1.2: a zero-width interval.
        assert!((c.ratio.ratio - 1.2).abs() < 1e-9, "{c:?}");
        assert!((c.ratio.ci_high - c.ratio.ci_low).abs() < 1e-9, "{c:?}");
    }

    #[test]
    fn cells_get_intervals_changes_and_the_aa_check() {
        let mut b = blocks_of(
            Settings {
                blocks: 4,
                aa: Some("A".into()),
                ..Default::default()
            },
            vec!["A".into(), "B".into(), aa_name("A")],
            vec![],
            vec![],
        );
        for (k, drift) in [1.0, 0.95, 1.05, 1.0].iter().enumerate() {
            let k = k as u32 + 1;
            b.windows
                .push(window(k, "A", 1000.0 * drift, 4_000_000_000));
            b.windows
                .push(window(k, "B", 1500.0 * drift, 4_000_000_000));
            b.windows.push(window(
                k,
                &aa_name("A"),
                1000.0 * drift * (1.0 + 0.001 * f64::from(k)),
                4_000_000_000,
            ));
        }
        b.derive(&["A".into(), "B".into()], &|_, _| None);
        let cell = b.cell("B", "read-heavy").unwrap();
        let change = cell.change_vs_previous.unwrap();
        // The drift is shared by both rows of a block: the ratio is exactly 1.5.
        assert!((change.ratio.ratio - 1.5).abs() < 1e-9);
        assert_eq!(change.verdict, effects::Verdict::Changed);
        assert_eq!(cell.windows, 4);
        // 4 s × 1500/s requests for 4 CPU-seconds: 666.7 µs per request.
        let us = cell.server_us_per_request.unwrap().median;
        assert!((us - 4e9 / 1000.0 / 6000.0).abs() < 1.0, "{us}");
        assert!((cell.qps_per_cpu.unwrap() - 1500.0).abs() < 1.0);
        assert_eq!(cell.counters.pg_commits_per_patch, Some(1.0));
        let aa = b.aa_check.as_ref().unwrap();
        assert!(aa.ratio.ci_low <= 1.0025 && aa.ratio.ci_high >= 1.0025);
        assert!(aa.ratio.ci_high - aa.ratio.ci_low < 0.01);
        assert!(b.integrity_failures().is_empty());
        let mut bad = window(1, "A", 1000.0, 1);
        bad.applied_writes = Some(0);
        assert!(bad.integrity().is_some());
    }

    fn side(row: &str, throughput: f64, server_ns: u64) -> DuetSide {
        let n = (throughput * 2.0) as u64;
        DuetSide {
            row: row.into(),
            get_ok: n * 9 / 10,
            patch_ok: n - n * 9 / 10,
            failed: 0,
            patch_unacked: 0,
            throughput,
            get_share: 0.9,
            server_ns: Some(server_ns),
            checked: true,
            probe: Probe::default(),
        }
    }

    #[test]
    fn duets_give_changes_at_once_beside_the_solo_ones() {
        let mut b = blocks_of(
            Settings {
                aa: Some("A".into()),
                duet_secs: Some(2.0),
                ..Settings::default()
            },
            vec!["A".into(), "B".into(), aa_name("A")],
            vec![aa_name("A")],
            vec![],
        );
        // Solo windows one after the other: B/A swings between 0.9 and 1.3.
        // At once: B is 10% faster within ±1%, whichever side starts first.
        let solo = [
            (1000.0, 900.0),
            (1000.0, 1300.0),
            (800.0, 1000.0),
            (1200.0, 1140.0),
        ];
        let at_once = [1.09, 1.11, 1.10, 1.10];
        for (k, ((a, bb), r)) in solo.iter().zip(at_once).enumerate() {
            let k = k as u32 + 1;
            b.windows.push(window(k, "A", *a, 1_000_000_000));
            b.windows.push(window(k, "B", *bb, 1_000_000_000));
            b.windows
                .push(window(k, &aa_name("A"), *a * 1.2, 1_000_000_000));
            let (x, y) = (
                side("A", 500.0, 1_000_000_000),
                side("B", 500.0 * r, 1_000_000_000),
            );
            let sides = if k.is_multiple_of(2) { [y, x] } else { [x, y] };
            let copy = side(
                &aa_name("A"),
                500.0 * (1.0 + 0.002 * f64::from(k)),
                1_000_000_000,
            );
            let aa_sides = [side("A", 500.0, 1_000_000_000), copy];
            for (position, sides) in [sides, aa_sides].into_iter().enumerate() {
                let applied = sides.iter().map(|s| s.patch_ok as i64).sum();
                b.duets.push(Duet {
                    block: k,
                    position: position as u32,
                    workload: "read-heavy".into(),
                    secs: 2.0,
                    sides,
                    applied_writes: Some(applied),
                });
            }
        }
        b.derive(&["A".into(), "B".into()], &|_, _| None);
        let cell = b.cell("B", "read-heavy").unwrap();
        // One after the other: the solo windows' ratios, wide.
        let solo = cell.change_vs_previous.unwrap();
        assert!(!solo.at_once);
        assert_eq!(solo.verdict, effects::Verdict::NotResolved);
        let change = cell.change_at_once.unwrap();
        assert!(change.at_once);
        // The geometric mean of 1.09, 1.11, 1.10, 1.10.
        let g = (1.09f64 * 1.11 * 1.10 * 1.10).powf(0.25);
        assert!((change.ratio.ratio - g).abs() < 1e-9, "{change:?}");
        assert_eq!(change.verdict, effects::Verdict::Changed);
        assert_eq!(change.blocks, 4);
        // Same CPU for 10% more requests: 1/1.1 µs per request.
        let us = cell.server_us_at_once.unwrap();
        assert!(us.at_once && (us.ratio.ratio - 1.0 / g).abs() < 1e-9);
        let aa = b.aa_check_at_once.as_ref().unwrap();
        assert!(aa.ratio.ratio > 1.004 && aa.ratio.ratio < 1.006, "{aa:?}");
        assert!(aa.ratio.ci_high < 1.01, "{aa:?}");
        // The solo A/A check reads the windows: the copy's 1.2.
        assert!((b.aa_check.as_ref().unwrap().ratio.ratio - 1.2).abs() < 1e-9);
        // The write check covers both sides' PATCHes.
        assert!(b.integrity_failures().is_empty());
        b.duets[0].applied_writes = Some(150); // 100 + 109 answered 200
        assert_eq!(b.integrity_failures().len(), 1);
        // Without duets, nothing is reported at once.
        b.duets.clear();
        b.derive(&["A".into(), "B".into()], &|_, _| None);
        assert!(b.cell("B", "read-heavy").unwrap().change_at_once.is_none());
        assert!(b.aa_check_at_once.is_none());
    }
}
