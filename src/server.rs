//! The accept loop: HTTP/1.1 with keep-alive; stalled or greedy clients cannot hold the
//! server (a header read timeout, which also closes an idle keep-alive connection, a
//! body read timeout, a write timeout for a client that stops reading, a bounded head
//! buffer — hyper reads a pipelined request only after answering the one before — and
//! caps on open connections, in all and per client address); the probes on a listener
//! of their own (`PROBE_ADDR`), answered while clients hold every slot; and graceful
//! shutdown: `/readyz` fails and serving goes on for `SHUTDOWN_DELAY_MS`, then
//! accepting stops and in-flight requests finish within `SHUTDOWN_GRACE_MS`.
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::build_info;
use crate::config::{Config, HEAD_BUFFER_LIMIT};
use crate::conn::{Peers, TimedWrites};
use crate::db::Db;
use crate::routes;
use crate::state::AppState;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Binds `LISTEN_ADDR` and serves until `shutdown` completes.
pub async fn serve(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), BoxError> {
    let listener = bind(config.listen_addr, false)?;
    run(listener, &config, shutdown).await
}

/// Serves on an already bound listener (tests bind `127.0.0.1:0`).
pub async fn run(
    listener: TcpListener,
    config: &Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), BoxError> {
    run_on(listener, state(config)?, config, shutdown).await
}

/// What the requests share: the database (its connections, pool and workers), the
/// draining flag. Built inside a runtime.
pub fn state(config: &Config) -> Result<Arc<AppState>, BoxError> {
    Ok(Arc::new(AppState {
        db: Db::new(config)?,
        body_read_timeout: config.body_read_timeout,
        draining: AtomicBool::new(false),
        connections: Arc::new(Semaphore::new(config.max_connections as usize)),
        peers: Peers::new(config.max_connections_per_peer),
    }))
}

/// A listening socket on `addr`, inside a runtime. With `reuse_port`, several may
/// listen on one port (`SO_REUSEPORT`), one per thread, and the kernel spreads the
/// connections between them.
pub fn bind(addr: std::net::SocketAddr, reuse_port: bool) -> Result<TcpListener, BoxError> {
    let listen = || -> std::io::Result<TcpListener> {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        if reuse_port {
            socket.set_reuseport(true)?;
        }
        socket.bind(addr)?;
        socket.listen(1024)
    };
    listen().map_err(|e| format!("cannot listen on {addr}: {e}").into())
}

/// Serves on `listener` with `state` until `shutdown` completes.
pub async fn run_on(
    listener: TcpListener,
    state: Arc<AppState>,
    config: &Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), BoxError> {
    tracing::info!(
        addr = %listener.local_addr()?,
        version = build_info::VERSION,
        features = ?build_info::enabled_features(),
        json = crate::json::IMPLEMENTATION,
        runtime = crate::runtime::DESCRIPTION,
        pool_size = config.pool_size,
        "perflab listening"
    );
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout)
        .max_buf_size(HEAD_BUFFER_LIMIT)
        .keep_alive(true);
    let graceful = GracefulShutdown::new();
    // The probes' listener lives as long as this loop (every core binds it with
    // SO_REUSEPORT under `current-thread`).
    let _probes = match config.probe_addr {
        Some(addr) => Some(AbortOnDrop(tokio::spawn(serve_probes(
            bind(addr, true)?,
            Arc::clone(&state),
            http.clone(),
            config.write_timeout,
        )))),
        None => None,
    };
    tokio::pin!(shutdown);
    // After SIGTERM: SHUTDOWN_DELAY_MS of serving with /readyz at 503, then drain.
    let delay = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(delay);
    let mut draining = false;
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    // Past MAX_CONNECTIONS, or past MAX_CONNECTIONS_PER_PEER from one
                    // address, a new connection is closed at once.
                    let Some(slot) = state.peers.admit(peer.ip()) else {
                        tracing::debug!(peer = %peer.ip(), "connection refused: MAX_CONNECTIONS_PER_PEER reached");
                        crate::metrics::observe_refused("peer");
                        continue;
                    };
                    let Ok(permit) = Arc::clone(&state.connections).try_acquire_owned() else {
                        tracing::debug!("connection refused: MAX_CONNECTIONS reached");
                        crate::metrics::observe_refused("cap");
                        continue;
                    };
                    let _ = stream.set_nodelay(true);
                    let state = Arc::clone(&state);
                    let service = service_fn(move |req| routes::handle(Arc::clone(&state), req));
                    let io = TimedWrites::new(TokioIo::new(stream), config.write_timeout);
                    let conn = graceful.watch(http.serve_connection(io, service));
                    tokio::spawn(async move {
                        if let Err(e) = conn.await {
                            tracing::debug!(error = %e, "connection ended with an error");
                            crate::metrics::observe_connection_error(connection_error_kind(&e));
                        }
                        drop((permit, slot));
                    });
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            },
            () = &mut shutdown, if !draining => {
                draining = true;
                state.draining.store(true, Ordering::Relaxed);
                tracing::info!(
                    delay_ms = config.shutdown_delay.as_millis() as u64,
                    "shutdown requested: /readyz now fails; still serving for the delay"
                );
                delay.as_mut().reset(tokio::time::Instant::now() + config.shutdown_delay);
            }
            () = &mut delay, if draining => break,
        }
    }
    drop(listener);
    tracing::info!("shutting down: no new connections, finishing in-flight requests");
    match tokio::time::timeout(config.shutdown_grace, graceful.shutdown()).await {
        Ok(()) => tracing::info!("all connections closed"),
        Err(_) => tracing::warn!(
            grace_ms = config.shutdown_grace.as_millis() as u64,
            "grace period over, closing remaining connections"
        ),
    }
    Ok(())
}

/// Why hyper ended a connection on its own, as a metric label.
fn connection_error_kind(e: &hyper::Error) -> &'static str {
    use std::error::Error as _;
    let timed_out_writing = e
        .source()
        .and_then(|s| s.downcast_ref::<std::io::Error>())
        .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut);
    if e.is_parse_too_large() {
        "too_large"
    } else if e.is_parse() {
        "bad_request"
    } else if timed_out_writing {
        "write_timeout"
    } else if e.is_timeout() {
        "timeout"
    } else {
        "io"
    }
}

/// Connections the probes' listener keeps open at once; past it, closed at once.
pub const PROBE_CONNECTIONS: usize = 64;

/// Aborts its task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The probes' listener: `/healthz` and `/readyz` only, with connections of its own.
async fn serve_probes(
    listener: TcpListener,
    state: Arc<AppState>,
    http: http1::Builder,
    write_timeout: Duration,
) {
    let open = Arc::new(Semaphore::new(PROBE_CONNECTIONS));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "probe accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&open).try_acquire_owned() else {
            crate::metrics::observe_refused("probe_cap");
            continue;
        };
        let state = Arc::clone(&state);
        let service = service_fn(move |req| routes::handle_probe(Arc::clone(&state), req));
        let io = TimedWrites::new(TokioIo::new(stream), write_timeout);
        let conn = http.serve_connection(io, service);
        tokio::spawn(async move {
            let _ = conn.await;
            drop(permit);
        });
    }
}

/// Completes on SIGTERM (what Kubernetes sends) or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
        () = terminate => tracing::info!("SIGTERM received"),
    }
}
