//! Statements sent ad hoc: every query is parsed and planned by PostgreSQL again
//! (`query_typed`: one round trip, unnamed statement, parameter types given).
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, Error, Row};

use super::{Health, Statement};

/// One connection, ready to run the executor's statements.
pub struct Session {
    client: Client,
    health: Health,
}

impl Session {
    /// Nothing to prepare: each statement is sent with its text every time.
    pub async fn open(client: Client, _statements: &[&Statement]) -> Result<Self, Error> {
        Ok(Self {
            client,
            health: Health::default(),
        })
    }

    /// Runs `statement` with `params` (in the order of its types).
    pub async fn query(
        &self,
        statement: &Statement,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, Error> {
        let typed: Vec<(&(dyn ToSql + Sync), Type)> = params
            .iter()
            .copied()
            .zip(statement.types.iter().cloned())
            .collect();
        self.client.query_typed(statement.sql, &typed).await
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn health(&self) -> &Health {
        &self.health
    }
}
