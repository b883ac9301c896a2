//! Hot ids under concurrency: many concurrent PATCHes and GETs on a few very hot ids,
//! some cold ones and missing ones, then the truth from PostgreSQL. For every build that
//! shares connections or batches requests (`pool`, `pipeline`, `coalesce`): for each id
//! the acknowledged versions are exactly 1..=n and the stored version is n; the stored
//! email is that of version n; every reply echoes its own request; a client reads its own
//! acknowledged write.
// The memory store answers from memory, so these checks of PostgreSQL do not apply
// to it (tests/memory_store.rs tests that build).
#![cfg(not(feature = "memory-store"))]
#![cfg(any(feature = "pool", feature = "pipeline", feature = "coalesce"))]

mod support;

use std::collections::BTreeMap;

use bytes::Bytes;
use support::{patch, send, TestDb, TestServer};

const HOT: [i64; 3] = [1, 2, 3];
const USERS: i64 = 200;
const CLIENTS: u64 = 32;
const OPS: u64 = 40;

/// An acknowledged PATCH: (id, version, email).
type Ack = (i64, i64, String);

fn next(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

async fn client(addr: std::net::SocketAddr, c: u64) -> Vec<Ack> {
    let mut acks = Vec::new();
    let mut x = 0x9E37_79B9_7F4A_7C15 ^ (c + 1).wrapping_mul(0x1000_0000_01B3);
    for op in 0..OPS {
        let roll = next(&mut x) % 100;
        let cold = 10 + (next(&mut x) % (USERS as u64 - 10)) as i64;
        let hot = HOT[(next(&mut x) % HOT.len() as u64) as usize];
        let missing = 1_000_000 + (next(&mut x) % 1000) as i64;
        match roll {
            0..=59 => {
                let id = if roll < 45 { hot } else { cold };
                let email = format!("c{c}-{op}@example.com");
                let r = patch(addr, id, &email).await;
                assert_eq!(r.status, 200, "PATCH {id}: {:?}", r.body);
                let v = r.json();
                assert_eq!(v["id"], id, "a reply for another id");
                assert_eq!(
                    v["email"],
                    email.as_str(),
                    "a reply with another request's email"
                );
                let version = v["version"].as_i64().expect("version");
                // Read your own write: the version is at least the acknowledged one,
                // and if nobody wrote since, the email is ours.
                if op % 3 == 0 {
                    let g = send(addr, "GET", &format!("/users/{id}"), &[], Bytes::new()).await;
                    assert_eq!(g.status, 200);
                    let g = g.json();
                    let seen = g["version"].as_i64().expect("version");
                    assert!(
                        seen >= version,
                        "read version {seen} after acknowledged {version}"
                    );
                    if seen == version {
                        assert_eq!(g["email"], email.as_str());
                    }
                }
                acks.push((id, version, email));
            }
            60..=84 => {
                let id = if roll < 75 { hot } else { cold };
                let g = send(addr, "GET", &format!("/users/{id}"), &[], Bytes::new()).await;
                assert_eq!(g.status, 200, "GET {id}");
                assert_eq!(g.json()["id"], id);
            }
            85..=94 => {
                let g = send(addr, "GET", &format!("/users/{missing}"), &[], Bytes::new()).await;
                assert_eq!(g.status, 404, "GET missing {missing}");
            }
            _ => {
                let r = patch(addr, missing, "ghost@example.com").await;
                assert_eq!(r.status, 404, "PATCH missing {missing}");
            }
        }
    }
    acks
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hot_ids_keep_every_acknowledged_write_in_order() {
    let db = TestDb::new(USERS).await;
    let server = TestServer::start(&db.url, &[("DB_TIMEOUT_MS", "10000")]).await;
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|c| tokio::spawn(client(server.addr, c)))
        .collect();
    let mut by_id: BTreeMap<i64, Vec<(i64, String)>> = BTreeMap::new();
    for t in tasks {
        for (id, version, email) in t.await.expect("client task") {
            by_id.entry(id).or_default().push((version, email));
        }
    }
    assert!(
        HOT.iter()
            .all(|h| by_id.get(h).is_some_and(|v| v.len() > 50)),
        "the hot ids were not hot enough"
    );
    if cfg!(all(feature = "coalesce", feature = "metrics")) {
        // The hot ids must really have been batched (and so folded) together.
        let m = send(server.addr, "GET", "/metrics", &[], Bytes::new()).await;
        let text = String::from_utf8_lossy(&m.body).to_string();
        let value = |series: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(series))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        let single = value("perflab_db_batch_size_bucket{kind=\"write\",le=\"1\"} ");
        let batches = value("perflab_db_batch_size_count{kind=\"write\"} ");
        assert!(
            batches > single,
            "no write batch held more than one PATCH:\n{text}"
        );
    }
    let pg = db.client().await;
    let rows = pg
        .query(
            "SELECT id, version, email FROM users WHERE version > 0",
            &[],
        )
        .await
        .expect("read back");
    assert_eq!(
        rows.len(),
        by_id.len(),
        "rows changed that no PATCH acknowledged"
    );
    for row in rows {
        let (id, stored, email): (i64, i64, String) = (row.get(0), row.get(1), row.get(2));
        let mut acked = by_id.remove(&id).expect("acknowledged writes for this id");
        acked.sort();
        let versions: Vec<i64> = acked.iter().map(|(v, _)| *v).collect();
        let expected: Vec<i64> = (1..=acked.len() as i64).collect();
        assert_eq!(
            versions, expected,
            "id {id}: acknowledged versions are not 1..=n"
        );
        assert_eq!(stored, acked.len() as i64, "id {id}: stored version");
        assert_eq!(
            email,
            acked.last().expect("one").1,
            "id {id}: stored email is not the last acknowledged"
        );
    }
}
