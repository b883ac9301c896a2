//! One multi-threaded, work-stealing runtime (tokio's default): a worker per CPU the
//! process may use (or `WORKER_THREADS`), and tasks move to whichever worker is free.
use crate::config::Config;
use crate::server::{self, BoxError};

pub const DESCRIPTION: &str = "multi-thread (work stealing)";

/// Serves `config` until SIGTERM or SIGINT.
pub fn run(config: Config) -> Result<(), BoxError> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = config.worker_threads {
        builder.worker_threads(n as usize);
    }
    let runtime = builder
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime.block_on(server::serve(config, server::shutdown_signal()))
}
