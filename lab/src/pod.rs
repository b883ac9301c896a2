//! A row's pod: the CPU and memory it is given (requests and limits, or none), the
//! server's worker threads and environment. One typed value that both targets read:
//! locally it becomes the server's control groups (CPU quota and weight, memory
//! limit), on Kubernetes the Deployment's `resources` and `env`.
use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

/// The server's environment variable names, from the server's own list.
#[path = "../../src/env_names.rs"]
mod server_env;

/// Variables the lab sets itself for every row (a row cannot override them).
pub const SET_BY_LAB: &[&str] = &[
    "DATABASE_URL",
    "DATABASE_CA_FILE",
    "LISTEN_ADDR",
    "PROBE_ADDR",
];

/// The smallest memory limit a row may give the server: it maps its runtime, the
/// connection buffers and (with `pool`) its database connections at start. A limit
/// below what it needs under load shows as an OOM kill, which fails the row.
pub const MIN_MEMORY_LIMIT: u64 = 32 * MIB;

/// The smallest CPU amount: CFS cannot give a quota under 1 ms per 100 ms period.
pub const MIN_CPU: f64 = 0.01;

const MIB: u64 = 1024 * 1024;

/// The CFS period a CPU limit is enforced in, µs (Kubernetes' default).
pub const CFS_PERIOD_US: u64 = 100_000;

/// A pod's CPU and memory requests and limits (CPUs; bytes). All `None`: BestEffort.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub struct Resources {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_request: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_limit: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_request: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_limit: Option<u64>,
}

/// Kubernetes' quality-of-service class, which follows from the resources.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Qos {
    BestEffort,
    Burstable,
    Guaranteed,
}

impl Resources {
    /// What every row gets unless it says otherwise (`k8s/components/guaranteed`): one
    /// whole CPU and 256 MiB, requests equal to limits.
    pub const DEFAULT: Resources = Resources {
        cpu_request: Some(1.0),
        cpu_limit: Some(1.0),
        memory_request: Some(256 * MIB),
        memory_limit: Some(256 * MIB),
    };

    pub fn qos(&self) -> Qos {
        let all = [
            self.cpu_request.is_some(),
            self.cpu_limit.is_some(),
            self.memory_request.is_some(),
            self.memory_limit.is_some(),
        ];
        if all.iter().all(|s| !s) {
            Qos::BestEffort
        } else if all.iter().all(|s| *s)
            && self.cpu_request == self.cpu_limit
            && self.memory_request == self.memory_limit
        {
            Qos::Guaranteed
        } else {
            Qos::Burstable
        }
    }

    /// The CPU weight the kubelet gives the container: 1024 per requested CPU, 2 with
    /// no request (cgroup v1 `cpu.shares`).
    pub fn cpu_shares(&self) -> u64 {
        self.cpu_request
            .map_or(2, |c| ((c * 1024.0).round() as u64).max(2))
    }

    /// The CFS quota per [`CFS_PERIOD_US`], µs, where there is a CPU limit.
    pub fn cpu_quota_us(&self) -> Option<u64> {
        self.cpu_limit
            .map(|c| ((c * CFS_PERIOD_US as f64).round() as u64).max(1000))
    }

    /// `requests` and `limits` as a Kubernetes container's `resources` (JSON).
    pub fn k8s(&self) -> serde_json::Value {
        let part = |cpu: Option<f64>, mem: Option<u64>| {
            let mut m = serde_json::Map::new();
            if let Some(c) = cpu {
                m.insert("cpu".into(), cpu_quantity(c).into());
            }
            if let Some(b) = mem {
                m.insert("memory".into(), memory_quantity(b).into());
            }
            m
        };
        let mut r = serde_json::Map::new();
        let requests = part(self.cpu_request, self.memory_request);
        let limits = part(self.cpu_limit, self.memory_limit);
        if !requests.is_empty() {
            r.insert("requests".into(), requests.into());
        }
        if !limits.is_empty() {
            r.insert("limits".into(), limits.into());
        }
        r.into()
    }

