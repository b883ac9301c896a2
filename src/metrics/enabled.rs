//! Metrics built in: a private registry with request counters, a latency histogram and
//! pool gauges, rendered in the Prometheus text format.
use std::sync::LazyLock;
use std::time::Duration;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

use crate::db::PoolState;

struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
    pool_connections: IntGauge,
    pool_idle: IntGauge,
    batches: IntCounterVec,
    batched: IntCounterVec,
    batch_max: IntGaugeVec,
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
    let batches = IntCounterVec::new(
        Opts::new("db_batches_total", "Batches run by the coalescing workers."),
        &["kind"],
    )
    .ok()?;
    let batched = IntCounterVec::new(
        Opts::new(
            "db_batched_requests_total",
            "Requests served by the coalescing workers' batches.",
        ),
        &["kind"],
    )
    .ok()?;
    let batch_max = IntGaugeVec::new(
        Opts::new("db_batch_size_max", "Largest batch so far."),
        &["kind"],
    )
    .ok()?;
    registry.register(Box::new(batches.clone())).ok()?;
    registry.register(Box::new(batched.clone())).ok()?;
    registry.register(Box::new(batch_max.clone())).ok()?;
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
        batches,
        batched,
        batch_max,
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

/// Records one batch of `size` requests run by a coalescing worker (`kind`: read/write).
pub fn observe_batch(kind: &'static str, size: usize) {
    let Some(m) = METRICS.as_ref() else { return };
    m.batches.with_label_values(&[kind]).inc();
    m.batched.with_label_values(&[kind]).inc_by(size as u64);
    let max = m.batch_max.with_label_values(&[kind]);
    if max.get() < size as i64 {
        max.set(size as i64);
    }
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
