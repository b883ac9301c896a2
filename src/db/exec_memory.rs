//! `memory-store`: the HTTP floor, a reference rather than an optimisation. The users
//! are read from PostgreSQL once, on the first request that needs them, into a map held
//! in memory; from then on every GET and PATCH is answered from the map, and PostgreSQL
//! sees nothing but `/readyz`'s pings. Routing, validation, JSON and errors are the
//! same code as every other build's, so the difference between this build and one that
//! queries PostgreSQL is the cost of the database round trip.
//!
//! PATCHes change the map only: they are not durable, and the lab does not check them
//! against PostgreSQL. Each id has its own lock, so a PATCH sets the email, the time
//! and `version + 1` of its row at once, and two PATCHes of one id are applied in turn.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::OnceCell;

use super::timestamp::Timestamp;
use super::{classify, user_from_row, Admitted, Core, Session, Statement, User};
use crate::config::Config;
use crate::error::AppError;

/// Every user, read once.
pub const SELECT_ALL_USERS: Statement = Statement {
    sql: "SELECT id, name, email, updated_at, version FROM users",
    types: &[],
};

/// The statements this executor runs (a `prepared` connection prepares these).
pub const STATEMENTS: &[&Statement] = &[&SELECT_ALL_USERS];

/// Microseconds from 1970-01-01 to 2000-01-01, PostgreSQL's epoch.
const MICROS_1970_TO_2000: i64 = 946_684_800_000_000;

pub struct Exec {
    users: OnceCell<HashMap<i64, Mutex<User>>>,
}

impl Exec {
    pub fn new(_core: &Arc<Core>, _config: &Config) -> Self {
        Self {
            users: OnceCell::new(),
        }
    }

    pub async fn user(
        &self,
        core: &Core,
        id: i64,
        deadline: Instant,
        _admitted: Admitted,
    ) -> Result<Option<User>, AppError> {
        let users = self.users(core, deadline).await?;
        Ok(users.get(&id).map(|u| lock(u).clone()))
    }

    pub async fn update_email(
        &self,
        core: &Core,
        id: i64,
        email: &str,
        deadline: Instant,
        _admitted: Admitted,
    ) -> Result<Option<User>, AppError> {
        let users = self.users(core, deadline).await?;
        let now = Timestamp(now_micros_since_2000()).to_string();
        Ok(users.get(&id).map(|u| {
            let mut user = lock(u);
            user.email.clear();
            user.email.push_str(email);
            user.updated_at = now;
            user.version += 1;
            user.clone()
        }))
    }

    /// The map, read from PostgreSQL by the first request (the others wait for it). A
    /// failed read is a 503, and the next request tries again.
    async fn users(
        &self,
        core: &Core,
        deadline: Instant,
    ) -> Result<&HashMap<i64, Mutex<User>>, AppError> {
        self.users
            .get_or_try_init(|| async {
                let started = Instant::now();
                let rows = core
                    .run(deadline, async |s: &Session| {
                        s.query(&SELECT_ALL_USERS, &[]).await
                    })
                    .await?
                    .map_err(classify)?;
                let users = rows
                    .iter()
                    .map(|row| user_from_row(row).map(|u| (u.id, Mutex::new(u))))
                    .collect::<Result<HashMap<_, _>, _>>()?;
                tracing::info!(
                    users = users.len(),
                    ms = started.elapsed().as_millis() as u64,
                    "memory store: the users are read from PostgreSQL and held in memory"
                );
                Ok(users)
            })
            .await
    }
}

/// A user's row; a panic while it was held cannot leave it half written (every change
/// above is to fields that cannot panic), so a poisoned lock is taken as it is.
fn lock(user: &Mutex<User>) -> std::sync::MutexGuard<'_, User> {
    user.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn now_micros_since_2000() -> i64 {
    let since_1970 = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX));
    since_1970.saturating_sub(MICROS_1970_TO_2000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_time_of_a_patch_is_written_like_postgresqls() {
        let text = Timestamp(now_micros_since_2000()).to_string();
        // 2026-11-29T12:00:00.000000Z
        assert_eq!(text.len(), 27, "{text}");
        assert!(text.starts_with("20"), "{text}");
        assert!(text.ends_with('Z'), "{text}");
        assert_eq!(Timestamp(0).to_string(), "2000-01-01T00:00:00.000000Z");
    }
}
