//! PostgreSQL's own tools for tests that restart a cluster or need one of their own.
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

/// A PostgreSQL program (`pg_ctl`, `initdb`): from `TEST_PG_BIN` (set by
/// `scripts/test.sh`), else the newest under /usr/lib/postgresql, else on PATH.
pub fn pg_tool(name: &str) -> PathBuf {
    if let Some(bin) = std::env::var_os("TEST_PG_BIN") {
        return PathBuf::from(bin).join(name);
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin").join(name))
        .filter(|p| p.exists())
        .collect();
    found.sort();
    found.pop().unwrap_or_else(|| PathBuf::from(name))
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

/// Runs a command as the cluster's owner: `postgres` when we are root. Its output goes
/// nowhere: a postmaster it starts must not hold the test's stdout (a pipe to `tee` in
/// `scripts/test.sh`) open after the test ends.
pub fn as_owner(program: &Path, args: &[&str]) -> ExitStatus {
    let mut cmd = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    };
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()))
}

/// Gives a path to the cluster's owner (when we are root), so PostgreSQL can use it.
pub fn give_to_owner(path: &Path) {
    if is_root() {
        let status = Command::new("chown")
            .arg("postgres:")
            .arg(path)
            .status()
            .expect("chown");
        assert!(status.success(), "chown postgres {}", path.display());
    }
}

/// A cluster of the test's own, in a folder under the temporary directory, listening
/// on 127.0.0.1 (with `pg_hba.conf` lines chosen by the test) and on a Unix socket in
/// its folder (trusted). Stopped and removed on drop.
pub struct Cluster {
    pub dir: PathBuf,
    pub port: u16,
}

impl Cluster {
    /// `hba`: the lines for TCP connections; `settings`: extra `-c name=value`.
    pub fn start(name: &str, hba: &str, settings: &[String]) -> Self {
        let dir = std::env::temp_dir().join(format!("perflab-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("cluster folder");
        give_to_owner(&dir);
        let data = dir.join("data");
        let data_s = data.to_str().expect("utf-8 path");
        let status = as_owner(
            &pg_tool("initdb"),
            &[
                "-D",
                data_s,
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        assert!(status.success(), "initdb failed in {}", dir.display());
        std::fs::write(
            data.join("pg_hba.conf"),
            format!("local all all trust\n{hba}"),
        )
        .expect("pg_hba.conf");
        let mut cluster = Self { dir, port: 0 };
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port();
            let mut options = format!(
                "-c listen_addresses=127.0.0.1 -p {port} -k {} -c fsync=off",
                cluster.dir.display()
            );
            for s in settings {
                options.push_str(" -c ");
                options.push_str(s);
            }
            let log = cluster.dir.join("server.log");
            let status = as_owner(
                &pg_tool("pg_ctl"),
                &[
                    "-D",
                    data_s,
                    "-l",
                    log.to_str().expect("utf-8"),
                    "-w",
                    "-t",
                    "60",
                    "-o",
                    &options,
                    "start",
                ],
            );
            if status.success() {
                cluster.port = port;
                return cluster;
            }
        }
        let log = std::fs::read_to_string(cluster.dir.join("server.log")).unwrap_or_default();
        panic!("the test's own PostgreSQL did not start:\n{log}");
    }

    /// A superuser URL over the Unix socket (no TLS, no password).
    pub fn socket_url(&self, db: &str) -> String {
        format!(
            "host={} port={} user=postgres dbname={db}",
            self.dir.display(),
            self.port
        )
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let data = self.dir.join("data");
        as_owner(
            &pg_tool("pg_ctl"),
            &[
                "-D",
                data.to_str().unwrap_or_default(),
                "-m",
                "immediate",
                "-w",
                "-t",
                "30",
                "stop",
            ],
        );
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
