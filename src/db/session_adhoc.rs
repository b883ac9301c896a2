//! Statements sent ad hoc: every query is parsed and planned by PostgreSQL again
//! (`query_typed`: one round trip, unnamed statement, parameter types given).
use tokio_postgres::types::Type;
use tokio_postgres::{Client, Error, Row};

use super::{Health, SELECT_USER, SELECT_USERS, UPDATE_EMAIL, UPDATE_EMAILS};

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

    pub async fn select_users(&self, ids: &[i64]) -> Result<Vec<Row>, Error> {
        self.client
            .query_typed(SELECT_USERS, &[(&ids, Type::INT8_ARRAY)])
            .await
    }

    pub async fn update_emails(
        &self,
        ids: &[i64],
        emails: &[&str],
        counts: &[i64],
    ) -> Result<Vec<Row>, Error> {
        self.client
            .query_typed(
                UPDATE_EMAILS,
                &[
                    (&ids, Type::INT8_ARRAY),
                    (&emails, Type::TEXT_ARRAY),
                    (&counts, Type::INT8_ARRAY),
                ],
            )
            .await
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn health(&self) -> &Health {
        &self.health
    }
}
