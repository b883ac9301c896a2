//! Statements sent ad hoc: every query is parsed and planned by PostgreSQL again
//! (`query_typed`: one round trip, unnamed statement, parameter types given).
use tokio_postgres::types::Type;
use tokio_postgres::{Client, Error, Row};

use super::{Health, SELECT_USER, UPDATE_EMAIL};

/// One connection, ready to run the API's statements.
pub struct Session {
    client: Client,
    health: Health,
}

impl Session {
    pub async fn open(client: Client) -> Result<Self, Error> {
        Ok(Self {
            client,
            health: Health::default(),
        })
    }

    pub async fn select_user(&self, id: i64) -> Result<Vec<Row>, Error> {
        self.client
            .query_typed(SELECT_USER, &[(&id, Type::INT8)])
            .await
    }

    pub async fn update_email(&self, id: i64, email: &str) -> Result<Vec<Row>, Error> {
        self.client
            .query_typed(UPDATE_EMAIL, &[(&id, Type::INT8), (&email, Type::TEXT)])
            .await
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn health(&self) -> &Health {
        &self.health
    }
}
