//! Rows the server did not expect, and statements PostgreSQL rejects, against a real
//! PostgreSQL, for every feature set: each fails only the requests for its own id, no
//! worker or connection is lost to it, and no write is applied more than once.
// The memory store answers from memory, so these checks of PostgreSQL do not apply
// to it (tests/memory_store.rs tests that build).
#![cfg(not(feature = "memory-store"))]
mod support;

use std::collections::BTreeMap;

use bytes::Bytes;
use support::{patch, send, TestDb, TestServer};

/// Every timestamp PostgreSQL can hold is answered, whatever the build (with `coalesce`
/// a formatting panic used to kill the read worker for good).
#[tokio::test]
async fn every_timestamp_postgresql_holds_is_answered() {
    let db = TestDb::new(20).await;
    let pg = db.client().await;
    let cases = [
        (1, "infinity", "infinity"),
        (2, "-infinity", "-infinity"),
        (
            3,
            "12000-06-01 00:00:00+00",
            "+012000-06-01T00:00:00.000000Z",
        ),
        (4, "1960-01-01 12:00:00.5+00", "1960-01-01T12:00:00.500000Z"),
        (
            5,
            "4714-11-24 00:00:00+00 BC",
            "-004713-11-24T00:00:00.000000Z",
        ),
        (
            6,
            "294276-12-31 23:59:59.999999+00",
            "+294276-12-31T23:59:59.999999Z",
        ),
        (
            7,
            "0001-01-01 00:00:00+00 BC",
            "0000-01-01T00:00:00.000000Z",
        ),
    ];
    for (id, value, _) in cases {
        pg.execute(
            &format!("UPDATE users SET updated_at = '{value}' WHERE id = $1"),
            &[&id],
        )
        .await
        .expect("set updated_at");
    }
    let server = TestServer::start(&db.url, &[]).await;
    // Many at once, so that `coalesce` batches them together with ordinary rows.
    let mut tasks = Vec::new();
    for round in 0..5 {
        for id in 1..=20i64 {
            let addr = server.addr;
            tasks.push(tokio::spawn(async move {
                let r = send(addr, "GET", &format!("/users/{id}"), &[], Bytes::new()).await;
                (round, id, r)
            }));
        }
    }
    for t in tasks {
        let (round, id, r) = t.await.expect("task");
        assert_eq!(r.status, 200, "round {round} id {id}: {:?}", r.body);
        if let Some((_, _, want)) = cases.iter().find(|c| c.0 == id) {
            assert_eq!(r.json()["updated_at"], *want, "id {id}");
        }
    }
    // And the worker is still there afterwards.
    assert_eq!(server.get("/users/15").await.status, 200);
}

