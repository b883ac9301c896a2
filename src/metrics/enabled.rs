//! Metrics built in: a private registry with request counters, a latency histogram and
//! pool gauges, rendered in the Prometheus text format.
use std::sync::LazyLock;
use std::time::Duration;

use prometheus::{Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry};

use crate::db::PoolState;

struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
    pool_connections: IntGauge,
    pool_idle: IntGauge,
}

static METRICS: LazyLock<Option<Metrics>> = LazyLock::new(build);

fn build() -> Option<Metrics> {
    let registry = Registry::new();
    let requests = IntCounterVec::new(
        Opts::new("http_requests_total", "Answered HTTP requests."),
        &["route", "method", "status"],
    )
    .ok()?;
    let latency = HistogramVec::new(
        HistogramOpts::new(
            "http_request_duration_seconds",
            "Time from request head to response, in seconds.",
        )
        .buckets(vec![
            0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
        ]),
        &["route", "method"],
    )
    .ok()?;
    let pool_connections =
        IntGauge::new("db_pool_connections", "Connections held by the pool.").ok()?;
    let pool_idle = IntGauge::new("db_pool_idle_connections", "Idle pooled connections.").ok()?;
    registry.register(Box::new(requests.clone())).ok()?;
    registry.register(Box::new(latency.clone())).ok()?;
    registry.register(Box::new(pool_connections.clone())).ok()?;
    registry.register(Box::new(pool_idle.clone())).ok()?;
    Some(Metrics {
        registry,
        requests,
        latency,
        pool_connections,
        pool_idle,
    })
}

/// Records one answered request.
pub fn observe(route: &'static str, method: &str, status: u16, elapsed: Duration) {
    let Some(m) = METRICS.as_ref() else { return };
    let code = status.to_string();
    m.requests
        .with_label_values(&[route, method, code.as_str()])
        .inc();
    m.latency
        .with_label_values(&[route, method])
        .observe(elapsed.as_secs_f64());
}

/// The Prometheus text exposition of every metric.
pub fn render(pool: Option<PoolState>) -> Option<String> {
    let m = METRICS.as_ref()?;
    if let Some(p) = pool {
        m.pool_connections.set(i64::from(p.connections));
        m.pool_idle.set(i64::from(p.idle));
    }
    let mut out = Vec::new();
    prometheus::TextEncoder::new()
        .encode(&m.registry.gather(), &mut out)
        .ok()?;
    String::from_utf8(out).ok()
}
