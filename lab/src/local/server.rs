//! The server under test on the local target: built once per row with exactly the
//! row's features (or, for an external row, its command), started pinned to its CPUs,
//! checked, and stopped with SIGTERM.
use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::matrix::{External, Row};
use crate::measure::remote::Remote;

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

/// `program` under `taskset -c cpus`.
fn pinned(cpus: &str, program: &Path) -> Command {
    let mut cmd = Command::new("taskset");
    cmd.arg("-c").arg(cpus).arg(program);
    cmd
}

pub struct Server {
    child: Option<Child>,
    pub remote: Remote,
    pub pid: u32,
    log: PathBuf,
    ready_path: String,
    /// An external server: how it exits after SIGTERM is its own business (ours must
    /// exit 0). Any server may fork workers: `stop` and `drop` end its whole process
    /// tree; it stays in the run's process group, so a Ctrl-C reaches it too.
    external: bool,
}

/// Where an external row's program is: a path with a '/' is taken from the repository's
/// root, a bare name from PATH.
pub fn external_program(root: &Path, external: &External) -> Result<PathBuf> {
    let program = &external.command[0];
    if program.contains('/') {
        let path = root.join(program);
        if !path.is_file() {
            bail!("external command {program:?}: no such file");
        }
        return Ok(path);
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
        .with_context(|| format!("external command {program:?} is not on PATH"))
}

/// Where and how a server under test runs, whichever it is.
pub struct Launch<'a> {
    pub cpus: &'a str,
    pub addr: SocketAddr,
    /// The least-privileged role's URL.
    pub database_url: &'a str,
    pub pool_size: u32,
    pub log: &'a Path,
}

impl Server {
    /// Our server's binary, configured through its environment.
    pub fn start(binary: &Path, l: &Launch) -> Result<Self> {
        let mut cmd = pinned(l.cpus, binary);
        cmd.env("DATABASE_URL", l.database_url)
            .env("LISTEN_ADDR", l.addr.to_string())
            .env("POOL_SIZE", l.pool_size.to_string())
            .env("RUST_LOG", "warn");
        let what = binary.display().to_string();
        Self::spawn(cmd, &what, l, "/readyz", false)
    }

    /// An external row's command, pinned like ours, in the repository's root, with the
    /// row's `env` and its placeholders filled in.
    pub fn start_external(root: &Path, external: &External, l: &Launch) -> Result<Self> {
        let program = external_program(root, external)?;
        let port = l.addr.port();
        let argv = external.argv(port, l.database_url, l.pool_size);
        let mut cmd = pinned(l.cpus, &program);
        cmd.args(&argv[1..])
            .envs(external.env(port, l.database_url, l.pool_size))
            .current_dir(root);
        let ready = external.ready_path.as_str();
        Self::spawn(cmd, &external.label(), l, ready, true)
    }

    /// Starts `cmd` with its output in `log`; taskset execs the program, so the pid
    /// is the server's.
    fn spawn(
        mut cmd: Command,
        what: &str,
        l: &Launch,
        ready_path: &str,
        external: bool,
    ) -> Result<Self> {
        let out = File::create(l.log)?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {what}"))?;
        Ok(Self {
            pid: child.id(),
            child: Some(child),
            remote: Remote { addr: l.addr },
            log: l.log.to_path_buf(),
            ready_path: ready_path.to_string(),
            external,
        })
    }

    /// `kill -SIGNAL` to the server's processes.
    fn signal(signal: &str, pids: &[u32]) {
        if pids.is_empty() {
            return;
        }
        let _ = Command::new("kill")
            .arg(signal)
            .args(pids.iter().map(u32::to_string))
            .stderr(Stdio::null())
            .status();
    }

    /// The processes the server started, found while it still runs (ours starts none).
    fn workers(&self) -> Vec<u32> {
        crate::measure::procfs::descendants(self.pid)
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(10)..].join("\n")
    }

    /// Waits until `/readyz` (an external row: its `ready_path`) says 200 (the
    /// database answers through the server).
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
            if self.remote.ready_at(&self.ready_path) {
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

    /// SIGTERM, then wait for a clean exit (code 0; any exit for an external server)
    /// within `grace`; the workers it leaves are then killed.
    pub fn stop(&mut self, grace: Duration) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let workers = self.workers();
        Self::signal("-TERM", &[self.pid]);
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait()? {
                Self::signal("-KILL", &workers);
                if self.external || status.success() {
                    return Ok(());
                }
                bail!(
                    "the server exited with {status} after SIGTERM:\n{}",
                    self.log_tail()
                );
            }
            if start.elapsed() > grace {
                Self::signal("-KILL", &workers);
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
            Self::signal("-KILL", &self.workers());
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