    /// In words, for the table's Notes and the run's record.
    pub fn label(&self) -> String {
        let mut s = format!("{:?}", self.qos());
        let mut parts = Vec::new();
        if let Some(c) = self.cpu_request {
            parts.push(format!("CPU request {}", cpu_quantity(c)));
        }
        if let Some(c) = self.cpu_limit {
            parts.push(format!("CPU limit {}", cpu_quantity(c)));
        }
        if let Some(b) = self.memory_request {
            parts.push(format!("memory request {}", memory_quantity(b)));
        }
        if let Some(b) = self.memory_limit {
            parts.push(format!("memory limit {}", memory_quantity(b)));
        }
        if !parts.is_empty() {
            let _ = write!(s, " ({})", parts.join(", "));
        }
        s
    }

    /// Parses a row's `resources`: `"best-effort"`, or a table with `cpu_request`,
    /// `cpu_limit` (CPUs: a number or "500m"), `memory_request`, `memory_limit`
    /// (bytes, or "256Mi", "1Gi", "512M"). A limit without a request requests the
    /// limit, as Kubernetes does. `machine_bytes` bounds the memory.
    pub fn parse(value: &toml::Value, machine_bytes: u64) -> Result<Self, String> {
        let table = match value {
            toml::Value::String(s) if s == "best-effort" => return Ok(Self::default()),
            toml::Value::Table(t) => t,
            _ => {
                return Err(
                    "`resources` must be \"best-effort\" or a table of cpu_request, cpu_limit, memory_request, memory_limit"
                        .into(),
                )
            }
        };
        let mut r = Self::default();
        for (key, v) in table {
            match key.as_str() {
                "cpu_request" => r.cpu_request = Some(cpu(key, v)?),
                "cpu_limit" => r.cpu_limit = Some(cpu(key, v)?),
                "memory_request" => r.memory_request = Some(memory(key, v)?),
                "memory_limit" => r.memory_limit = Some(memory(key, v)?),
                other => {
                    return Err(format!(
                        "`resources.{other}` is not known (cpu_request, cpu_limit, memory_request, memory_limit)"
                    ))
                }
            }
        }
        if table.is_empty() {
            return Err("`resources = {}` sets nothing: write \"best-effort\" for no requests or limits, or leave `resources` out for the default".into());
        }
        r.cpu_request = r.cpu_request.or(r.cpu_limit);
        r.memory_request = r.memory_request.or(r.memory_limit);
        let above = [
            (
                "cpu",
                r.cpu_request
                    .zip(r.cpu_limit)
                    .filter(|(q, l)| q > l)
                    .map(|(q, l)| (cpu_quantity(q), cpu_quantity(l))),
            ),
            (
                "memory",
                r.memory_request
                    .zip(r.memory_limit)
                    .filter(|(q, l)| q > l)
                    .map(|(q, l)| (memory_quantity(q), memory_quantity(l))),
            ),
        ];
        if let Some((what, Some((q, l)))) = above.into_iter().find(|(_, v)| v.is_some()) {
            return Err(format!(
                "`resources.{what}_request` ({q}) is above `{what}_limit` ({l})"
            ));
        }
        if let Some(l) = r.memory_limit {
            if l < MIN_MEMORY_LIMIT {
                return Err(format!(
                    "`resources.memory_limit` ({}) is below {}: the server cannot start in it",
                    memory_quantity(l),
                    memory_quantity(MIN_MEMORY_LIMIT)
                ));
            }
        }
        for (key, b) in [
            ("memory_request", r.memory_request),
            ("memory_limit", r.memory_limit),
        ] {
            if b.is_some_and(|b| machine_bytes > 0 && b > machine_bytes) {
                return Err(format!(
                    "`resources.{key}` is more than this machine's memory ({})",
                    memory_quantity(machine_bytes)
                ));
            }
        }
        Ok(r)
    }
}

