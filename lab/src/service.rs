//! The service target (`lab run --url`, or a matrix of `url` rows): a server that is
//! already running — on a staging host, behind a port-forward, started by hand. The lab
//! builds, starts and seeds nothing: it waits for the service to be ready, runs the
//! contract probe, and searches each workload as the other targets do.
//!
//! What it can see depends on where the service is. On this machine (a loopback
//! address) the process listening on the port is found, and its CPU and memory are
//! counted; elsewhere only a server with `/stats` reports them. With `--database-url`
//! (the service's own database, read only: nothing is created, changed or vacuumed
//! there) every PATCH is checked per id; without it the writes are not checked, and the
//! report says so.
use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::experiment::{RowRun, Software, Target};
use crate::matrix::{Matrix, Row, Service};
use crate::measure::driver::{write_inputs, Driver, Probe, Tally, Ticks};
use crate::measure::oha::Oha;
use crate::measure::remote::{Remote, Scrape};
use crate::measure::{contract, procfs};
use crate::results::{Host, SearchResult};

pub struct Options {
    /// The service's own database (read only): the per-id write check.
    pub database_url: Option<String>,
    pub oha: PathBuf,
    /// How long to wait for the service to answer on its ready path.
    pub ready_within: Duration,
    /// A smoke run (`--quick`): one short block.
    pub quick: bool,
}

pub struct Services<'a> {
    o: &'a Options,
    m: &'a Matrix,
    db: Option<postgres::Client>,
    postgres_version: String,
    oha_version: String,
    /// The highest user id in the service's database, where it is reachable.
    max_id: Option<i64>,
}

impl<'a> Services<'a> {
    pub fn new(o: &'a Options, m: &'a Matrix) -> Self {
        Self {
            o,
            m,
            db: None,
            postgres_version: "not seen (no --database-url)".into(),
            oha_version: "unknown".into(),
            max_id: None,
        }
    }
}

/// `host:port` → a socket address (the first the name resolves to).
pub fn resolve(service: &Service) -> Result<SocketAddr> {
    service
        .authority()
        .to_socket_addrs()
        .with_context(|| format!("could not resolve {}", service.url))?
        .next()
        .with_context(|| format!("{} resolved to no address", service.url))
}

/// A service, once it answers on its ready path (within `within`) and keeps the
/// contract. Without a database no id is known to be missing, and the probe's 404
/// check is left out (`missing_id` None).
pub fn attach(service: &Service, within: Duration, missing_id: Option<i64>) -> Result<Remote> {
    let remote = Remote {
        addr: resolve(service)?,
    };
    remote.wait_ready(&service.ready_path, within)?;
    contract::probe(remote.addr, missing_id)
        .map_err(|e| anyhow::anyhow!("the contract probe failed: {e:#}"))?;
    Ok(remote)
}

/// The process on this machine listening on `addr`'s port, where `addr` is loopback
/// and the listening socket is visible in `/proc` (the same user, or root).
pub fn listening_pid(addr: SocketAddr) -> Option<u32> {
    if !addr.ip().is_loopback() {
        return None;
    }
    let inodes: Vec<u64> = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .flat_map(|t| listening_inodes(&t, addr.port()))
        .collect();
    if inodes.is_empty() {
        return None;
    }
    let wanted: Vec<String> = inodes.iter().map(|i| format!("socket:[{i}]")).collect();
    let mut pids: Vec<u32> = std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|fds| {
                fds.flatten().any(|fd| {
                    std::fs::read_link(fd.path())
                        .is_ok_and(|l| wanted.iter().any(|w| l.as_os_str() == w.as_str()))
                })
            })
        })
        .collect();
    // Workers forked by a parent share its socket: the parent is the smallest pid.
    pids.sort_unstable();
    pids.first().copied()
}

/// The inodes of the sockets listening (state 0A) on `port` in a `/proc/net/tcp` table.
fn listening_inodes(table: &str, port: u16) -> Vec<u64> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let local_port = f.get(1)?.rsplit(':').next()?;
            let listening = *f.get(3)? == "0A";
            (listening && u16::from_str_radix(local_port, 16).ok()? == port)
                .then(|| f.get(9)?.parse().ok())
                .flatten()
        })
        .collect()
}

/// What the lab sees of a running service: its process where it is on this machine
/// (else its own `/stats`, where it has one), its counters where `/metrics` answers,
/// and its database where `--database-url` reaches it.
struct ServiceProbe<'a> {
    remote: &'a Remote,
    pid: Option<u32>,
    metrics: bool,
    db: Option<&'a mut postgres::Client>,
    peak_rss_kib: Option<u64>,
}

impl Probe for ServiceProbe<'_> {
    fn ticks(&mut self) -> Ticks {
        if let Some(pid) = self.pid {
            let split = procfs::tree_split(pid);
            return Ticks {
                server: split.map(|s| s.user + s.system),
                server_split: split,
                ..Ticks::default()
            };
        }
        let stats = self.remote.stats().unwrap_or_default();
        self.peak_rss_kib = stats.peak_rss_kib;
        Ticks {
            server: stats.cpu_ticks,
            ..Ticks::default()
        }
    }
    fn server_peak_rss_kib(&mut self) -> Option<u64> {
        match self.pid {
            Some(pid) => procfs::peak_rss_kib(pid),
            None => self.peak_rss_kib,
        }
    }
    fn applied_writes(&mut self) -> Result<Option<i64>> {
        self.db
            .as_deref_mut()
            .map(crate::local::pg::applied_writes)
            .transpose()
    }
    fn scrape(&mut self) -> Result<Option<Scrape>> {
        if self.metrics {
            self.remote.scrape().map(Some)
        } else {
            Ok(None)
        }
    }
    fn versions(&mut self) -> Result<Option<HashMap<i64, i64>>> {
        self.db
            .as_deref_mut()
            .map(crate::local::pg::versions)
            .transpose()
    }
    fn emails(&mut self, ids: &[i64]) -> Result<Option<HashMap<i64, String>>> {
        self.db
            .as_deref_mut()
            .map(|db| crate::local::pg::emails(db, ids))
            .transpose()
    }
    fn cpu_times(&mut self) -> Vec<(u64, u64)> {
        if self.pid.is_some() {
            procfs::cpu_times()
        } else {
            Vec::new()
        }
    }
}

