//! Shared test support: each test gets its own database in the throwaway PostgreSQL
//! cluster started by `scripts/test.sh` (`TEST_DATABASE_URL`), an in-process server on
//! `127.0.0.1:0`, and a small HTTP/1 client.
#![allow(dead_code)]

pub mod load;
pub mod pg;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use perflab::config::Config;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_postgres::{Client, NoTls};

pub const SCHEMA: &str = include_str!("../../sql/schema.sql");
pub const INDEX: &str = include_str!("../../sql/index.sql");
pub const SEED: &str = include_str!("../../sql/seed.sql");
pub const APP_ROLE: &str = include_str!("../../sql/app_role.sql");

static NEXT_DB: AtomicU32 = AtomicU32::new(0);

fn admin_url() -> String {
    std::env::var("TEST_DATABASE_URL").unwrap_or_else(|_| {
        panic!("TEST_DATABASE_URL is not set: run the tests with ./scripts/test.sh, which starts PostgreSQL")
    })
}

pub async fn connect(url: &str) -> Client {
    let (client, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"));
    tokio::spawn(conn);
    client
}

/// A database owned by one test, seeded with `users` users (ids 1..=users).
pub struct TestDb {
    /// What the server connects with: the app's least-privileged role (SELECT and
    /// UPDATE on `users` only, as in every real run), so every test also checks that
    /// the server needs no more.
    pub url: String,
    /// The superuser's URL for this database: crafting rows, reading back.
    pub admin_url: String,
    pub name: String,
}

impl TestDb {
    pub async fn new(users: i64) -> Self {
        let admin = connect(&admin_url()).await;
        let name = format!(
            "perflab_t{}_{}",
            std::process::id(),
            NEXT_DB.fetch_add(1, Ordering::Relaxed)
        );
        admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {name}"))
            .await
            .expect("drop old test database");
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create test database");
        let admin_url = url_with_db(&admin_url(), &name);
        seed(&connect(&admin_url).await, users).await;
        let url = url_with_user(&admin_url, "perflab_app");
        Self {
            url,
            admin_url,
            name,
        }
    }

    /// A superuser connection to this database.
    pub async fn client(&self) -> Client {
        connect(&self.admin_url).await
    }
}

/// Creates the schema and the app's role, and seeds `users` users (ids 1..=users).
pub async fn seed(db: &Client, users: i64) {
    db.batch_execute(SCHEMA).await.expect("schema");
    db.batch_execute(APP_ROLE).await.expect("the app's role");
    db.execute(SEED, &[&users]).await.expect("seed");
    db.batch_execute(INDEX).await.expect("index");
}

/// Replaces the user (and drops any password) in a `postgres://` URL; the throwaway
/// cluster trusts loopback connections.
pub fn url_with_user(url: &str, user: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let host = rest.split_once('@').map_or(rest, |(_, h)| h);
    format!("{scheme}://{user}@{host}")
}

/// Replaces the database name in a `postgres://` URL.
pub fn url_with_db(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let host_part = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    format!("{host_part}/{db}{query}")
}

/// An in-process server on 127.0.0.1:0.
pub struct TestServer {
    pub addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    pub handle: JoinHandle<Result<(), String>>,
}

impl TestServer {
    pub async fn start(database_url: &str, overrides: &[(&str, &str)]) -> Self {
        let mut env: HashMap<String, String> = HashMap::new();
        env.insert("DATABASE_URL".into(), database_url.into());
        env.insert("POOL_SIZE".into(), "8".into());
        env.insert("DB_TIMEOUT_MS".into(), "1500".into());
        for (k, v) in overrides {
            env.insert((*k).into(), (*v).into());
        }
        let config = Config::from_lookup(|k| env.get(k).cloned()).expect("valid test config");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(async move {
            perflab::server::run(listener, &config, async {
                let _ = rx.await;
            })
            .await
            .map_err(|e| e.to_string())
        });
        Self {
            addr,
            shutdown: Some(tx),
            handle,
        }
    }

    /// Asks for a graceful shutdown (like SIGTERM) without waiting for it.
    pub fn begin_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    pub async fn get(&self, path: &str) -> Reply {
        send(self.addr, "GET", path, &[], Bytes::new()).await
    }

    pub async fn patch_email(&self, path: &str, email: &str) -> Reply {
        let body = serde_json::json!({ "email": email }).to_string();
        send(
            self.addr,
            "PATCH",
            path,
            &[("content-type", "application/json")],
            Bytes::from(body),
        )
        .await
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.begin_shutdown();
    }
}

#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn error_message(&self) -> String {
        self.json()["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error message in {:?}", self.body))
            .to_string()
    }
}

/// Sends one request on a new connection and reads the whole reply (10 s bound).
pub async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Reply {
    tokio::time::timeout(Duration::from_secs(10), async {
        let stream = TcpStream::connect(addr).await.expect("connect");
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(conn);
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", addr.to_string());
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(body)).expect("request");
        let res = sender.send_request(req).await.expect("response");
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let body = res.into_body().collect().await.expect("body").to_bytes();
        Reply {
            status,
            headers,
            body,
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{method} {path} took longer than 10 s"))
}

/// Like [`send`] without headers, but a refused, reset or cut connection is an `Err`
/// (with what went wrong) instead of a panic: for tests that count such failures.
pub async fn send_checked(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Bytes,
) -> Result<u16, String> {
    let attempt = async {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(conn);
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", addr.to_string())
            .body(Full::new(body))
            .map_err(|e| format!("request: {e}"))?;
        let res = sender
            .send_request(req)
            .await
            .map_err(|e| format!("response: {e}"))?;
        let status = res.status().as_u16();
        res.into_body()
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?;
        Ok(status)
    };
    tokio::time::timeout(Duration::from_secs(10), attempt)
        .await
        .unwrap_or_else(|_| Err(format!("{method} {path} took longer than 10 s")))
}

/// `PATCH /users/{id}` with `{"email": email}` on a new connection.
pub async fn patch(addr: SocketAddr, id: i64, email: &str) -> Reply {
    let body = serde_json::json!({ "email": email }).to_string();
    send(
        addr,
        "PATCH",
        &format!("/users/{id}"),
        &[("content-type", "application/json")],
        Bytes::from(body),
    )
    .await
}

/// Every (id, version) stored, in id order.
pub async fn stored_versions(db: &Client) -> Vec<(i64, i64)> {
    db.query("SELECT id, version FROM users ORDER BY id", &[])
        .await
        .expect("read back")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}
