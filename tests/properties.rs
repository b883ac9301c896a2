//! Property tests against a real PostgreSQL: arbitrary paths, methods, headers and
//! bodies never make the server panic or answer anything outside the documented
//! statuses, and it keeps serving afterwards.
// The memory store answers from memory, so these checks of PostgreSQL do not apply
// to it (tests/memory_store.rs tests that build).
#![cfg(not(feature = "memory-store"))]
mod support;

use bytes::Bytes;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use support::{send_checked, TestDb, TestServer};

/// Every status the API documents for a request it did not like, and its successes.
const DOCUMENTED: [u16; 10] = [200, 400, 404, 405, 408, 413, 415, 422, 431, 503];

/// Arbitrary bytes as a URI path: characters a path may hold as they are, the rest
/// percent-encoded, so every byte value reaches the router.
fn path_of(prefix: &str, raw: &[u8]) -> String {
    let mut path = String::from(prefix);
    for &b in raw {
        if b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/".contains(&b) {
            path.push(b as char);
        } else {
            path.push_str(&format!("%{b:02X}"));
        }
    }
    path
}

fn methods() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "GET", "HEAD", "PATCH", "POST", "PUT", "DELETE", "OPTIONS", "BREW",
    ])
}

fn prefixes() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec!["/users/", "/", "/users/1", "/healthz", "/readyz"])
}

/// Sends a request with a body and `content-type: application/json` over raw TCP (so
/// any method token works), returning the status.
async fn request(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    body: &[u8],
) -> Result<u16, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    s.write_all(body).await.map_err(|e| e.to_string())?;
    let mut reply = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        s.read_to_end(&mut reply),
    )
    .await
    .map_err(|_| "no reply within 10 s".to_string())?
    .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&reply);
    text.strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("not an HTTP reply: {text:?}"))
}

#[test]
fn arbitrary_requests_get_documented_statuses_and_never_crash_the_server() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (db, server) = rt.block_on(async {
        let db = TestDb::new(50).await;
        let server = TestServer::start(&db.url, &[]).await;
        (db, server)
    });
    let addr = server.addr;
    let mut runner = TestRunner::new(Config {
        cases: 400,
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = (
        methods(),
        prefixes(),
        prop::collection::vec(any::<u8>(), 0..40),
        prop_oneof![
            prop::collection::vec(any::<u8>(), 0..300),
            ".{0,80}".prop_map(|s| serde_json::json!({ "email": s }).to_string().into_bytes()),
        ],
    );
    runner
        .run(&strategy, |(method, prefix, raw, body)| {
            let path = path_of(prefix, &raw);
            let status = rt
                .block_on(request(addr, method, &path, &body))
                .map_err(|e| TestCaseError::fail(format!("{method} {path}: {e}")))?;
            prop_assert!(
                DOCUMENTED.contains(&status),
                "{method} {path} with {} body bytes: undocumented status {status}",
                body.len()
            );
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
    // Still serving, every route.
    rt.block_on(async {
        assert_eq!(
            send_checked(addr, "GET", "/healthz", Bytes::new()).await,
            Ok(200)
        );
        assert_eq!(
            send_checked(addr, "GET", "/users/7", Bytes::new()).await,
            Ok(200)
        );
    });
    drop(server);
    drop(db);
}
