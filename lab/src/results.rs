//! The results of a run, as written to `results/<timestamp>/summary.json` and read back
//! by the renderer and by `lab verify`.
use serde::{Deserialize, Serialize};

use crate::measure::stats::{spread, Spread};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Environment {
    /// When the run finished (RFC 3339, UTC).
    pub date: String,
    /// When it started: the name of its results/<stamp>/ folder (absent before it was
    /// recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<String>,
    pub git_commit: String,
    /// Where the run ran: this machine or a cluster (serialised as `target`).
    #[serde(flatten)]
    pub host: Host,
    pub rustc: String,
    pub postgres: String,
    pub oha: String,
    pub users: i64,
    pub quick: bool,
    pub matrix_file: String,
    pub duration_secs: f64,
    pub repetitions: u32,
    pub slo_p99_ms: f64,
    pub error_budget: f64,
    pub min_achieved: f64,
    pub connections: u32,
    pub pool_size: u32,
    pub elapsed_secs: f64,
}

/// What a run ran on.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "target")]
pub enum Host {
    /// This machine: the server, PostgreSQL and oha pinned to CPU lists.
    #[serde(rename = "local")]
    Machine {
        cpu_model: String,
        cpus: usize,
        memory_gib: f64,
        kernel: String,
        pgbench: String,
        server_cpus: String,
        postgres_cpus: String,
        oha_cpus: String,
    },
    /// A Kubernetes cluster: the app and PostgreSQL on app nodes, oha on the tainted
    /// load-generator node.
    #[serde(rename = "k8s")]
    Cluster {
        /// The cluster's version (`kubectl version`).
        #[serde(default)]
        kubernetes: String,
    },
    /// Services already running, measured by URL from this machine (`lab run --url`).
    #[serde(rename = "service")]
    Service {
        /// The machine oha ran on.
        machine: String,
        /// Whether `--database-url` reached the service's database (the per-id checks).
        database_checked: bool,
    },
}

impl Host {
    /// One line naming the machine or cluster.
    pub fn describe(&self) -> String {
        match self {
            Host::Machine {
                cpu_model, cpus, ..
            } => format!("{cpus} × {cpu_model}"),
            Host::Cluster { kubernetes } => format!("Kubernetes {kubernetes}"),
            Host::Service { machine, .. } => format!("a running service, oha on {machine}"),
        }
    }

    /// The CPU lists of (server, PostgreSQL, oha), where the parties are pinned.
    pub fn pinning(&self) -> Option<[&str; 3]> {
        match self {
            Host::Machine {
                server_cpus,
                postgres_cpus,
                oha_cpus,
                ..
            } => Some([server_cpus, postgres_cpus, oha_cpus]),
            Host::Cluster { .. } | Host::Service { .. } => None,
        }
    }
}

/// One search: the best passing step of one row, workload and repetition.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SearchResult {
    pub repetition: u32,
    /// Good replies per second at the highest passing offered rate (0 when none passed).
    pub qps: f64,
    pub offered: Option<f64>,
    pub p99_ms: Option<f64>,
    pub get_share: Option<f64>,
    pub cpu_server: Option<f64>,
    pub cpu_postgres: Option<f64>,
    pub cpu_oha: Option<f64>,
    pub server_peak_rss_kib: Option<u64>,
    /// PostgreSQL's CPU (cores) averaged over the whole load-generator Job, on
    /// Kubernetes, where it cannot be read per step.
    #[serde(default)]
    pub cpu_postgres_job: Option<f64>,
    /// Average requests per coalesced batch (reads, writes) at the best step.
    #[serde(default)]
    pub avg_batch: Option<(Option<f64>, Option<f64>)>,
    /// Why the next rate up failed, in words ...
    pub limit: Option<String>,
    /// ... and as values: the first failing step's failures (empty when none failed;
    /// None in runs recorded before they were kept, whose `limit` words are read once
    /// by `SearchLimit::of_legacy_words`).
    #[serde(default)]
    pub limit_failures: Option<Vec<crate::measure::failure::StepFailure>>,
    /// CPU cores used (server, PostgreSQL, oha) at that failing step: what saturated.
    #[serde(default)]
    pub limit_cpu: Option<(Option<f64>, Option<f64>, f64)>,
    /// Each CPU's busy share (from /proc/stat) at that failing step, else at the best
    /// one: what saturated, judged from the CPUs (empty where they are not this machine's).
    #[serde(default)]
    pub cpu_busy_at_limit: Vec<f64>,
    /// The machine's speed before the search: ns per thousand iterations of a fixed
    /// loop on each CPU (`measure::calibrate`; empty where not measured).
    #[serde(default)]
    pub machine_ns_per_thousand: Vec<f64>,
    /// ... ns per random memory read on each CPU (a 32 MiB chase) ...
    #[serde(default)]
    pub machine_memory_ns_per_read: Vec<f64>,
    /// ... and the median µs of an 8 KiB write + fdatasync on the disk.
    #[serde(default)]
    pub machine_fsync_us: Option<f64>,
    pub steps: usize,
    pub integrity_failures: Vec<String>,
    pub writes_checked: u64,
    /// The cost of a request at the run's common rate, after the search.
    #[serde(default)]
    pub common: Option<CommonLoad>,
}

