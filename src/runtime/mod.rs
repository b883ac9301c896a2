//! The tokio runtime the server runs on: by default one work-stealing runtime with a
//! worker per CPU the process may use; with `current-thread`, one single-threaded
//! runtime per CPU, each on its own thread with its own `SO_REUSEPORT` listener, and
//! nothing moved between threads. Both serve the same shared state until SIGTERM.
#[cfg_attr(feature = "current-thread", path = "per_core.rs")]
#[cfg_attr(not(feature = "current-thread"), path = "work_stealing.rs")]
mod imp;

pub use imp::{run, DESCRIPTION};
