//! PostgreSQL access, with three seams swapped by features:
//! - how a connection is obtained (`source`): a new connection per request, a bb8
//!   pool with `pool`, or a few connections shared and pipelined with `pipeline` (which
//!   takes precedence over `pool` when both are on);
//! - how statements are sent (`session`): ad hoc every time, or prepared once per
//!   connection with `prepared` (a pooled connection carries its prepared statements);
//! - how requests become statements (`exec`): one statement per request, or, with
//!   `coalesce`, concurrent requests gathered into one statement per batch; or, with
//!   `memory-store` (a reference, not an optimisation), none: the users are read once
//!   into memory and served from there (it takes precedence over `coalesce`).
//!
//! Every request is bounded. It is admitted only while fewer than `MAX_PENDING` are in
//! the database layer (else 503 at once); its statement must be sent within
//! `DB_TIMEOUT_MS` (else 503, nothing sent); once sent, its outcome is awaited, which
//! PostgreSQL's `statement_timeout` (the same bound, always set: see
//! [`session_options`]) ends. So a 503 means "not applied", except for a write whose
//! statement was sent and then got no answer of PostgreSQL's own (the connection
//! broke, stalled or its backend was terminated): then the 503 says the outcome is
//! unknown, and the connection is dropped.
//!
//! **A write whose outcome was called unknown cannot land late over a newer one.**
//! Every UPDATE carries an apply-by time (sent + `DB_TIMEOUT_MS`, the server's clock)
//! and changes nothing if PostgreSQL starts it later (`statement_timestamp()`, the
//! database's clock). The server calls the outcome unknown only at sent + twice that
//! bound; by then a statement either started in time, and holds its row lock until it
//! ends (a newer write waits for it and applies after it), or never applies. This
//! holds while the two clocks differ by less than `DB_TIMEOUT_MS` (a database clock
//! ahead by more fails safe: writes are refused as late, 503, not applied). When the
//! connection breaks under a write, its answer waits out the same bound, so a retry
//! cannot run before a statement still queued on the broken connection. A conditional
//! UPDATE that matched no row is told apart by a read: no such user (404), or started
//! too late (503, not applied).
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::Semaphore;

use serde::Serialize;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::Type;
use tokio_postgres::Row;

use crate::config::Config;
use crate::error::AppError;

#[cfg_attr(feature = "prepared", path = "session_prepared.rs")]
#[cfg_attr(not(feature = "prepared"), path = "session_adhoc.rs")]
mod session;
use session::Session;

#[cfg_attr(feature = "pipeline", path = "source_pipeline.rs")]
#[cfg_attr(
    all(feature = "pool", not(feature = "pipeline")),
    path = "source_pool.rs"
)]
#[cfg_attr(
    not(any(feature = "pool", feature = "pipeline")),
    path = "source_direct.rs"
)]
mod source;

mod timestamp;
mod tls;

#[cfg_attr(feature = "memory-store", path = "exec_memory.rs")]
#[cfg_attr(
    all(feature = "coalesce", not(feature = "memory-store")),
    path = "exec_coalesce.rs"
)]
#[cfg_attr(
    not(any(feature = "coalesce", feature = "memory-store")),
    path = "exec_single.rs"
)]
mod exec;

/// A statement the executor runs, written once: its SQL and its parameters' types.
/// An executor lists the statements it uses (`exec::STATEMENTS`); with `prepared`, a
/// connection prepares exactly those.
#[derive(Debug)]
pub struct Statement {
    pub sql: &'static str,
    pub types: &'static [Type],
}

/// Reads one profile.
pub const SELECT_USER: Statement = Statement {
    sql: "SELECT id, name, email, updated_at, version FROM users WHERE id = $1",
    types: &[Type::INT8],
};

