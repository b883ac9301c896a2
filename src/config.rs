//! Typed configuration, read once from the environment (Kubernetes sets it there).
//! Every value is validated here; a bad one stops the process with a message naming it.
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Largest accepted request body, in bytes; bigger ones get 413.
pub const BODY_LIMIT: usize = 4096;

/// Largest buffered request head (and read buffer) per connection, in bytes; a longer
/// head is answered 431 and the connection closed.
pub const HEAD_BUFFER_LIMIT: usize = 16 * 1024;

/// The server's settings. See the README's configuration table.
#[derive(Debug, Clone)]
pub struct Config {
    /// `DATABASE_URL` (required): a libpq-style URL or key=value string.
    pub database_url: String,
    /// `DATABASE_CA_FILE` (optional): PEM certificates the PostgreSQL server's certificate
    /// must chain to (and name the host), when TLS is used (`sslmode` in `DATABASE_URL`).
    pub database_ca_file: Option<PathBuf>,
    /// `LISTEN_ADDR` (default `0.0.0.0:8080`).
    pub listen_addr: SocketAddr,
    /// `POOL_SIZE` (default 16): connections in the pool, used by the `pool` feature.
    pub pool_size: u32,
    /// `DB_TIMEOUT_MS` (default 2000): bound on getting a connection and on each query;
    /// past it the request is answered 503.
    pub db_timeout: Duration,
    /// `HEADER_READ_TIMEOUT_MS` (default 5000): a client must send its request head within it.
    pub header_read_timeout: Duration,
    /// `BODY_READ_TIMEOUT_MS` (default 5000): a client must send a request body within
    /// it (once its head is in); past it, 408 and the connection is closed.
    pub body_read_timeout: Duration,
    /// `MAX_CONNECTIONS` (default 4096): open client connections; past it a new
    /// connection is closed at once.
    pub max_connections: u32,
    /// `MAX_CONNECTIONS_PER_PEER` (default 1024): open connections from one client
    /// address; past it that address's new connections are closed at once, so one
    /// machine cannot take every slot. Behind a proxy every client shares its address:
    /// raise it to `MAX_CONNECTIONS` there.
    pub max_connections_per_peer: u32,
    /// `WRITE_TIMEOUT_MS` (default 5000): a reply that cannot be written for this long
    /// (the client stopped reading) closes its connection.
    pub write_timeout: Duration,
    /// `PROBE_ADDR` (optional, e.g. `0.0.0.0:8081`): a second listener answering only
    /// `/healthz` and `/readyz`, with connections of its own, so the kubelet's probes
    /// are answered while clients hold every slot of `LISTEN_ADDR`.
    pub probe_addr: Option<SocketAddr>,
    /// `MAX_PENDING` (default 1024): requests in the database layer at once (running,
    /// waiting for a connection, or queued for a batch); past it, 503 at once.
    pub max_pending: u32,
    /// `SHUTDOWN_DELAY_MS` (default 0): after SIGTERM, how long `/readyz` says 503 while
    /// the server goes on accepting and serving, so that a load balancer (Kubernetes
    /// removing the endpoint) stops sending before the listener closes.
    pub shutdown_delay: Duration,
    /// `SHUTDOWN_GRACE_MS` (default 10000): how long in-flight requests may run after SIGTERM.
    pub shutdown_grace: Duration,
    /// `PIPELINE_CONNECTIONS` (default 8): connections that concurrent requests share and
    /// pipeline their queries on, used by the `pipeline` feature.
    pub pipeline_connections: u32,
    /// `COALESCE_MAX_BATCH` (default 256): most requests one batch serves (`coalesce`).
    pub coalesce_max_batch: u32,
    /// `COALESCE_READERS` (default 4): workers running batched GETs (`coalesce`).
    pub coalesce_readers: u32,
    /// `COALESCE_WRITERS` (default 4): workers running batched PATCHes, each owning the
    /// ids with `id % COALESCE_WRITERS` equal to its number (`coalesce`).
    pub coalesce_writers: u32,
    /// `WORKER_THREADS` (default: the CPUs the process may use, quota included): the
    /// work-stealing runtime's workers, or with `current-thread` the single-threaded
    /// runtimes. A pod's CPU limit is the usual reason to set it.
    pub worker_threads: Option<u32>,
}

