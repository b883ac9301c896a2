//! Metrics built in: a private registry with request counters, a latency histogram
//! (from 50 µs: a median of 0.1–0.3 ms falls inside it), pool gauges, coalesced batch
//! sizes and halvings, 503s by kind, connections refused at the cap, admission in use
//! and the build's identity, plus the standard `process_*` series, rendered in the
//! Prometheus text format. Every series of ours is prefixed `perflab_`, and every label
//! takes values from a fixed set, so no client can grow the number of series.
use std::sync::LazyLock;
use std::time::Duration;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

use crate::build_info;
use crate::db::PoolState;

struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
    pool_connections: IntGauge,
    pool_idle: IntGauge,
    batch_size: HistogramVec,
    batch_panics: IntCounterVec,
    batch_halvings: IntCounterVec,
    unavailable: IntCounterVec,
    refused: IntCounterVec,
    admission: IntGauge,
    pool_wait: prometheus::Histogram,
    db_connects: prometheus::IntCounter,
    protocol_errors: IntCounterVec,
}

static METRICS: LazyLock<Option<Metrics>> = LazyLock::new(build);

/// The methods a label may name; any other token a client sends counts as `_OTHER`.
const METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT",
];

/// The `method` label for a request's method: one of [`METHODS`], else `_OTHER`.
pub fn method_label(method: &str) -> &'static str {
    METHODS
        .iter()
        .find(|m| **m == method)
        .copied()
        .unwrap_or("_OTHER")
}

