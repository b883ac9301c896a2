//! Statements prepared once per connection and reused: PostgreSQL parses and plans
//! them once, each request only binds and executes.
use tokio_postgres::types::Type;
use tokio_postgres::{Client, Error, Row, Statement};

use super::{Health, SELECT_USER, UPDATE_EMAIL};

/// One connection with its prepared statements.
pub struct Session {
    client: Client,
    health: Health,
    select_user: Statement,
    update_email: Statement,
}

impl Session {
    pub async fn open(client: Client) -> Result<Self, Error> {
        // Both are pipelined on the connection: one round trip's wait, not two.
        let (select_user, update_email) = tokio::try_join!(
            client.prepare_typed(SELECT_USER, &[Type::INT8]),
            client.prepare_typed(UPDATE_EMAIL, &[Type::INT8, Type::TEXT]),
        )?;
        Ok(Self {
            client,
            health: Health::default(),
            select_user,
            update_email,
        })
    }

    pub async fn select_user(&self, id: i64) -> Result<Vec<Row>, Error> {
        self.client.query(&self.select_user, &[&id]).await
    }

    pub async fn update_email(&self, id: i64, email: &str) -> Result<Vec<Row>, Error> {
        self.client.query(&self.update_email, &[&id, &email]).await
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn health(&self) -> &Health {
        &self.health
    }
}
