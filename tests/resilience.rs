//! Database outages, stalls, stalled clients and graceful shutdown.
// The memory store answers from memory, so these checks of PostgreSQL do not apply
// to it (tests/memory_store.rs tests that build).
#![cfg(not(feature = "memory-store"))]
mod support;

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::{TestDb, TestServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;

const UP: u8 = 0;
const REFUSE: u8 = 1;
const BLACKHOLE: u8 = 2;

/// A TCP proxy in front of PostgreSQL that can make it unreachable: `REFUSE` closes
/// every connection at once, `BLACKHOLE` accepts and never answers.
struct Proxy {
    port: u16,
    mode: Arc<AtomicU8>,
    cut: broadcast::Sender<()>,
}

impl Proxy {
    async fn start(target: (String, u16)) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let mode = Arc::new(AtomicU8::new(UP));
        let (cut, _) = broadcast::channel::<()>(4);
        let (mode2, cut2) = (Arc::clone(&mode), cut.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    continue;
                };
                let mode = mode2.load(Ordering::SeqCst);
                if mode == REFUSE {
                    drop(client);
                    continue;
                }
                let mut cut_rx = cut2.subscribe();
                let target = target.clone();
                tokio::spawn(async move {
                    if mode == BLACKHOLE {
                        let _ = cut_rx.recv().await;
                        return;
                    }
                    let Ok(mut server) = TcpStream::connect((target.0.as_str(), target.1)).await
                    else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut_rx.recv() => {}
                    }
                });
            }
        });
        Self { port, mode, cut }
    }

    fn set(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
        if mode != UP {
            let _ = self.cut.send(());
        }
    }
}

