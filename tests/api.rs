//! Every row of the API table, against a real PostgreSQL, for whichever features this
//! test binary was built with (`scripts/test.sh` runs it for several feature sets).
// The memory store answers from memory, so these checks of PostgreSQL do not apply
// to it (tests/memory_store.rs tests that build).
#![cfg(not(feature = "memory-store"))]
mod support;

use std::collections::HashSet;

use bytes::Bytes;
use support::{send, TestDb, TestServer};

async fn setup() -> (TestDb, TestServer) {
    let db = TestDb::new(100).await;
    let server = TestServer::start(&db.url, &[]).await;
    (db, server)
}

#[tokio::test]
async fn get_returns_the_profile() {
    let (_db, server) = setup().await;
    let r = server.get("/users/42").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.headers["content-type"], "application/json");
    let v = r.json();
    assert_eq!(v["id"], 42);
    assert_eq!(v["name"], "User 42");
    assert_eq!(v["email"], "user42@example.com");
    assert_eq!(v["version"], 0);
    assert_eq!(v["updated_at"], "2024-01-01T00:00:00.000000Z");
}

#[tokio::test]
async fn every_reply_carries_its_own_request_id() {
    let (_db, server) = setup().await;
    let mut seen = HashSet::new();
    for path in ["/users/1", "/users/1", "/users/0", "/nope", "/healthz"] {
        let r = server.get(path).await;
        let id = r.headers["x-request-id"]
            .to_str()
            .expect("ascii")
            .to_string();
        assert!(
            id.len() <= 40 && id.chars().all(|c| c.is_ascii_hexdigit() || c == '-'),
            "{id}"
        );
        assert!(seen.insert(id), "a request id was given twice");
    }
}

#[tokio::test]
async fn get_unknown_user_is_404_and_bad_ids_are_400() {
    let (_db, server) = setup().await;
    let r = server.get("/users/101").await;
    assert_eq!(r.status, 404);
    assert_eq!(r.error_message(), "no such user");
    // One URL per profile: leading zeros name no user.
    assert_eq!(server.get("/users/0001").await.status, 404);
    for bad in [
        "/users/abc",
        "/users/0",
        "/users/-5",
        "/users/",
        "/users/1.5",
        "/users/99999999999999999999",
    ] {
        let r = server.get(bad).await;
        assert_eq!(r.status, 400, "{bad}");
        assert!(r.error_message().contains("positive"), "{bad}");
    }
}

#[tokio::test]
async fn patch_changes_the_email_durably_and_bumps_version() {
    let (db, server) = setup().await;
    let r = server
        .patch_email("/users/7", "new.seven@example.org")
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let v = r.json();
    assert_eq!(v["id"], 7);
    assert_eq!(v["email"], "new.seven@example.org");
    assert_eq!(v["version"], 1);
    assert_ne!(v["updated_at"], "2024-01-01T00:00:00.000000Z");
    // Committed before the reply: a separate connection sees it at once.
    let row = db
        .client()
        .await
        .query_one("SELECT email, version FROM users WHERE id = 7", &[])
        .await
        .expect("row");
    assert_eq!(row.get::<_, String>(0), "new.seven@example.org");
    assert_eq!(row.get::<_, i64>(1), 1);
    let again = server.get("/users/7").await.json();
    assert_eq!(again["email"], "new.seven@example.org");
    assert_eq!(again["version"], 1);
}

