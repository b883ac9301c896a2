//! `current-thread`: one single-threaded runtime per CPU the process may use, each on
//! its own thread with its own listener on the same port (`SO_REUSEPORT`: the kernel
//! spreads new connections between them). A connection stays on the thread that
//! accepted it, so a request is read, handled and answered without waking another
//! thread, and the scheduler needs no work stealing or cross-thread queues.
//!
//! The state is shared (one database handle, pool and batch workers, one connection
//! limit), so every limit and guarantee is the default build's. The first thread
//! handles the signals; whatever ends one thread's serving ends the others'. A runtime
//! also runs tasks the other threads' requests depend on (the batch workers, pooled
//! connections it opened), so no runtime stops until every thread has drained.
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::{watch, Barrier};

use crate::config::Config;
use crate::server::{self, BoxError};
use crate::state::AppState;

pub const DESCRIPTION: &str = "current-thread per core (SO_REUSEPORT)";

/// Serves `config` until SIGTERM or SIGINT.
pub fn run(config: Config) -> Result<(), BoxError> {
    let cores = match config.worker_threads {
        Some(n) => n as usize,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    let first = runtime()?;
    // The first listener resolves the port (`:0` picks one); the others share it.
    let (state, listener) = first.block_on(async {
        Ok::<_, BoxError>((
            server::state(&config)?,
            server::bind(config.listen_addr, true)?,
        ))
    })?;
    let addr = listener.local_addr()?;
    let stop = Arc::new(watch::channel(false).0);
    let drained = Arc::new(Barrier::new(cores));
    let mut others = Vec::new();
    for core in 1..cores {
        let core_run = Core {
            addr,
            state: Arc::clone(&state),
            config: config.clone(),
            stop: Arc::clone(&stop),
            drained: Arc::clone(&drained),
        };
        // A thread that cannot be started fails the start-up; the process exits, and
        // the threads already serving end with it.
        let thread = std::thread::Builder::new()
            .name(format!("perflab-core-{core}"))
            .spawn(move || -> Result<(), String> {
                runtime()
                    .and_then(|rt| rt.block_on(core_run.serve(None, false)))
                    .map_err(|e| e.to_string())
            })
            .map_err(|e| format!("cannot start a server thread: {e}"))?;
        others.push(thread);
    }
    let result = first.block_on(
        Core {
            addr,
            state,
            config,
            stop,
            drained,
        }
        .serve(Some(listener), true),
    );
    for thread in others {
        match thread.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => return Err("a server thread panicked".into()),
        }
    }
    result
}

/// What one thread serves with.
struct Core {
    addr: SocketAddr,
    state: Arc<AppState>,
    config: Config,
    /// Set when any thread stops serving (a signal, or a thread that failed).
    stop: Arc<watch::Sender<bool>>,
    /// Every thread waits here after draining, keeping its runtime running meanwhile.
    drained: Arc<Barrier>,
}

impl Core {
    /// Serves on `listener` (or a new one on the shared port) until told to stop, then
    /// tells the others and waits for them to drain.
    async fn serve(self, listener: Option<TcpListener>, signals: bool) -> Result<(), BoxError> {
        let (mut stopped, stop) = (self.stop.subscribe(), Arc::clone(&self.stop));
        let shutdown = async move {
            let told = stopped.wait_for(|stop| *stop);
            if signals {
                tokio::select! {
                    // Every thread starts its delay and drain at the signal.
                    () = server::shutdown_signal() => {
                        stop.send_replace(true);
                    }
                    _ = told => {}
                }
            } else {
                let _ = told.await;
            }
        };
        let result = match listener.map_or_else(|| server::bind(self.addr, true), Ok) {
            Ok(listener) => server::run_on(listener, self.state, &self.config, shutdown).await,
            Err(e) => Err(e),
        };
        self.stop.send_replace(true);
        self.drained.wait().await;
        result
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, BoxError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}").into())
}