/// Changes one email and bumps `version`, unless PostgreSQL starts it after its
/// apply-by time `$3`; autocommit makes it durable before the reply.
pub const UPDATE_EMAIL: Statement = Statement {
    sql: "UPDATE users SET email = $2, updated_at = now(), \
          version = version + 1 WHERE id = $1 AND statement_timestamp() < $3 \
          RETURNING id, name, email, updated_at, version",
    types: &[Type::INT8, Type::TEXT, Type::TIMESTAMPTZ],
};

/// Reads a batch of profiles (`coalesce`): one row per existing id.
pub const SELECT_USERS: Statement = Statement {
    sql: "SELECT id, name, email, updated_at, version FROM users WHERE id = ANY($1)",
    types: &[Type::INT8_ARRAY],
};

/// Applies a batch of email changes (`coalesce`) in one statement and one commit, each
/// id at most once, unless PostgreSQL starts it after its apply-by time `$3`. Its rows
/// are locked first, in id order (`ORDER BY … FOR UPDATE` sorts, then locks): two
/// batches of two servers that share ids wait for each other, they cannot deadlock.
pub const UPDATE_EMAILS: Statement = Statement {
    sql:
        "WITH b AS MATERIALIZED (SELECT * FROM unnest($1::bigint[], $2::text[]) AS b(id, email)), \
          locked AS MATERIALIZED (SELECT u.id FROM users AS u \
            WHERE u.id IN (SELECT id FROM b) AND statement_timestamp() < $3 \
            ORDER BY u.id FOR UPDATE) \
          UPDATE users AS u SET email = b.email, updated_at = now(), version = u.version + 1 \
          FROM b, locked AS l WHERE u.id = b.id AND l.id = b.id \
          RETURNING u.id, u.name, u.email, u.updated_at, u.version",
    types: &[Type::INT8_ARRAY, Type::TEXT_ARRAY, Type::TIMESTAMPTZ],
};

/// A user profile as the API returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct User {
    pub id: i64,
    pub name: String,
    pub email: String,
    /// RFC 3339, UTC, microseconds.
    pub updated_at: String,
    /// How many PATCHes this row has had.
    pub version: i64,
}

/// Connections held by the pool, for `/metrics` (`None` without `pool`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolState {
    pub connections: u32,
    pub idle: u32,
}

/// The database handle shared by all requests.
pub struct Db {
    core: std::sync::Arc<Core>,
    exec: exec::Exec,
    /// Requests admitted to the database layer at once (`MAX_PENDING`): in flight,
    /// waiting for a connection or queued for a batch. Past it, 503 at once. A request
    /// holds its place until its statement or batch is done, also when its client has
    /// left (the executors keep the [`Admitted`] with the work).
    admission: std::sync::Arc<Semaphore>,
    /// The last readiness check and when it was made: `/readyz` asks PostgreSQL at most
    /// once per [`READY_FOR`], whoever calls it how often.
    ready: std::sync::Mutex<Option<(Instant, Result<(), AppError>)>>,
    /// Held by the one readiness check in flight.
    checking: tokio::sync::Mutex<()>,
    max_pending: usize,
}

/// How long a readiness answer is reused.
pub const READY_FOR: Duration = Duration::from_millis(250);

/// Connections and the statements on them, one request or one batch at a time.
pub(crate) struct Core {
    source: source::Source,
    /// `DB_TIMEOUT_MS`: how long a request may wait before its statement is sent.
    timeout: Duration,
    /// How long the outcome of a sent statement is awaited: twice PostgreSQL's own
    /// `statement_timeout` (the same `DB_TIMEOUT_MS`), which ends a running statement
    /// first; the rest is slack for time queued on a shared connection, the commit's
    /// flush and a busy machine.
    outcome_bound: Duration,
}