/// A row that does not decode (a NULL where the server expects text) fails only its own
/// id's requests, with 500. Its PATCHes are applied once (the statement committed), and
/// the others in the same batch are not run again: per id, the stored version is the
/// number of PATCHes sent, and the acknowledged versions are distinct.
#[tokio::test]
async fn a_row_that_does_not_decode_fails_alone_and_nothing_is_applied_twice() {
    const IDS: i64 = 12;
    const BAD: i64 = 5;
    const PER_ID: usize = 25;
    let db = TestDb::new(IDS).await;
    let pg = db.client().await;
    pg.batch_execute(&format!(
        "ALTER TABLE users ALTER COLUMN name DROP NOT NULL; \
         UPDATE users SET name = NULL WHERE id = {BAD}"
    ))
    .await
    .expect("craft the row");
    let server = TestServer::start(&db.url, &[("COALESCE_WRITERS", "1")]).await;
    let mut tasks = Vec::new();
    for k in 0..PER_ID {
        for id in 1..=IDS {
            let addr = server.addr;
            tasks.push(tokio::spawn(async move {
                let r = patch(addr, id, &format!("k{k}-{id}@example.com")).await;
                (id, r)
            }));
        }
    }
    let mut acked: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    for t in tasks {
        let (id, r) = t.await.expect("task");
        if id == BAD {
            assert_eq!(r.status, 500, "the undecodable row: {:?}", r.body);
        } else {
            assert_eq!(r.status, 200, "id {id}: {:?}", r.body);
            acked
                .entry(id)
                .or_default()
                .push(r.json()["version"].as_i64().unwrap());
        }
    }
    for (id, versions) in &mut acked {
        versions.sort_unstable();
        let want: Vec<i64> = (1..=PER_ID as i64).collect();
        assert_eq!(*versions, want, "id {id}: acknowledged versions");
    }
    for (id, version) in support::stored_versions(&pg).await {
        assert_eq!(
            version, PER_ID as i64,
            "id {id}: applied {version} times for {PER_ID} PATCHes"
        );
    }
    // GETs batched with the bad row: only its own fail.
    let mut gets = Vec::new();
    for id in 1..=IDS {
        let addr = server.addr;
        gets.push(tokio::spawn(async move {
            (
                id,
                send(addr, "GET", &format!("/users/{id}"), &[], Bytes::new()).await,
            )
        }));
    }
    for g in gets {
        let (id, r) = g.await.expect("task");
        assert_eq!(r.status, if id == BAD { 500 } else { 200 }, "GET {id}");
    }
}

/// A statement PostgreSQL rejects (here a CHECK constraint: a 422) fails that request
/// only: with `coalesce` the batch is split down to it and the rest applied once; with
/// `pool` or `pipeline` the connection stays in use (no new backend per bad request).
#[tokio::test]
async fn a_rejected_statement_fails_alone_and_keeps_the_connection() {
    const IDS: i64 = 10;
    let db = TestDb::new(IDS).await;
    let pg = db.client().await;
    pg.batch_execute("ALTER TABLE users ADD CONSTRAINT no_reject CHECK (email NOT LIKE 'reject%')")
        .await
        .expect("constraint");
    let server = TestServer::start(&db.url, &[("COALESCE_WRITERS", "1")]).await;
    // Warm up every connection slot, then note when the newest backend started.
    for id in 1..=16 {
        assert_eq!(
            server.get(&format!("/users/{}", id % IDS + 1)).await.status,
            200
        );
    }
    let backends = "SELECT count(*) FROM pg_stat_activity \
                    WHERE datname = current_database() AND application_name = 'perflab' \
                    AND backend_start > $1";
    let since: std::time::SystemTime = pg.query_one("SELECT now()", &[]).await.expect("now").get(0);
    for _ in 0..10 {
        let r = patch(server.addr, 3, "reject@example.com").await;
        assert_eq!(r.status, 422, "{:?}", r.body);
        // A good request after each: on a discarded connection's slot it opens a new one.
        assert_eq!(server.get("/users/4").await.status, 200);
    }
    let new: i64 = pg
        .query_one(backends, &[&since])
        .await
        .expect("count")
        .get(0);
    if cfg!(any(feature = "pool", feature = "pipeline")) {
        assert_eq!(new, 0, "a rejected statement discarded its connection");
    }
    // Mixed with good PATCHes, so that `coalesce` batches them together.
    let mut tasks = Vec::new();
    for k in 0..20 {
        for id in 1..=IDS {
            let addr = server.addr;
            let email = if id == 3 {
                format!("reject{k}@example.com")
            } else {
                format!("ok{k}@example.com")
            };
            tasks.push(tokio::spawn(
                async move { (id, patch(addr, id, &email).await) },
            ));
        }
    }
    for t in tasks {
        let (id, r) = t.await.expect("task");
        assert_eq!(
            r.status,
            if id == 3 { 422 } else { 200 },
            "id {id}: {:?}",
            r.body
        );
    }
    for (id, version) in support::stored_versions(&pg).await {
        assert_eq!(version, if id == 3 { 0 } else { 20 }, "id {id}");
    }
}
