//! Metrics compiled out: nothing is counted and `/metrics` does not exist.
use std::time::Duration;

use crate::db::PoolState;

/// Records one answered request (no-op in this build).
#[inline(always)]
pub fn observe(_route: &'static str, _method: &str, _status: u16, _elapsed: Duration) {}

/// Records one coalesced batch (no-op in this build).
#[inline(always)]
pub fn observe_batch(_kind: &'static str, _size: usize) {}

/// Records a batch that panicked (no-op in this build; the panic is still logged).
#[inline(always)]
pub fn observe_batch_panic(_kind: &'static str) {}

/// Records a 503 of `kind` (no-op in this build).
#[inline(always)]
pub fn observe_unavailable(_kind: &'static str) {}

/// Records a connection refused at a cap (no-op in this build).
#[inline(always)]
pub fn observe_refused(_reason: &'static str) {}

/// Records a batch retried in halves (no-op in this build).
#[inline(always)]
pub fn observe_batch_halving(_kind: &'static str) {}

/// Records a wait for a pooled connection (no-op in this build).
#[inline(always)]
pub fn observe_pool_wait(_waited: Duration) {}

/// Records a database connection opened (no-op in this build).
#[inline(always)]
pub fn observe_db_connect() {}

/// Records a connection hyper ended on its own (no-op in this build).
#[inline(always)]
pub fn observe_connection_error(_kind: &'static str) {}

/// The Prometheus exposition, or `None` when metrics are not built in.
pub fn render(_pool: Option<PoolState>, _admitted: usize) -> Option<String> {
    None
}
