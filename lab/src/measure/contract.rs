//! The API contract, checked in a few requests before a row is measured: what lets any
//! server, ours or not, stand in the same table. GET answers 200 with the five fields,
//! a missing id 404, and PATCH 200 with the new email and `version` + 1, which a GET
//! then reads back. The probe's PATCHes put the seeded email back, so the data the
//! search starts from differ from the seed only in one id's `version` (+2).
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::matrix::Row;
use crate::measure::http;
use crate::measure::remote::{check_features, Remote};

const TIMEOUT: Duration = Duration::from_secs(5);

/// The profile fields the contract names, and their JSON types.
const FIELDS: &[(&str, &str)] = &[
    ("id", "integer"),
    ("name", "string"),
    ("email", "string"),
    ("updated_at", "string"),
    ("version", "integer"),
];

/// PATCHes a passing probe has had answered 200 (and applied): a check that compares
/// a whole Job's acknowledged PATCHes with the database counts them.
pub const PROBE_PATCHES: u64 = 2;

/// What every server passes before it is measured, on both targets: ours must be the
/// build the row names (`/version`), and any server must keep the contract.
pub fn check_server(remote: &Remote, row: &Row, users: i64) -> Result<()> {
    if row.external.is_none() && row.service.is_none() {
        check_features(remote, row)?;
    }
    probe(remote.addr, Some(users + 1))
        .map_err(|e| anyhow::anyhow!("the contract probe failed: {e:#}"))
}

/// Checks the contract on id 1 and, where one is known, an id no user has (a service's
/// own database may hold more users than the load asks for); the error says what
/// broke. A pass applied [`PROBE_PATCHES`] PATCHes.
pub fn probe(addr: SocketAddr, missing: Option<i64>) -> Result<()> {
    let before = profile(addr, "GET", 1, None).context("GET /users/1")?;
    if let Some(missing) = missing {
        let r = http::request(addr, "GET", &format!("/users/{missing}"), None, TIMEOUT)?;
        if r.status != 404 {
            bail!(
                "GET /users/{missing} (no such user) answered {}, not 404",
                r.status
            );
        }
    }
    let email = before.email.clone();
    let probe_email = format!("contract-probe-{}@example.com", std::process::id());
    let changed = profile(addr, "PATCH", 1, Some(&probe_email)).context("PATCH /users/1")?;
    let expect = |what: &str, got: &Profile, email: &str, version: i64| -> Result<()> {
        if got.email != email || got.version != version {
            bail!(
                "{what}: email {:?} version {}, expected {email:?} version {version}",
                got.email,
                got.version
            );
        }
        Ok(())
    };
    expect("PATCH /users/1", &changed, &probe_email, before.version + 1)?;
    let read = profile(addr, "GET", 1, None).context("GET /users/1 after the PATCH")?;
    expect(
        "GET /users/1 after the PATCH",
        &read,
        &probe_email,
        before.version + 1,
    )?;
    let back =
        profile(addr, "PATCH", 1, Some(&email)).context("PATCH /users/1 (the email back)")?;
    expect(
        "PATCH /users/1 (the email back)",
        &back,
        &email,
        before.version + 2,
    )
}

struct Profile {
    email: String,
    version: i64,
}

/// One request on `/users/{id}` that must answer 200 with a whole profile of that id.
fn profile(addr: SocketAddr, method: &str, id: i64, email: Option<&str>) -> Result<Profile> {
    let body = email.map(|e| serde_json::json!({ "email": e }).to_string());
    let r = http::request(
        addr,
        method,
        &format!("/users/{id}"),
        body.as_deref(),
        TIMEOUT,
    )?;
    if r.status != 200 {
        bail!(
            "answered {}, not 200: {}",
            r.status,
            r.body.chars().take(200).collect::<String>()
        );
    }
    let v: Value = serde_json::from_str(&r.body).context("the body is not JSON")?;
    let obj = v.as_object().context("the body is not a JSON object")?;
    for (field, kind) in FIELDS {
        let value = obj
            .get(*field)
            .with_context(|| format!("the profile has no `{field}`"))?;
        let ok = match *kind {
            "integer" => value.is_i64(),
            _ => value.is_string(),
        };
        if !ok {
            bail!("`{field}` is not a JSON {kind}: {value}");
        }
    }
    if obj["id"].as_i64() != Some(id) {
        bail!("the profile of id {id} says id {}", obj["id"]);
    }
    Ok(Profile {
        email: obj["email"].as_str().unwrap_or_default().to_string(),
        version: obj["version"].as_i64().unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::sync::{Arc, Mutex};

    /// A tiny server of the API over one user in memory, with a fault to inject.
    fn serve(fault: &'static str) -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(("user1@example.com".to_string(), 0i64)));
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut s) = conn else { return };
                let mut buf = vec![0u8; 4096];
                let n = s.read(&mut buf).unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]).to_string();
                let line = req.lines().next().unwrap_or("").to_string();
                let body = req.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
                let mut st = state.lock().unwrap();
                let (status, reply) = if line.starts_with("GET /users/1 ") {
                    (200, profile(&st, fault))
                } else if line.starts_with("PATCH /users/1 ") {
                    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
                    st.0 = v["email"].as_str().unwrap().to_string();
                    if fault != "lost-write" {
                        st.1 += 1;
                    }
                    (200, profile(&st, fault))
                } else if fault == "no-404" {
                    (200, "{}".to_string())
                } else {
                    (404, r#"{"error":"no such user"}"#.to_string())
                };
                let _ = write!(
                    s,
                    "HTTP/1.1 {status} X\r\ncontent-length: {}\r\n\r\n{reply}",
                    reply.len()
                );
            }
        });
        addr
    }

    fn profile(st: &(String, i64), fault: &str) -> String {
        let mut v = serde_json::json!({
            "id": 1, "name": "User 1", "email": st.0,
            "updated_at": "2024-01-01T00:00:00Z", "version": st.1,
        });
        if fault == "no-version" {
            v.as_object_mut().unwrap().remove("version");
        }
        if fault == "string-id" {
            v["id"] = "1".into();
        }
        v.to_string()
    }

    #[test]
    fn a_server_that_keeps_the_contract_passes() {
        super::probe(serve(""), Some(11)).unwrap();
    }

    #[test]
    fn each_broken_promise_is_named() {
        for (fault, needle) in [
            ("no-version", "no `version`"),
            ("string-id", "`id` is not a JSON integer"),
            ("no-404", "not 404"),
            ("lost-write", "expected"),
        ] {
            let e = format!("{:#}", super::probe(serve(fault), Some(11)).unwrap_err());
            assert!(e.contains(needle), "{fault}: {e}");
        }
    }
}