fn build() -> Option<Metrics> {
    let registry = Registry::new();
    let requests = IntCounterVec::new(
        Opts::new("perflab_http_requests_total", "Answered HTTP requests."),
        &["route", "method", "status"],
    )
    .ok()?;
    let latency = HistogramVec::new(
        HistogramOpts::new(
            "perflab_http_request_duration_seconds",
            "Time from request head to response, in seconds.",
        )
        .buckets(vec![
            0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5,
            1.0, 2.0, 5.0,
        ]),
        &["route", "method"],
    )
    .ok()?;
    let pool_connections = IntGauge::new(
        "perflab_db_pool_connections",
        "Connections held by the pool.",
    )
    .ok()?;
    let pool_idle = IntGauge::new(
        "perflab_db_pool_idle_connections",
        "Idle pooled connections.",
    )
    .ok()?;
    let batch_size = HistogramVec::new(
        HistogramOpts::new(
            "perflab_db_batch_size",
            "Requests per batch run by the coalescing workers (count: batches, sum: requests).",
        )
        .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0]),
        &["kind"],
    )
    .ok()?;
    let batch_panics = IntCounterVec::new(
        Opts::new(
            "perflab_batch_panics_total",
            "Batches that panicked (their requests were answered 500; the worker went on).",
        ),
        &["kind"],
    )
    .ok()?;
    let batch_halvings = IntCounterVec::new(
        Opts::new(
            "perflab_batch_halvings_total",
            "Batch statements PostgreSQL rejected, retried in halves to find the request at fault.",
        ),
        &["kind"],
    )
    .ok()?;
    let unavailable = IntCounterVec::new(
        Opts::new(
            "perflab_unavailable_total",
            "503 answers by kind: shed (MAX_PENDING reached, nothing run), unavailable (not applied), outcome_unknown (sent, no answer).",
        ),
        &["kind"],
    )
    .ok()?;
    let refused = IntCounterVec::new(
        Opts::new(
            "perflab_connections_refused_total",
            "Client connections closed at once, by reason: cap (MAX_CONNECTIONS open), peer (MAX_CONNECTIONS_PER_PEER open from its address), probe_cap (the probe listener's own cap).",
        ),
        &["reason"],
    )
    .ok()?;
    let admission = IntGauge::new(
        "perflab_db_admitted_requests",
        "Requests in the database layer now (running, waiting for a connection, queued), of MAX_PENDING.",
    )
    .ok()?;
    let build_info = IntGaugeVec::new(
        Opts::new("perflab_build_info", "The running build: always 1."),
        &["version", "features"],
    )
    .ok()?;
    build_info
        .with_label_values(&[
            build_info::VERSION,
            &build_info::enabled_features().join(","),
        ])
        .set(1);
    registry.register(Box::new(requests.clone())).ok()?;
    registry.register(Box::new(latency.clone())).ok()?;
    registry.register(Box::new(pool_connections.clone())).ok()?;
    registry.register(Box::new(pool_idle.clone())).ok()?;
    registry.register(Box::new(batch_size.clone())).ok()?;
    registry.register(Box::new(batch_panics.clone())).ok()?;
    registry.register(Box::new(batch_halvings.clone())).ok()?;
    let pool_wait = prometheus::Histogram::with_opts(
        HistogramOpts::new(
            "perflab_db_pool_wait_seconds",
            "How long requests waited for a pooled connection (builds with `pool`).",
        )
        .buckets(vec![
            0.00001, 0.00005, 0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 2.0,
        ]),
    )
    .ok()?;
    let db_connects = prometheus::IntCounter::new(
        "perflab_db_connections_opened_total",
        "Database connections opened: with a pool or shared connections, each beyond the first ones is a reconnect after a broken or discarded one.",
    )
    .ok()?;
    let protocol_errors = IntCounterVec::new(
        Opts::new(
            "perflab_http_connection_errors_total",
            "Connections hyper ended on its own, by kind: bad_request (400: a malformed head), too_large (431: a head over 16 KiB), timeout (408: the head did not arrive within HEADER_READ_TIMEOUT_MS, or an idle keep-alive connection), write_timeout (the client stopped reading), io (reset or closed mid-request).",
        ),
        &["kind"],
    )
    .ok()?;
    registry.register(Box::new(pool_wait.clone())).ok()?;
    registry.register(Box::new(db_connects.clone())).ok()?;
    registry.register(Box::new(protocol_errors.clone())).ok()?;
    registry.register(Box::new(unavailable.clone())).ok()?;
    registry.register(Box::new(refused.clone())).ok()?;
    registry.register(Box::new(admission.clone())).ok()?;
    registry.register(Box::new(build_info)).ok()?;
    Some(Metrics {
        registry,
        requests,
        latency,
        pool_connections,
        pool_idle,
        batch_size,
        batch_panics,
        batch_halvings,
        unavailable,
        refused,
        admission,
        pool_wait,
        db_connects,
        protocol_errors,
    })
}

/// Records how long a request waited for a pooled connection.
pub fn observe_pool_wait(waited: Duration) {
    let Some(m) = METRICS.as_ref() else { return };
    m.pool_wait.observe(waited.as_secs_f64());
}

/// Records a database connection opened.
pub fn observe_db_connect() {
    let Some(m) = METRICS.as_ref() else { return };
    m.db_connects.inc();
}

/// Records a connection hyper ended on its own (`kind`: see the series' help).
pub fn observe_connection_error(kind: &'static str) {
    let Some(m) = METRICS.as_ref() else { return };
    m.protocol_errors.with_label_values(&[kind]).inc();
}

/// Records a 503 of `kind` (`shed`, `unavailable`, `outcome_unknown`).
pub fn observe_unavailable(kind: &'static str) {
    let Some(m) = METRICS.as_ref() else { return };
    m.unavailable.with_label_values(&[kind]).inc();
}

/// Records a connection closed at once at a cap (`cap`, `peer`, `probe_cap`).
pub fn observe_refused(reason: &'static str) {
    let Some(m) = METRICS.as_ref() else { return };
    m.refused.with_label_values(&[reason]).inc();
}

/// Records a batch statement rejected and retried in halves.
pub fn observe_batch_halving(kind: &'static str) {
    let Some(m) = METRICS.as_ref() else { return };
    m.batch_halvings.with_label_values(&[kind]).inc();
}

