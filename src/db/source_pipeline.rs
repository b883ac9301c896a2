//! `pipeline`: a few connections (`PIPELINE_CONNECTIONS`) shared by all requests. A
//! request does not hold a connection for its round trip: it sends its query on the next
//! connection in turn, and tokio-postgres pipelines the queries that concurrent requests
//! have in flight on one connection (they travel in the same packets, and PostgreSQL
//! answers them in order). That saves PostgreSQL CPU per request (see the README).
//!
//! The trade-off is writes: each connection is one backend, and one backend commits one
//! statement at a time, so writes on a connection are serialised behind each other's
//! commit (fsync): too few connections cut write throughput. The default (8) did not
//! regress writes against the pool in the committed run.
//!
//! A connection that closed, or on which a request was abandoned at its timeout (its
//! reply may never come, and every later reply would queue behind it), is replaced on
//! the next request that picks its slot; requests already on it finish or time out.
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use super::exec::STATEMENTS;
use super::session::Session;
use super::tls::Connector;
use super::{classify, PoolState};
use crate::config::Config;
use crate::error::AppError;

pub struct Source {
    config: tokio_postgres::Config,
    tls: Connector,
    slots: Vec<Slot>,
    next: AtomicUsize,
    connect_timeout: Duration,
}

#[derive(Default)]
struct Slot {
    live: RwLock<Option<Arc<Session>>>,
    /// One (re)connect at a time per slot; others wait for it instead of piling on.
    connecting: tokio::sync::Mutex<()>,
}

impl Slot {
    fn healthy(&self) -> Option<Arc<Session>> {
        let live = self.live.read().unwrap_or_else(|p| p.into_inner());
        live.as_ref().filter(|s| !s.is_broken()).cloned()
    }
}

impl Source {
    /// The most database connections this source holds at once (the pipeline's).
    pub fn most_connections(config: &crate::config::Config) -> u32 {
        config.pipeline_connections
    }

    pub fn new(config: tokio_postgres::Config, tls: Connector, settings: &Config) -> Self {
        Self {
            config,
            tls,
            slots: (0..settings.pipeline_connections.max(1))
                .map(|_| Slot::default())
                .collect(),
            next: AtomicUsize::new(0),
            connect_timeout: settings.db_timeout,
        }
    }

    /// The next shared connection in turn, (re)connected if needed.
    pub async fn get(&self) -> Result<Arc<Session>, AppError> {
        let slot = &self.slots[self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len()];
        if let Some(s) = slot.healthy() {
            return Ok(s);
        }
        let _one = slot.connecting.lock().await;
        if let Some(s) = slot.healthy() {
            return Ok(s);
        }
        let open = async {
            let (client, connection) = self
                .config
                .connect(self.tls.clone())
                .await
                .map_err(classify)?;
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(error = %e, "pipelined connection ended with an error");
                }
            });
            Session::open(client, STATEMENTS).await.map_err(classify)
        };
        let session = tokio::time::timeout(self.connect_timeout, open)
            .await
            .map_err(|_| {
                AppError::Unavailable("connecting to the database took too long".into())
            })??;
        crate::metrics::observe_db_connect();
        let session = Arc::new(session);
        *slot.live.write().unwrap_or_else(|p| p.into_inner()) = Some(session.clone());
        Ok(session)
    }

    /// Live shared connections; none is ever idle in the pool sense.
    pub fn state(&self) -> Option<PoolState> {
        let connections = self.slots.iter().filter(|s| s.healthy().is_some()).count() as u32;
        Some(PoolState {
            connections,
            idle: 0,
        })
    }
}