/// The `options` the server connects with: the user's own (from `DATABASE_URL`), then
/// the server's `statement_timeout`, last so that it wins: PostgreSQL gives up on a
/// statement when the client would (a lock wait is never unbounded), and a statement
/// that runs too long is rolled back and answered with an error, never applied late.
pub fn session_options(user: Option<&str>, timeout: Duration) -> String {
    let ours = format!("-c statement_timeout={}", timeout.as_millis());
    match user.map(str::trim).filter(|u| !u.is_empty()) {
        Some(user) => format!("{user} {ours}"),
        None => ours,
    }
}

impl Db {
    /// Prepares the connection source. It does not connect: the server starts (and
    /// `/readyz` says 503) while PostgreSQL is still down.
    pub fn new(config: &Config) -> Result<Self, String> {
        let mut pg: tokio_postgres::Config = config
            .database_url
            .parse()
            .map_err(|e| format!("DATABASE_URL: {e}"))?;
        pg.connect_timeout(config.db_timeout);
        let options = session_options(pg.get_options(), config.db_timeout);
        pg.options(options);
        if pg.get_application_name().is_none() {
            pg.application_name("perflab");
        }
        tls::require_with_ca_file(&mut pg, config.database_ca_file.is_some())?;
        let tls = tls::connector(config.database_ca_file.as_deref())?;
        let core = std::sync::Arc::new(Core {
            source: source::Source::new(pg, tls, config),
            timeout: config.db_timeout,
            outcome_bound: config.db_timeout * 2,
        });
        let exec = exec::Exec::new(&core, config);
        Ok(Self {
            core,
            exec,
            admission: std::sync::Arc::new(Semaphore::new(config.max_pending as usize)),
            ready: std::sync::Mutex::new(None),
            checking: tokio::sync::Mutex::new(()),
            max_pending: config.max_pending as usize,
        })
    }

    /// `GET /users/{id}`: the profile, or `None` when there is no such user.
    pub async fn user(&self, id: i64) -> Result<Option<User>, AppError> {
        let admitted = self.admit()?;
        let deadline = self.core.deadline();
        self.exec.user(&self.core, id, deadline, admitted).await
    }

    /// `PATCH /users/{id}`: the updated profile, or `None` when there is no such user.
    /// The change is committed before this returns. A 503 means it was not applied,
    /// unless the connection failed after the statement was sent (outcome unknown).
    pub async fn update_email(&self, id: i64, email: &str) -> Result<Option<User>, AppError> {
        let admitted = self.admit()?;
        let deadline = self.core.deadline();
        self.exec
            .update_email(&self.core, id, email, deadline, admitted)
            .await
    }

    /// `/readyz`: one round trip to PostgreSQL, or the answer of one made less than
    /// [`READY_FOR`] ago. While a check is in flight, other callers get the last answer
    /// (the first ones wait for it): a slow check holds up no probe.
    pub async fn ping(&self) -> Result<(), AppError> {
        let last = || {
            self.ready
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone()
        };
        if let Some((at, answer)) = last() {
            if at.elapsed() < READY_FOR {
                return answer;
            }
        }
        let _checking = match self.checking.try_lock() {
            Ok(guard) => guard,
            Err(_) => match last() {
                Some((_, answer)) => return answer,
                None => self.checking.lock().await,
            },
        };
        // Another check may have finished while this one waited for its turn.
        if let Some((_, answer)) = last().filter(|(at, _)| at.elapsed() < READY_FOR) {
            return answer;
        }
        let answer = self.core.ping(self.core.deadline()).await;
        *self
            .ready
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) =
            Some((Instant::now(), answer.clone()));
        answer
    }

    pub fn pool_state(&self) -> Option<PoolState> {
        self.core.source.state()
    }

    /// An upper bound on the file descriptors the server can hold with `config`: its
    /// clients' connections, its database connections (this build's: the pool's, the
    /// pipeline's, or one per admitted request without either), and 64 for listeners,
    /// TLS files and logs.
    pub fn descriptors_needed(config: &Config) -> u64 {
        let probes = if config.probe_addr.is_some() {
            crate::server::PROBE_CONNECTIONS as u64
        } else {
            0
        };
        u64::from(config.max_connections)
            + u64::from(source::Source::most_connections(config))
            + probes
            + 64
    }

    /// Requests in the database layer now, of `MAX_PENDING`, for `/metrics`.
    pub fn admitted(&self) -> usize {
        self.max_pending - self.admission.available_permits()
    }

    /// A place among the `MAX_PENDING` requests the database layer holds, or 503 now.
    fn admit(&self) -> Result<Admitted, AppError> {
        std::sync::Arc::clone(&self.admission)
            .try_acquire_owned()
            .map_err(|_| AppError::Overloaded)
    }
}