/// Records one answered request.
pub fn observe(route: &'static str, method: &str, status: u16, elapsed: Duration) {
    let Some(m) = METRICS.as_ref() else { return };
    let method = method_label(method);
    let code = status.to_string();
    m.requests
        .with_label_values(&[route, method, code.as_str()])
        .inc();
    m.latency
        .with_label_values(&[route, method])
        .observe(elapsed.as_secs_f64());
}

/// Records one batch of `size` requests run by a coalescing worker (`kind`: read/write).
pub fn observe_batch(kind: &'static str, size: usize) {
    let Some(m) = METRICS.as_ref() else { return };
    m.batch_size.with_label_values(&[kind]).observe(size as f64);
}

/// Records a batch that panicked.
pub fn observe_batch_panic(kind: &'static str) {
    let Some(m) = METRICS.as_ref() else { return };
    m.batch_panics.with_label_values(&[kind]).inc();
}

/// The Prometheus text exposition of every metric: ours, then the process's.
pub fn render(pool: Option<PoolState>, admitted: usize) -> Option<String> {
    let m = METRICS.as_ref()?;
    if let Some(p) = pool {
        m.pool_connections.set(i64::from(p.connections));
        m.pool_idle.set(i64::from(p.idle));
    }
    m.admission.set(i64::try_from(admitted).unwrap_or(i64::MAX));
    let mut out = Vec::new();
    prometheus::TextEncoder::new()
        .encode(&m.registry.gather(), &mut out)
        .ok()?;
    let mut text = String::from_utf8(out).ok()?;
    text.push_str(&crate::process::ProcessMetrics::current().exposition());
    Some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_up_methods_share_one_label() {
        assert_eq!(method_label("GET"), "GET");
        assert_eq!(method_label("PATCH"), "PATCH");
        assert_eq!(method_label("FOO"), "_OTHER");
        assert_eq!(method_label("get"), "_OTHER");
    }

    #[test]
    fn the_build_is_identified() {
        let text = render(None, 0).expect("metrics are built in");
        let line = format!(
            "perflab_build_info{{features=\"{}\",version=\"{}\"}} 1",
            build_info::enabled_features().join(","),
            build_info::VERSION
        );
        assert!(text.contains(&line), "{text}");
    }

    #[test]
    fn pool_waits_reconnects_and_hyper_s_own_errors_are_counted() {
        observe_pool_wait(Duration::from_micros(300));
        observe_db_connect();
        observe_connection_error("write_timeout");
        let text = render(None, 0).expect("metrics are built in");
        for series in [
            r#"perflab_db_pool_wait_seconds_bucket{le="0.0005"}"#,
            "perflab_db_connections_opened_total ",
            r#"perflab_http_connection_errors_total{kind="write_timeout"}"#,
        ] {
            assert!(text.contains(series), "{series}: {text}");
        }
    }

    #[test]
    fn the_median_falls_inside_the_histogram_and_the_process_is_described() {
        observe("/users/{id}", "GET", 200, Duration::from_micros(120));
        observe_unavailable("shed");
        observe_refused("peer");
        let text = render(None, 3).expect("metrics are built in");
        assert!(
            text.contains(r#"perflab_http_request_duration_seconds_bucket{method="GET",route="/users/{id}",le="0.00005"}"#),
            "{text}"
        );
        assert!(
            text.contains(r#"perflab_unavailable_total{kind="shed"}"#),
            "{text}"
        );
        assert!(
            text.contains(r#"perflab_connections_refused_total{reason="peer"} 1"#),
            "{text}"
        );
        assert!(text.contains("perflab_db_admitted_requests 3"), "{text}");
        for series in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_open_fds",
            "process_max_fds",
            "process_start_time_seconds",
        ] {
            assert!(
                text.contains(&format!("# TYPE {series}")),
                "{series}: {text}"
            );
        }
    }
}
