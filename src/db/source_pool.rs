//! A bb8 pool of `POOL_SIZE` connections, each carrying its session (and so, with
//! `prepared`, its prepared statements).
//!
//! Validation: bb8 would by default send a query on every checkout (bb8-postgres's
//! `is_valid`), one extra round trip per request. We keep checkout validation but make it
//! local: a connection whose socket tokio-postgres has seen close, or on which a request
//! was abandoned at its timeout (its reply may never come), is discarded at no cost.
//! A connection that died silently fails one request with a 503 and is then dropped,
//! so the pool heals by itself after an outage.
use std::fmt;
use std::time::Duration;

use super::exec::STATEMENTS;
use super::session::Session;
use super::tls::Connector;
use super::{classify, PoolState};
use crate::config::Config;
use crate::error::AppError;
use bb8::{ManageConnection, Pool, RunError};
use bb8_postgres::PostgresConnectionManager;

pub struct Source {
    pool: Pool<Manager>,
}

impl Source {
    /// The most database connections this source holds at once (the pool's).
    pub fn most_connections(config: &crate::config::Config) -> u32 {
        config.pool_size
    }

    pub fn new(config: tokio_postgres::Config, tls: Connector, settings: &Config) -> Self {
        let (pool_size, timeout) = (settings.pool_size, settings.db_timeout);
        let manager = Manager {
            inner: PostgresConnectionManager::new(config, tls),
            connect_timeout: timeout,
        };
        let pool = Pool::builder()
            .max_size(pool_size)
            .connection_timeout(timeout)
            .test_on_check_out(true)
            .build_unchecked(manager);
        Self { pool }
    }

    pub async fn get(&self) -> Result<bb8::PooledConnection<'_, Manager>, AppError> {
        let asked = std::time::Instant::now();
        let got = self.pool.get().await;
        crate::metrics::observe_pool_wait(asked.elapsed());
        got.map_err(|e| match e {
            RunError::User(PoolError::Postgres(e)) => classify(e),
            RunError::User(e @ (PoolError::Closed | PoolError::ConnectTimeout)) => {
                AppError::Unavailable(format!("database unavailable: {e}"))
            }
            RunError::TimedOut => AppError::Unavailable(
                "no database connection available in time (pool exhausted or database down)".into(),
            ),
        })
    }

    pub fn state(&self) -> Option<PoolState> {
        let state = self.pool.state();
        Some(PoolState {
            connections: state.connections,
            idle: state.idle_connections,
        })
    }
}

/// Opens connections through bb8-postgres, then sets up their session.
pub struct Manager {
    inner: PostgresConnectionManager<Connector>,
    connect_timeout: Duration,
}

#[derive(Debug)]
pub enum PoolError {
    Postgres(tokio_postgres::Error),
    Closed,
    ConnectTimeout,
}

impl fmt::Display for PoolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PoolError::Postgres(e) => e.fmt(f),
            PoolError::Closed => f.write_str("connection closed"),
            PoolError::ConnectTimeout => f.write_str("connecting took too long"),
        }
    }
}

impl std::error::Error for PoolError {}

impl ManageConnection for Manager {
    type Connection = Session;
    type Error = PoolError;

    async fn connect(&self) -> Result<Session, PoolError> {
        // bb8 opens connections in the background, where no request's timeout reaches:
        // bound the whole handshake, or a silent database would fill the pool with
        // connections that never finish opening.
        let open = async {
            let client = self.inner.connect().await.map_err(PoolError::Postgres)?;
            Session::open(client, STATEMENTS)
                .await
                .map_err(PoolError::Postgres)
        };
        let opened = tokio::time::timeout(self.connect_timeout, open)
            .await
            .unwrap_or(Err(PoolError::ConnectTimeout));
        if opened.is_ok() {
            crate::metrics::observe_db_connect();
        }
        opened
    }

    async fn is_valid(&self, session: &mut Session) -> Result<(), PoolError> {
        if session.is_broken() {
            Err(PoolError::Closed)
        } else {
            Ok(())
        }
    }

    fn has_broken(&self, session: &mut Session) -> bool {
        session.is_broken()
    }
}
