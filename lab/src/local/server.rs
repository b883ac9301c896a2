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

/// Runs a built server with `--check-config` and `row`'s environment: a value the
/// server would refuse is an error naming the row and the variable, before anything
/// starts.
pub fn check_config(binary: &Path, row: &Row) -> Result<()> {
    let out = Command::new(binary)
        .arg("--check-config")
        .env_clear()
        .env("DATABASE_URL", "postgres://check@127.0.0.1:1/check")
        .envs(crate::pod::server_env(&row.env, row.workers))
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {} --check-config", binary.display()))?;
    if !out.status.success() {
        bail!(
            "row {:?}: `env`: the server refuses it: {}",
            row.name,
            String::from_utf8_lossy(&out.stderr)
                .trim()
                .trim_start_matches("perflab: configuration error: ")
        );
    }
    Ok(())
}

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
    /// The row's own environment for our server (after the lab's, so `POOL_SIZE` may
    /// be the row's); empty for external rows, whose `env` is their own.
    pub env: std::collections::BTreeMap<String, String>,
    /// `cgroup.procs` files the server joins before it runs (its pod's resources).
    pub groups: Vec<PathBuf>,
}

impl<'a> Launch<'a> {
    /// The launch of `row`: its CPUs (its own `cpus`, else `default_cpus`) and its
    /// environment (`env`, `workers`).
    pub fn of(
        row: &'a Row,
        default_cpus: &'a str,
        addr: SocketAddr,
        database_url: &'a str,
        pool_size: u32,
        log: &'a Path,
    ) -> Self {
        Launch {
            cpus: row.cpus.as_deref().unwrap_or(default_cpus),
            addr,
            database_url,
            pool_size,
            log,
            env: crate::pod::server_env(&row.env, row.workers),
            groups: Vec::new(),
        }
    }
}

/// Makes `cmd`'s child write "0" (itself) into each of `procs` between fork and exec:
/// it starts inside those control groups. Only system calls run in the child (no
/// allocation: the lab has other threads).
pub fn join_groups(cmd: &mut Command, procs: &[PathBuf]) {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::process::CommandExt;
    let paths: Vec<std::ffi::CString> = procs
        .iter()
        .filter_map(|p| std::ffi::CString::new(p.as_os_str().as_bytes()).ok())
        .collect();
    if paths.is_empty() {
        return;
    }
    // SAFETY: the closure only calls open, write and close, which are async-signal-safe,
    // on memory allocated before the fork.
    unsafe {
        cmd.pre_exec(move || {
            for path in &paths {
                let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let wrote = libc::write(fd, b"0".as_ptr().cast(), 1);
                let error = std::io::Error::last_os_error();
                libc::close(fd);
                if wrote != 1 {
                    return Err(error);
                }
            }
            Ok(())
        });
    }
}

impl Server {
    /// Our server's binary, configured through its environment.
    pub fn start(binary: &Path, l: &Launch) -> Result<Self> {
        let mut cmd = pinned(l.cpus, binary);
        cmd.env("DATABASE_URL", l.database_url)
            .env("LISTEN_ADDR", l.addr.to_string())
            .env("POOL_SIZE", l.pool_size.to_string())
            .env("RUST_LOG", "warn")
            .envs(&l.env);
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
        join_groups(&mut cmd, &l.groups);
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