/// One row and workload at the run's common offered rate: what a request costs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CommonLoad {
    pub offered: f64,
    /// True when the row could not sustain the common rate and ran at half its own
    /// confirmed capacity instead.
    pub reduced: bool,
    pub secs: f64,
    pub achieved: f64,
    pub passed: bool,
    pub reasons: Vec<String>,
    pub p50_ms: Option<f64>,
    pub p90_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub p999_ms: Option<f64>,
    /// The 99.99th percentile (absent in runs before the latency chart).
    #[serde(default)]
    pub p9999_ms: Option<f64>,
    /// CPU time per request answered, in µs.
    pub server_us_per_request: Option<f64>,
    pub server_user_us_per_request: Option<f64>,
    pub server_system_us_per_request: Option<f64>,
    pub postgres_us_per_request: Option<f64>,
    pub oha_us_per_request: Option<f64>,
    /// Each CPU's busy share over the window (from /proc/stat).
    pub cpu_busy: Vec<f64>,
    /// The server's profile over a second window at the same rate (`--profile`, the
    /// first repetition only; the measured window above runs without perf attached).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<ServerProfile>,
}

/// The server's CPU profile at the common rate, and its kernel work per request.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ServerProfile {
    /// The flame graph, relative to results.md (`results/<run>/flame-….svg`).
    pub flame_graph: String,
    /// The server's CPU time the samples stand for, in ns.
    pub cpu_ns: u64,
    /// Requests answered in the profiled window.
    pub requests: u64,
    /// System calls of the server per request (None where the tracepoint is not
    /// readable).
    pub syscalls_per_request: Option<f64>,
    /// Context switches of all the server's threads per request.
    pub context_switches_per_request: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkloadResult {
    pub name: String,
    pub searches: Vec<SearchResult>,
    /// The confirmed capacity over the repetitions (derived from `searches`).
    #[serde(default)]
    pub capacity: Option<Capacity>,
    /// Medians over the repetitions of the CPU per request at the common rate, in µs.
    #[serde(default)]
    pub server_us_per_request: Option<f64>,
    #[serde(default)]
    pub postgres_us_per_request: Option<f64>,
}

/// A capacity over repetitions: good replies per second.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Capacity {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    /// One per repetition, in order.
    pub repetitions: Vec<f64>,
}

/// The version of `summary.json`'s format: 2 added `schema_version`, `capacity`,
/// `server_us_per_request`, `postgres_us_per_request` and `common` (absent: 1); 3 made
/// the pgbench reference an open-loop search (`offered`, `steps`, `common`).
/// 4 added `blocks`: saturation throughput in randomized blocks, with intervals,
/// counters, typed limits and `aa_check`.
pub const SCHEMA_VERSION: u32 = 4;

