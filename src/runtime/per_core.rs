//! `current-thread`: one single-threaded runtime per CPU the process may use, each on
//! its own thread with its own listener on the same port (`SO_REUSEPORT`: the kernel
//! spreads new connections between them). A connection stays on the thread that
//! accepted it, so a request is read, handled and answered without waking another
//! thread, and the scheduler needs no work stealing or cross-thread queues.
//!
//! The state is shared (one database handle, pool and batch workers, one connection
//! limit), so every limit and guarantee is the default build's. The first thread
//! handles the signals and tells the others to drain.
use std::sync::Arc;

use tokio::sync::watch;

use crate::config::Config;
use crate::server::{self, BoxError};

pub const DESCRIPTION: &str = "current-thread per core (SO_REUSEPORT)";

/// Serves `config` until SIGTERM or SIGINT.
pub fn run(config: Config) -> Result<(), BoxError> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let first = runtime()?;
    // The first listener resolves the port (`:0` picks one); the others share it.
    let (state, listener) = first.block_on(async {
        Ok::<_, BoxError>((
            server::state(&config)?,
            server::bind(config.listen_addr, true)?,
        ))
    })?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = watch::channel(false);
    let mut others = Vec::new();
    for core in 1..cores {
        let (config, state, mut stopped) = (config.clone(), Arc::clone(&state), stopped.clone());
        let thread = std::thread::Builder::new()
            .name(format!("perflab-core-{core}"))
            .spawn(move || -> Result<(), String> {
                let shutdown = async move {
                    let _ = stopped.wait_for(|stop| *stop).await;
                };
                runtime()
                    .and_then(|rt| {
                        rt.block_on(async {
                            let listener = server::bind(addr, true)?;
                            server::run_on(listener, state, &config, shutdown).await
                        })
                    })
                    .map_err(|e| e.to_string())
            })
            .map_err(|e| format!("cannot start a server thread: {e}"))?;
        others.push(thread);
    }
    let result = first.block_on(async {
        let shutdown = async {
            server::shutdown_signal().await;
            let _ = stop.send(true);
        };
        server::run_on(listener, state, &config, shutdown).await
    });
    // A thread that failed to listen ends the others too.
    let _ = stop.send(true);
    for thread in others {
        match thread.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => return Err("a server thread panicked".into()),
        }
    }
    result
}

fn runtime() -> Result<tokio::runtime::Runtime, BoxError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}").into())
}
