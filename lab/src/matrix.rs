//! `matrix.toml`: the rows to compare, the workloads and the load settings. Parsed and
//! validated in full before any work starts; every error names its line.
use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use toml::Spanned;

/// Re-runs a candidate capacity must pass in a row, unless `[load]` says otherwise.
pub const DEFAULT_CONFIRMATIONS: u32 = 2;

/// Features the server crate knows (the umbrella `full` is refused: rows list features
/// explicitly, so `/version` can be compared with them). A test checks this against the
/// server's Cargo.toml.
pub const KNOWN_FEATURES: &[&str] = &[
    "pool",
    "prepared",
    "mimalloc",
    "simd-json",
    "metrics",
    "pipeline",
    "coalesce",
    "current-thread",
    "memory-store",
];

/// Features that make a reference build, not an optimisation (not in the server's
/// `full`): with `memory-store` the server answers from memory, so PostgreSQL holds no
/// writes to check.
pub const REFERENCE_FEATURES: &[&str] = &["memory-store"];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMatrix {
    load: RawLoad,
    #[serde(default)]
    local: RawLocal,
    #[serde(default)]
    postgres: BTreeMap<String, toml::Value>,
    #[serde(default)]
    blocks: Option<RawBlocks>,
    #[serde(default)]
    scale: Option<RawScale>,
    workload: Vec<Spanned<RawWorkload>>,
    row: Vec<Spanned<RawRow>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLoad {
    users: Spanned<i64>,
    warmup_secs: Spanned<f64>,
    duration_secs: Spanned<f64>,
    repetitions: Spanned<u32>,
    slo_p99_ms: Spanned<f64>,
    error_budget: Spanned<f64>,
    min_achieved: Spanned<f64>,
    connections: Spanned<u32>,
    start_qps: Spanned<f64>,
    max_qps: Spanned<f64>,
    precision: Spanned<f64>,
    max_steps: Spanned<u32>,
    pgbench_clients: Spanned<u32>,
    #[serde(default)]
    confirmations: Option<Spanned<u32>>,
    #[serde(default)]
    common_qps: Option<Spanned<f64>>,
    #[serde(default)]
    common_secs: Option<Spanned<f64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBlocks {
    blocks: Spanned<u32>,
    #[serde(default)]
    window_secs: Option<Spanned<f64>>,
    #[serde(default)]
    connections: Option<Spanned<u32>>,
    #[serde(default)]
    aa: Option<Spanned<String>>,
    #[serde(default)]
    fixed_qps: Option<Spanned<f64>>,
    #[serde(default)]
    fixed_secs: Option<Spanned<f64>>,
    #[serde(default)]
    order: Option<Spanned<String>>,
    #[serde(default)]
    duet_secs: Option<Spanned<f64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScale {
    axis: Spanned<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLocal {
    server_cpus: Option<Spanned<String>>,
    postgres_cpus: Option<Spanned<String>>,
    oha_cpus: Option<Spanned<String>>,
    pool_size: Option<Spanned<u32>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWorkload {
    name: String,
    get_percent: Spanned<u32>,
    patch_percent: Spanned<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRow {
    name: Spanned<String>,
    #[serde(default)]
    features: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    command: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    env: Option<Spanned<BTreeMap<String, String>>>,
    #[serde(default)]
    image: Option<Spanned<String>>,
    #[serde(default)]
    ready_path: Option<Spanned<String>>,
    /// A service that is already running (`http://host:port`): measured, not started.
    #[serde(default)]
    url: Option<Spanned<String>>,
    #[serde(default)]
    index: Option<Spanned<bool>>,
    #[serde(default)]
    note: Option<String>,
    #[serde(default)]
    postgres: BTreeMap<String, toml::Value>,
    /// The counter this rung's hypothesis says it moves (measured in the blocks).
    #[serde(default)]
    moves: Option<crate::blocks::Counter>,
    /// The pod's resources (see `pod::Resources::parse`).
    #[serde(default)]
    resources: Option<Spanned<toml::Value>>,
    /// The server's tokio worker threads (`WORKER_THREADS`).
    #[serde(default)]
    workers: Option<Spanned<u32>>,
    /// The server's CPUs on the local target (a taskset list), instead of `[local]`'s.
    #[serde(default)]
    cpus: Option<Spanned<String>>,
    /// The earlier row this one changes (default: the row above).
    #[serde(default)]
    versus: Option<Spanned<String>>,
    /// Users seeded for this row (default: `[load] users`).
    #[serde(default)]
    users: Option<Spanned<i64>>,
    /// How its requests pick ids: "uniform" (default) or "zipf".
    #[serde(default)]
    ids: Option<Spanned<String>>,
    /// Connections of its windows in the blocks (default: `[blocks] connections`).
    #[serde(default)]
    connections: Option<Spanned<u32>>,
    /// The memory limit of PostgreSQL's pod (a cluster of the row's own).
    #[serde(default)]
    postgres_memory_limit: Option<Spanned<toml::Value>>,
}

/// A validated matrix.
#[derive(Debug, Clone, Serialize)]
pub struct Matrix {
    pub load: Load,
    pub local: Local,
    /// PostgreSQL settings for the whole run (ALTER SYSTEM + reload).
    pub postgres: BTreeMap<String, String>,
    pub workloads: Vec<Workload>,
    pub rows: Vec<Row>,
    /// Randomized blocks (`[blocks]`; absent: none, the SLO search alone).
    pub blocks: crate::blocks::Settings,
    /// A curve: the rows are points along one axis (`[scale]`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scale: Option<crate::scale::Axis>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Load {
    pub users: i64,
    pub warmup_secs: f64,
    pub duration_secs: f64,
    pub repetitions: u32,
    pub slo_p99_ms: f64,
    /// Largest accepted fraction of failed requests (non-2xx or transport errors).
    pub error_budget: f64,
    /// Smallest accepted ratio of good replies to offered requests.
    pub min_achieved: f64,
    /// oha connections, shared out between the GET and PATCH processes by the mix.
    pub connections: u32,
    pub start_qps: f64,
    pub max_qps: f64,
    /// The search stops once the failing rate is within this factor of the passing one.
    pub precision: f64,
    pub max_steps: u32,
    pub pgbench_clients: u32,
    /// Re-runs a search's candidate must pass in a row to count as the capacity.
    #[serde(default)]
    pub confirmations: u32,
    /// The offered rate at which every row's cost per request is measured (0: none).
    #[serde(default)]
    pub common_qps: f64,
    /// How long the common-rate window lasts.
    #[serde(default)]
    pub common_secs: f64,
    /// Whether the target measures its reference line (pgbench) after each repetition;
    /// not a matrix key: `--no-reference` turns it off for a study.
    #[serde(default = "yes")]
    pub reference: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Local {
    pub server_cpus: String,
    pub postgres_cpus: String,
    pub oha_cpus: String,
    pub pool_size: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Workload {
    pub name: String,
    pub get_percent: u32,
    pub patch_percent: u32,
}

impl Workload {
    pub fn get_share(&self) -> f64 {
        f64::from(self.get_percent) / 100.0
    }
    pub fn writes(&self) -> bool {
        self.patch_percent > 0
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Row {
    pub name: String,
    pub features: Vec<String>,
    pub index: bool,
    pub note: Option<String>,
    pub postgres: BTreeMap<String, String>,
    /// A server that is not ours (`command` instead of `features`): started as given,
    /// checked by the contract probe instead of `/version`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<External>,
    /// A service that is already running (`url` instead of `features`): the lab starts
    /// nothing, builds nothing and seeds nothing for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<Service>,
    /// The counter this rung's hypothesis says it moves (`moves`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moves: Option<crate::blocks::Counter>,
    /// The pod's resources; `None`: the default ([`crate::pod::Resources::DEFAULT`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<crate::pod::Resources>,
    /// Our server's worker threads (`WORKER_THREADS`); `None`: one per CPU it may use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers: Option<u32>,
    /// Our server's own environment (names it reads; see `pod::check_env`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// The server's CPUs on the local target, where the row gives its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<String>,
    /// The earlier row this rung is one change from (`versus`); `None`: the row above.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub versus: Option<String>,
    /// Users seeded for this row; `None`: `[load] users`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub users: Option<i64>,
    /// How its requests pick ids.
    #[serde(default, skip_serializing_if = "crate::scale::Ids::is_uniform")]
    pub ids: crate::scale::Ids,
    /// Connections of its windows in the blocks; `None`: `[blocks] connections`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connections: Option<u32>,
    /// PostgreSQL's pod memory limit, bytes: the row gets a cluster of its own in a
    /// memory group with this limit (its page cache bounded with it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres_memory_limit: Option<u64>,
}

/// A `url` row: a service already running, which speaks the API contract and whose
/// database already holds the users 1..`[load] users`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Service {
    /// `http://host:port`, without a path.
    pub url: String,
    /// Answers 200 once the service can reach its database.
    pub ready_path: String,
}

impl Service {
    /// `http://host:port` (a trailing '/' allowed): a host and a port, nothing else.
    pub fn parse(url: &str) -> std::result::Result<Self, String> {
        let authority = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("{url:?} must start with http:// (https is not measured)"))?
            .trim_end_matches('/');
        let (host, port) = authority
            .rsplit_once(':')
            .ok_or_else(|| format!("{url:?} needs a port, e.g. http://127.0.0.1:8080"))?;
        let port_ok = port.parse::<u16>().is_ok_and(|p| p > 0);
        let host_ok = !host.is_empty()
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-.[]:".contains(c));
        if !port_ok || !host_ok {
            return Err(format!(
                "{url:?} is not http://host:port (a path or credentials cannot be given)"
            ));
        }
        Ok(Service {
            url: format!("http://{authority}"),
            ready_path: "/readyz".into(),
        })
    }

    /// `host:port`.
    pub fn authority(&self) -> &str {
        self.url.trim_start_matches("http://")
    }
}

/// Placeholders an external row's `command` may use.
pub const PLACEHOLDERS: &[&str] = &["{port}", "{database_url}", "{pool_size}"];

/// An external row: any HTTP server that speaks the API contract.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct External {
    /// argv, with [`PLACEHOLDERS`]; a relative program path is taken from the
    /// repository's root.
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
    /// The image for `--target k8s` (tagged, never `latest`; without it, a peer of this
    /// repository runs the image lab builds for it): its entrypoint plays `command[0]`,
    /// and the rest of `command` become its arguments (`{port}` 8080, `{database_url}`
    /// the pod's `$(DATABASE_URL)`).
    pub image: Option<String>,
    /// Answers 200 once the server can reach the database.
    pub ready_path: String,
}

impl External {
    /// `command` with its placeholders filled in.
    pub fn argv(&self, port: u16, database_url: &str, pool_size: u32) -> Vec<String> {
        self.command
            .iter()
            .map(|a| fill(a, port, database_url, pool_size))
            .collect()
    }

    /// `env` with its placeholders filled in (`{database_url}` is best passed here: a
    /// command line is visible to every user of the machine).
    pub fn env(&self, port: u16, database_url: &str, pool_size: u32) -> BTreeMap<String, String> {
        self.env
            .iter()
            .map(|(k, v)| (k.clone(), fill(v, port, database_url, pool_size)))
            .collect()
    }

    /// The peer of this repository the command runs (`peers/<name>/...`), if any.
    pub fn peer(&self) -> Option<&str> {
        self.command[0].strip_prefix("peers/")?.split('/').next()
    }

    /// The command as a reader sees it (the table, the row's section).
    pub fn label(&self) -> String {
        self.command.join(" ")
    }
}

fn fill(text: &str, port: u16, database_url: &str, pool_size: u32) -> String {
    text.replace("{port}", &port.to_string())
        .replace("{database_url}", database_url)
        .replace("{pool_size}", &pool_size.to_string())
}

/// A file-name-safe form of a row's name: lower-case letters and digits, runs of
/// anything else one '-' ("all + metrics" → "all-metrics").
pub fn slug(name: &str) -> String {
    let mut s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    while s.contains("--") {
        s = s.replace("--", "-");
    }
    let s = s.trim_matches('-').to_string();
    if s.is_empty() {
        "row".into()
    } else {
        s
    }
}

impl Row {
    /// A file-name-safe name for the row's artifacts.
    pub fn slug(&self) -> String {
        slug(&self.name)
    }

    /// Where the server says it is ready: `/readyz`, or an external row's `ready_path`.
    pub fn ready_path(&self) -> &str {
        match (&self.external, &self.service) {
            (Some(e), _) => &e.ready_path,
            (None, Some(s)) => &s.ready_path,
            (None, None) => "/readyz",
        }
    }

    /// Whether the row's PATCHes reach PostgreSQL, where the lab checks every one of
    /// them (not so for the `memory-store` reference).
    pub fn writes_to_postgres(&self) -> bool {
        !self.has_feature("memory-store")
    }

    /// Whether the row's build has `feature` (a name from [`KNOWN_FEATURES`]).
    /// A reference line, not a rung (the HTTP-alone server: no database).
    pub fn is_reference(&self) -> bool {
        self.features
            .iter()
            .any(|f| REFERENCE_FEATURES.contains(&f.as_str()))
    }

    pub fn has_feature(&self, feature: &str) -> bool {
        debug_assert!(KNOWN_FEATURES.contains(&feature), "{feature}");
        self.features.iter().any(|f| f == feature)
    }

    /// Whether the row's server answers `/metrics` (the `metrics` feature).
    pub fn serves_metrics(&self) -> bool {
        self.has_feature("metrics")
    }

    /// What the row sets beyond its build, in words, one item each: its pod's
    /// resources, worker threads, CPUs, environment and PostgreSQL settings.
    pub fn settings_words(&self) -> Vec<String> {
        let mut v = Vec::new();
        if let Some(r) = &self.resources {
            v.push(r.label());
        }
        if let Some(w) = self.workers {
            v.push(format!(
                "{w} worker thread{}",
                if w == 1 { "" } else { "s" }
            ));
        }
        if let Some(c) = &self.cpus {
            v.push(format!("CPUs {c}"));
        }
        if let Some(u) = self.users {
            v.push(format!("{u} users"));
        }
        if !self.ids.is_uniform() {
            v.push(self.ids.label().into());
        }
        if let Some(c) = self.connections {
            v.push(format!("{c} connections"));
        }
        if let Some(b) = self.postgres_memory_limit {
            v.push(format!(
                "PostgreSQL memory limit {}",
                crate::pod::memory_quantity(b)
            ));
        }
        v.extend(self.env.iter().map(|(k, x)| format!("{k}={x}")));
        v.extend(self.postgres.iter().map(|(k, x)| format!("{k} = {x}")));
        v
    }

    pub fn features_label(&self) -> String {
        if let Some(e) = &self.external {
            format!("external: {}", e.label())
        } else if let Some(s) = &self.service {
            format!("service at {}", s.url)
        } else if self.features.is_empty() {
            "(none)".into()
        } else {
            self.features.join(", ")
        }
    }
}

impl Matrix {
    pub fn load_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        Self::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }

    /// Parses and validates; errors read `line N: ...`.
    pub fn parse(text: &str) -> Result<Self> {
        let raw: RawMatrix = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| line_of(text, s.start)).unwrap_or(0);
            anyhow::anyhow!("line {line}: {}", e.message())
        })?;
        let rows = parse_rows(text, &raw.row)?;
        let services = rows.iter().filter(|r| r.service.is_some()).count();
        if services > 0 && services < rows.len() {
            bail!(
                "line 1: `url` rows (services already running) and rows the lab starts cannot share a matrix: the lab seeds and watches its own database, not a service's; put them in two matrix files"
            );
        }
        Ok(Matrix {
            load: parse_load(
                text,
                &raw.load,
                raw.blocks.as_ref().is_some_and(|b| *b.blocks.get_ref() > 0),
            )?,
            local: parse_local(text, &raw.local)?,
            postgres: settings(&raw.postgres).map_err(|e| anyhow::anyhow!("[postgres]: {e}"))?,
            workloads: parse_workloads(text, &raw.workload)?,
            blocks: parse_blocks(text, raw.blocks.as_ref(), &rows)?,
            scale: parse_scale(text, raw.scale.as_ref(), raw.blocks.is_some())?,
            rows,
        })
        .and_then(|m| {
            crate::scale::check_blocks_only(&m)?;
            if let Some(axis) = m.scale {
                crate::scale::check(&m, axis)?;
            }
            Ok(m)
        })
    }

    /// Keeps only the named rows (in matrix order); an unknown name is an error.
    pub fn select(&mut self, only: &[String]) -> Result<()> {
        if only.is_empty() {
            return Ok(());
        }
        for name in only {
            if !self
                .rows
                .iter()
                .any(|r| &r.name == name || &r.slug() == name)
            {
                bail!(
                    "--only {name:?}: no such row (rows: {})",
                    self.rows
                        .iter()
                        .map(|r| r.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
        }
        self.rows
            .retain(|r| only.iter().any(|n| n == &r.name || n == &r.slug()));
        // An A/A pair needs its row.
        if let Some(aa) = &self.blocks.aa {
            if !self.rows.iter().any(|r| &r.name == aa) {
                self.blocks.aa = None;
            }
        }
        Ok(())
    }

    /// `lab run --url`: the matrix's load and workloads against one service that is
    /// already running, in place of its rows.
    pub fn measure_service(&mut self, url: &str) -> Result<()> {
        let service = Service::parse(url).map_err(|e| anyhow::anyhow!("--url {e}"))?;
        self.rows = vec![Row {
            name: service.authority().to_string(),
            features: Vec::new(),
            index: true,
            note: Some("a service already running, measured by URL".into()),
            postgres: BTreeMap::new(),
            external: None,
            service: Some(service),
            moves: None,
            resources: None,
            workers: None,
            env: BTreeMap::new(),
            cpus: None,
            versus: None,
            users: None,
            ids: crate::scale::Ids::Uniform,
            connections: None,
            postgres_memory_limit: None,
        }];
        self.blocks.aa = None;
        Ok(())
    }

    /// Whether the rows are services already running (`url` rows): a matrix holds
    /// either those or rows the lab starts.
    pub fn measures_services(&self) -> bool {
        self.rows.iter().any(|r| r.service.is_some())
    }

    /// A study's overrides of `[load]`: the step length, the common rate (0: none) and
    /// whether the reference line is measured. The run's record shows the values used.
    pub fn override_load(
        &mut self,
        step_secs: Option<f64>,
        common_qps: Option<f64>,
        reference: bool,
    ) -> Result<()> {
        if let Some(s) = step_secs {
            if !(s > 0.0 && s <= 600.0) {
                bail!("--step-secs must be above 0 and at most 600");
            }
            self.load.duration_secs = s;
        }
        if let Some(q) = common_qps {
            if !(q >= 0.0 && q.is_finite()) {
                bail!("--common-qps must be 0 (none) or a rate");
            }
            self.load.common_qps = q;
        }
        self.load.reference = reference;
        Ok(())
    }

    /// Short durations for a smoke run.
    pub fn quick(&mut self) {
        if self.blocks.blocks > 0 {
            self.blocks.blocks = 1;
            self.blocks.window_secs = self.blocks.window_secs.min(1.0);
            self.blocks.duet_secs = self.blocks.duet_secs.map(|d| d.min(1.0));
        }
        self.load.warmup_secs = self.load.warmup_secs.min(0.5);
        self.load.duration_secs = self.load.duration_secs.min(1.5);
        self.load.max_steps = self.load.max_steps.min(3);
        self.load.precision = self.load.precision.max(1.5);
        self.load.users = self.load.users.min(10_000);
        for r in &mut self.rows {
            r.users = r.users.map(|u| u.min(10_000));
            r.connections = r.connections.map(|c| c.min(256));
        }
        self.load.repetitions = self.load.repetitions.min(1);
        // One repetition cannot judge noise, and a smoke run does not confirm either.
        self.load.confirmations = 0;
        self.load.common_secs = self.load.common_secs.min(1.5);
    }
}

fn yes() -> bool {
    true
}

/// `[load]`: every number within its bounds.
fn parse_load(text: &str, l: &RawLoad, has_blocks: bool) -> Result<Load> {
    let at = |span: Range<usize>| line_of(text, span.start);
    positive_f(text, &l.warmup_secs, "warmup_secs", true)?;
    positive_f(text, &l.duration_secs, "duration_secs", false)?;
    positive_f(text, &l.slo_p99_ms, "slo_p99_ms", false)?;
    positive_f(text, &l.start_qps, "start_qps", false)?;
    positive_f(text, &l.max_qps, "max_qps", false)?;
    if *l.users.get_ref() < 1 {
        bail!("line {}: users must be at least 1", at(l.users.span()));
    }
    if *l.repetitions.get_ref() < u32::from(!has_blocks) {
        bail!(
            "line {}: repetitions must be at least 1 (0, the blocks alone, needs [blocks])",
            at(l.repetitions.span())
        );
    }
    if *l.connections.get_ref() < 2 {
        bail!(
            "line {}: connections must be at least 2",
            at(l.connections.span())
        );
    }
    if *l.max_steps.get_ref() < 1 {
        bail!(
            "line {}: max_steps must be at least 1",
            at(l.max_steps.span())
        );
    }
    if *l.pgbench_clients.get_ref() < 1 {
        bail!(
            "line {}: pgbench_clients must be at least 1",
            at(l.pgbench_clients.span())
        );
    }
    fraction(text, &l.error_budget, "error_budget")?;
    fraction(text, &l.min_achieved, "min_achieved")?;
    if *l.precision.get_ref() <= 1.0 || *l.precision.get_ref() > 2.0 {
        bail!(
            "line {}: precision must be above 1.0 and at most 2.0 (e.g. 1.1 = within 10%)",
            at(l.precision.span())
        );
    }
    if l.max_qps.get_ref() < l.start_qps.get_ref() {
        bail!("line {}: max_qps is below start_qps", at(l.max_qps.span()));
    }
    Ok(Load {
        users: *l.users.get_ref(),
        warmup_secs: *l.warmup_secs.get_ref(),
        duration_secs: *l.duration_secs.get_ref(),
        repetitions: *l.repetitions.get_ref(),
        slo_p99_ms: *l.slo_p99_ms.get_ref(),
        error_budget: *l.error_budget.get_ref(),
        min_achieved: *l.min_achieved.get_ref(),
        connections: *l.connections.get_ref(),
        start_qps: *l.start_qps.get_ref(),
        max_qps: *l.max_qps.get_ref(),
        precision: *l.precision.get_ref(),
        max_steps: *l.max_steps.get_ref(),
        pgbench_clients: *l.pgbench_clients.get_ref(),
        confirmations: match &l.confirmations {
            None => DEFAULT_CONFIRMATIONS,
            Some(k) if (1..=5).contains(k.get_ref()) => *k.get_ref(),
            Some(k) => bail!("line {}: confirmations must be 1 to 5", at(k.span())),
        },
        common_qps: match &l.common_qps {
            None => 0.0,
            Some(q) if *q.get_ref() >= 0.0 && q.get_ref().is_finite() => *q.get_ref(),
            Some(q) => bail!(
                "line {}: common_qps must be 0 (none) or a rate",
                at(q.span())
            ),
        },
        common_secs: match &l.common_secs {
            None => 10.0,
            Some(s) if *s.get_ref() > 0.0 && *s.get_ref() <= 600.0 => *s.get_ref(),
            Some(s) => bail!(
                "line {}: common_secs must be above 0 and at most 600",
                at(s.span())
            ),
        },
        reference: true,
    })
}

/// `[blocks]`: a count, a window length and connections within bounds, an A/A row
/// that exists.
fn parse_blocks(
    text: &str,
    raw: Option<&RawBlocks>,
    rows: &[Row],
) -> Result<crate::blocks::Settings> {
    let at = |span: Range<usize>| line_of(text, span.start);
    let mut s = crate::blocks::Settings::default();
    let Some(raw) = raw else {
        return Ok(s);
    };
    s.blocks = *raw.blocks.get_ref();
    if s.blocks > 100 {
        bail!("line {}: blocks must be 0 to 100", at(raw.blocks.span()));
    }
    if let Some(w) = &raw.window_secs {
        positive_f(text, w, "window_secs", false)?;
        if *w.get_ref() > 60.0 {
            bail!("line {}: window_secs must be at most 60", at(w.span()));
        }
        s.window_secs = *w.get_ref();
    }
    if let Some(c) = &raw.connections {
        if !(2..=1024).contains(c.get_ref()) {
            bail!("line {}: connections must be 2 to 1024", at(c.span()));
        }
        s.connections = *c.get_ref();
    }
    if let Some(aa) = &raw.aa {
        if !rows.iter().any(|r| &r.name == aa.get_ref()) {
            bail!(
                "line {}: aa = {:?} is not a row of this matrix",
                at(aa.span()),
                aa.get_ref()
            );
        }
        s.aa = Some(aa.get_ref().clone());
    }
    if let Some(q) = &raw.fixed_qps {
        positive_f(text, q, "fixed_qps", false)?;
        s.fixed_qps = Some(*q.get_ref());
    }
    if let Some(w) = &raw.fixed_secs {
        positive_f(text, w, "fixed_secs", false)?;
        if *w.get_ref() > 60.0 {
            bail!("line {}: fixed_secs must be at most 60", at(w.span()));
        }
        s.fixed_secs = *w.get_ref();
    }
    if let Some(o) = &raw.order {
        s.order = crate::blocks::design::Order::parse(o.get_ref())
            .map_err(|e| anyhow::anyhow!("line {}: order: {e}", at(o.span())))?;
    }
    if let Some(d) = &raw.duet_secs {
        positive_f(text, d, "duet_secs", true)?;
        if *d.get_ref() > 60.0 {
            bail!("line {}: duet_secs must be at most 60", at(d.span()));
        }
        s.duet_secs = Some(*d.get_ref()).filter(|d| *d > 0.0);
    }
    Ok(s)
}

/// `[scale]`: the axis the rows are points on (needs `[blocks]`, which measure them).
fn parse_scale(
    text: &str,
    raw: Option<&RawScale>,
    blocks: bool,
) -> Result<Option<crate::scale::Axis>> {
    let Some(raw) = raw else { return Ok(None) };
    let at = line_of(text, raw.axis.span().start);
    if !blocks {
        bail!("line {at}: [scale] needs [blocks]: the blocks measure its points");
    }
    crate::scale::Axis::parse(raw.axis.get_ref())
        .map(Some)
        .map_err(|e| anyhow::anyhow!("line {at}: axis: {e}"))
}

/// `[local]`: CPU lists that parse, a pool size within bounds.
fn parse_local(text: &str, raw: &RawLocal) -> Result<Local> {
    let at = |span: Range<usize>| line_of(text, span.start);
    let cpus = |v: &Option<Spanned<String>>, default: &str| -> Result<String> {
        match v {
            None => Ok(default.to_string()),
            Some(s) => {
                parse_cpu_list(s.get_ref())
                    .map_err(|e| anyhow::anyhow!("line {}: {e}", at(s.span())))?;
                Ok(s.get_ref().clone())
            }
        }
    };
    Ok(Local {
        server_cpus: cpus(&raw.server_cpus, "0")?,
        postgres_cpus: cpus(&raw.postgres_cpus, "1")?,
        oha_cpus: cpus(&raw.oha_cpus, "1")?,
        pool_size: match &raw.pool_size {
            None => 16,
            Some(p) if (1..=1000).contains(p.get_ref()) => *p.get_ref(),
            Some(p) => bail!("line {}: pool_size must be 1 to 1000", at(p.span())),
        },
    })
}

/// `[[workload]]`: named once each, shares adding up to 100.
fn parse_workloads(text: &str, raw: &[Spanned<RawWorkload>]) -> Result<Vec<Workload>> {
    let at = |span: Range<usize>| line_of(text, span.start);
    if raw.is_empty() {
        bail!("line 1: at least one [[workload]] is needed");
    }
    let mut workloads = Vec::new();
    for w in raw {
        let line = at(w.span());
        let inner = w.get_ref();
        if inner.name.trim().is_empty() {
            bail!("line {line}: workload name is empty");
        }
        let (g, p) = (*inner.get_percent.get_ref(), *inner.patch_percent.get_ref());
        if g + p != 100 {
            bail!(
                "line {}: workload {:?}: get_percent + patch_percent = {} (must be 100)",
                at(inner.get_percent.span()),
                inner.name,
                g + p
            );
        }
        if workloads.iter().any(|x: &Workload| x.name == inner.name) {
            bail!("line {line}: workload {:?} is declared twice", inner.name);
        }
        workloads.push(Workload {
            name: inner.name.clone(),
            get_percent: g,
            patch_percent: p,
        });
    }
    Ok(workloads)
}

/// `[[row]]`: named once each, known features listed once (in the server's order), a
/// distinct file name.
fn parse_rows(text: &str, raw: &[Spanned<RawRow>]) -> Result<Vec<Row>> {
    let at = |span: Range<usize>| line_of(text, span.start);
    if raw.is_empty() {
        bail!("line 1: at least one [[row]] is needed");
    }
    let mut rows: Vec<Row> = Vec::new();
    for r in raw {
        let inner = r.get_ref();
        let name = inner.name.get_ref().trim().to_string();
        if name.is_empty() {
            bail!("line {}: row name is empty", at(inner.name.span()));
        }
        if rows.iter().any(|x| x.name == name) {
            bail!(
                "line {}: row {name:?} is declared twice",
                at(inner.name.span())
            );
        }
        let kinds = [
            inner.features.as_ref().map(|f| ("features", f.span())),
            inner.command.as_ref().map(|c| ("command", c.span())),
            inner.url.as_ref().map(|u| ("url", u.span())),
        ];
        let given: Vec<_> = kinds.into_iter().flatten().collect();
        if given.len() > 1 {
            bail!(
                "line {}: row {name:?}: give one of `features` (our server), `command` (an external one) or `url` (a service already running), not both {}",
                at(given[1].1.clone()),
                given.iter().map(|(k, _)| format!("`{k}`")).collect::<Vec<_>>().join(" and ")
            );
        }
        let (mut features, mut external, mut service) = (Vec::new(), None, None);
        match (&inner.features, &inner.command, &inner.url) {
            (Some(f), _, _) => {
                for (what, given) in [
                    ("image", inner.image.as_ref().map(|e| e.span())),
                    ("ready_path", inner.ready_path.as_ref().map(|e| e.span())),
                ] {
                    if let Some(span) = given {
                        bail!(
                            "line {}: row {name:?}: `{what}` is for external rows (`command`); a row with `features` is our own server",
                            at(span)
                        );
                    }
                }
                features = parse_features(text, &name, f)?;
            }
            (None, Some(c), _) => external = Some(parse_external(text, &name, inner, c)?),
            (None, None, Some(u)) => service = Some(parse_service(text, &name, inner, u)?),
            (None, None, None) => bail!(
                "line {}: row {name:?}: give `features` (our server, e.g. []), `command` (an external server) or `url` (a service already running)",
                at(r.span())
            ),
        }
        let index = match (&inner.index, &service) {
            (Some(i), None) => *i.get_ref(),
            (None, None) => bail!(
                "line {}: row {name:?}: `index = true` or `false` is needed (whether users.id is indexed)",
                at(r.span())
            ),
            (Some(i), Some(_)) => bail!(
                "line {}: row {name:?}: `index` is for rows whose database the lab seeds; a `url` row's database is the service's own",
                at(i.span())
            ),
            (None, Some(_)) => true,
        };
        if service.is_some() && !inner.postgres.is_empty() {
            bail!(
                "line {}: row {name:?}: a `url` row cannot set `postgres`: its database is the service's own",
                at(r.span())
            );
        }
        let pod = parse_pod(text, &name, inner, !features_row(inner), service.is_some())?;
        let versus = match &inner.versus {
            None => None,
            Some(v) if rows.iter().any(|x| &x.name == v.get_ref()) => Some(v.get_ref().clone()),
            Some(v) => bail!(
                "line {}: row {name:?}: versus = {:?} is not a row above it",
                at(v.span()),
                v.get_ref()
            ),
        };
        let row = Row {
            name: name.clone(),
            features,
            external,
            service: service.clone(),
            index,
            note: inner.note.clone(),
            postgres: settings(&inner.postgres)
                .map_err(|e| anyhow::anyhow!("line {}: {e}", at(r.span())))?,
            moves: inner.moves,
            resources: pod.resources,
            workers: pod.workers,
            env: pod.env,
            cpus: pod.cpus,
            versus,
            users: match &inner.users {
                None => None,
                Some(u) if (1..=crate::scale::MAX_USERS).contains(u.get_ref()) => {
                    Some(*u.get_ref())
                }
                Some(u) => bail!(
                    "line {}: row {name:?}: `users` must be 1 to {}",
                    at(u.span()),
                    crate::scale::MAX_USERS
                ),
            },
            ids: match &inner.ids {
                None => crate::scale::Ids::Uniform,
                Some(i) => crate::scale::Ids::parse(i.get_ref()).map_err(|e| {
                    anyhow::anyhow!("line {}: row {name:?}: `ids`: {e}", at(i.span()))
                })?,
            },
            postgres_memory_limit: match &inner.postgres_memory_limit {
                None => None,
                Some(v) => {
                    let b = crate::pod::memory_amount("postgres_memory_limit", v.get_ref())
                        .map_err(|e| anyhow::anyhow!("line {}: row {name:?}: {e}", at(v.span())))?;
                    if b < crate::scale::MIN_POSTGRES_MEMORY {
                        bail!(
                            "line {}: row {name:?}: `postgres_memory_limit` must be at least {} (the cluster's 256 MB of shared_buffers live in it)",
                            at(v.span()),
                            crate::pod::memory_quantity(crate::scale::MIN_POSTGRES_MEMORY)
                        );
                    }
                    Some(b)
                }
            },
            connections: match &inner.connections {
                None => None,
                Some(c) if (2..=crate::scale::MAX_CONNECTIONS).contains(c.get_ref()) => {
                    Some(*c.get_ref())
                }
                Some(c) => bail!(
                    "line {}: row {name:?}: `connections` must be 2 to {}",
                    at(c.span()),
                    crate::scale::MAX_CONNECTIONS
                ),
            },
        };
        if service.is_some()
            && (row.users.is_some() || !row.ids.is_uniform() || row.postgres_memory_limit.is_some())
        {
            bail!(
                "line {}: row {name:?}: `users`, `ids` and `postgres_memory_limit` are for rows whose database the lab seeds",
                at(r.span())
            );
        }
        if rows.iter().any(|x| x.slug() == row.slug()) {
            bail!(
                "line {}: row {:?} has the same file name as another row",
                at(r.span()),
                row.name
            );
        }
        rows.push(row);
    }
    Ok(rows)
}

fn features_row(inner: &RawRow) -> bool {
    inner.features.is_some()
}

/// What a row sets of its pod.
struct Pod {
    resources: Option<crate::pod::Resources>,
    workers: Option<u32>,
    env: BTreeMap<String, String>,
    cpus: Option<String>,
}

/// A row's `resources`, `workers`, `cpus` and (our server's) `env`: a `url` row sets
/// none (it is already running), an external row no `workers` (ours only), and its
/// `env` is its own (see [`parse_external`]).
fn parse_pod(text: &str, name: &str, inner: &RawRow, external: bool, service: bool) -> Result<Pod> {
    let at = |span: Range<usize>| line_of(text, span.start);
    if service {
        for (what, given) in [
            ("resources", inner.resources.as_ref().map(|e| e.span())),
            ("workers", inner.workers.as_ref().map(|e| e.span())),
            ("cpus", inner.cpus.as_ref().map(|e| e.span())),
        ] {
            if let Some(span) = given {
                bail!(
                    "line {}: row {name:?}: `{what}` is for rows the lab starts; a `url` row is already running",
                    at(span)
                );
            }
        }
    }
    if let (true, Some(w)) = (external, &inner.workers) {
        bail!(
            "line {}: row {name:?}: `workers` sets our server's WORKER_THREADS; an external row sets its own in `env` or `command`",
            at(w.span())
        );
    }
    let resources = match &inner.resources {
        None => None,
        Some(v) => Some(
            crate::pod::Resources::parse(v.get_ref(), 0)
                .map_err(|e| anyhow::anyhow!("line {}: row {name:?}: {e}", at(v.span())))?,
        ),
    };
    let workers = match &inner.workers {
        None => None,
        Some(w) if (1..=1024).contains(w.get_ref()) => Some(*w.get_ref()),
        Some(w) => bail!(
            "line {}: row {name:?}: `workers` must be 1 to 1024",
            at(w.span())
        ),
    };
    let cpus = match &inner.cpus {
        None => None,
        Some(c) => {
            parse_cpu_list(c.get_ref())
                .map_err(|e| anyhow::anyhow!("line {}: row {name:?}: `cpus`: {e}", at(c.span())))?;
            Some(c.get_ref().clone())
        }
    };
    let env = match (&inner.env, external || service) {
        (Some(e), false) => {
            crate::pod::check_env(e.get_ref()).map_err(|err| {
                anyhow::anyhow!("line {}: row {name:?}: `env`: {err}", at(e.span()))
            })?;
            e.get_ref().clone()
        }
        _ => BTreeMap::new(),
    };
    Ok(Pod {
        resources,
        workers,
        env,
        cpus,
    })
}

/// A Rust row's `features`: known ones, each once, in the server's order.
fn parse_features(text: &str, name: &str, raw: &Spanned<Vec<String>>) -> Result<Vec<String>> {
    let line = line_of(text, raw.span().start);
    let mut features: Vec<String> = Vec::new();
    for f in raw.get_ref() {
        if f == "full" {
            bail!(
                "line {line}: row {name:?}: list the features instead of the umbrella `full` ({})",
                KNOWN_FEATURES.join(", ")
            );
        }
        if !KNOWN_FEATURES.contains(&f.as_str()) {
            bail!(
                "line {line}: row {name:?}: unknown feature {f:?} (known: {})",
                KNOWN_FEATURES.join(", ")
            );
        }
        if features.contains(f) {
            bail!("line {line}: row {name:?}: feature {f:?} listed twice");
        }
        features.push(f.clone());
    }
    // The server reports features in its own fixed order; use the same.
    features.sort_by_key(|f| KNOWN_FEATURES.iter().position(|k| k == f));
    Ok(features)
}

/// The first placeholder in `text` that is not one of [`PLACEHOLDERS`], or an unclosed
/// '{'.
fn unknown_placeholder(text: &str) -> std::result::Result<(), String> {
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}').map(|c| open + c + 1) else {
            return Err(format!("an unclosed '{{' in {text:?}"));
        };
        let token = &rest[open..close];
        if !PLACEHOLDERS.contains(&token) {
            return Err(format!(
                "unknown placeholder {token} (known: {})",
                PLACEHOLDERS.join(", ")
            ));
        }
        rest = &rest[close..];
    }
    Ok(())
}

/// An external row: a non-empty argv whose placeholders are known and which gets its
/// port, `env` names a shell could export, a `ready_path` that is a path.
fn parse_external(
    text: &str,
    name: &str,
    inner: &RawRow,
    command: &Spanned<Vec<String>>,
) -> Result<External> {
    let at = |span: Range<usize>| line_of(text, span.start);
    let line = at(command.span());
    let argv = command.get_ref();
    if argv.is_empty() || argv[0].trim().is_empty() {
        bail!("line {line}: row {name:?}: `command` needs a program");
    }
    for arg in argv {
        unknown_placeholder(arg)
            .map_err(|e| anyhow::anyhow!("line {line}: row {name:?}: {e} in `command`"))?;
    }
    let port_given = argv.iter().any(|a| a.contains("{port}"))
        || inner
            .env
            .as_ref()
            .is_some_and(|e| e.get_ref().values().any(|v| v.contains("{port}")));
    if !port_given {
        bail!(
            "line {line}: row {name:?}: `command` (or `env`) must pass the server its port with {{port}}"
        );
    }
    let env = match &inner.env {
        None => BTreeMap::new(),
        Some(e) => {
            for (k, v) in e.get_ref() {
                unknown_placeholder(v).map_err(|err| {
                    anyhow::anyhow!("line {}: row {name:?}: {err} in `env`", at(e.span()))
                })?;
                let ok = !k.is_empty()
                    && !k.starts_with(|c: char| c.is_ascii_digit())
                    && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                if !ok {
                    bail!(
                        "line {}: row {name:?}: {k:?} is not an environment variable name",
                        at(e.span())
                    );
                }
            }
            e.get_ref().clone()
        }
    };
    let ready_path = parse_ready_path(text, name, inner)?;
    let image = match &inner.image {
        None => None,
        Some(i) => {
            let image = i.get_ref();
            // A tag after the last '/', and not `latest`: the cluster runs what was named.
            let tag = image
                .rsplit('/')
                .next()
                .and_then(|last| last.split_once(':'));
            match tag {
                Some((repo, tag))
                    if !repo.is_empty()
                        && !tag.is_empty()
                        && tag != "latest"
                        && !image.contains(char::is_whitespace) =>
                {
                    Some(image.clone())
                }
                _ => bail!(
                    "line {}: row {name:?}: image must be a name with a tag other than `latest`, e.g. \"my-service:1.4\"",
                    at(i.span())
                ),
            }
        }
    };
    Ok(External {
        command: argv.clone(),
        env,
        image,
        ready_path,
    })
}

/// `ready_path`: a path starting with '/' (default `/readyz`).
fn parse_ready_path(text: &str, name: &str, inner: &RawRow) -> Result<String> {
    match &inner.ready_path {
        None => Ok("/readyz".to_string()),
        Some(p) if p.get_ref().starts_with('/') && !p.get_ref().contains(char::is_whitespace) => {
            Ok(p.get_ref().clone())
        }
        Some(p) => bail!(
            "line {}: row {name:?}: ready_path must be a path starting with '/'",
            line_of(text, p.span().start)
        ),
    }
}

/// A `url` row: `http://host:port`, an optional `ready_path`; nothing the lab would
/// start it with (`env`, `image`).
fn parse_service(text: &str, name: &str, inner: &RawRow, url: &Spanned<String>) -> Result<Service> {
    for (what, given) in [
        ("env", inner.env.as_ref().map(|e| e.span())),
        ("image", inner.image.as_ref().map(|e| e.span())),
    ] {
        if let Some(span) = given {
            bail!(
                "line {}: row {name:?}: `{what}` is for rows the lab starts; a `url` row is already running",
                line_of(text, span.start)
            );
        }
    }
    let mut service = Service::parse(url.get_ref()).map_err(|e| {
        anyhow::anyhow!(
            "line {}: row {name:?}: `url` {e}",
            line_of(text, url.span().start)
        )
    })?;
    service.ready_path = parse_ready_path(text, name, inner)?;
    Ok(service)
}

/// PostgreSQL settings the lab sets itself for every cluster it starts (where it
/// listens, what it preloads, where its files are): a matrix cannot change them.
const LAB_POSTGRES_SETTINGS: &[&str] = &[
    "port",
    "listen_addresses",
    "unix_socket_directories",
    "shared_preload_libraries",
    "data_directory",
    "config_file",
    "hba_file",
    "ident_file",
];

fn settings(map: &BTreeMap<String, toml::Value>) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for (k, v) in map {
        if LAB_POSTGRES_SETTINGS.contains(&k.as_str()) {
            bail!("{k} is set by the lab for every PostgreSQL it starts");
        }
        if !k
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
            || k.is_empty()
        {
            bail!("{k:?} is not a PostgreSQL setting name");
        }
        let value = match v {
            toml::Value::String(s) => s.clone(),
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => if *b { "on" } else { "off" }.to_string(),
            _ => bail!("setting {k:?} must be a string, number or boolean"),
        };
        // Quoted as a plain literal everywhere ('' for '): a backslash could escape it
        // where standard_conforming_strings is off, and starts an escape in a .conf file.
        if value.contains('\\') {
            bail!("setting {k:?}: a value with a backslash is not supported");
        }
        out.insert(k.clone(), value);
    }
    Ok(out)
}

fn positive_f(text: &str, v: &Spanned<f64>, name: &str, zero_ok: bool) -> Result<()> {
    let x = *v.get_ref();
    if !x.is_finite() || x < 0.0 || (!zero_ok && x == 0.0) {
        bail!(
            "line {}: {name} must be {}",
            line_of(text, v.span().start),
            if zero_ok {
                "zero or more"
            } else {
                "above zero"
            }
        );
    }
    Ok(())
}

fn fraction(text: &str, v: &Spanned<f64>, name: &str) -> Result<()> {
    let x = *v.get_ref();
    if !(0.0..=1.0).contains(&x) {
        bail!(
            "line {}: {name} must be a fraction from 0 to 1",
            line_of(text, v.span().start)
        );
    }
    Ok(())
}

/// Parses a taskset-style CPU list ("0", "0-1", "0,2") into CPU numbers.
pub fn parse_cpu_list(s: &str) -> Result<Vec<usize>> {
    let mut cpus = Vec::new();
    for part in s.split(',') {
        let part = part.trim();
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (a.trim(), b.trim()),
            None => (part, part),
        };
        let (a, b): (usize, usize) = match (a.parse(), b.parse()) {
            (Ok(a), Ok(b)) if a <= b => (a, b),
            _ => bail!("{s:?} is not a CPU list like \"0\", \"0-1\" or \"0,2\""),
        };
        cpus.extend(a..=b);
    }
    cpus.sort_unstable();
    cpus.dedup();
    Ok(cpus)
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_features_are_the_servers() {
        let manifest: toml::Value =
            toml::from_str(include_str!("../../Cargo.toml")).expect("the server's Cargo.toml");
        let full: Vec<&str> = manifest["features"]["full"]
            .as_array()
            .expect("a `full` feature")
            .iter()
            .filter_map(|v| v.as_str())
            .collect();
        let optimisations: Vec<&str> = KNOWN_FEATURES
            .iter()
            .copied()
            .filter(|f| !REFERENCE_FEATURES.contains(f))
            .collect();
        assert_eq!(full, optimisations);
    }

    pub const GOOD: &str = r#"
[load]
users = 1000
warmup_secs = 1
duration_secs = 2
repetitions = 3
slo_p99_ms = 50
error_budget = 0.001
min_achieved = 0.95
connections = 64
start_qps = 100
max_qps = 50000
precision = 1.1
max_steps = 8
pgbench_clients = 16

[[workload]]
name = "read-heavy"
get_percent = 90
patch_percent = 10

[[row]]
name = "Baseline"
features = []
index = false

[[row]]
name = "+pool"
features = ["prepared", "pool"]
index = true
postgres = { work_mem = "8MB", jit = false }
"#;

    fn err(text: &str) -> String {
        Matrix::parse(text).unwrap_err().to_string()
    }

    /// `text` with its rows replaced by `rows`.
    fn with_rows_of(text: &str, rows: &str) -> String {
        format!("{}{rows}", &text[..text.find("[[row]]").unwrap()])
    }

    /// GOOD with its rows replaced by `rows`.
    fn with_rows(rows: &str) -> String {
        format!("{}{rows}", &GOOD[..GOOD.find("[[row]]").unwrap()])
    }

    #[test]
    fn a_url_row_is_a_service_already_running() {
        let m = Matrix::parse(&with_rows(
            "[[row]]\nname = \"staging\"\nurl = \"http://127.0.0.1:8080/\"\nready_path = \"/health\"\n",
        ))
        .unwrap();
        let s = m.rows[0].service.as_ref().expect("service");
        assert_eq!(s.url, "http://127.0.0.1:8080");
        assert_eq!(m.rows[0].ready_path(), "/health");
        assert!(m.measures_services());
        for (row, says) in [
            ("url = \"https://x:1\"", "must start with http://"),
            ("url = \"http://x\"", "needs a port"),
            ("url = \"http://u:p@x:80/api\"", "not http://host:port"),
            ("url = \"http://x:0\"", "not http://host:port"),
            ("url = \"http://x:80\"\nfeatures = []", "give one of"),
            ("url = \"http://x:80\"\nindex = true", "`index` is for rows"),
            (
                "url = \"http://x:80\"\nenv = { A = \"b\" }",
                "`env` is for rows the lab starts",
            ),
            (
                "url = \"http://x:80\"\npostgres = { work_mem = \"8MB\" }",
                "cannot set `postgres`",
            ),
            ("features = []", "`index = true` or `false` is needed"),
        ] {
            let e = err(&with_rows(&format!("[[row]]\nname = \"s\"\n{row}\n")));
            assert!(e.contains(says), "{row}: {e}");
        }
        let mixed = with_rows(
            "[[row]]\nname = \"a\"\nurl = \"http://x:80\"\n[[row]]\nname = \"b\"\nfeatures = []\nindex = true\n",
        );
        assert!(
            err(&mixed).contains("cannot share a matrix"),
            "{}",
            err(&mixed)
        );
    }

    #[test]
    fn measure_service_replaces_the_rows_with_one() {
        let mut m = Matrix::parse(GOOD).unwrap();
        m.measure_service("http://localhost:9000").unwrap();
        assert_eq!(m.rows.len(), 1);
        assert_eq!(m.rows[0].name, "localhost:9000");
        assert!(m.measure_service("localhost:9000").is_err());
    }

    #[test]
    fn a_row_sets_its_pod_and_database() {
        let m = Matrix::parse(&with_rows(
            r#"
[[row]]
name = "limited"
features = ["pool"]
index = true
resources = { cpu_limit = "500m", memory_limit = "128Mi" }
workers = 2
cpus = "0-1"
env = { POOL_SIZE = "4", COALESCE_WRITERS = "2" }
postgres = { shared_buffers = "64MB", synchronous_commit = false }

[[row]]
name = "best effort"
features = ["pool"]
index = true
resources = "best-effort"

[[row]]
name = "default"
features = ["pool"]
index = true
"#,
        ))
        .expect("valid");
        let r = &m.rows[0];
        let res = r.resources.unwrap();
        assert_eq!((res.cpu_limit, res.cpu_request), (Some(0.5), Some(0.5)));
        assert_eq!(res.qos(), crate::pod::Qos::Guaranteed);
        assert_eq!((r.workers, r.cpus.as_deref()), (Some(2), Some("0-1")));
        assert_eq!(r.env["POOL_SIZE"], "4");
        assert_eq!(r.postgres["synchronous_commit"], "off");
        assert_eq!(
            r.settings_words(),
            [
                "Guaranteed (CPU request 500m, CPU limit 500m, memory request 128Mi, memory limit 128Mi)",
                "2 worker threads",
                "CPUs 0-1",
                "COALESCE_WRITERS=2",
                "POOL_SIZE=4",
                "shared_buffers = 64MB",
                "synchronous_commit = off"
            ]
        );
        assert_eq!(
            m.rows[1].resources.unwrap().qos(),
            crate::pod::Qos::BestEffort
        );
        assert_eq!(
            m.rows[2].resources, None,
            "a row that sets nothing inherits"
        );
        assert!(m.rows[2].settings_words().is_empty());
    }

    #[test]
    fn bad_pod_settings_name_the_row_line_and_key() {
        let row = |extra: &str| {
            with_rows(&format!(
                "\n[[row]]\nname = \"r\"\nfeatures = [\"pool\"]\nindex = true\n{extra}\n"
            ))
        };
        for (extra, says) in [
            ("env = { POOL_SIZ = \"4\" }", "POOL_SIZ"),
            ("env = { DATABASE_URL = \"x\" }", "set by the lab"),
            ("resources = { cpu_limit = -1 }", "cpu_limit"),
            ("resources = { memory_limit = \"4Mi\" }", "cannot start"),
            ("resources = { gpus = 1 }", "resources.gpus"),
            ("workers = 0", "workers"),
            ("cpus = \"x\"", "cpus"),
        ] {
            let e = err(&row(extra));
            assert!(
                e.contains(says) && e.contains("row \"r\"") && e.contains("line "),
                "{extra}: {e}"
            );
        }
        let e = err(&with_rows(
            "\n[[row]]\nname = \"x\"\ncommand = [\"p\", \"{port}\"]\nindex = true\nworkers = 2\n",
        ));
        assert!(e.contains("`workers`"), "{e}");
    }

    #[test]
    fn a_curve_parses_its_points_and_refuses_bad_ones() {
        // The three shipped curves parse, each with its axis and a point per row.
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        for (file, axis, first) in [
            ("scale-users.toml", crate::scale::Axis::Users, 1e5),
            (
                "scale-connections.toml",
                crate::scale::Axis::Connections,
                10.0,
            ),
            ("scale-cpus.toml", crate::scale::Axis::Cpus, 0.25),
        ] {
            let m = Matrix::load_file(&root.join(file)).unwrap();
            assert_eq!(m.scale, Some(axis), "{file}");
            assert_eq!(m.load.repetitions, 0, "{file}: the blocks alone");
            assert!(m.blocks.fixed_qps.is_some(), "{file}");
            assert_eq!(axis.x(&m, &m.rows[0]), Some(first), "{file}");
        }
        let blocks_only = GOOD.replace("repetitions = 3", "repetitions = 0").replace(
            "[[row]]",
            "[blocks]\nblocks = 2\nfixed_qps = 500\n\n[scale]\naxis = \"users\"\n\n[[row]]",
        );
        let curve = |rows: &str| with_rows_of(&blocks_only, rows);
        let two = "[[row]]\nname = \"a\"\nfeatures = [\"pool\"]\nindex = true\nusers = 1000\n\n[[row]]\nname = \"b\"\nfeatures = [\"pool\"]\nindex = true\nusers = 2000\nids = \"zipf\"\nconnections = 500\n";
        let m = Matrix::parse(&curve(two)).expect("a curve");
        assert_eq!(m.rows[1].ids, crate::scale::Ids::Zipf);
        assert_eq!(m.rows[1].connections, Some(500));
        assert!(m.rows[1].settings_words().contains(&"Zipf ids".to_string()));
        for (good, bad, says) in [
            ("users = 2000", "users = 0", "`users` must be"),
            ("ids = \"zipf\"", "ids = \"pareto\"", "`ids`"),
            (
                "connections = 500",
                "connections = 1",
                "`connections` must be",
            ),
            (
                "connections = 500",
                "postgres_memory_limit = \"100Mi\"",
                "at least 384Mi",
            ),
            (
                "connections = 500",
                "postgres_memory_limit = \"lots\"",
                "`postgres_memory_limit` must be bytes",
            ),
        ] {
            let e = err(&curve(&two.replace(good, bad)));
            assert!(
                e.contains(says) && e.contains("row \"b\"") && e.contains("line "),
                "{bad}: {e}"
            );
        }
        // One point is no curve; a CPU curve needs every row's limit; the SLO search
        // does not take a row's users; [scale] needs the blocks.
        let e = err(&curve(&two.replace("users = 2000", "users = 1000")));
        assert!(e.contains("two points"), "{e}");
        let e = err(&curve(two).replace("axis = \"users\"", "axis = \"cpus\""));
        assert!(e.contains("cpu_limit"), "{e}");
        let e = err(&curve(two).replace("repetitions = 0", "repetitions = 1"));
        assert!(e.contains("repetitions = 0"), "{e}");
        let e = err(&GOOD.replacen("[[row]]", "[scale]\naxis = \"users\"\n\n[[row]]", 1));
        assert!(e.contains("[scale] needs [blocks]"), "{e}");
        let e = err(&GOOD.replace("repetitions = 3", "repetitions = 0"));
        assert!(e.contains("needs [blocks]"), "{e}");
    }

    #[test]
    fn the_good_matrix_parses() {
        let m = Matrix::parse(GOOD).expect("valid");
        assert_eq!(m.rows.len(), 2);
        assert_eq!(m.rows[1].features, vec!["pool", "prepared"], "server order");
        assert_eq!(m.rows[1].postgres["jit"], "off");
        assert_eq!(m.local.server_cpus, "0");
        assert_eq!(m.workloads[0].get_share(), 0.9);
        assert_eq!(m.rows[1].slug(), "pool");
    }

    #[test]
    fn the_default_matrix_is_valid() {
        let m = Matrix::parse(include_str!("../../matrix.toml")).expect("matrix.toml");
        assert!(m.rows.len() >= 7);
        assert!(
            m.rows[0].features.is_empty() && !m.rows[0].index,
            "baseline first"
        );
        let names: Vec<_> = m
            .workloads
            .iter()
            .map(|w| (w.get_percent, w.patch_percent))
            .collect();
        assert_eq!(names, vec![(90, 10), (10, 90)]);
    }

    #[test]
    fn unknown_feature_names_its_line() {
        let bad = GOOD.replace("[\"prepared\", \"pool\"]", "[\"pool\", \"turbo\"]");
        let e = err(&bad);
        assert!(e.starts_with("line 29:"), "{e}");
        assert!(e.contains("turbo"), "{e}");
    }

    #[test]
    fn a_mix_must_sum_to_100() {
        let e = err(&GOOD.replace("patch_percent = 10", "patch_percent = 20"));
        assert!(e.starts_with("line 19:") && e.contains("110"), "{e}");
    }

    #[test]
    fn missing_and_unknown_fields_are_errors_with_lines() {
        let e = err(&GOOD.replace("index = false\n", ""));
        assert!(e.contains("index") && e.starts_with("line "), "{e}");
        let e = err(&GOOD.replace("users = 1000", "users = 1000\nuser_count = 5"));
        assert!(e.contains("user_count") && e.starts_with("line 4"), "{e}");
        let e = err(&GOOD.replace("slo_p99_ms = 50\n", ""));
        assert!(e.contains("slo_p99_ms"), "{e}");
    }

    #[test]
    fn bad_values_are_refused() {
        for (from, to, needle) in [
            ("error_budget = 0.001", "error_budget = 2", "error_budget"),
            ("duration_secs = 2", "duration_secs = 0", "duration_secs"),
            ("repetitions = 3", "repetitions = 0", "repetitions"),
            ("precision = 1.1", "precision = 1.0", "precision"),
            ("users = 1000", "users = 0", "users"),
            ("name = \"+pool\"", "name = \"Baseline\"", "twice"),
            ("[\"prepared\", \"pool\"]", "[\"full\"]", "umbrella"),
            ("[\"prepared\", \"pool\"]", "[\"pool\", \"pool\"]", "twice"),
            ("duration_secs = 2", "duration_secs = \"2s\"", "line 5"),
        ] {
            let e = err(&GOOD.replace(from, to));
            assert!(e.contains(needle), "{to}: {e}");
        }
    }

    const EXTERNAL: &str = r#"
[[row]]
name = "peer"
command = ["peers/x/run", "--port", "{port}", "--db", "{database_url}", "-n", "{pool_size}"]
env = { WORKERS = "1", DB = "{database_url}" }
image = "x:1"
index = true
"#;

    #[test]
    fn an_external_row_parses_and_fills_its_placeholders() {
        let m = Matrix::parse(&format!("{GOOD}{EXTERNAL}")).expect("valid");
        let row = &m.rows[2];
        assert!(row.features.is_empty());
        let e = row.external.as_ref().expect("external");
        assert_eq!(e.ready_path, "/readyz");
        assert_eq!(e.image.as_deref(), Some("x:1"));
        assert_eq!(e.env["WORKERS"], "1");
        assert_eq!(e.env(1, "postgres://x", 2)["DB"], "postgres://x");
        assert_eq!(
            e.argv(8080, "postgres://u@h/db", 16),
            [
                "peers/x/run",
                "--port",
                "8080",
                "--db",
                "postgres://u@h/db",
                "-n",
                "16"
            ]
        );
        assert!(row.features_label().starts_with("external: peers/x/run"));
    }

    #[test]
    fn a_bad_external_row_is_refused_with_its_line() {
        let text = format!("{GOOD}{EXTERNAL}");
        for (from, to, needle) in [
            ("command = [", "features = []\ncommand = [", "not both"),
            (
                "command = [\"peers/x/run\"",
                "commands = [\"peers/x/run\"",
                "unknown field",
            ),
            (
                "\"{pool_size}\"]",
                "\"{pool}\"]",
                "unknown placeholder {pool}",
            ),
            ("\"{pool_size}\"]", "\"{pool_size\"]", "unclosed"),
            ("DB = \"{database_url}\"", "DB = \"{url}\"", "in `env`"),
            ("\"--port\", \"{port}\", ", "", "{port}"),
            ("[\"peers/x/run\", ", "[\"\", ", "needs a program"),
            ("env = { WORKERS", "env = { \"1X\"", "environment variable"),
            ("image = \"x:1\"", "ready_path = \"readyz\"", "ready_path"),
            ("image = \"x:1\"", "image = \"x:latest\"", "tag other than"),
            (
                "image = \"x:1\"",
                "image = \"registry:5000/x\"",
                "tag other than",
            ),
        ] {
            let bad = text.replace(from, to);
            assert_ne!(bad, text, "{from}");
            let e = err(&bad);
            assert!(e.contains(needle) && e.starts_with("line "), "{to}: {e}");
        }
        let e = err(&GOOD.replace("index = false", "index = false\nimage = \"x\""));
        assert!(e.contains("for external rows"), "{e}");
        let e = err(&GOOD.replace("features = []\n", ""));
        assert!(e.contains("give `features`"), "{e}");
    }

    #[test]
    fn the_peers_matrix_is_valid() {
        let m = Matrix::parse(include_str!("../../matrix-peers.toml")).expect("matrix-peers.toml");
        let external = m.rows.iter().filter(|r| r.external.is_some()).count();
        assert_eq!((m.rows.len(), external), (4, 2));
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0").unwrap(), vec![0]);
        assert_eq!(parse_cpu_list("0-2,5").unwrap(), vec![0, 1, 2, 5]);
        assert!(parse_cpu_list("a").is_err());
        assert!(parse_cpu_list("3-1").is_err());
        let e = err(&format!("{GOOD}\n[local]\nserver_cpus = \"x\"\n"));
        assert!(e.contains("CPU list"), "{e}");
    }

    #[test]
    fn only_and_quick() {
        let mut m = Matrix::parse(GOOD).unwrap();
        assert!(m.select(&["nope".into()]).is_err());
        m.select(&["+pool".into()]).unwrap();
        assert_eq!(m.rows.len(), 1);
        m.override_load(Some(5.0), Some(0.0), false).unwrap();
        assert_eq!(
            (m.load.duration_secs, m.load.common_qps, m.load.reference),
            (5.0, 0.0, false)
        );
        assert!(m.override_load(Some(0.0), None, true).is_err());
        assert!(m.override_load(None, Some(-1.0), true).is_err());
        m.quick();
        assert_eq!(m.load.repetitions, 1);
        assert!(m.load.duration_secs <= 2.0);
    }
}