#[tokio::test]
async fn patch_rejects_bad_bodies_with_the_right_status() {
    let (db, server) = setup().await;
    let json = [("content-type", "application/json")];
    // (name, headers, body, expected status, text the error message must contain)
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, String, u16, &'a str);
    let cases: Vec<Case> = vec![
        (
            "malformed",
            json.to_vec(),
            "{\"email\":".into(),
            400,
            "invalid body",
        ),
        (
            "missing field",
            json.to_vec(),
            "{}".into(),
            400,
            "one string field, email",
        ),
        (
            "extra field",
            json.to_vec(),
            "{\"email\":\"a@b\",\"admin\":true}".into(),
            400,
            "one string field, email",
        ),
        (
            "not an object",
            json.to_vec(),
            "[1,2]".into(),
            400,
            "invalid body",
        ),
        (
            "empty email",
            json.to_vec(),
            "{\"email\":\"\"}".into(),
            422,
            "empty",
        ),
        (
            "no at",
            json.to_vec(),
            "{\"email\":\"nobody.example.com\"}".into(),
            422,
            "@",
        ),
        (
            "whitespace",
            json.to_vec(),
            "{\"email\":\"a b@c.d\"}".into(),
            422,
            "whitespace",
        ),
        (
            "NUL",
            json.to_vec(),
            "{\"email\":\"a\\u0000@b.c\"}".into(),
            422,
            "control",
        ),
        (
            "escape",
            json.to_vec(),
            "{\"email\":\"a\\u001b@b.c\"}".into(),
            422,
            "control",
        ),
        (
            "too long",
            json.to_vec(),
            format!("{{\"email\":\"{}@example.com\"}}", "x".repeat(250)),
            422,
            "254",
        ),
        (
            "too large",
            json.to_vec(),
            format!("{{\"email\":\"{}@example.com\"}}", "x".repeat(5000)),
            413,
            "4096",
        ),
        (
            "no content type",
            vec![],
            "{\"email\":\"a@b\"}".into(),
            415,
            "application/json",
        ),
        (
            "text content type",
            vec![("content-type", "text/plain")],
            "{\"email\":\"a@b\"}".into(),
            415,
            "application/json",
        ),
    ];
    for (name, headers, body, status, needle) in cases {
        let r = send(
            server.addr,
            "PATCH",
            "/users/3",
            &headers,
            Bytes::from(body),
        )
        .await;
        assert_eq!(r.status, status, "{name}: {:?}", r.body);
        assert!(
            r.error_message().contains(needle),
            "{name}: {:?} lacks {needle:?}",
            r.error_message()
        );
    }
    // None of them changed the row.
    let row = db
        .client()
        .await
        .query_one("SELECT email, version FROM users WHERE id = 3", &[])
        .await
        .expect("row");
    assert_eq!(row.get::<_, String>(0), "user3@example.com");
    assert_eq!(row.get::<_, i64>(1), 0);
}

#[tokio::test]
async fn patch_unknown_user_is_404_and_bad_id_is_400() {
    let (_db, server) = setup().await;
    assert_eq!(server.patch_email("/users/5000", "a@b.c").await.status, 404);
    assert_eq!(server.patch_email("/users/zero", "a@b.c").await.status, 400);
}

#[tokio::test]
async fn other_methods_are_405_with_allow() {
    let (_db, server) = setup().await;
    for method in ["POST", "PUT", "DELETE"] {
        let r = send(server.addr, method, "/users/1", &[], Bytes::new()).await;
        assert_eq!(r.status, 405, "{method}");
        assert_eq!(r.headers["allow"], "GET, HEAD, PATCH");
        assert!(!r.error_message().is_empty());
    }
    let r = send(server.addr, "POST", "/healthz", &[], Bytes::new()).await;
    assert_eq!(r.status, 405);
    assert_eq!(r.headers["allow"], "GET, HEAD");
}

#[tokio::test]
async fn head_is_get_without_a_body() {
    let (_db, server) = setup().await;
    for (path, status) in [("/users/42", 200), ("/users/101", 404), ("/healthz", 200)] {
        let get = server.get(path).await;
        let head = send(server.addr, "HEAD", path, &[], Bytes::new()).await;
        assert_eq!(head.status, status, "HEAD {path}");
        assert_eq!(get.status, status, "GET {path}");
        assert!(head.body.is_empty(), "HEAD {path} carried a body");
        assert_eq!(head.headers["content-type"], get.headers["content-type"]);
        assert_eq!(
            head.headers["content-length"],
            get.body.len().to_string().as_str(),
            "HEAD {path}: the length GET would send"
        );
    }
}

#[tokio::test]
async fn unknown_paths_are_404_json() {
    let (_db, server) = setup().await;
    for path in ["/", "/user/1", "/users", "/users/1/extra", "/healthzz"] {
        let r = server.get(path).await;
        assert_eq!(r.status, 404, "{path}");
        assert!(!r.error_message().is_empty());
    }
}

#[tokio::test]
async fn health_readiness_and_version() {
    let (_db, server) = setup().await;
    assert_eq!(server.get("/healthz").await.status, 200);
    assert_eq!(server.get("/readyz").await.status, 200);
    let v = server.get("/version").await;
    assert_eq!(v.status, 200);
    let v = v.json();
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    let reported: Vec<String> = v["features"]
        .as_array()
        .expect("features list")
        .iter()
        .map(|f| f.as_str().expect("string").to_string())
        .collect();
    // The features this build was compiled with (build_info's list, checked against
    // Cargo.toml by its own test), in order.
    let expected = perflab::build_info::enabled_features();
    assert_eq!(reported, expected);
}

