//! Statements prepared once per connection and reused: PostgreSQL parses and plans
//! them once, each request only binds and executes. A connection prepares exactly the
//! statements its executor runs (`exec::STATEMENTS`, handed over by the source).
use futures_util::future::try_join_all;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Error, Row};

use super::{Health, Statement};

/// One connection with its prepared statements.
pub struct Session {
    client: Client,
    health: Health,
    /// The executor's statements, prepared, by their SQL text.
    prepared: Vec<(&'static str, tokio_postgres::Statement)>,
}

impl Session {
    /// Prepares `statements` (the executor's), pipelined on the connection: one round
    /// trip's wait, not one each.
    pub async fn open(client: Client, statements: &[&Statement]) -> Result<Self, Error> {
        let prepared = try_join_all(
            statements
                .iter()
                .map(|s| client.prepare_typed(s.sql, s.types)),
        )
        .await?;
        Ok(Self {
            prepared: statements.iter().map(|s| s.sql).zip(prepared).collect(),
            client,
            health: Health::default(),
        })
    }

    /// Runs `statement`, prepared on this connection, with `params`.
    pub async fn query(
        &self,
        statement: &Statement,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, Error> {
        match self.prepared.iter().find(|(sql, _)| *sql == statement.sql) {
            Some((_, prepared)) => self.client.query(prepared, params).await,
            // Not one of the executor's: parsed by PostgreSQL this once.
            None => self.client.query(statement.sql, params).await,
        }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn health(&self) -> &Health {
        &self.health
    }
}