/// A CPU amount: a number of CPUs or a Kubernetes quantity in millicores ("250m").
fn cpu(key: &str, v: &toml::Value) -> Result<f64, String> {
    let x = match v {
        toml::Value::Integer(i) => *i as f64,
        toml::Value::Float(f) => *f,
        toml::Value::String(s) => match s.strip_suffix('m') {
            Some(milli) => milli.parse::<f64>().map(|m| m / 1000.0).map_err(|_| {
                format!("`resources.{key}` = {s:?} is not a CPU amount like 0.5 or \"500m\"")
            })?,
            None => s.parse::<f64>().map_err(|_| {
                format!("`resources.{key}` = {s:?} is not a CPU amount like 0.5 or \"500m\"")
            })?,
        },
        _ => {
            return Err(format!(
                "`resources.{key}` must be a number of CPUs or \"500m\""
            ))
        }
    };
    if !x.is_finite() || x < MIN_CPU {
        return Err(format!(
            "`resources.{key}` must be at least {MIN_CPU} CPU, got {x}"
        ));
    }
    Ok(x)
}

/// A memory amount for the key `label` (outside `resources`).
pub fn memory_amount(label: &str, v: &toml::Value) -> Result<u64, String> {
    memory(label, v)
        .map_err(|_| format!("`{label}` must be bytes or an amount like \"512Mi\" or \"1Gi\""))
}

/// A memory amount: bytes, or with a suffix Ki Mi Gi (powers of 1024) or K M G.
fn memory(key: &str, v: &toml::Value) -> Result<u64, String> {
    let bad = || format!("`resources.{key}` must be bytes or an amount like \"256Mi\" or \"1Gi\"");
    match v {
        toml::Value::Integer(i) if *i > 0 => Ok(*i as u64),
        toml::Value::Integer(_) => Err(bad()),
        toml::Value::String(s) => {
            let units: [(&str, u64); 6] = [
                ("Ki", 1024),
                ("Mi", MIB),
                ("Gi", 1024 * MIB),
                ("K", 1000),
                ("M", 1_000_000),
                ("G", 1_000_000_000),
            ];
            let (digits, unit) = units
                .iter()
                .find_map(|(u, f)| s.strip_suffix(u).map(|d| (d, *f)))
                .unwrap_or((s.as_str(), 1));
            match digits.parse::<u64>() {
                Ok(n) if n > 0 => n.checked_mul(unit).ok_or_else(bad),
                _ => Err(bad()),
            }
        }
        _ => Err(bad()),
    }
}

/// "1", "1.5", "500m".
pub fn cpu_quantity(c: f64) -> String {
    if (c - c.round()).abs() < 1e-9 {
        format!("{}", c.round() as u64)
    } else {
        format!("{}m", (c * 1000.0).round() as u64)
    }
}

/// "256Mi", "1Gi", or bytes.
pub fn memory_quantity(b: u64) -> String {
    for (u, f) in [("Gi", 1024 * MIB), ("Mi", MIB), ("Ki", 1024)] {
        if b.is_multiple_of(f) {
            return format!("{}{u}", b / f);
        }
    }
    b.to_string()
}

/// Checks a row's `env` for our server: names the server reads, none the lab sets
/// itself, `WORKER_THREADS` through `workers`. Values are the server's to judge (the
/// lab runs the built server with `--check-config` before starting anything).
pub fn check_env(env: &BTreeMap<String, String>) -> Result<(), String> {
    for name in env.keys() {
        if name == "WORKER_THREADS" {
            return Err("set WORKER_THREADS with the row's `workers`".into());
        }
        if SET_BY_LAB.contains(&name.as_str()) {
            return Err(format!("{name} is set by the lab for every row"));
        }
        if !server_env::VARIABLES.contains(&name.as_str()) {
            let mut known: Vec<&str> = server_env::VARIABLES
                .iter()
                .copied()
                .filter(|v| !SET_BY_LAB.contains(v) && *v != "WORKER_THREADS")
                .collect();
            known.sort_unstable();
            return Err(format!(
                "the server reads no variable {name:?} (it reads {})",
                known.join(", ")
            ));
        }
    }
    Ok(())
}

