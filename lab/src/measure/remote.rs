//! The server under test as the harness sees it over HTTP, wherever it runs: readiness,
//! the features it was built with, its own CPU and memory (`/stats`) and counters
//! (`/metrics`).
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::matrix::Row;
use crate::measure::http;

/// The server's own endpoints, wherever it runs.
pub struct Remote {
    pub addr: SocketAddr,
}

impl Remote {
    /// Whether `/readyz` answers 200 (the database answers through the server).
    pub fn ready(&self) -> bool {
        self.ready_at("/readyz")
    }

    /// Whether `path` answers 200 (an external server's readiness may live elsewhere).
    pub fn ready_at(&self, path: &str) -> bool {
        http::get(self.addr, path, Duration::from_secs(2)).is_ok_and(|r| r.status == 200)
    }

    /// Waits until `path` answers 200, polling every half second, for at most `within`.
    pub fn wait_ready(&self, path: &str, within: Duration) -> Result<()> {
        let start = std::time::Instant::now();
        while !self.ready_at(path) {
            if start.elapsed() > within {
                bail!(
                    "{} did not answer 200 on {path} within {within:?}",
                    self.addr
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        Ok(())
    }

    /// The features the running binary reports on `/version`.
    pub fn features(&self) -> Result<Vec<String>> {
        let r = http::get(self.addr, "/version", Duration::from_secs(5))?;
        if r.status != 200 {
            bail!("/version answered {}", r.status);
        }
        let v: serde_json::Value = serde_json::from_str(&r.body).context("/version is not JSON")?;
        let list = v["features"]
            .as_array()
            .context("/version has no features list")?;
        Ok(list
            .iter()
            .filter_map(|f| f.as_str().map(String::from))
            .collect())
    }

    /// The server's own CPU time and peak memory, from `/stats`.
    pub fn stats(&self) -> Result<ServerStats> {
        let r = http::get(self.addr, "/stats", Duration::from_secs(5))?;
        if r.status != 200 {
            bail!("/stats answered {}", r.status);
        }
        let v: serde_json::Value = serde_json::from_str(&r.body).context("/stats is not JSON")?;
        Ok(ServerStats {
            cpu_ticks: v["cpu_ticks"].as_u64(),
            peak_rss_kib: v["peak_rss_kib"].as_u64(),
        })
    }

    /// The server's own counters from `/metrics`.
    pub fn scrape(&self) -> Result<Scrape> {
        let r = http::get(self.addr, "/metrics", Duration::from_secs(5))?;
        if r.status != 200 {
            bail!("/metrics answered {}", r.status);
        }
        Ok(Scrape::parse(&r.body))
    }
}

/// What the server says of itself on `/stats`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ServerStats {
    /// CPU time (user + system) in clock ticks.
    pub cpu_ticks: Option<u64>,
    pub peak_rss_kib: Option<u64>,
}

/// Refuses to measure a server that was not built with exactly the row's features: the
/// same check on both targets (locally by the runner, on Kubernetes inside the Job).
pub fn check_features(remote: &Remote, row: &Row) -> Result<()> {
    let reported = remote.features()?;
    if reported != row.features {
        bail!(
            "refusing to measure: /version reports features {reported:?}, the row asks for {:?}",
            row.features
        );
    }
    Ok(())
}

/// What the harness reads from the server's `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Scrape {
    /// (GET 200, PATCH 200) on `/users/{id}`.
    pub served: (u64, u64),
    /// (batches, requests batched) for reads and for writes, with `coalesce`.
    pub read_batches: (u64, u64),
    pub write_batches: (u64, u64),
    /// Connections closed at once past `MAX_CONNECTIONS` or `MAX_CONNECTIONS_PER_PEER`.
    pub refused: u64,
}

impl Scrape {
    fn parse(text: &str) -> Self {
        let value = |series: &str| -> u64 {
            text.lines()
                .find_map(|l| l.strip_prefix(series))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .map_or(0, |v| v as u64)
        };
        let served = |method: &str| {
            value(&format!(
                r#"perflab_http_requests_total{{method="{method}",route="/users/{{id}}",status="200"}}"#
            ))
        };
        let batches = |kind: &str| {
            (
                value(&format!(r#"perflab_db_batch_size_count{{kind="{kind}"}}"#)),
                value(&format!(r#"perflab_db_batch_size_sum{{kind="{kind}"}}"#)),
            )
        };
        Self {
            served: (served("GET"), served("PATCH")),
            read_batches: batches("read"),
            write_batches: batches("write"),
            refused: value(r#"perflab_connections_refused_total{reason="peer"}"#)
                + value(r#"perflab_connections_refused_total{reason="cap"}"#),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_the_servers_counters() {
        let text = "# HELP x\nperflab_http_requests_total{method=\"GET\",route=\"/users/{id}\",status=\"200\"} 1234\n\
                    perflab_http_requests_total{method=\"PATCH\",route=\"/users/{id}\",status=\"200\"} 56\n\
                    perflab_http_requests_total{method=\"PATCH\",route=\"/users/{id}\",status=\"404\"} 7\n";
        let s = super::Scrape::parse(text);
        assert_eq!(s.served, (1234, 56));
        assert_eq!(s.read_batches, (0, 0));
        assert_eq!(super::Scrape::parse("").served, (0, 0));
        let b = super::Scrape::parse(
            "perflab_db_batch_size_count{kind=\"write\"} 10\nperflab_db_batch_size_sum{kind=\"write\"} 45\n",
        );
        assert_eq!(b.write_batches, (10, 45));
        let r = super::Scrape::parse(
            "perflab_connections_refused_total{reason=\"peer\"} 7\nperflab_connections_refused_total{reason=\"cap\"} 2\n",
        );
        assert_eq!(r.refused, 9);
    }
}
