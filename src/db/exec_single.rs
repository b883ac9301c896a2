//! One statement per request (every build without `coalesce`).
use std::sync::Arc;
use std::time::Instant;

use super::{Core, Statement, User, SELECT_USER, UPDATE_EMAIL};
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
        core: &Core,
        id: i64,
        deadline: Instant,
    ) -> Result<Option<User>, AppError> {
        core.user(id, deadline).await
    }

    pub async fn update_email(
        &self,
        core: &Core,
        id: i64,
        email: &str,
        deadline: Instant,
    ) -> Result<Option<User>, AppError> {
        core.update_email(id, email, deadline).await
    }
}