/// The test cluster's host and port (the server connects as the app's role).
fn pg_target() -> (String, u16) {
    let url = std::env::var("TEST_DATABASE_URL").expect("TEST_DATABASE_URL");
    let config: tokio_postgres::Config = url.parse().expect("url");
    let host = match &config.get_hosts()[0] {
        tokio_postgres::config::Host::Tcp(h) => h.clone(),
        _ => panic!("TEST_DATABASE_URL must use TCP"),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    (host, port)
}

async fn wait_for_status(server: &TestServer, path: &str, want: u16, within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let r = server.get(path).await;
        if r.status == want {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "{path} still {} after {within:?}, wanted {want}",
            r.status
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn outage_gives_bounded_503_and_recovery_without_restart() {
    let db = TestDb::new(50).await;
    let (host, port) = pg_target();
    let proxy = Proxy::start((host, port)).await;
    let url = format!(
        "postgres://perflab_app@127.0.0.1:{}/{}",
        proxy.port, db.name
    );
    let server = TestServer::start(&url, &[("DB_TIMEOUT_MS", "1000")]).await;
    assert_eq!(server.get("/users/1").await.status, 200);

    for mode in [REFUSE, BLACKHOLE] {
        proxy.set(mode);
        // Requests during the outage fail fast: 503 within the bound (plus slack).
        for path in ["/users/1", "/readyz"] {
            let start = Instant::now();
            let r = server.get(path).await;
            assert_eq!(r.status, 503, "mode {mode} {path}: {:?}", r.body);
            assert!(
                start.elapsed() < Duration::from_millis(2500),
                "took {:?}",
                start.elapsed()
            );
            assert!(!r.error_message().is_empty());
        }
        let start = Instant::now();
        let r = server.patch_email("/users/2", "down@example.com").await;
        assert_eq!(r.status, 503);
        assert!(start.elapsed() < Duration::from_millis(2500));
        // The process is alive throughout.
        assert_eq!(server.get("/healthz").await.status, 200);

        proxy.set(UP);
        let took = wait_for_status(&server, "/users/1", 200, Duration::from_secs(10)).await;
        assert!(took < Duration::from_secs(10));
        // /readyz answers from a check at most 250 ms old.
        wait_for_status(&server, "/readyz", 200, Duration::from_secs(1)).await;
    }
}

#[tokio::test]
async fn a_stalled_database_gives_503_within_the_bound() {
    let db = TestDb::new(50).await;
    let server = TestServer::start(&db.url, &[("DB_TIMEOUT_MS", "800"), ("POOL_SIZE", "1")]).await;
    // Hold a row lock so the PATCH stalls inside PostgreSQL.
    let mut locker = db.client().await;
    let tx = locker.transaction().await.expect("begin");
    tx.execute("UPDATE users SET name = name WHERE id = 5", &[])
        .await
        .expect("lock");
    let (a, b) = tokio::join!(
        async {
            let s = Instant::now();
            (
                server
                    .patch_email("/users/5", "stall@example.com")
                    .await
                    .status,
                s.elapsed(),
            )
        },
        async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let s = Instant::now();
            (server.get("/users/6").await.status, s.elapsed())
        }
    );
    assert_eq!(a.0, 503);
    assert!(a.1 < Duration::from_millis(2000), "PATCH took {:?}", a.1);
    // With a pool of one the GET waits for the pool; without a pool it is served.
    assert!(b.0 == 503 || b.0 == 200, "GET got {}", b.0);
    assert!(b.1 < Duration::from_millis(2000), "GET took {:?}", b.1);
    // PostgreSQL's statement_timeout (the same bound, counted from when the statement
    // reached it) cancels the stalled update shortly after the client got its 503.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    tx.rollback().await.expect("rollback");
    // The stalled update was cancelled, not applied behind the client's back.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let v: i64 = db
        .client()
        .await
        .query_one("SELECT version FROM users WHERE id = 5", &[])
        .await
        .expect("row")
        .get(0);
    assert_eq!(v, 0, "a write answered 503 must not be applied");
    wait_for_status(&server, "/users/5", 200, Duration::from_secs(5)).await;
}

#[tokio::test]
async fn graceful_shutdown_finishes_in_flight_requests() {
    let db = TestDb::new(50).await;
    let mut server = TestServer::start(&db.url, &[("DB_TIMEOUT_MS", "5000")]).await;
    let mut locker = db.client().await;
    let tx = locker.transaction().await.expect("begin");
    tx.execute("UPDATE users SET name = name WHERE id = 9", &[])
        .await
        .expect("lock");
    let addr = server.addr;
    let in_flight = tokio::spawn(async move {
        let body = bytes::Bytes::from_static(b"{\"email\":\"last@example.com\"}");
        support::send(
            addr,
            "PATCH",
            "/users/9",
            &[("content-type", "application/json")],
            body,
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.begin_shutdown();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // No new connections are accepted once shutdown began.
    assert!(
        TcpStream::connect(addr).await.is_err() || {
            // Some kernels accept into the old backlog; then the connection must close unserved.
            let mut s = TcpStream::connect(addr).await.expect("connect");
            let _ = s
                .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
                .await;
            let mut buf = [0u8; 64];
            matches!(s.read(&mut buf).await, Ok(0) | Err(_))
        }
    );
    tx.rollback().await.expect("release the lock");
    let r = in_flight.await.expect("task");
    assert_eq!(
        r.status, 200,
        "the in-flight request completed: {:?}",
        r.body
    );
    assert_eq!(r.json()["version"], 1);
    let result = tokio::time::timeout(Duration::from_secs(5), &mut server.handle)
        .await
        .expect("server stopped within the grace period")
        .expect("join");
    assert!(result.is_ok(), "{result:?}");
}

#[tokio::test]
async fn stalled_clients_are_disconnected() {
    let db = TestDb::new(5).await;
    let server = TestServer::start(&db.url, &[("HEADER_READ_TIMEOUT_MS", "300")]).await;
    let mut s = TcpStream::connect(server.addr).await.expect("connect");
    s.write_all(b"GET /users/1 HTTP/1.1\r\nhost: x\r\n")
        .await
        .expect("partial head");
    let start = Instant::now();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "a stalled client held its connection for 5 s");
    assert!(start.elapsed() < Duration::from_secs(3));
    // The server still serves others.
    assert_eq!(server.get("/healthz").await.status, 200);
}
