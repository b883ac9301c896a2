//! A keep-alive, paced load for tests that push a server hard: a number of clients, each
//! with one connection (reopened when the server drops it), sending 80% PATCH / 20% GET
//! over ids 1..=`ids` at a fixed total rate, and recording what each request came to.
//! Each client waits for its reply before its next request, so the offered rate holds
//! only while replies come faster than the clients' number allows: give enough clients.
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// What one request came to.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub id: i64,
    pub patch: bool,
    /// The HTTP status, or 0 when the connection failed before a reply.
    pub status: u16,
    /// The version a PATCH answered 200 reports.
    pub version: Option<i64>,
    /// A 503 that says the server was overloaded (shed at admission, nothing run), as
    /// opposed to one that waited for the database until its deadline.
    pub shed: bool,
    /// A 503 that says the statement was sent but no answer came in time: by the
    /// contract it may have been applied (at most once).
    pub unknown: bool,
    pub took: Duration,
}

fn next(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn connect(addr: SocketAddr) -> Option<Sender> {
    let stream = TcpStream::connect(addr).await.ok()?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .ok()?;
    tokio::spawn(conn);
    Some(sender)
}

fn request(id: i64, patch: bool, email: &str) -> Request<Full<Bytes>> {
    if patch {
        let body = format!("{{\"email\":\"{email}\"}}");
        Request::patch(format!("/users/{id}"))
            .header("host", "t")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
    } else {
        Request::get(format!("/users/{id}"))
            .header("host", "t")
            .body(Full::new(Bytes::new()))
    }
    .expect("request")
}

/// One client: every `interval` one request, until `stop`. A 503 must carry
/// `Retry-After`.
async fn client(
    addr: SocketAddr,
    ids: i64,
    c: u64,
    interval: Duration,
    stop: Instant,
) -> Vec<Outcome> {
    let mut out = Vec::new();
    let mut x = 0x9E37_79B9_7F4A_7C15 ^ (c + 1).wrapping_mul(0x1000_0000_01B3);
    let mut sender: Option<Sender> = None;
    let mut due = Instant::now() + interval.mul_f64((c % 100) as f64 / 100.0);
    let mut n = 0u64;
    while Instant::now() < stop {
        tokio::time::sleep_until(due.into()).await;
        due = (due + interval).max(Instant::now() - interval);
        n += 1;
        let id = 1 + (next(&mut x) % ids as u64) as i64;
        let patch = next(&mut x) % 10 < 8;
        let start = Instant::now();
        let mut outcome = Outcome {
            id,
            patch,
            status: 0,
            version: None,
            shed: false,
            unknown: false,
            took: Duration::ZERO,
        };
        if sender.as_ref().is_none_or(|s| s.is_closed()) {
            sender = connect(addr).await;
        }
        if let Some(s) = sender.as_mut() {
            let email = format!("c{c}-{n}@example.com");
            match send(s, request(id, patch, &email)).await {
                Some((status, version, shed, unknown)) => {
                    outcome.status = status;
                    outcome.version = version;
                    outcome.shed = shed;
                    outcome.unknown = unknown;
                }
                None => sender = None,
            }
        }
        outcome.took = start.elapsed();
        out.push(outcome);
    }
    out
}

/// Sends on a ready connection: (status, version of a 200 with one, whether a 503 says
/// "overloaded", whether it says the outcome is unknown), or `None` when the connection
/// failed.
async fn send(s: &mut Sender, req: Request<Full<Bytes>>) -> Option<(u16, Option<i64>, bool, bool)> {
    s.ready().await.ok()?;
    let resp = s.send_request(req).await.ok()?;
    let status = resp.status().as_u16();
    if status == 503 {
        assert!(
            resp.headers().contains_key("retry-after"),
            "a 503 without Retry-After"
        );
    }
    let body = resp.into_body().collect().await.ok()?.to_bytes();
    let version = (status == 200)
        .then(|| serde_json::from_slice::<serde_json::Value>(&body).ok())
        .flatten()
        .and_then(|v| v["version"].as_i64());
    let shed = status == 503 && body.windows(10).any(|w| w == b"overloaded");
    let unknown = status == 503 && body.windows(18).any(|w| w == b"outcome is unknown");
    Some((status, version, shed, unknown))
}

/// `clients` clients offering `rate` requests/s in all over ids 1..=`ids` for `run`.
pub async fn offer(
    addr: SocketAddr,
    ids: i64,
    clients: u64,
    rate: f64,
    run: Duration,
) -> Vec<Outcome> {
    let interval = Duration::from_secs_f64(clients as f64 / rate);
    let stop = Instant::now() + run;
    let tasks: Vec<_> = (0..clients)
        .map(|c| tokio::spawn(client(addr, ids, c, interval, stop)))
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("client"));
    }
    all
}

/// The 99th percentile (zero for none).
pub fn p99(mut v: Vec<Duration>) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.sort_unstable();
    v[(v.len() * 99 / 100).min(v.len() - 1)]
}

/// Per id, checks PATCH replies against the stored versions: every version answered
/// 200 is distinct and stored (none lost, none reused), and the stored version exceeds
/// their number by at most `unknown(id)` (PATCHes whose outcome the client cannot know,
/// each applied at most once). Panics with the id at fault.
pub async fn reconcile(
    db: &tokio_postgres::Client,
    outcomes: &[Outcome],
    unknown: impl Fn(i64) -> i64,
) {
    let mut acked: std::collections::BTreeMap<i64, Vec<i64>> = Default::default();
    for o in outcomes.iter().filter(|o| o.patch) {
        if let Some(v) = o.version {
            acked.entry(o.id).or_default().push(v);
        }
    }
    for (id, stored) in super::stored_versions(db).await {
        let mut versions = acked.remove(&id).unwrap_or_default();
        versions.sort_unstable();
        let n = versions.len();
        versions.dedup();
        assert_eq!(
            versions.len(),
            n,
            "id {id}: a version was acknowledged twice"
        );
        assert!(
            versions.last().is_none_or(|&v| v <= stored),
            "id {id}: acknowledged version {:?} > stored {stored}: a write was lost",
            versions.last()
        );
        let extra = stored - n as i64;
        assert!(
            (0..=unknown(id)).contains(&extra),
            "id {id}: stored version {stored} for {n} acknowledged PATCHes; at most {} \
             others could have been applied",
            unknown(id)
        );
    }
}
