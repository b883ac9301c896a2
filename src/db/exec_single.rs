//! One statement per request (every build without `coalesce`), run as its own task: a
//! client that disconnects mid-request drops its handler, not the statement, so the
//! connection finishes its round trip and stays in use (no reconnect, no new backend
//! per disconnect), and the request keeps its place in admission until it is done.
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use super::{Admitted, Core, Statement, User, SELECT_USER, UPDATE_EMAIL};
use crate::config::Config;
use crate::error::AppError;

/// The statements this executor runs (a `prepared` connection prepares these).
pub const STATEMENTS: &[&Statement] = &[&SELECT_USER, &UPDATE_EMAIL];

pub struct Exec;

impl Exec {
    pub fn new(_core: &Arc<Core>, _config: &Config) -> Self {
        Self
    }

    pub async fn user(
        &self,
        core: &Arc<Core>,
        id: i64,
        deadline: Instant,
        admitted: Admitted,
    ) -> Result<Option<User>, AppError> {
        let core = Arc::clone(core);
        detached(admitted, async move { core.user(id, deadline).await }).await
    }

    pub async fn update_email(
        &self,
        core: &Arc<Core>,
        id: i64,
        email: &str,
        deadline: Instant,
        admitted: Admitted,
    ) -> Result<Option<User>, AppError> {
        let core = Arc::clone(core);
        let email = email.to_owned();
        detached(admitted, async move {
            core.update_email(id, &email, deadline).await
        })
        .await
    }
}

/// Runs `work` as its own task, holding `admitted` until it ends, and waits for it.
async fn detached<T: Send + 'static>(
    admitted: Admitted,
    work: impl Future<Output = Result<T, AppError>> + Send + 'static,
) -> Result<T, AppError> {
    tokio::spawn(async move {
        let _admitted = admitted;
        work.await
    })
    .await
    .unwrap_or_else(|e| Err(AppError::Internal(format!("a request's task failed: {e}"))))
}