/// A request's place in the database layer (see `Db::admission`): freed when dropped.
pub(crate) type Admitted = tokio::sync::OwnedSemaphorePermit;

impl Core {
    /// When a request arriving now must have its statement sent by.
    pub(crate) fn deadline(&self) -> Instant {
        Instant::now() + self.timeout
    }

    /// Runs one statement in two phases. Before it is sent: a connection must be had
    /// by `deadline`, else 503 and nothing was sent. Once sent: its outcome is awaited
    /// (PostgreSQL's `statement_timeout` ends it), up to `outcome_bound`; past that the
    /// connection is given up (poisoned) and the outcome is unknown. The outer error is
    /// ours, the inner result PostgreSQL's answer.
    async fn run<T>(
        &self,
        deadline: Instant,
        statement: impl AsyncFnOnce(&Session) -> Result<T, tokio_postgres::Error>,
    ) -> Result<Result<T, tokio_postgres::Error>, AppError> {
        self.run_held(deadline, false, statement).await
    }

    /// [`Core::run`] for a write: when the connection breaks under a sent statement,
    /// the answer (outcome unknown) is held until the outcome bound has passed since
    /// sending, so that a client's retry cannot run before a statement that was still
    /// queued on the broken connection's backend (which then starts past its apply-by
    /// time and changes nothing).
    async fn run_write<T>(
        &self,
        deadline: Instant,
        statement: impl AsyncFnOnce(&Session) -> Result<T, tokio_postgres::Error>,
    ) -> Result<Result<T, tokio_postgres::Error>, AppError> {
        self.run_held(deadline, true, statement).await
    }

    async fn run_held<T>(
        &self,
        deadline: Instant,
        hold: bool,
        statement: impl AsyncFnOnce(&Session) -> Result<T, tokio_postgres::Error>,
    ) -> Result<Result<T, tokio_postgres::Error>, AppError> {
        let session = tokio::time::timeout_at(deadline.into(), self.source.get())
            .await
            .map_err(|_| {
                AppError::Unavailable(format!(
                    "no database connection within {} ms; nothing was sent",
                    self.timeout.as_millis()
                ))
            })??;
        if Instant::now() >= deadline {
            return Err(AppError::Unavailable(
                "the request's deadline passed before its statement was sent".into(),
            ));
        }
        let session: &Session = &session;
        let in_flight = session.health().in_flight();
        let sent = tokio::time::Instant::now();
        match tokio::time::timeout(self.outcome_bound, statement(session)).await {
            Ok(result) => {
                if result.is_ok() || result.as_ref().is_err_and(answered) {
                    in_flight.done();
                } else if hold && result.as_ref().is_err_and(broke_after_sending) {
                    tokio::time::sleep_until(sent + self.outcome_bound).await;
                }
                Ok(result)
            }
            Err(_) => Err(AppError::OutcomeUnknown(format!(
                "no answer within {} ms of sending the statement: connection dropped",
                self.outcome_bound.as_millis()
            ))),
        }
    }

    /// One profile by one statement (the memory store's executor needs none).
    #[cfg_attr(feature = "memory-store", allow(dead_code))]
    pub(crate) async fn user(&self, id: i64, deadline: Instant) -> Result<Option<User>, AppError> {
        let rows = self
            .run(deadline, async |s: &Session| {
                s.query(&SELECT_USER, &[&id]).await
            })
            .await?
            .map_err(classify)?;
        rows.first().map(user_from_row).transpose()
    }

