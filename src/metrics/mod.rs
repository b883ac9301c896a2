//! Prometheus metrics. With `metrics`, request counts by route/method/status, a latency
//! histogram from 50 µs, pool state, coalesced batch sizes, halvings and panics, 503s by
//! kind, connections refused at the cap, admission in use and the build's identity, all
//! prefixed `perflab_`, and the standard `process_*` series, served on `/metrics`;
//! without it, every call is a no-op and `/metrics` answers 404. Callers see the same
//! functions either way.

#[cfg_attr(feature = "metrics", path = "enabled.rs")]
#[cfg_attr(not(feature = "metrics"), path = "disabled.rs")]
mod imp;

pub use imp::{
    observe, observe_batch, observe_batch_halving, observe_batch_panic, observe_connection_error,
    observe_db_connect, observe_pool_wait, observe_refused, observe_unavailable, render,
};
