//! PostgreSQL going away under load, for each build that keeps connections (`pool`,
//! `pipeline`, `coalesce`): a restart (fast shutdown, then start) and, separately, a
//! backend killed with SIGKILL (PostgreSQL then restarts every backend), each in the
//! middle of 20 s of mixed load. The server recovers by itself within `RECOVERY`, and
//! per id no acknowledged PATCH is lost and none is applied twice, reconciled from the
//! replies. It restarts the cluster of `scripts/test.sh` (it finds its data folder with
//! `SHOW data_directory`), so it is the only test in its binary.
// The memory store answers from memory, so these checks of PostgreSQL do not apply
// to it (tests/memory_store.rs tests that build).
#![cfg(not(feature = "memory-store"))]
#![cfg(any(feature = "pool", feature = "pipeline", feature = "coalesce"))]

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::load::{offer, reconcile};
use support::pg::{as_owner, pg_tool};
use support::{send_checked, TestDb, TestServer};

const IDS: i64 = 40;
/// How soon after PostgreSQL is back the server serves again, at most.
const RECOVERY: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy)]
enum Disruption {
    Restart,
    KillBackend,
}

/// `pg_ctl restart -m fast` of the cluster in `data`, its output kept in a log beside
/// the data folder. If the restart reports a failure and the cluster is not running,
/// one `pg_ctl start` follows; a cluster that still does not run fails the test with
/// the log's end.
fn restart(data: &str) {
    let log = std::path::Path::new(data).with_file_name("restart.log");
    let log_s = log.to_str().expect("utf-8 path");
    let pg_ctl = pg_tool("pg_ctl");
    let restarted = as_owner(
        &pg_ctl,
        &[
            "-D", data, "-l", log_s, "-m", "fast", "-w", "-t", "60", "restart",
        ],
    );
    if restarted.success() {
        return;
    }
    let running = as_owner(&pg_ctl, &["-D", data, "status"]).success();
    eprintln!("pg_ctl restart reported {restarted}; running afterwards: {running}");
    if !running {
        let started = as_owner(
            &pg_ctl,
            &["-D", data, "-l", log_s, "-w", "-t", "60", "start"],
        );
        if !started.success() {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(20).collect();
            panic!(
                "PostgreSQL did not come back after a restart:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
    }
}

async fn disrupt(db: &TestDb, how: Disruption) {
    let pg = db.client().await;
    match how {
        Disruption::Restart => {
            let data: String = pg
                .query_one("SHOW data_directory", &[])
                .await
                .expect("data_directory")
                .get(0);
            drop(pg);
            tokio::task::spawn_blocking(move || restart(&data))
                .await
                .expect("pg_ctl");
        }
        Disruption::KillBackend => {
            // Builds without a pool hold a backend only per statement: look until one
            // is caught alive. A backend caught while it exits by itself is a zombie
            // that `kill` still reports as signalled, and its end is no crash: then
            // this session lives on, and the next backend is tried.
            let start = Instant::now();
            'kill: loop {
                assert!(
                    start.elapsed() < Duration::from_secs(30),
                    "no backend of the server could be killed within 30 s"
                );
                let row = pg
                    .query_opt(
                        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() \
                         AND application_name = 'perflab' LIMIT 1",
                        &[],
                    )
                    .await;
                // This session ended late: the crash restart of an earlier kill.
                let Ok(row) = row else { break 'kill };
                if let Some(pid) = row.map(|r| r.get::<_, i32>(0)) {
                    let killed = Command::new("kill")
                        .args(["-KILL", &pid.to_string()])
                        .stderr(Stdio::null())
                        .status()
                        .expect("kill");
                    if killed.success() {
                        // A killed backend makes the postmaster end every session and
                        // recover. Wait until that has begun (this session ends too):
                        // a connection made before it would say "back" too early.
                        let gone = Instant::now();
                        while gone.elapsed() < Duration::from_secs(3) {
                            if pg.simple_query("SELECT 1").await.is_err() {
                                break 'kill;
                            }
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                        eprintln!("backend {pid} ended without a crash restart; trying another");
                        continue;
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
    // Wait until PostgreSQL accepts connections again.
    let back = Instant::now();
    loop {
        if tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
            .await
            .is_ok()
        {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(60),
            "PostgreSQL did not come back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn survive(how: Disruption) {
    let db = TestDb::new(IDS).await;
    let server = TestServer::start(&db.url, &[("DB_TIMEOUT_MS", "1000")]).await;
    let addr = server.addr;
    let load = tokio::spawn(offer(addr, IDS, 64, 400.0, Duration::from_secs(20)));
    tokio::time::sleep(Duration::from_secs(5)).await;
    disrupt(&db, how).await;
    let back = Instant::now();
    loop {
        if send_checked(addr, "GET", "/users/1", bytes::Bytes::new()).await == Ok(200) {
            break;
        }
        assert!(
            back.elapsed() < RECOVERY,
            "{how:?}: not serving {RECOVERY:?} after PostgreSQL was back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let recovered = back.elapsed();
    let outcomes = load.await.expect("load");
    let ok = outcomes.iter().filter(|o| o.status == 200).count();
    let failed: Vec<&support::load::Outcome> = outcomes
        .iter()
        .filter(|o| o.patch && o.status != 200)
        .collect();
    eprintln!(
        "{how:?}: {} requests, {ok} ok, {} PATCHes not acknowledged; serving again {recovered:?} after PostgreSQL was back",
        outcomes.len(),
        failed.len()
    );
    assert!(ok > 0);
    // A PATCH that got no 200 may have been applied only if its 503 said the outcome
    // is unknown (the connection broke after the statement was sent) or no reply came
    // at all, at most once; every acknowledged one is stored, once. A 503 that says
    // "retry later" promises the write was not applied.
    let unknown: Vec<i64> = failed
        .iter()
        .filter(|o| o.unknown || o.status == 0)
        .map(|o| o.id)
        .collect();
    eprintln!("{how:?}: {} PATCHes with an unknown outcome", unknown.len());
    let pg = db.client().await;
    reconcile(&pg, &outcomes, |id| {
        unknown.iter().filter(|i| **i == id).count() as i64
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_and_killed_backends_lose_no_write_and_double_none() {
    survive(Disruption::Restart).await;
    survive(Disruption::KillBackend).await;
}