/// The value of one sample line in a Prometheus text exposition (0 when absent).
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn metrics_exist_only_when_built_in() {
    let (_db, server) = setup().await;
    let series = r#"perflab_http_requests_total{method="PATCH",route="/users/{id}",status="200"}"#;
    let before = server.get("/metrics").await;
    assert_eq!(server.get("/users/1").await.status, 200);
    assert_eq!(
        server.patch_email("/users/1", "m@example.com").await.status,
        200
    );
    let r = server.get("/metrics").await;
    if cfg!(feature = "metrics") {
        assert_eq!(r.status, 200);
        assert!(r.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain"));
        let text = String::from_utf8_lossy(&r.body).to_string();
        let earlier = String::from_utf8_lossy(&before.body).to_string();
        // The registry is per process and tests run in parallel: count at least ours.
        assert!(
            sample(&text, series) >= sample(&earlier, series) + 1.0,
            "{text}"
        );
        assert!(text.contains("perflab_http_request_duration_seconds_bucket"));
        if cfg!(feature = "pool") {
            assert!(text.contains("perflab_db_pool_connections"));
        }
    } else {
        assert_eq!(before.status, 404);
        assert_eq!(r.status, 404);
        assert!(r.error_message().contains("metrics"));
    }
}

#[tokio::test]
async fn concurrent_patches_are_each_applied_exactly_once() {
    let db = TestDb::new(100).await;
    let server = TestServer::start(&db.url, &[("DB_TIMEOUT_MS", "5000")]).await;
    let addr = server.addr;
    // 40 writers on one hot id, and one writer on each of 20 other ids.
    let mut tasks = Vec::new();
    for i in 0..40 {
        tasks.push(tokio::spawn(async move {
            let body = format!("{{\"email\":\"hot{i}@example.com\"}}");
            let r = send(
                addr,
                "PATCH",
                "/users/10",
                &[("content-type", "application/json")],
                Bytes::from(body),
            )
            .await;
            (10_i64, i, r)
        }));
    }
    for id in 20..40_i64 {
        tasks.push(tokio::spawn(async move {
            let body = format!("{{\"email\":\"cold{id}@example.com\"}}");
            let path = format!("/users/{id}");
            let r = send(
                addr,
                "PATCH",
                &path,
                &[("content-type", "application/json")],
                Bytes::from(body),
            )
            .await;
            (id, 0, r)
        }));
    }
    let mut hot_versions = HashSet::new();
    let mut hot_last = (0_i64, String::new());
    for t in tasks {
        let (id, i, r) = t.await.expect("task");
        assert_eq!(r.status, 200, "{:?}", r.body);
        let v = r.json();
        assert_eq!(v["id"], id);
        let version = v["version"].as_i64().expect("version");
        if id == 10 {
            assert_eq!(
                v["email"],
                format!("hot{i}@example.com"),
                "each reply echoes its own write"
            );
            assert!(
                hot_versions.insert(version),
                "version {version} acknowledged twice"
            );
            if version > hot_last.0 {
                hot_last = (version, format!("hot{i}@example.com"));
            }
        } else {
            assert_eq!(version, 1);
        }
    }
    assert_eq!(hot_versions, (1..=40).collect::<HashSet<i64>>());
    let client = db.client().await;
    let row = client
        .query_one("SELECT version, email FROM users WHERE id = 10", &[])
        .await
        .expect("row");
    assert_eq!(row.get::<_, i64>(0), 40);
    assert_eq!(
        row.get::<_, String>(1),
        hot_last.1,
        "the last acknowledged write wins"
    );
    let total: i64 = client
        .query_one("SELECT sum(version)::bigint FROM users", &[])
        .await
        .expect("sum")
        .get(0);
    assert_eq!(
        total, 60,
        "every acknowledged write, and nothing else, was applied"
    );
}

#[tokio::test]
async fn stats_report_the_servers_own_cpu_and_memory() {
    let (_db, server) = setup().await;
    let r = server.get("/stats").await;
    assert_eq!(r.status, 200);
    let v = r.json();
    assert!(v["cpu_ticks"].as_u64().is_some(), "{v}");
    assert!(v["peak_rss_kib"].as_u64().unwrap_or(0) > 0, "{v}");
    let post = send(server.addr, "POST", "/stats", &[], Bytes::new()).await;
    assert_eq!(post.status, 405);
}

#[tokio::test]
async fn the_server_runs_as_a_role_that_may_only_read_and_update_users() {
    let (db, server) = setup().await;
    // The server works as this role (every test here runs it so)...
    assert_eq!(
        server
            .patch_email("/users/9", "nine@example.com")
            .await
            .status,
        200
    );
    // ...and the role can do nothing else.
    let app = support::connect(&db.url).await;
    for statement in [
        "DELETE FROM users WHERE id = 1",
        "INSERT INTO users (id, name, email, updated_at) VALUES (0, 'x', 'x@y', now())",
        "DROP TABLE users",
        "CREATE TABLE other (id int)",
        "TRUNCATE users",
    ] {
        let e = app.batch_execute(statement).await.expect_err(statement);
        assert_eq!(
            e.code(),
            Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE),
            "{statement}: {e}"
        );
    }
}