/// A configuration value that is missing or invalid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub variable: &'static str,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.variable, self.message)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads settings through `lookup`, so tests need not touch the process environment.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let database_url = match lookup("DATABASE_URL") {
            Some(url) if !url.trim().is_empty() => url,
            _ => {
                return Err(err(
                    "DATABASE_URL",
                    "is required, e.g. postgres://user:password@127.0.0.1:5432/db",
                ))
            }
        };
        if let Err(e) = database_url.parse::<tokio_postgres::Config>() {
            return Err(err(
                "DATABASE_URL",
                format!("is not a valid PostgreSQL URL: {e}"),
            ));
        }
        let listen_addr = match lookup("LISTEN_ADDR") {
            None => SocketAddr::from(([0, 0, 0, 0], 8080)),
            Some(raw) => raw.trim().parse().map_err(|_| {
                err(
                    "LISTEN_ADDR",
                    format!("{raw:?} is not an address like 0.0.0.0:8080"),
                )
            })?,
        };
        let probe_addr = match lookup("PROBE_ADDR") {
            None => None,
            Some(raw) if raw.trim().is_empty() => None,
            Some(raw) => Some(raw.trim().parse().map_err(|_| {
                err(
                    "PROBE_ADDR",
                    format!("{raw:?} is not an address like 0.0.0.0:8081"),
                )
            })?),
        };
        if probe_addr.is_some() && probe_addr == Some(listen_addr) {
            return Err(err("PROBE_ADDR", "must differ from LISTEN_ADDR"));
        }
        let database_ca_file = match lookup("DATABASE_CA_FILE") {
            Some(path) if !path.trim().is_empty() => Some(PathBuf::from(path)),
            _ => None,
        };
        Ok(Self {
            database_url,
            database_ca_file,
            listen_addr,
            pool_size: number(&lookup, "POOL_SIZE", 16, 1, 10_000)?,
            db_timeout: millis(&lookup, "DB_TIMEOUT_MS", 2_000, 60_000)?,
            header_read_timeout: millis(&lookup, "HEADER_READ_TIMEOUT_MS", 5_000, 600_000)?,
            body_read_timeout: millis(&lookup, "BODY_READ_TIMEOUT_MS", 5_000, 600_000)?,
            max_connections: number(&lookup, "MAX_CONNECTIONS", 4_096, 1, 1_000_000)?,
            max_connections_per_peer: number(
                &lookup,
                "MAX_CONNECTIONS_PER_PEER",
                1_024,
                1,
                1_000_000,
            )?,
            write_timeout: millis(&lookup, "WRITE_TIMEOUT_MS", 5_000, 600_000)?,
            probe_addr,
            max_pending: number(&lookup, "MAX_PENDING", 1_024, 1, 1_000_000)?,
            shutdown_delay: millis(&lookup, "SHUTDOWN_DELAY_MS", 0, 600_000)?,
            shutdown_grace: millis(&lookup, "SHUTDOWN_GRACE_MS", 10_000, 600_000)?,
            pipeline_connections: number(&lookup, "PIPELINE_CONNECTIONS", 8, 1, 1_000)?,
            coalesce_max_batch: number(&lookup, "COALESCE_MAX_BATCH", 256, 1, 10_000)?,
            coalesce_readers: number(&lookup, "COALESCE_READERS", 4, 1, 256)?,
            coalesce_writers: number(&lookup, "COALESCE_WRITERS", 4, 1, 256)?,
            worker_threads: match lookup("WORKER_THREADS") {
                None => None,
                Some(_) => Some(number(&lookup, "WORKER_THREADS", 1, 1, 1_024)?),
            },
        })
    }
}