/// The service's database must hold the users the load asks for: ids 1..`users`.
/// Returns its highest id.
fn check_users(db: &mut postgres::Client, users: i64) -> Result<i64> {
    let have: Option<i64> = db
        .query_one("SELECT max(id)::bigint FROM users", &[])
        .context("reading users from --database-url (the service's database)")?
        .get(0);
    match have {
        Some(n) if n >= users => Ok(n),
        _ => bail!(
            "the service's database holds users up to id {} but the load asks for 1..{users} (`lab seed` makes them; --quick asks for fewer)",
            have.unwrap_or(0)
        ),
    }
}

impl Target for Services<'_> {
    fn prepare(&mut self, rows: &[Row], _raw: &Path) -> Result<Vec<Option<String>>> {
        if let Some(url) = &self.o.database_url {
            let mut db = crate::local::pg::connect(url)?;
            self.max_id = Some(check_users(&mut db, self.m.load.users)?);
            self.postgres_version = crate::local::pg::server_version(&mut db);
            self.db = Some(db);
        }
        Ok(rows
            .iter()
            .map(|r| match &r.service {
                None => Some("not a `url` row".to_string()),
                Some(s) => resolve(s).err().map(|e| format!("{e:#}")),
            })
            .collect())
    }

    fn measure(&mut self, run: &RowRun) -> Result<Vec<(String, SearchResult)>> {
        let service = run
            .row
            .service
            .as_ref()
            .context("the service target measures `url` rows only")?;
        let remote = attach(service, self.o.ready_within, self.max_id.map(|n| n + 1))?;
        let addr = remote.addr;
        let pid = listening_pid(addr);
        (run.say)(&match pid {
            Some(pid) => format!("  {} is process {pid} on this machine: its CPU and memory are counted", service.url),
            None => format!("  {} is not a process this machine shows: its CPU is what its /stats reports, if anything", service.url),
        });
        let oha = Oha {
            binary: self.o.oha.clone(),
            nice: None,
            cpus: None,
            urls_file: run.raw.join(format!("{}-urls.txt", run.row.slug())),
            bodies_file: run.raw.join("bodies.txt"),
        };
        self.oha_version = oha.version();
        write_inputs(
            &oha.urls_file,
            &oha.bodies_file,
            &format!("http://{addr}"),
            self.m.load.users,
        )?;
        let driver = Driver::new(&oha, &self.m.load, run.raw, run.say);
        let mut probe = ServiceProbe {
            remote: &remote,
            pid,
            metrics: remote.scrape().is_ok(),
            db: self.db.as_mut(),
            peak_rss_kib: None,
        };
        let searches = driver.search_row(
            &mut probe,
            run.row,
            &self.m.workloads,
            run.repetition,
            &run.hints,
            &mut Tally::default(),
        );
        let _ = std::fs::remove_file(&oha.urls_file);
        searches
    }

    /// Every service side by side in randomized blocks (`[blocks]`), as the local
    /// target does with its own servers, minus what a service does not let the lab
    /// do: pin it, give it a CPU group, settle its database.
    fn blocks(
        &mut self,
        rows: &[Row],
        raw: &Path,
        say: &dyn Fn(&str),
    ) -> Option<Result<crate::blocks::Outcome>> {
        if self.m.blocks.blocks == 0 {
            return None;
        }
        let inputs = crate::local::blocks::ServiceInputs {
            m: self.m,
            settings: &self.m.blocks,
            quick: self.o.quick,
            database_url: self.o.database_url.as_deref(),
            missing_id: self.max_id.map(|n| n + 1),
            oha: &self.o.oha,
            rows: rows.iter().collect(),
            raw,
            say,
        };
        Some(crate::local::blocks::run_services(&inputs))
    }

    fn host(&self) -> Host {
        Host::Service {
            machine: format!(
                "{} × {}",
                crate::environment::cpu_count(),
                crate::environment::cpu_model()
            ),
            database_checked: self.o.database_url.is_some(),
        }
    }

    fn software(&self) -> Software {
        Software {
            postgres: self.postgres_version.clone(),
            oha: self.oha_version.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_listening_socket_of_a_port() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0
   1: 0100007F:1F90 0100007F:D2F0 01 00000000:00000000 00:00000000 00000000     0        0 4343 1 0
   2: 00000000:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 77 1 0
";
        assert_eq!(listening_inodes(table, 8080), vec![4242]);
        assert_eq!(listening_inodes(table, 80), vec![77]);
        assert!(listening_inodes(table, 81).is_empty());
    }

    #[test]
    fn finds_this_process_listening_on_loopback() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        assert_eq!(listening_pid(addr), Some(std::process::id()));
        let far: SocketAddr = "192.0.2.1:80".parse().unwrap();
        assert_eq!(listening_pid(far), None);
    }
}
