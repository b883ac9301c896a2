//! The server under test on the local target: built once per row with exactly the
//! row's features, started pinned to its CPUs, checked, and stopped with SIGTERM.
use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::http;
use crate::matrix::Row;

/// Builds the release server with exactly `row.features` and keeps a copy per row.
pub fn build(root: &Path, row: &Row, bin_dir: &Path) -> Result<PathBuf> {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root).args([
        "build",
        "--release",
        "--locked",
        "--quiet",
        "-p",
        "perflab",
        "--bin",
        "perflab",
    ]);
    if !row.features.is_empty() {
        cmd.arg("--features").arg(row.features.join(","));
    }
    let status = cmd.status().context("running cargo build")?;
    if !status.success() {
        bail!("cargo build for row {:?} failed", row.name);
    }
    std::fs::create_dir_all(bin_dir)?;
    let dest = bin_dir.join(format!("perflab-{}", row.slug()));
    std::fs::copy(root.join("target/release/perflab"), &dest)
        .with_context(|| format!("copying the binary to {}", dest.display()))?;
    Ok(dest)
}

pub struct Server {
    child: Option<Child>,
    pub remote: Remote,
    pub pid: u32,
    log: PathBuf,
}

/// The server's own endpoints, wherever it runs.
pub struct Remote {
    pub addr: SocketAddr,
}

impl Remote {
    /// Whether `/readyz` answers 200 (the database answers through the server).
    pub fn ready(&self) -> bool {
        http::get(self.addr, "/readyz", Duration::from_secs(2)).is_ok_and(|r| r.status == 200)
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

    /// The server's own (CPU ticks, peak RSS in KiB) from `/stats`.
    pub fn stats(&self) -> Result<(Option<u64>, Option<u64>)> {
        let r = http::get(self.addr, "/stats", Duration::from_secs(5))?;
        if r.status != 200 {
            bail!("/stats answered {}", r.status);
        }
        let v: serde_json::Value = serde_json::from_str(&r.body).context("/stats is not JSON")?;
        Ok((v["cpu_ticks"].as_u64(), v["peak_rss_kib"].as_u64()))
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

impl Server {
    pub fn start(
        binary: &Path,
        cpus: &str,
        addr: SocketAddr,
        database_url: &str,
        pool_size: u32,
        log: &Path,
    ) -> Result<Self> {
        let out = File::create(log)?;
        let child = Command::new("taskset")
            .arg("-c")
            .arg(cpus)
            .arg(binary)
            .env("DATABASE_URL", database_url)
            .env("LISTEN_ADDR", addr.to_string())
            .env("POOL_SIZE", pool_size.to_string())
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let pid = child.id(); // taskset execs the server: same pid
        Ok(Self {
            child: Some(child),
            remote: Remote { addr },
            pid,
            log: log.to_path_buf(),
        })
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(10)..].join("\n")
    }

    /// Waits until `/readyz` says 200 (the database answers through the server).
    pub fn wait_ready(&mut self, within: Duration) -> Result<()> {
        let start = Instant::now();
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    bail!(
                        "the server exited ({status}) before it was ready:\n{}",
                        self.log_tail()
                    );
                }
            }
            if self.remote.ready() {
                return Ok(());
            }
            if start.elapsed() > within {
                bail!(
                    "the server was not ready within {within:?}:\n{}",
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGTERM, then wait for a clean exit (code 0) within `grace`.
    pub fn stop(&mut self, grace: Duration) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status();
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait()? {
                if status.success() {
                    return Ok(());
                }
                bail!(
                    "the server exited with {status} after SIGTERM:\n{}",
                    self.log_tail()
                );
            }
            if start.elapsed() > grace {
                let _ = child.kill();
                let _ = child.wait();
                bail!("the server did not stop within {grace:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// What the harness reads from the server's `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Scrape {
    /// (GET 200, PATCH 200) on `/users/{id}`.
    pub served: (u64, u64),
    /// (batches, requests batched) for reads and for writes, with `coalesce`.
    pub read_batches: (u64, u64),
    pub write_batches: (u64, u64),
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
    }
}
