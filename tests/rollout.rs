//! A rollout, with the real binary and a real SIGTERM under load: for
//! `SHUTDOWN_DELAY_MS` after the signal, `/readyz` says 503 while every request, on new
//! connections too, is still served (none refused or reset); then the server drains and
//! exits 0.
// The memory store answers from memory, so these checks of PostgreSQL do not apply
// to it (tests/memory_store.rs tests that build).
#![cfg(not(feature = "memory-store"))]
mod support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use support::{send_checked, TestDb};

/// Starts the server binary on a kernel-chosen port; returns it and its address (read
/// from its "listening" log line).
fn start(database_url: &str, delay_ms: u64) -> (std::process::Child, SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_perflab"))
        .env("DATABASE_URL", database_url)
        .env("LISTEN_ADDR", "127.0.0.1:0")
        .env("SHUTDOWN_DELAY_MS", delay_ms.to_string())
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the server binary");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let addr = loop {
        let line = lines
            .next()
            .expect("the server exited before listening")
            .expect("read its log");
        if let Some(rest) = line.split("addr=").nth(1) {
            let addr = rest.split_whitespace().next().unwrap_or("");
            break addr
                .parse()
                .unwrap_or_else(|_| panic!("bad addr in {line:?}"));
        }
    };
    // Keep draining its log so it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (child, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_keeps_serving_through_the_delay_then_exits_0() {
    const DELAY: Duration = Duration::from_millis(2000);
    let db = TestDb::new(50).await;
    let (mut child, addr) = start(&db.url, DELAY.as_millis() as u64);
    let ready = Instant::now();
    loop {
        if send_checked(addr, "GET", "/readyz", Bytes::new())
            .await
            .ok()
            == Some(200)
        {
            break;
        }
        assert!(ready.elapsed() < Duration::from_secs(10), "never ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Load on new connections until shortly before the delay ends.
    let stop = Arc::new(AtomicBool::new(false));
    let load: Vec<_> = (0..8)
        .map(|c| {
            let stop = stop.clone();
            tokio::spawn(async move {
                let (mut ok, mut failed) = (0u64, Vec::new());
                let mut n = 0i64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let path = format!("/users/{}", 1 + (c * 7 + n) % 50);
                    match send_checked(addr, "GET", &path, Bytes::new()).await {
                        Ok(200) => ok += 1,
                        other => failed.push(format!("{path}: {other:?}")),
                    }
                }
                (ok, failed)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let signalled = Instant::now();
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        send_checked(addr, "GET", "/readyz", Bytes::new()).await,
        Ok(503),
        "/readyz must fail during the delay"
    );
    tokio::time::sleep(DELAY.saturating_sub(signalled.elapsed() + Duration::from_millis(300)))
        .await;
    stop.store(true, Ordering::Relaxed);
    let mut served = 0;
    for t in load {
        let (ok, failed) = t.await.expect("load task");
        assert!(
            failed.is_empty(),
            "refused or failed during the delay: {failed:?}"
        );
        served += ok;
    }
    assert!(served > 0);

    // Then it drains and exits 0, well within the grace period.
    let deadline = Instant::now() + Duration::from_secs(15);
    let code = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "the server did not exit");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(code.success(), "exit status {code}");
    assert!(
        signalled.elapsed() >= DELAY,
        "it exited before the delay was over"
    );
}
