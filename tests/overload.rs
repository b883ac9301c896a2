//! Overload, against a real PostgreSQL, for every build that shares connections or
//! batches (`pool`, `pipeline`, `coalesce`): three times what the build serves, for 20 s,
//! from 256 keep-alive clients (enough that the offered rate holds once the server
//! sheds). Requests past `MAX_PENDING` are refused at once (fast 503s with
//! `Retry-After`) instead of queueing until `DB_TIMEOUT_MS`; the server stays up with
//! bounded memory; and per id no PATCH answered 503 (or anything but 200) was applied:
//! the acknowledged versions are exactly 1..=stored version.
// The memory store answers from memory, so these checks of PostgreSQL do not apply
// to it (tests/memory_store.rs tests that build).
#![cfg(not(feature = "memory-store"))]
#![cfg(any(feature = "pool", feature = "pipeline", feature = "coalesce"))]

mod support;

use std::time::Duration;

use support::load::{offer, p99, reconcile};
use support::{TestDb, TestServer};

const IDS: i64 = 40;

async fn peak_rss_kib(server: &TestServer) -> u64 {
    let r = server.get("/stats").await;
    r.json()["peak_rss_kib"].as_u64().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_times_capacity_sheds_fast_and_no_503_is_applied() {
    let db = TestDb::new(IDS).await;
    let server = TestServer::start(
        &db.url,
        &[
            ("MAX_PENDING", "32"),
            ("DB_TIMEOUT_MS", "200"),
            ("POOL_SIZE", "4"),
            ("PIPELINE_CONNECTIONS", "2"),
        ],
    )
    .await;
    // What this build serves here: a short run far above it, from fewer clients.
    let mut outcomes = offer(server.addr, IDS, 64, 20_000.0, Duration::from_secs(2)).await;
    let served = outcomes.iter().filter(|o| o.status == 200).count() as f64 / 2.0;
    assert!(served > 0.0, "nothing was served in the probe");
    let rss_before = peak_rss_kib(&server).await;

    let overload = offer(server.addr, IDS, 256, 3.0 * served, Duration::from_secs(20)).await;
    let ok = overload.iter().filter(|o| o.status == 200).count();
    // Shed at admission (the queues are full): must be answered at once. The other
    // 503s waited for the database until their deadline: bounded by the contract.
    let shed: Vec<Duration> = overload
        .iter()
        .filter(|o| o.status == 503 && o.shed)
        .map(|o| o.took)
        .collect();
    let timed_out: Vec<Duration> = overload
        .iter()
        .filter(|o| o.status == 503 && !o.shed)
        .map(|o| o.took)
        .collect();
    let other: Vec<u16> = overload
        .iter()
        .map(|o| o.status)
        .filter(|s| ![200, 503].contains(s))
        .collect();
    eprintln!(
        "probe {served:.0}/s served; overload at {:.0}/s: {} requests, {ok} ok, {} shed (p99 {:?}), {} timed out (p99 {:?})",
        3.0 * served,
        overload.len(),
        shed.len(),
        p99(shed.clone()),
        timed_out.len(),
        p99(timed_out.clone())
    );
    assert!(other.is_empty(), "statuses other than 200/503: {other:?}");
    assert!(ok > 0, "nothing was served under overload");
    assert!(!shed.is_empty(), "3x capacity shed nothing: not overloaded");
    assert!(
        p99(shed) <= Duration::from_millis(50),
        "shed 503s were slow: they should be refused at once"
    );
    // The worst case of the contract: 3 × DB_TIMEOUT_MS (200 ms here), plus the
    // client's own scheduling on this shared machine.
    assert!(
        timed_out
            .iter()
            .all(|t| *t <= Duration::from_millis(3 * 200 + 250)),
        "a 503 took longer than 3 × DB_TIMEOUT_MS: {:?}",
        timed_out.iter().max()
    );

    // The server is up and its memory bounded.
    assert_eq!(server.get("/healthz").await.status, 200);
    assert_eq!(server.get("/users/1").await.status, 200);
    let rss_after = peak_rss_kib(&server).await;
    assert!(
        rss_after < rss_before + 256 * 1024,
        "peak RSS grew from {rss_before} KiB to {rss_after} KiB"
    );

    // Per id: every applied PATCH was acknowledged with 200, once. Of the 503s, only
    // those that said the outcome is unknown (sent, no answer within the bound: the
    // contract's one exception) may have been applied, each at most once.
    outcomes.extend(overload);
    let unknown: Vec<i64> = outcomes
        .iter()
        .filter(|o| o.patch && o.unknown)
        .map(|o| o.id)
        .collect();
    reconcile(&db.client().await, &outcomes, |id| {
        unknown.iter().filter(|i| **i == id).count() as i64
    })
    .await;
}
