//! The `memory-store` reference build: the same API answered from memory. The users are
//! read from PostgreSQL once; PATCHes change memory only, each applied exactly once.
#![cfg(feature = "memory-store")]
mod support;

use std::collections::HashSet;

use bytes::Bytes;
use support::{patch, send, stored_versions, TestDb, TestServer};

#[tokio::test]
async fn serves_the_seeded_users_with_the_same_contract() {
    let db = TestDb::new(100).await;
    let server = TestServer::start(&db.url, &[]).await;
    let v = server.get("/users/42").await.json();
    assert_eq!(v["id"], 42);
    assert_eq!(v["name"], "User 42");
    assert_eq!(v["email"], "user42@example.com");
    assert_eq!(v["version"], 0);
    assert_eq!(v["updated_at"], "2024-01-01T00:00:00.000000Z");
    assert_eq!(server.get("/users/101").await.status, 404);
    assert_eq!(server.get("/users/0").await.status, 400);
    assert_eq!(
        server.patch_email("/users/7", "not an email").await.status,
        422
    );
    let r = send(
        server.addr,
        "PATCH",
        "/users/7",
        &[("content-type", "text/plain")],
        Bytes::from_static(b"{\"email\":\"a@b.c\"}"),
    )
    .await;
    assert_eq!(r.status, 415);
    assert_eq!(server.patch_email("/users/101", "a@b.c").await.status, 404);
}

#[tokio::test]
async fn a_patch_changes_memory_only_and_is_read_back() {
    let db = TestDb::new(100).await;
    let server = TestServer::start(&db.url, &[]).await;
    let r = server.patch_email("/users/7", "seven@example.org").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let v = r.json();
    assert_eq!(v["email"], "seven@example.org");
    assert_eq!(v["version"], 1);
    let stamp = v["updated_at"].as_str().expect("a timestamp").to_string();
    assert_ne!(stamp, "2024-01-01T00:00:00.000000Z");
    assert!(stamp.len() == 27 && stamp.ends_with('Z'), "{stamp}");
    let again = server.get("/users/7").await.json();
    assert_eq!(again["email"], "seven@example.org");
    assert_eq!(again["version"], 1);
    assert_eq!(again["updated_at"], stamp.as_str());
    // PostgreSQL never saw it.
    let versions = stored_versions(&db.client().await).await;
    assert!(versions.iter().all(|(_, v)| *v == 0), "{versions:?}");
}

#[tokio::test]
async fn concurrent_patches_of_one_id_are_each_applied_once() {
    let db = TestDb::new(100).await;
    let server = TestServer::start(&db.url, &[]).await;
    let addr = server.addr;
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            tokio::spawn(async move { (i, patch(addr, 10, &format!("hot{i}@example.com")).await) })
        })
        .collect();
    let mut versions = HashSet::new();
    let mut last = (0, String::new());
    for t in tasks {
        let (i, r) = t.await.expect("task");
        assert_eq!(r.status, 200, "{:?}", r.body);
        let v = r.json();
        assert_eq!(v["email"], format!("hot{i}@example.com"));
        let version = v["version"].as_i64().expect("version");
        assert!(versions.insert(version), "version {version} twice");
        if version > last.0 {
            last = (version, format!("hot{i}@example.com"));
        }
    }
    assert_eq!(versions, (1..=40).collect::<HashSet<i64>>());
    let now = server.get("/users/10").await.json();
    assert_eq!(now["version"], 40);
    assert_eq!(now["email"], last.1.as_str(), "the last write wins");
}

#[tokio::test]
async fn version_lists_the_reference_feature() {
    let db = TestDb::new(10).await;
    let server = TestServer::start(&db.url, &[]).await;
    let v = server.get("/version").await.json();
    let features: Vec<_> = v["features"]
        .as_array()
        .expect("features")
        .iter()
        .filter_map(|f| f.as_str())
        .collect();
    assert!(features.contains(&"memory-store"), "{features:?}");
}