    /// One email change by one statement (autocommit: durable when it returns).
    #[cfg_attr(feature = "memory-store", allow(dead_code))]
    pub(crate) async fn update_email(
        &self,
        id: i64,
        email: &str,
        deadline: Instant,
    ) -> Result<Option<User>, AppError> {
        let rows = self
            .run_write(deadline, async |s: &Session| {
                let apply_by = self.apply_by();
                s.query(&UPDATE_EMAIL, &[&id, &email, &apply_by]).await
            })
            .await?
            .map_err(classify_sent)?;
        match rows.first() {
            Some(row) => user_from_row(row).map(Some),
            // The UPDATE committed and changed nothing: whatever the read says, the
            // write was not applied.
            None => match self.user(id, self.deadline()).await.map_err(not_applied)? {
                None => Ok(None),
                Some(_) => Err(started_late()),
            },
        }
    }

    /// The wall-clock time after which a statement sent now must not start: see the
    /// module's notes.
    pub(crate) fn apply_by(&self) -> SystemTime {
        SystemTime::now() + self.timeout
    }

    pub(crate) async fn ping(&self, deadline: Instant) -> Result<(), AppError> {
        self.run(deadline, async |s: &Session| s.ping().await)
            .await?
            .map_err(classify)
    }
}

/// What both session implementations share (they differ only in how they send the
/// API's two statements).
impl session::Session {
    pub async fn ping(&self) -> Result<(), tokio_postgres::Error> {
        self.client().simple_query("").await.map(|_| ())
    }

    /// True once the connection is known to be unusable, without a round trip: its
    /// socket closed, or a request on it was abandoned mid-flight. Only the pool asks,
    /// so builds without `pool` leave it unused.
    #[allow(dead_code)]
    pub fn is_broken(&self) -> bool {
        self.client().is_closed() || self.health().is_poisoned()
    }
}

/// Whether a connection can still be trusted. A request abandoned mid-flight (its
/// timeout fired) leaves a reply owed on the connection, maybe forever: such a
/// connection is poisoned, and the pool drops it instead of handing it out again.
#[derive(Debug, Default)]
pub struct Health {
    poisoned: AtomicBool,
}

impl Health {
    /// Marks the start of a round trip; unless `done` is called, dropping the guard
    /// poisons the connection.
    pub fn in_flight(&self) -> InFlight<'_> {
        InFlight(Some(&self.poisoned))
    }

    pub fn is_poisoned(&self) -> bool {
        self.poisoned.load(Ordering::Relaxed)
    }
}

/// See [`Health::in_flight`].
pub struct InFlight<'a>(Option<&'a AtomicBool>);

impl InFlight<'_> {
    pub fn done(mut self) {
        self.0 = None;
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if let Some(flag) = self.0 {
            flag.store(true, Ordering::Relaxed);
        }
    }
}

fn user_from_row(row: &Row) -> Result<User, AppError> {
    let decode = |e: tokio_postgres::Error| AppError::Internal(format!("decoding a row: {e}"));
    let updated_at: timestamp::Timestamp = row.try_get(3).map_err(decode)?;
    Ok(User {
        id: row.try_get(0).map_err(decode)?,
        name: row.try_get(1).map_err(decode)?,
        email: row.try_get(2).map_err(decode)?,
        updated_at: updated_at.to_string(),
        version: row.try_get(4).map_err(decode)?,
    })
}

/// Whether PostgreSQL answered a failed statement with an error of its own: the round
/// trip is over, nothing is owed on the connection, and it stays in use. Not so for
/// errors that say the connection's own state is stale (a prepared statement whose
/// plan no longer fits the table, or that is gone): those would fail every later
/// request on it, so the connection is replaced.
fn answered(e: &tokio_postgres::Error) -> bool {
    e.as_db_error().is_some()
        && e.code() != Some(&SqlState::FEATURE_NOT_SUPPORTED)
        && e.code() != Some(&SqlState::INVALID_SQL_STATEMENT_NAME)
}

