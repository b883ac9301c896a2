//! Statements prepared once per connection and reused: PostgreSQL parses and plans
//! them once, each request only binds and executes.
use tokio_postgres::types::Type;
use tokio_postgres::{Client, Error, Row, Statement};

use super::{Health, SELECT_USER, SELECT_USERS, UPDATE_EMAIL, UPDATE_EMAILS};

/// One connection with its prepared statements.
pub struct Session {
    client: Client,
    health: Health,
    select_user: Statement,
    update_email: Statement,
    select_users: Statement,
    update_emails: Statement,
}

impl Session {
    pub async fn open(client: Client) -> Result<Self, Error> {
        // All are pipelined on the connection: one round trip's wait, not four.
        let (select_user, update_email, select_users, update_emails) = tokio::try_join!(
            client.prepare_typed(SELECT_USER, &[Type::INT8]),
            client.prepare_typed(UPDATE_EMAIL, &[Type::INT8, Type::TEXT]),
            client.prepare_typed(SELECT_USERS, &[Type::INT8_ARRAY]),
            client.prepare_typed(
                UPDATE_EMAILS,
                &[Type::INT8_ARRAY, Type::TEXT_ARRAY, Type::INT8_ARRAY]
            ),
        )?;
        Ok(Self {
            client,
            health: Health::default(),
            select_user,
            update_email,
            select_users,
            update_emails,
        })
    }

    pub async fn select_user(&self, id: i64) -> Result<Vec<Row>, Error> {
        self.client.query(&self.select_user, &[&id]).await
    }

    pub async fn update_email(&self, id: i64, email: &str) -> Result<Vec<Row>, Error> {
        self.client.query(&self.update_email, &[&id, &email]).await
    }

    pub async fn select_users(&self, ids: &[i64]) -> Result<Vec<Row>, Error> {
        self.client.query(&self.select_users, &[&ids]).await
    }

    pub async fn update_emails(
        &self,
        ids: &[i64],
        emails: &[&str],
        counts: &[i64],
    ) -> Result<Vec<Row>, Error> {
        self.client
            .query(&self.update_emails, &[&ids, &emails, &counts])
            .await
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn health(&self) -> &Health {
        &self.health
    }
}
