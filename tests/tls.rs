//! TLS to PostgreSQL, for every connection source (run once per build by
//! `scripts/test.sh`). The test starts a cluster of its own with `ssl=on`, a certificate
//! for `localhost` issued by a certificate authority made with `openssl`, and a `pg_hba.conf` that rejects every
//! TCP connection without TLS, so a request that succeeds went over TLS.
// The memory store answers from memory, so these checks of PostgreSQL do not apply
// to it (tests/memory_store.rs tests that build).
#![cfg(not(feature = "memory-store"))]
mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use support::pg::{give_to_owner, Cluster};
use support::{connect, send_checked, TestDb, TestServer};

/// A folder of certificates, removed on drop.
struct Certs {
    dir: PathBuf,
}

impl Certs {
    fn new() -> Self {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("perflab-certs-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("certificate folder");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        Self { dir }
    }

    /// Runs `openssl req -x509` for a new P-256 key, valid 2 days, with `args`.
    fn openssl(&self, args: &[&str]) {
        let status = Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
            ])
            .args(["-nodes", "-days", "2"])
            .args(args)
            .current_dir(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("openssl (apt install openssl)");
        assert!(status.success(), "openssl {args:?} failed");
    }

    /// A certificate authority of its own: `NAME.crt` (returned) and `NAME.key`.
    fn authority(&self, name: &str) -> PathBuf {
        self.openssl(&[
            "-subj",
            &format!("/CN={name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.crt"),
        ]);
        self.dir.join(format!("{name}.crt"))
    }