fn err(variable: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        variable,
        message: message.into(),
    }
}

fn number(
    lookup: &impl Fn(&str) -> Option<String>,
    variable: &'static str,
    default: u32,
    min: u32,
    max: u32,
) -> Result<u32, ConfigError> {
    let Some(raw) = lookup(variable) else {
        return Ok(default);
    };
    match raw.trim().parse::<u32>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(err(
            variable,
            format!("{raw:?} is not a whole number from {min} to {max}"),
        )),
    }
}

fn millis(
    lookup: &impl Fn(&str) -> Option<String>,
    variable: &'static str,
    default: u32,
    max: u32,
) -> Result<Duration, ConfigError> {
    number(lookup, variable, default, 1, max).map(|ms| Duration::from_millis(u64::from(ms)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn parse(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|k| map.get(k).cloned())
    }

    const URL: (&str, &str) = ("DATABASE_URL", "postgres://u:p@127.0.0.1:5432/db");

    #[test]
    fn every_variable_read_is_in_the_shared_list() {
        let read = std::cell::RefCell::new(Vec::new());
        let _ = Config::from_lookup(|name| {
            read.borrow_mut().push(name.to_string());
            (name == "DATABASE_URL").then(|| URL.1.to_string())
        });
        let mut read = read.into_inner();
        read.sort();
        read.dedup();
        let mut listed: Vec<String> = crate::env_names::VARIABLES
            .iter()
            .map(|s| s.to_string())
            .collect();
        listed.sort();
        assert_eq!(read, listed);
    }

    #[test]
    fn defaults_apply_when_only_the_url_is_set() {
        let c = parse(&[URL]).expect("valid");
        assert_eq!(c.listen_addr.to_string(), "0.0.0.0:8080");
        assert_eq!(c.pool_size, 16);
        assert!(c.db_timeout <= Duration::from_secs(5));
        assert_eq!(c.header_read_timeout, Duration::from_secs(5));
    }

    #[test]
    fn missing_url_is_an_error_naming_it() {
        let e = parse(&[]).unwrap_err();
        assert_eq!(e.variable, "DATABASE_URL");
        assert_eq!(
            parse(&[("DATABASE_URL", "  ")]).unwrap_err().variable,
            "DATABASE_URL"
        );
    }

    #[test]
    fn malformed_url_is_rejected() {
        let e = parse(&[("DATABASE_URL", "postgres://u@h:notaport/db")]).unwrap_err();
        assert_eq!(e.variable, "DATABASE_URL");
    }

    #[test]
    fn bad_values_name_their_variable() {
        for (var, value) in [
            ("LISTEN_ADDR", "localhost"),
            ("POOL_SIZE", "0"),
            ("POOL_SIZE", "many"),
            ("DB_TIMEOUT_MS", "-1"),
            ("DB_TIMEOUT_MS", "999999999"),
            ("HEADER_READ_TIMEOUT_MS", ""),
            ("SHUTDOWN_GRACE_MS", "1.5"),
            ("PROBE_ADDR", "8081"),
            ("PROBE_ADDR", "0.0.0.0:8080"),
            ("MAX_CONNECTIONS_PER_PEER", "0"),
            ("WRITE_TIMEOUT_MS", "0"),
        ] {
            let e = parse(&[URL, (var, value)]).unwrap_err();
            assert_eq!(e.variable, var, "{var}={value}");
            assert!(e.to_string().starts_with(var));
        }
    }

    #[test]
    fn explicit_values_are_used() {
        let c = parse(&[
            URL,
            ("LISTEN_ADDR", "127.0.0.1:9000"),
            ("POOL_SIZE", "4"),
            ("DB_TIMEOUT_MS", "250"),
        ])
        .expect("valid");
        assert_eq!(c.listen_addr.port(), 9000);
        assert_eq!(c.pool_size, 4);
        assert_eq!(c.db_timeout, Duration::from_millis(250));
    }
}
