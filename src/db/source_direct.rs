//! No pool: every request opens its own connection and closes it when done (the naive
//! baseline; PostgreSQL forks a backend for each one).

use super::exec::STATEMENTS;
use super::session::Session;
use super::tls::Connector;
use super::{classify, PoolState};
use crate::config::Config;
use crate::error::AppError;

pub struct Source {
    config: tokio_postgres::Config,
    tls: Connector,
}

impl Source {
    /// The most database connections this source holds at once (one per admitted request, and one for a readiness check).
    pub fn most_connections(config: &crate::config::Config) -> u32 {
        config.max_pending.saturating_add(1)
    }

    pub fn new(config: tokio_postgres::Config, tls: Connector, _settings: &Config) -> Self {
        Self { config, tls }
    }

    /// A fresh connection; dropping the session closes it.
    pub async fn get(&self) -> Result<Session, AppError> {
        let (client, connection) = self
            .config
            .connect(self.tls.clone())
            .await
            .map_err(classify)?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
        let session = Session::open(client, STATEMENTS).await.map_err(classify)?;
        crate::metrics::observe_db_connect();
        Ok(session)
    }

    pub fn state(&self) -> Option<PoolState> {
        None
    }
}