impl WorkloadResult {
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_string(),
            searches: Vec::new(),
            capacity: None,
            server_us_per_request: None,
            postgres_us_per_request: None,
        }
    }

    /// Fills the fields derived from the searches.
    pub fn derive(&mut self) {
        let qps: Vec<f64> = self.searches.iter().map(|s| s.qps).collect();
        self.capacity = spread(&qps).map(|s| Capacity {
            median: s.median,
            min: s.min,
            max: s.max,
            repetitions: qps.clone(),
        });
        let median = |f: fn(&CommonLoad) -> Option<f64>| {
            let v: Vec<f64> = self
                .searches
                .iter()
                .filter_map(|s| s.common.as_ref().and_then(f))
                .collect();
            spread(&v).map(|s| s.median)
        };
        self.server_us_per_request = median(|c| c.server_us_per_request);
        self.postgres_us_per_request = median(|c| c.postgres_us_per_request);
    }

    pub fn qps(&self) -> Option<Spread> {
        spread(&self.searches.iter().map(|s| s.qps).collect::<Vec<_>>())
    }
    pub fn p99(&self) -> Option<Spread> {
        spread(
            &self
                .searches
                .iter()
                .filter_map(|s| s.p99_ms)
                .collect::<Vec<_>>(),
        )
    }
    /// The repetition whose QPS is the median (the lower one for an even count).
    pub fn median_search(&self) -> Option<&SearchResult> {
        let mut v: Vec<&SearchResult> = self.searches.iter().collect();
        v.sort_by(|a, b| a.qps.total_cmp(&b.qps));
        v.get(v.len().saturating_sub(1) / 2).copied()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RowResult {
    pub name: String,
    pub features: Vec<String>,
    /// An external row's command (it has no features).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<String>,
    /// A `url` row's URL: a service already running, measured as it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    pub index: bool,
    pub note: Option<String>,
    /// What the row sets beyond its build (`Row::settings_words`): resources, worker
    /// threads, CPUs, environment, PostgreSQL settings.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub settings: Vec<String>,
    /// The earlier row this rung is one change from, where it is not the row above.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub versus: Option<String>,
    /// Problems that kept the row from being measured (build, start-up, wrong features,
    /// a failed contract probe).
    pub failures: Vec<String>,
    pub workloads: Vec<WorkloadResult>,
}

impl RowResult {
    /// A row not measured yet.
    pub fn new(r: &crate::matrix::Row) -> Self {
        Self {
            name: r.name.clone(),
            features: r.features.clone(),
            external: r.external.as_ref().map(|e| e.label()),
            service: r.service.as_ref().map(|s| s.url.clone()),
            index: r.index,
            note: r.note.clone(),
            settings: r.settings_words(),
            versus: r.versus.clone(),
            failures: vec![],
            workloads: vec![],
        }
    }

    /// A reference build (the memory store), not a rung of the ladder.
    pub fn is_reference(&self) -> bool {
        self.features
            .iter()
            .any(|f| crate::matrix::REFERENCE_FEATURES.contains(&f.as_str()))
    }

    /// Whether users.id was indexed, as a label: the lab's own data only (a service's
    /// database is its own).
    pub fn index_label(&self) -> &'static str {
        match (&self.service, self.index) {
            (Some(_), _) => "its own database",
            (None, true) => "index",
            (None, false) => "no index",
        }
    }

    /// What was measured: our server's features, or "external: <command>".
    pub fn build_label(&self) -> String {
        if let Some(url) = &self.service {
            return format!("service at {url}");
        }
        match &self.external {
            Some(command) => format!("external: `{command}`"),
            None if self.features.is_empty() => "(none)".into(),
            None => self.features.join(", "),
        }
    }
}

/// PostgreSQL alone (pgbench) for one workload and repetition. Since schema 3 it is
/// measured like the rows: `tps` is the confirmed open-loop capacity (good transactions
/// per second of its weakest passing step), `p99_ms` and the CPU figures are that
/// step's; before, `tps` was a closed-loop maximum.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReferenceResult {
    pub workload: String,
    pub repetition: u32,
    pub tps: f64,
    pub p99_ms: Option<f64>,
    pub clients: u32,
    pub cpu_postgres: Option<f64>,
    pub cpu_pgbench: f64,
    /// The confirmed offered rate (None: closed loop, or nothing confirmed).
    #[serde(default)]
    pub offered: Option<f64>,
    #[serde(default)]
    pub steps: usize,
    #[serde(default)]
    pub common: Option<ReferenceCommon>,
}

