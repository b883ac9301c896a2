//! perflab: a user-profile API served by hyper 1.x and tokio in front of PostgreSQL,
//! in which every optimisation is a Cargo feature.
//!
//! Module map:
//! - [`config`]: typed configuration, parsed once from the environment.
//! - [`server`]: the accept loop, per-connection timeouts and graceful shutdown.
//! - [`conn`]: per-connection guards: the write timeout, connections per client address.
//! - [`runtime`]: the tokio runtime; one work-stealing runtime, or one single-threaded
//!   runtime per core with `current-thread`.
//! - [`routes`]: maps a request to a handler; no feature branches here.
//! - [`users`]: the `/users/{id}` resource (GET and PATCH) and its validation.
//! - [`error`]: the one error type and its mapping to HTTP status codes.
//! - [`response`]: building replies (JSON for results and errors, the metrics text).
//! - [`state`]: what every handler can reach (the database, the draining flag).
//! - [`db`]: PostgreSQL access, with three seams: how a connection is had (one per
//!   request, `pool` or `pipeline`), how statements are sent (ad hoc or `prepared`),
//!   how requests become statements (one each, or batched with `coalesce`); TLS to
//!   PostgreSQL.
//! - [`json`]: request decoding and response encoding; swaps serde_json vs `simd-json`.
//! - [`metrics`]: Prometheus metrics with `metrics`, a no-op without it.
//! - [`alloc`]: the global allocator; mimalloc with `mimalloc`, the system one without.
//! - [`build_info`]: what this binary was built with, for `/version` and the start-up log.
//! - [`process`]: the server's own CPU time and peak memory, for `/stats`.
//! - [`telemetry`]: the log subscriber (`RUST_LOG`).

pub mod alloc;
pub mod build_info;
pub mod config;
pub mod conn;
pub mod db;
pub mod env_names;
pub mod error;
pub mod json;
pub mod metrics;
pub mod process;
pub mod response;
pub mod routes;
pub mod runtime;
pub mod server;
pub mod state;
pub mod telemetry;
pub mod users;
