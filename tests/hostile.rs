//! Clients that try to hold the server, against a real PostgreSQL: stalled bodies are
//! cut off within `BODY_READ_TIMEOUT_MS`, connections past `MAX_CONNECTIONS` are closed
//! at once, an oversized head is refused, and ordinary requests are served throughout.
// The memory store answers from memory, so these checks of PostgreSQL do not apply
// to it (tests/memory_store.rs tests that build).
#![cfg(not(feature = "memory-store"))]
mod support;

use std::time::{Duration, Instant};

use support::{TestDb, TestServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads until the server closes the connection (or `within` passes): what it sent.
async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> Option<String> {
    let mut out = Vec::new();
    let read = tokio::time::timeout(within, async {
        let mut buf = [0u8; 1024];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    read.ok()
        .map(|()| String::from_utf8_lossy(&out).into_owned())
}

#[tokio::test]
async fn stalled_bodies_are_cut_off_while_others_are_served() {
    const STALLED: usize = 200;
    let db = TestDb::new(10).await;
    let server = TestServer::start(&db.url, &[("BODY_READ_TIMEOUT_MS", "500")]).await;
    let start = Instant::now();
    let mut stalled = Vec::new();
    for _ in 0..STALLED {
        let mut s = TcpStream::connect(server.addr).await.expect("connect");
        s.write_all(
            b"PATCH /users/1 HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\n\
              content-length: 100\r\n\r\n{\"email\":",
        )
        .await
        .expect("send a head and part of a body");
        stalled.push(s);
    }
    // Ordinary requests are served while the stalled ones wait.
    for id in 1..=10 {
        assert_eq!(server.get(&format!("/users/{id}")).await.status, 200);
    }
    let readers: Vec<_> = stalled
        .into_iter()
        .map(|mut s| {
            tokio::spawn(async move { read_until_closed(&mut s, Duration::from_secs(5)).await })
        })
        .collect();
    for r in readers {
        let got = r
            .await
            .expect("reader")
            .expect("the connection was not closed");
        assert!(got.starts_with("HTTP/1.1 408"), "{got:?}");
    }
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "stalled bodies held their connections for {:?}",
        start.elapsed()
    );
    // Nothing was applied.
    let v: i64 = db
        .client()
        .await
        .query_one("SELECT version FROM users WHERE id = 1", &[])
        .await
        .expect("row")
        .get(0);
    assert_eq!(v, 0);
}

#[tokio::test]
async fn connections_past_the_cap_are_closed_at_once() {
    let db = TestDb::new(10).await;
    let server = TestServer::start(&db.url, &[("MAX_CONNECTIONS", "20")]).await;
    let mut held = Vec::new();
    for _ in 0..20 {
        held.push(TcpStream::connect(server.addr).await.expect("connect"));
    }
    // Let the server accept them all before the next one.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut extra = TcpStream::connect(server.addr).await.expect("connect");
    let _ = extra
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: t\r\n\r\n")
        .await;
    let got = read_until_closed(&mut extra, Duration::from_secs(1)).await;
    assert_eq!(
        got.as_deref(),
        Some(""),
        "a connection past the cap was served"
    );
    // Once some close, new connections are served again.
    held.truncate(10);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(server.get("/healthz").await.status, 200);
}

#[tokio::test]
async fn an_oversized_head_is_refused() {
    let db = TestDb::new(10).await;
    let server = TestServer::start(&db.url, &[]).await;
    let mut s = TcpStream::connect(server.addr).await.expect("connect");
    let huge = "x".repeat(64 * 1024);
    let head = format!("GET /users/1 HTTP/1.1\r\nhost: t\r\nx-filler: {huge}\r\n\r\n");
    let _ = s.write_all(head.as_bytes()).await;
    let got = read_until_closed(&mut s, Duration::from_secs(5))
        .await
        .expect("the connection was not closed");
    assert!(got.is_empty() || got.starts_with("HTTP/1.1 431"), "{got:?}");
    assert_eq!(server.get("/users/1").await.status, 200);
}

/// A free loopback port (bound, then released) for a second listener.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// One request on `s` and its reply's status line.
async fn status_line(s: &mut TcpStream, path: &str) -> String {
    let req = format!("GET {path} HTTP/1.1\r\nhost: t\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("send");
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("a reply within 5 s")
        .expect("read");
    String::from_utf8_lossy(&buf[..n])
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}

#[tokio::test]
async fn probes_answer_on_their_own_port_while_clients_hold_every_slot() {
    let db = TestDb::new(10).await;
    let probe = format!("127.0.0.1:{}", free_port());
    let server = TestServer::start(
        &db.url,
        &[("MAX_CONNECTIONS", "3"), ("PROBE_ADDR", probe.as_str())],
    )
    .await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(TcpStream::connect(server.addr).await.expect("connect"));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut extra = TcpStream::connect(server.addr).await.expect("connect");
    let _ = extra
        .write_all(b"GET /readyz HTTP/1.1\r\nhost: t\r\n\r\n")
        .await;
    let got = read_until_closed(&mut extra, Duration::from_secs(1)).await;
    assert_eq!(
        got.as_deref(),
        Some(""),
        "the main port served past its cap"
    );
    let mut p = TcpStream::connect(probe.as_str())
        .await
        .expect("the probe port");
    assert_eq!(status_line(&mut p, "/readyz").await, "HTTP/1.1 200 OK");
    assert_eq!(status_line(&mut p, "/healthz").await, "HTTP/1.1 200 OK");
    assert_eq!(
        status_line(&mut p, "/users/1").await,
        "HTTP/1.1 404 Not Found"
    );
    drop(held);
}

#[tokio::test]
async fn a_client_that_stops_reading_is_cut_off() {
    let db = TestDb::new(10).await;
    let server = TestServer::start(&db.url, &[("WRITE_TIMEOUT_MS", "500")]).await;
    // A small receive window, requests pipelined without end, and no read: the
    // replies pile up until the server's writes make no progress.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let mut s = socket.connect(server.addr).await.expect("connect");
    let chunk = b"GET /nope HTTP/1.1\r\nhost: t\r\n\r\n".repeat(1000);
    let start = Instant::now();
    let cut = tokio::time::timeout(Duration::from_secs(15), async {
        while s.write_all(&chunk).await.is_ok() {}
    })
    .await;
    assert!(
        cut.is_ok(),
        "a client that never read still held its connection after 15 s"
    );
    eprintln!("cut off after {:?}", start.elapsed());
    assert_eq!(server.get("/healthz").await.status, 200);
    // An operator sees it: the connection is counted as ended by the write timeout.
    #[cfg(feature = "metrics")]
    {
        let text = String::from_utf8_lossy(&server.get("/metrics").await.body).into_owned();
        assert!(
            text.contains(r#"perflab_http_connection_errors_total{kind="write_timeout"}"#),
            "{text}"
        );
    }
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed() {
    let db = TestDb::new(10).await;
    let server = TestServer::start(&db.url, &[("HEADER_READ_TIMEOUT_MS", "300")]).await;
    let mut s = TcpStream::connect(server.addr).await.expect("connect");
    assert_eq!(status_line(&mut s, "/healthz").await, "HTTP/1.1 200 OK");
    let start = Instant::now();
    let got = read_until_closed(&mut s, Duration::from_secs(3)).await;
    assert_eq!(got.as_deref(), Some(""), "an idle connection stayed open");
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn one_address_cannot_take_every_slot() {
    let db = TestDb::new(10).await;
    let server = TestServer::start(&db.url, &[("MAX_CONNECTIONS_PER_PEER", "3")]).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(TcpStream::connect(server.addr).await.expect("connect"));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut fourth = TcpStream::connect(server.addr).await.expect("connect");
    let _ = fourth
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: t\r\n\r\n")
        .await;
    let got = read_until_closed(&mut fourth, Duration::from_secs(1)).await;
    assert_eq!(
        got.as_deref(),
        Some(""),
        "a fourth connection from one address was served"
    );
    // Another address (127.0.0.2 is loopback too) is served meanwhile.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind("127.0.0.2:0".parse().expect("addr"))
        .expect("bind 127.0.0.2");
    let mut other = socket.connect(server.addr).await.expect("connect");
    assert_eq!(status_line(&mut other, "/healthz").await, "HTTP/1.1 200 OK");
    // A place given back is the address's again.
    held.truncate(2);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(server.get("/healthz").await.status, 200);
}
