//! Prometheus metrics. With `metrics`, request counts by route/method/status, a latency
//! histogram, pool state, coalesced batch sizes, batch panics and the build's identity,
//! all prefixed `perflab_`, served on `/metrics`; without it, every call is a no-op and
//! `/metrics` answers 404. Callers see the same functions either way.

#[cfg_attr(feature = "metrics", path = "enabled.rs")]
#[cfg_attr(not(feature = "metrics"), path = "disabled.rs")]
mod imp;

pub use imp::{observe, observe_batch, observe_batch_panic, render};