    /// A server certificate for `localhost` (and nothing else), issued by `ca`:
    /// `server.crt` and `server.key`, the key owned by PostgreSQL's user.
    fn server(&self, ca: &str) -> (PathBuf, PathBuf) {
        self.openssl(&[
            "-subj",
            "/CN=localhost",
            "-CA",
            &format!("{ca}.crt"),
            "-CAkey",
            &format!("{ca}.key"),
            "-addext",
            "subjectAltName=DNS:localhost",
            "-addext",
            "basicConstraints=critical,CA:FALSE",
            "-addext",
            "extendedKeyUsage=serverAuth",
            "-keyout",
            "server.key",
            "-out",
            "server.crt",
        ]);
        let key = self.dir.join("server.key");
        // PostgreSQL wants its key readable by its owner alone.
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        give_to_owner(&key);
        (self.dir.join("server.crt"), key)
    }
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// The status of `GET /users/1` from a server with `DATABASE_URL=url` and `env`.
async fn get_status(url: &str, env: &[(&str, &str)]) -> u16 {
    let server = TestServer::start(url, env).await;
    let status = send_checked(server.addr, "GET", "/users/1", bytes::Bytes::new())
        .await
        .expect("a reply");
    drop(server);
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_is_used_when_the_url_asks_and_the_server_is_checked_against_the_ca_file() {
    let certs = Certs::new();
    let ca = certs.authority("test-ca");
    let other = certs.authority("other-ca");
    let (crt, key) = certs.server("test-ca");
    let cluster = Cluster::start(
        "tls",
        "hostssl all all 127.0.0.1/32 trust\nhostnossl all all 127.0.0.1/32 reject\n",
        &[
            "ssl=on".into(),
            format!("ssl_cert_file={}", path(&crt)),
            format!("ssl_key_file={}", path(&key)),
        ],
    );
    let admin = connect(&cluster.socket_url("postgres")).await;
    admin
        .batch_execute("CREATE DATABASE perflab")
        .await
        .expect("create database");
    support::seed(&connect(&cluster.socket_url("perflab")).await, 10).await;

    let port = cluster.port;
    let by_name = format!(
        "postgres://perflab_app@localhost:{port}/perflab?hostaddr=127.0.0.1&sslmode=require"
    );
    let by_address = format!("postgres://perflab_app@127.0.0.1:{port}/perflab?sslmode=require");
    let ca = [("DATABASE_CA_FILE", path(&ca))];

    // Verified TLS: the certificate chains to the CA file and names the host.
    let server = TestServer::start(&by_name, &ca).await;
    assert_eq!(
        send_checked(server.addr, "GET", "/users/1", bytes::Bytes::new()).await,
        Ok(200)
    );
    assert_eq!(
        server
            .patch_email("/users/1", "tls@example.com")
            .await
            .status,
        200
    );
    // Every backend the server holds right now (pooled builds keep some) is on TLS.
    let plain: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
             WHERE a.application_name = 'perflab' AND NOT s.ssl",
            &[],
        )
        .await
        .expect("pg_stat_ssl")
        .get(0);
    assert_eq!(plain, 0, "a backend of the server is not on TLS");
    drop(server);
    let stored: String = connect(&cluster.socket_url("perflab"))
        .await
        .query_one("SELECT email FROM users WHERE id = 1", &[])
        .await
        .expect("read back")
        .get(0);
    assert_eq!(stored, "tls@example.com");

    // Without TLS this cluster refuses the connection: the success above was TLS.
    let plain_url = by_name.replace("sslmode=require", "sslmode=disable");
    assert_eq!(get_status(&plain_url, &[]).await, 503);
    // Without a CA file: encrypted, the server not authenticated (libpq's `require`).
    assert_eq!(get_status(&by_address, &[]).await, 200);
    // With the CA file, a host the certificate does not name is refused...
    assert_eq!(get_status(&by_address, &ca).await, 503);
    // ...and so is a certificate that does not chain to the CA file.
    assert_eq!(
        get_status(&by_name, &[("DATABASE_CA_FILE", path(&other))]).await,
        503
    );
    drop(admin);
    drop(cluster);
}

#[tokio::test]
async fn require_against_a_server_without_tls_is_503() {
    let db = TestDb::new(2).await;
    let url = if db.url.contains('?') {
        format!("{}&sslmode=require", db.url)
    } else {
        format!("{}?sslmode=require", db.url)
    };
    assert_eq!(get_status(&url, &[]).await, 503);
}

/// The error of a server that must refuse to start with the environment `env`.
async fn refused_start(env: &[(&str, &str)]) -> perflab::server::BoxError {
    let config = perflab::config::Config::from_lookup(|k| {
        env.iter()
            .find(|(n, _)| *n == k)
            .map(|(_, v)| (*v).to_string())
    })
    .expect("config");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    perflab::server::run(listener, &config, std::future::ready(()))
        .await
        .expect_err("the server must not start")
}

/// A CA file makes TLS required: against a server that answers "no TLS" (this test
/// cluster has none), the default `sslmode=prefer` must not fall back to cleartext.
#[tokio::test]
async fn a_ca_file_makes_tls_required() {
    let db = TestDb::new(2).await;
    let certs = Certs::new();
    let ca = certs.authority("ca");
    let prefer = db.url.replace("?sslmode=disable", "");
    assert!(!prefer.contains("sslmode"), "{prefer}");
    assert_eq!(
        get_status(&prefer, &[]).await,
        200,
        "cleartext without a CA file"
    );
    assert_eq!(
        get_status(&prefer, &[("DATABASE_CA_FILE", path(&ca))]).await,
        503,
        "a CA file, and the server offered no TLS: refused, not cleartext"
    );
    let env = [
        ("DATABASE_URL", db.url.as_str()),
        ("DATABASE_CA_FILE", path(&ca)),
    ];
    let err = refused_start(&env).await;
    assert!(err.to_string().contains("sslmode=disable"), "{err}");
}

#[tokio::test]
async fn an_unreadable_ca_file_stops_the_server_with_its_name() {
    let env = [
        (
            "DATABASE_URL",
            "postgres://u@127.0.0.1:1/db?sslmode=require",
        ),
        ("DATABASE_CA_FILE", "/nonexistent/ca.pem"),
    ];
    let err = refused_start(&env).await;
    assert!(
        err.to_string().contains("DATABASE_CA_FILE"),
        "the error names the setting: {err}"
    );
}