/// The server's environment for a row: the row's `env`, and `WORKER_THREADS` from
/// `workers`.
pub fn server_env(
    env: &BTreeMap<String, String>,
    workers: Option<u32>,
) -> BTreeMap<String, String> {
    let mut out = env.clone();
    if let Some(w) = workers {
        out.insert("WORKER_THREADS".into(), w.to_string());
    }
    out
}

/// Throttling of a CPU group so far (`cpu.stat`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Throttling {
    /// Quota periods that elapsed with the group runnable.
    pub periods: u64,
    /// Of those, periods in which the group used its quota and was stopped.
    pub throttled: u64,
    /// Time its threads spent stopped, ns.
    pub throttled_ns: u64,
}

impl Throttling {
    /// `later` minus `self`.
    pub fn until(&self, later: &Throttling) -> Throttling {
        Throttling {
            periods: later.periods.saturating_sub(self.periods),
            throttled: later.throttled.saturating_sub(self.throttled),
            throttled_ns: later.throttled_ns.saturating_sub(self.throttled_ns),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Resources, String> {
        let v: toml::Value = toml::from_str::<toml::Table>(&format!("r = {text}"))
            .unwrap()
            .remove("r")
            .unwrap();
        Resources::parse(&v, 24 * 1024 * MIB)
    }

    #[test]
    fn resources_parse_into_their_qos_class() {
        assert_eq!(parse("\"best-effort\"").unwrap().qos(), Qos::BestEffort);
        let r = parse("{ cpu_request = \"500m\" }").unwrap();
        assert_eq!(
            (r.qos(), r.cpu_request, r.cpu_limit),
            (Qos::Burstable, Some(0.5), None)
        );
        assert_eq!(r.cpu_shares(), 512);
        assert_eq!(r.cpu_quota_us(), None);
        let r = parse("{ cpu_limit = 0.5, memory_limit = \"128Mi\" }").unwrap();
        assert_eq!(r.qos(), Qos::Guaranteed, "a limit alone requests the limit");
        assert_eq!(r.cpu_quota_us(), Some(50_000));
        assert_eq!(r.memory_request, Some(128 * MIB));
        assert_eq!(Resources::DEFAULT.qos(), Qos::Guaranteed);
        assert_eq!(Resources::default().cpu_shares(), 2);
        assert_eq!(
            r.k8s(),
            serde_json::json!({"requests": {"cpu": "500m", "memory": "128Mi"},
                               "limits": {"cpu": "500m", "memory": "128Mi"}})
        );
        assert_eq!(Resources::default().k8s(), serde_json::json!({}));
        assert_eq!(
            parse("{ cpu_limit = 2 }").unwrap().label(),
            "Burstable (CPU request 2, CPU limit 2)"
        );
    }

    #[test]
    fn bad_resources_are_refused_naming_the_key() {
        for (text, says) in [
            ("{ cpu_limit = -1 }", "cpu_limit"),
            ("{ cpu_limit = 0 }", "at least"),
            ("{ cpu_limit = \"lots\" }", "CPU amount"),
            ("{ cpu_request = 2, cpu_limit = 1 }", "above"),
            ("{ memory_limit = \"8Mi\" }", "cannot start"),
            ("{ memory_limit = \"1Ti\" }", "memory_limit"),
            ("{ cpus = 1 }", "resources.cpus"),
            ("{}", "sets nothing"),
            ("\"guaranteed\"", "best-effort"),
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.contains(says), "{text}: {e}");
        }
    }

    #[test]
    fn env_names_are_the_servers() {
        let env = |k: &str| BTreeMap::from([(k.to_string(), "4".to_string())]);
        assert!(check_env(&env("POOL_SIZE")).is_ok());
        assert!(check_env(&env("POOL_SIZ"))
            .unwrap_err()
            .contains("POOL_SIZ"));
        assert!(check_env(&env("LISTEN_ADDR"))
            .unwrap_err()
            .contains("set by the lab"));
        assert!(check_env(&env("WORKER_THREADS"))
            .unwrap_err()
            .contains("workers"));
        assert_eq!(
            server_env(&env("POOL_SIZE"), Some(3))["WORKER_THREADS"],
            "3"
        );
    }
}
