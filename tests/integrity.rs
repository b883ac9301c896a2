//! What a PATCH's answer promises, under faults: a 503 after the statement was sent says
//! the outcome is unknown; a statement that starts after its apply-by time changes
//! nothing; `statement_timeout` holds whatever `options` DATABASE_URL carries; a
//! constraint the operator adds is checked for every acknowledged value (also when
//! `coalesce` batches them); two servers batching on the same hot ids never deadlock;
//! a draining server asks its keep-alive clients to leave.
// The memory store answers from memory, so these checks of PostgreSQL do not apply
// to it (tests/memory_store.rs tests that build).
#![cfg(not(feature = "memory-store"))]

mod support;

use std::time::{Duration, Instant, SystemTime};

use support::{patch, TestDb, TestServer};

/// Holds row `id` locked (a transaction left open) on its own connection until dropped.
async fn lock_row(db: &TestDb, id: i64) -> tokio_postgres::Client {
    let locker = db.client().await;
    locker
        .batch_execute(&format!(
            "BEGIN; SELECT 1 FROM users WHERE id = {id} FOR UPDATE"
        ))
        .await
        .expect("lock the row");
    locker
}

/// The pid of the server's backend waiting for a lock, within 10 s.
async fn waiting_backend(admin: &tokio_postgres::Client) -> i32 {
    let start = Instant::now();
    loop {
        let row = admin
            .query_opt(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() \
                 AND application_name = 'perflab' AND wait_event_type = 'Lock' LIMIT 1",
                &[],
            )
            .await
            .expect("pg_stat_activity");
        if let Some(row) = row {
            return row.get(0);
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the server's PATCH never waited for the lock"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A log writer the test reads back (a current-thread runtime runs the server's tasks
/// on the test's thread, where this subscriber is the default).
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

#[tokio::test]
async fn a_write_whose_backend_is_terminated_mid_statement_says_outcome_unknown() {
    let log = Captured::default();
    let writer = log.clone();
    let _logging = tracing::subscriber::set_default(
        tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish(),
    );
    let db = TestDb::new(10).await;
    let server = TestServer::start(&db.url, &[("DB_TIMEOUT_MS", "5000")]).await;
    let locker = lock_row(&db, 1).await;
    let addr = server.addr;
    let pending = tokio::spawn(async move { patch(addr, 1, "late@example.com").await });
    let admin = db.client().await;
    let pid = waiting_backend(&admin).await;
    admin
        .execute("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .expect("terminate");
    let reply = pending.await.expect("patch");
    drop(locker);
    assert_eq!(reply.status, 503);
    assert!(
        reply.error_message().contains("outcome is unknown"),
        "the statement was sent, so a 503 must not say it was not applied: {}",
        reply.error_message()
    );
    // The client can be answered from the log: its request id, method and user.
    let id = reply.headers["x-request-id"]
        .to_str()
        .expect("a request id");
    let text = log.text();
    let line = text
        .lines()
        .find(|l| l.contains("outcome unknown") && l.contains(id))
        .unwrap_or_else(|| panic!("no log line names request {id}:\n{text}"));
    assert!(line.contains("PATCH") && line.contains("user=1"), "{line}");
}

#[tokio::test]
async fn statement_timeout_holds_when_the_url_carries_options() {
    let db = TestDb::new(10).await;
    let sep = if db.url.contains('?') { '&' } else { '?' };
    let url = format!("{}{sep}options=-c%20search_path%3Dpublic", db.url);
    let server = TestServer::start(&url, &[("DB_TIMEOUT_MS", "400")]).await;
    let locker = lock_row(&db, 1).await;
    let start = Instant::now();
    let addr = server.addr;
    let pending = tokio::spawn(async move { patch(addr, 1, "blocked@example.com").await });
    // The statement reached PostgreSQL and waits for the lock...
    waiting_backend(&db.client().await).await;
    let reply = pending.await.expect("patch");
    let took = start.elapsed();
    drop(locker);
    assert_eq!(reply.status, 503);
    // ...until statement_timeout (400 ms) ends the wait, not the server's own bound.
    assert!(
        took >= Duration::from_millis(350),
        "answered after {took:?}"
    );
    // PostgreSQL's own timeout ended the lock wait (rolled back: not applied), before
    // the server's bound on the outcome (twice as long) would have called it unknown.
    assert!(
        reply.error_message().contains("retry later"),
        "statement_timeout was not in force: {}",
        reply.error_message()
    );
    assert!(start.elapsed() < Duration::from_secs(3));
    let stored: i64 = db
        .client()
        .await
        .query_one("SELECT version FROM users WHERE id = 1", &[])
        .await
        .expect("read back")
        .get(0);
    assert_eq!(stored, 0, "a cancelled PATCH changed the row");
}

#[tokio::test]
async fn a_statement_started_after_its_apply_by_time_changes_nothing() {
    let db = TestDb::new(10).await;
    let app = support::connect(&db.url).await;
    let past = SystemTime::now() - Duration::from_millis(1);
    let single = perflab::db::UPDATE_EMAIL;
    let rows = app
        .query(single.sql, &[&1i64, &"late@example.com", &past])
        .await
        .expect("the single UPDATE");
    assert!(rows.is_empty());
    let batch = perflab::db::UPDATE_EMAILS;
    let rows = app
        .query(
            batch.sql,
            &[
                &vec![2i64, 3],
                &vec!["a@example.com", "b@example.com"],
                &past,
            ],
        )
        .await
        .expect("the batch UPDATE");
    assert!(rows.is_empty());
    let future = SystemTime::now() + Duration::from_secs(5);
    let rows = app
        .query(
            batch.sql,
            &[
                &vec![4i64, 5],
                &vec!["c@example.com", "d@example.com"],
                &future,
            ],
        )
        .await
        .expect("the batch UPDATE in time");
    assert_eq!(rows.len(), 2);
    let versions = support::stored_versions(&db.client().await).await;
    let changed: Vec<i64> = versions
        .iter()
        .filter(|(_, v)| *v > 0)
        .map(|(id, _)| *id)
        .collect();
    assert_eq!(changed, vec![4, 5], "only the statement in time applied");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_constraint_the_operator_adds_is_checked_for_every_acknowledged_value() {
    let db = TestDb::new(10).await;
    db.client()
        .await
        .batch_execute(
            "ALTER TABLE users ADD CONSTRAINT email_not_bad CHECK (email NOT LIKE 'bad%')",
        )
        .await
        .expect("add the constraint");
    // Up to 48 rounds of one statement each queue behind each other here: a generous
    // bound, so that none times out on a busy machine.
    let server = TestServer::start(
        &db.url,
        &[("COALESCE_WRITERS", "1"), ("DB_TIMEOUT_MS", "10000")],
    )
    .await;
    let addr = server.addr;
    // Concurrent PATCHes of one id, every other one refused by the constraint: under
    // `coalesce` they share batches.
    let tasks: Vec<_> = (0..48)
        .map(|i| {
            tokio::spawn(async move {
                let email = if i % 2 == 0 {
                    format!("good{i}@example.com")
                } else {
                    format!("bad{i}@example.com")
                };
                (i, patch(addr, 1, &email).await)
            })
        })
        .collect();
    let mut acked = Vec::new();
    for t in tasks {
        let (i, reply) = t.await.expect("patch");
        if i % 2 == 0 {
            assert_eq!(reply.status, 200, "good value {i}: {:?}", reply.body);
            acked.push(reply.json()["version"].as_i64().expect("version"));
        } else {
            assert_eq!(
                reply.status, 422,
                "a value the constraint refuses was answered {}: {:?}",
                reply.status, reply.body
            );
        }
    }
    acked.sort_unstable();
    assert_eq!(acked, (1..=24).collect::<Vec<i64>>());
    let stored = support::stored_versions(&db.client().await).await;
    assert_eq!(stored[0], (1, 24));
}

/// `coalesce` only: other builds lock one row per statement, which cannot deadlock.
#[cfg(feature = "coalesce")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_batching_the_same_hot_ids_never_deadlock() {
    const HOT: i64 = 6;
    let db = TestDb::new(HOT).await;
    let overrides = [("COALESCE_WRITERS", "1"), ("DB_TIMEOUT_MS", "5000")];
    let servers = [
        TestServer::start(&db.url, &overrides).await,
        TestServer::start(&db.url, &overrides).await,
    ];
    let addrs = [servers[0].addr, servers[1].addr];
    let until = Instant::now() + Duration::from_secs(4);
    let tasks: Vec<_> = (0..64u64)
        .map(|c| {
            tokio::spawn(async move {
                let mut statuses = Vec::new();
                let mut n = c;
                while Instant::now() < until {
                    n = n
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let id = 1 + ((n >> 33) % HOT as u64) as i64;
                    let reply =
                        patch(addrs[(c % 2) as usize], id, &format!("c{c}-{n}@x.org")).await;
                    statuses.push(reply.status);
                }
                statuses
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.extend(t.await.expect("client"));
    }
    for mut s in servers {
        s.begin_shutdown();
        let _ = tokio::time::timeout(Duration::from_secs(10), &mut s.handle).await;
    }
    let failed = statuses.iter().filter(|s| **s != 200).count();
    // The servers' sessions have ended, so their counters are in the statistics.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let admin = db.client().await;
    let deadlocks: i64 = admin
        .query_one(
            "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()",
            &[],
        )
        .await
        .expect("pg_stat_database")
        .get(0);
    assert_eq!(
        deadlocks,
        0,
        "{failed} of {} PATCHes failed",
        statuses.len()
    );
    assert_eq!(failed, 0, "of {} PATCHes", statuses.len());
}

#[tokio::test]
async fn a_draining_server_asks_its_clients_to_close() {
    let db = TestDb::new(3).await;
    let mut server = TestServer::start(&db.url, &[("SHUTDOWN_DELAY_MS", "3000")]).await;
    let before = server.get("/users/1").await;
    assert_eq!(before.status, 200);
    assert!(before.headers.get("connection").is_none());
    server.begin_shutdown();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let during = server.get("/users/1").await;
    assert_eq!(during.status, 200);
    assert_eq!(
        during.headers.get("connection").map(|v| v.as_bytes()),
        Some(&b"close"[..])
    );
}

#[tokio::test]
async fn the_app_role_can_change_an_email_and_nothing_else() {
    let db = TestDb::new(3).await;
    let app = support::connect(&db.url).await;
    app.execute(
        "UPDATE users SET email = 'ok@example.com', updated_at = now(), version = version + 1 WHERE id = 1",
        &[],
    )
    .await
    .expect("what a PATCH does");
    for forbidden in [
        "UPDATE users SET id = 99 WHERE id = 2",
        "UPDATE users SET name = 'x' WHERE id = 2",
        "CREATE TEMPORARY TABLE t (x int)",
        "DELETE FROM users WHERE id = 3",
    ] {
        let e = app.batch_execute(forbidden).await.expect_err(forbidden);
        assert_eq!(
            e.code(),
            Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE),
            "{forbidden}: {e}"
        );
    }
    let timeout: String = app
        .query_one("SHOW statement_timeout", &[])
        .await
        .expect("show")
        .get(0);
    assert_eq!(
        timeout, "1min",
        "the role's own bound, for sessions that set none"
    );
}

/// Sessions PostgreSQL has started in the test's database (a backend's counters reach
/// the statistics when it ends, so this waits for the short-lived ones to end).
async fn sessions(admin: &tokio_postgres::Client) -> i64 {
    tokio::time::sleep(Duration::from_millis(500)).await;
    admin
        .batch_execute("SELECT pg_stat_clear_snapshot()")
        .await
        .expect("clear snapshot");
    admin
        .query_one(
            "SELECT sessions FROM pg_stat_database WHERE datname = current_database()",
            &[],
        )
        .await
        .expect("pg_stat_database")
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_asks_postgresql_at_most_every_quarter_second() {
    let db = TestDb::new(3).await;
    let server = TestServer::start(&db.url, &[]).await;
    let admin = db.client().await;
    assert_eq!(server.get("/readyz").await.status, 200);
    let before = sessions(&admin).await;
    let start = Instant::now();
    let replies: Vec<_> = (0..100)
        .map(|_| {
            let addr = server.addr;
            tokio::spawn(async move {
                support::send(addr, "GET", "/readyz", &[], bytes::Bytes::new()).await
            })
        })
        .collect();
    for r in replies {
        assert_eq!(r.await.expect("readyz").status, 200);
    }
    let took = start.elapsed();
    // Without a pool every round trip is a new backend: at most one per quarter second
    // (and the one that may have been due when the calls began).
    let started = sessions(&admin).await - before;
    let allowed = 2 + (took.as_millis() / 250) as i64;
    assert!(
        started <= allowed,
        "{started} backends for 100 /readyz calls in {took:?} (at most {allowed})"
    );
}

#[test]
fn the_server_refuses_to_start_when_its_connections_cannot_fit_the_open_file_limit() {
    let hard = std::process::Command::new("bash")
        .args(["-c", "ulimit -Hn"])
        .output()
        .expect("ulimit");
    let hard = String::from_utf8_lossy(&hard.stdout).trim().to_string();
    if hard != "unlimited" && hard.parse::<u64>().unwrap_or(0) < 512 {
        eprintln!("skipped: the hard open-file limit here is {hard}, under the test's 512");
        return;
    }
    let run = |max_connections: &str| {
        std::process::Command::new("bash")
            .args([
                "-c",
                "ulimit -Sn 256 && ulimit -Hn 512 && exec timeout -s INT 5 \"$0\"",
                env!("CARGO_BIN_EXE_perflab"),
            ])
            .env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")
            .env("LISTEN_ADDR", "127.0.0.1:0")
            .env("MAX_PENDING", "100")
            .env("POOL_SIZE", "100")
            .env("PIPELINE_CONNECTIONS", "100")
            .env("MAX_CONNECTIONS", max_connections)
            .output()
            .expect("run the server")
    };
    let refused = run("4096");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("open-file limit is 512") && stderr.contains("MAX_CONNECTIONS"),
        "{stderr}"
    );
    // 300 + 100 + 64 fit in 512 once the soft limit (256) is raised to the hard one.
    let started = run("300");
    let stderr = String::from_utf8_lossy(&started.stderr);
    assert!(
        !stderr.contains("open-file limit"),
        "the soft limit was not raised: {stderr}"
    );
    assert!(
        String::from_utf8_lossy(&started.stdout).contains("listening")
            || stderr.contains("listening"),
        "the server did not start: {stderr}"
    );
}

/// `pool` and `pipeline` keep connections: a client that leaves in the middle of its
/// request must not cost one (builds without them open one per statement or batch).
#[cfg(any(feature = "pool", feature = "pipeline"))]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_leave_mid_request_do_not_cost_database_connections() {
    use tokio::io::AsyncWriteExt;
    const IDS: i64 = 50;
    let db = TestDb::new(IDS).await;
    let admin = db.client().await;
    let server = TestServer::start(
        &db.url,
        &[("POOL_SIZE", "4"), ("PIPELINE_CONNECTIONS", "2")],
    )
    .await;
    for id in 1..=8 {
        assert_eq!(server.get(&format!("/users/{id}")).await.status, 200);
    }
    let before = sessions(&admin).await;
    // 1,000 requests whose clients close their connection right after sending (half
    // GET, half PATCH), 50 at a time.
    for wave in 0..20i64 {
        let clients: Vec<_> = (0..50i64)
            .map(|k| {
                let addr = server.addr;
                tokio::spawn(async move {
                    let id = 1 + (wave * 50 + k) % IDS;
                    let request = if k % 2 == 0 {
                        format!("GET /users/{id} HTTP/1.1\r\nhost: t\r\n\r\n")
                    } else {
                        let body = format!("{{\"email\":\"gone{wave}-{k}@example.com\"}}");
                        format!(
                            "PATCH /users/{id} HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        )
                    };
                    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
                    stream.write_all(request.as_bytes()).await.expect("send");
                    // Gone before the answer: the socket closes here.
                })
            })
            .collect();
        for c in clients {
            c.await.expect("client");
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(server.get("/users/1").await.status, 200, "still serving");
    let started = sessions(&admin).await - before;
    // The pool may grow to its size (4) under the storm's concurrency; no more.
    assert!(
        started <= 4,
        "1000 clients that left mid-request started {started} PostgreSQL backends"
    );
}