/// Database trouble (unreachable, restarting, out of connections) is a 503: the client
/// may retry. A value a constraint of the table refuses (a `CHECK` the operator added)
/// is a 422. A statement PostgreSQL rejects for another reason is our bug: a 500.
pub(crate) fn classify(e: tokio_postgres::Error) -> AppError {
    let detail = with_causes(&e);
    if e.code() == Some(&SqlState::CHECK_VIOLATION) {
        tracing::debug!(%detail, "a value refused by the table's constraint");
        return AppError::Unprocessable("the database refused this value");
    }
    match kind_of(&e) {
        ErrorKind::Statement => AppError::Internal(format!("database error: {detail}")),
        ErrorKind::Connection | ErrorKind::Transient => {
            AppError::Unavailable(format!("database unavailable: {detail}"))
        }
    }
}

/// Like [`classify`], for a write whose statement was sent: unless PostgreSQL answered
/// with an error of the statement's own (it then rolled it back), the connection broke
/// under it, and whether it committed is unknown.
pub(crate) fn classify_sent(e: tokio_postgres::Error) -> AppError {
    if broke_after_sending(&e) {
        AppError::OutcomeUnknown(format!(
            "the connection failed after the statement was sent: {}",
            with_causes(&e)
        ))
    } else {
        classify(e)
    }
}

/// No SQLSTATE (closed, reset, an I/O error), or one that ends the session rather than
/// the statement (the backend terminated, the server shutting down or crashing, a
/// connection exception): the statement may have committed before it.
fn broke_after_sending(e: &tokio_postgres::Error) -> bool {
    match e.code() {
        None => true,
        Some(code) => {
            *code == SqlState::ADMIN_SHUTDOWN
                || *code == SqlState::CRASH_SHUTDOWN
                || code.code().starts_with("08")
        }
    }
}

/// An error of a read made after a write that changed nothing: a 503 that says so
/// (never "outcome unknown", whatever happened to the read).
pub(crate) fn not_applied(e: AppError) -> AppError {
    match e {
        AppError::OutcomeUnknown(detail) => AppError::Unavailable(format!(
            "the write changed nothing; the read that followed it failed: {detail}"
        )),
        other => other,
    }
}

/// A write that PostgreSQL started after its apply-by time: it changed nothing.
pub(crate) fn started_late() -> AppError {
    AppError::Unavailable(
        "the statement started after its apply-by time and changed nothing".into(),
    )
}

/// An error and the causes its own text leaves out (a TLS handshake's reason, for one),
/// for the log.
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.contains(&more) {
            text = format!("{text}: {more}");
        }
        cause = c.source();
    }
    text
}

/// What a database error says about where the trouble is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ErrorKind {
    /// No SQLSTATE: the connection failed.
    Connection,
    /// A transient SQLSTATE, or one that refused the connection (authentication,
    /// `pg_hba.conf`, a missing database: the service cannot reach its database,
    /// nothing was run).
    Transient,
    /// PostgreSQL rejected the statement itself.
    Statement,
}

pub(crate) fn kind_of(e: &tokio_postgres::Error) -> ErrorKind {
    let Some(code) = e.code() else {
        return ErrorKind::Connection;
    };
    let transient = code.code().starts_with("08")
        || code.code().starts_with("28")
        || code.code().starts_with("3D")
        || code.code().starts_with("53")
        || code.code().starts_with("57P")
        || *code == SqlState::QUERY_CANCELED
        || *code == SqlState::T_R_SERIALIZATION_FAILURE
        || *code == SqlState::T_R_DEADLOCK_DETECTED;
    if transient {
        ErrorKind::Transient
    } else {
        ErrorKind::Statement
    }
}
