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