/// PostgreSQL alone at the run's common rate (or half its capacity, `reduced`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ReferenceCommon {
    pub offered: f64,
    pub reduced: bool,
    pub secs: f64,
    pub achieved: f64,
    pub passed: bool,
    pub p50_ms: Option<f64>,
    pub p90_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub p999_ms: Option<f64>,
    pub postgres_us_per_transaction: Option<f64>,
    pub pgbench_us_per_transaction: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    #[serde(default = "schema_v1")]
    pub schema_version: u32,
    pub environment: Environment,
    pub workloads: Vec<String>,
    pub rows: Vec<RowResult>,
    pub reference: Vec<ReferenceResult>,
    pub reference_error: Option<String>,
    pub matrix: serde_json::Value,
    /// The randomized blocks (schema 4): the headline throughput and its effects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocks: Option<crate::blocks::Blocks>,
}

fn schema_v1() -> u32 {
    1
}

impl Summary {
    /// Fills every derived field and the format version, before writing.
    pub fn derive(&mut self) {
        self.schema_version = SCHEMA_VERSION;
        for w in self.rows.iter_mut().flat_map(|r| r.workloads.iter_mut()) {
            w.derive();
        }
        self.derive_blocks();
    }

    /// The blocks' cells, effects and A/A check, from their windows (also when a
    /// committed run is rendered again: the windows are the data, the rest follows).
    pub fn derive_blocks(&mut self) {
        let Some(mut blocks) = self.blocks.take() else {
            return;
        };
        // The ladder: rows measured in the blocks, in matrix order, that are rungs.
        let ladder: Vec<String> = self
            .rows
            .iter()
            .filter(|r| r.failures.is_empty() && !r.is_reference())
            .map(|r| r.name.clone())
            .filter(|n| blocks.rows.contains(n))
            .collect();
        let rows = &self.rows;
        let p99 = |row: &str, workload: &str| {
            let w = rows
                .iter()
                .find(|r| r.name == row)?
                .workloads
                .iter()
                .find(|w| w.name == workload)?;
            let v: Vec<f64> = w
                .searches
                .iter()
                .filter_map(|s| s.common.as_ref()?.p99_ms)
                .collect();
            crate::blocks::effects::median(&v)
        };
        blocks.derive(&ladder, &p99);
        self.blocks = Some(blocks);
    }

    pub fn integrity_failures(&self) -> Vec<String> {
        let mut out = self
            .blocks
            .as_ref()
            .map_or_else(Vec::new, crate::blocks::Blocks::integrity_failures);
        for row in &self.rows {
            for w in &row.workloads {
                for s in &w.searches {
                    for f in &s.integrity_failures {
                        out.push(format!(
                            "{} / {} / repetition {}: {f}",
                            row.name, w.name, s.repetition
                        ));
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The committed runs still read: `target` and the machine's fields map onto
    /// [`Host`], and writing one back gives the same JSON shape.
    #[test]
    fn committed_summaries_read_back() {
        let results = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../results");
        let mut read = 0;
        for entry in std::fs::read_dir(&results).expect("results/") {
            let path = entry.unwrap().path().join("summary.json");
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
            };
            let s: Summary =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert!(matches!(s.environment.host, Host::Machine { .. }));
            let back = serde_json::to_value(&s.environment).unwrap();
            assert_eq!(back["target"], "local");
            assert!(back["server_cpus"].is_string());
            read += 1;
        }
        assert!(
            read > 0,
            "no committed summary.json under {}",
            results.display()
        );
    }

    #[test]
    fn a_cluster_is_described_by_its_version() {
        let h: Host = serde_json::from_value(serde_json::json!({
            "target": "k8s", "kubernetes": "v1.32.0"
        }))
        .unwrap();
        assert_eq!(h.describe(), "Kubernetes v1.32.0");
        assert_eq!(h.pinning(), None);
    }
}
