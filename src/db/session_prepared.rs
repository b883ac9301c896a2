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

    pub async fn ping(&self) -> Result<(), Error> {
        self.client.simple_query("").await.map(|_| ())
    }

    pub fn health(&self) -> &Health {
        &self.health
    }

    /// True once the connection is known to be unusable, without a round trip: its
    /// socket closed, or a request on it was abandoned mid-flight. Only the pool asks,
    /// so builds without `pool` leave it unused.
    #[allow(dead_code)]
    pub fn is_broken(&self) -> bool {
        self.client.is_closed() || self.health.is_poisoned()
    }
}
