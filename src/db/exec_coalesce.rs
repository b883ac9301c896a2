//! `coalesce`: request coalescing, the DataLoader pattern applied to a database.
//! Concurrent GETs are served by one `SELECT … WHERE id = ANY($1)` per batch, and
//! concurrent PATCHes by one `UPDATE … FROM unnest(…)` per batch, in one durable commit.
//!
//! - **No timer.** Each worker takes whatever is queued (up to `COALESCE_MAX_BATCH`) the
//!   moment it is free, so under light load a batch is one request and adds no latency;
//!   under load, batches grow by themselves while the previous one runs.
//! - **Each PATCH is answered after its batch has committed**, with its own email and
//!   its own version.
//! - **Every acknowledged value went through PostgreSQL** (its constraints, its
//!   triggers): `UPDATE … FROM` would apply a row once however often it appears, so a
//!   batch runs in rounds, the k-th PATCH of each id in round k, one statement and one
//!   commit each, in arrival order. Nothing is folded.
//! - **No deadlocks, and each id's writes in order**: write workers partition the ids
//!   (`id % COALESCE_WRITERS`), so two batches of one server never lock the same row,
//!   and one worker runs one batch at a time; across servers (a rolling update), each
//!   batch locks its rows in id order (see `UPDATE_EMAILS`).
//! - **One bad row fails only its requests**: when PostgreSQL rejects a batch statement
//!   (an error it raised, so nothing committed; not when the database is unavailable),
//!   the batch is split in halves and retried, down to the one id at fault. Once the
//!   statement has returned it has committed: a row that then fails to decode is a 500
//!   for its own id's requests, and nothing is run again (a write is applied once).
//! - **A panicking batch does not take its worker down**: each batch runs as its own
//!   task; if it panics, its requests are answered 500, the panic is logged and counted
//!   (`perflab_batch_panics_total`), and the worker goes on with the next batch.
//! - **A 503 means "not applied".** Each request carries a ticket. A worker takes a
//!   request into a batch only while its caller still waits (before its deadline); a
//!   caller whose deadline passes first withdraws its ticket and gets 503, and its
//!   request is never run. A caller whose request was taken waits for the batch's
//!   outcome, which the worker always gives (each statement is bounded; see `Core::run`).
//! - The queues are bounded by the database layer's admission (`MAX_PENDING`): past
//!   it, a request gets 503 at once instead of waiting out its deadline.
//! - On shutdown, the server stops accepting and waits for in-flight requests; the
//!   workers keep running until then, so every queued request is answered.
use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use tokio_postgres::Row;

use super::session::Session;
use super::{
    classify, classify_sent, kind_of, not_applied, started_late, user_from_row, Admitted, Core,
    ErrorKind, Statement, User, SELECT_USER, SELECT_USERS, UPDATE_EMAIL, UPDATE_EMAILS,
};

/// The statements this executor runs (a `prepared` connection prepares these).
pub const STATEMENTS: &[&Statement] = &[&SELECT_USER, &UPDATE_EMAIL, &SELECT_USERS, &UPDATE_EMAILS];
use crate::config::Config;
use crate::error::AppError;
use crate::metrics;

type Answer = Result<Option<User>, AppError>;

struct Read {
    id: i64,
    ticket: Ticket,
    reply: oneshot::Sender<Answer>,
    /// The request's place in admission, freed when the request is answered or
    /// dropped from the queue (not when its caller leaves): the queues stay within
    /// `MAX_PENDING`.
    _admitted: Option<Admitted>,
}

struct Write {
    id: i64,
    email: String,
    ticket: Ticket,
    reply: oneshot::Sender<Answer>,
    _admitted: Option<Admitted>,
}

/// Who decides a queued request's fate: the worker takes it into a batch, or its caller
/// withdraws it at its deadline; whichever comes first, once.
#[derive(Clone, Default)]
struct Ticket(Arc<AtomicU8>);

const QUEUED: u8 = 0;
const TAKEN: u8 = 1;
const WITHDRAWN: u8 = 2;

impl Ticket {
    /// The worker's side: true if the request is now the batch's to run.
    fn take(&self) -> bool {
        self.0
            .compare_exchange(QUEUED, TAKEN, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// The caller's side: true if the request will now never run.
    fn withdraw(&self) -> bool {
        self.0
            .compare_exchange(QUEUED, WITHDRAWN, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }
}

/// A caller waits for its answer until `deadline`; past it, it withdraws its request,
/// unless a worker has taken it, in which case it waits for the batch's outcome.
async fn wait(ticket: &Ticket, deadline: Instant, mut answer: oneshot::Receiver<Answer>) -> Answer {
    let replied =
        |r: Result<Answer, oneshot::error::RecvError>| r.unwrap_or_else(|_| Err(batch_failed()));
    match tokio::time::timeout_at(deadline.into(), &mut answer).await {
        Ok(r) => replied(r),
        Err(_) if ticket.withdraw() => Err(AppError::Unavailable(
            "queued past the deadline; nothing was sent".into(),
        )),
        Err(_) => replied(answer.await),
    }
}

pub struct Exec {
    readers: Vec<mpsc::UnboundedSender<Read>>,
    writers: Vec<mpsc::UnboundedSender<Write>>,
    next_reader: AtomicUsize,
}

fn stopped() -> AppError {
    AppError::Unavailable("the batch worker stopped".into())
}

/// A request whose reply was dropped unanswered: its batch panicked.
fn batch_failed() -> AppError {
    AppError::Internal("the batch serving this request failed".into())
}

/// Runs one batch as its own task, so a panic in it ends that batch only: its requests'
/// reply channels are dropped (they are answered 500), and the worker carries on.
async fn supervised(
    kind: &'static str,
    batch: impl std::future::Future<Output = ()> + Send + 'static,
) {
    if let Err(e) = tokio::spawn(batch).await {
        if e.is_panic() {
            tracing::error!(kind, error = %e, "a batch panicked; its requests get 500, the worker goes on");
            metrics::observe_batch_panic(kind);
        }
    }
}

impl Exec {
    /// Starts the workers (on the current tokio runtime).
    pub fn new(core: &Arc<Core>, config: &Config) -> Self {
        let max = config.coalesce_max_batch.max(1) as usize;
        let readers = (0..config.coalesce_readers.max(1))
            .map(|_| {
                let (tx, rx) = mpsc::unbounded_channel();
                tokio::spawn(read_worker(core.clone(), rx, max));
                tx
            })
            .collect();
        let writers = (0..config.coalesce_writers.max(1))
            .map(|_| {
                let (tx, rx) = mpsc::unbounded_channel();
                tokio::spawn(write_worker(core.clone(), rx, max));
                tx
            })
            .collect();
        Self {
            readers,
            writers,
            next_reader: AtomicUsize::new(0),
        }
    }

    pub async fn user(
        &self,
        _core: &Arc<Core>,
        id: i64,
        deadline: Instant,
        admitted: Admitted,
    ) -> Answer {
        let (reply, answer) = oneshot::channel();
        let ticket = Ticket::default();
        let i = self.next_reader.fetch_add(1, Ordering::Relaxed) % self.readers.len();
        self.readers[i]
            .send(Read {
                id,
                ticket: ticket.clone(),
                reply,
                _admitted: Some(admitted),
            })
            .map_err(|_| stopped())?;
        wait(&ticket, deadline, answer).await
    }

    pub async fn update_email(
        &self,
        _core: &Arc<Core>,
        id: i64,
        email: &str,
        deadline: Instant,
        admitted: Admitted,
    ) -> Answer {
        let (reply, answer) = oneshot::channel();
        let ticket = Ticket::default();
        self.writers[writer_of(id, self.writers.len())]
            .send(Write {
                id,
                email: email.to_owned(),
                ticket: ticket.clone(),
                reply,
                _admitted: Some(admitted),
            })
            .map_err(|_| stopped())?;
        wait(&ticket, deadline, answer).await
    }
}

/// The write worker that owns `id`.
fn writer_of(id: i64, writers: usize) -> usize {
    id.rem_euclid(writers as i64) as usize
}

async fn read_worker(core: Arc<Core>, mut rx: mpsc::UnboundedReceiver<Read>, max: usize) {
    let mut batch = Vec::with_capacity(max);
    while rx.recv_many(&mut batch, max).await > 0 {
        batch.retain(|r: &Read| !r.reply.is_closed() && r.ticket.take());
        if batch.is_empty() {
            continue;
        }
        metrics::observe_batch("read", batch.len());
        let taken = std::mem::replace(&mut batch, Vec::with_capacity(max));
        supervised("read", read_batch(core.clone(), taken)).await;
    }
}

async fn read_batch(core: Arc<Core>, mut batch: Vec<Read>) {
    if batch.len() == 1 {
        // Light load: one request is one plain statement, as without `coalesce`.
        for r in batch.drain(..) {
            let answer = core.user(r.id, core.deadline()).await;
            let _ = r.reply.send(answer);
        }
        return;
    }
    let mut ids: Vec<i64> = batch.iter().map(|r| r.id).collect();
    ids.sort_unstable();
    ids.dedup();
    match core.users(&ids, core.deadline()).await {
        Ok(rows) => {
            for r in batch.drain(..) {
                let answer = match rows.rows.get(&r.id) {
                    Some(Ok(user)) => Ok(Some(user.clone())),
                    Some(Err(e)) => Err(e.clone()),
                    None => rows.undecodable.clone().map_or(Ok(None), Err),
                };
                let _ = r.reply.send(answer);
            }
        }
        Err(e) => {
            for r in batch.drain(..) {
                let _ = r.reply.send(Err(e.clone()));
            }
        }
    }
}

async fn write_worker(core: Arc<Core>, mut rx: mpsc::UnboundedReceiver<Write>, max: usize) {
    let mut batch = Vec::with_capacity(max);
    while rx.recv_many(&mut batch, max).await > 0 {
        batch.retain(|w: &Write| !w.reply.is_closed() && w.ticket.take());
        if batch.is_empty() {
            continue;
        }
        metrics::observe_batch("write", batch.len());
        let rounds = rounds(batch.drain(..));
        let core = core.clone();
        supervised("write", async move {
            for round in rounds {
                apply(&core, round).await;
            }
        })
        .await;
    }
}

/// Splits a batch into rounds in which each id appears once: round k holds the k-th
/// PATCH of every id that has k, so each id's PATCHes run in arrival order, one per
/// round. Within a round, ids are sorted (the order the statement locks them in).
fn rounds(writes: impl Iterator<Item = Write>) -> Vec<Vec<Write>> {
    let mut rounds: Vec<Vec<Write>> = Vec::new();
    let mut seen: HashMap<i64, usize> = HashMap::new();
    for w in writes {
        let k = seen.entry(w.id).or_insert(0);
        if *k == rounds.len() {
            rounds.push(Vec::new());
        }
        rounds[*k].push(w);
        *k += 1;
    }
    for round in &mut rounds {
        round.sort_by_key(|w| w.id);
    }
    rounds
}

/// Runs one round (distinct ids); a statement PostgreSQL rejects is retried in halves,
/// so only the request at fault gets the error.
async fn apply(core: &Core, round: Vec<Write>) {
    let mut pending = vec![round];
    while let Some(mut part) = pending.pop() {
        if part.len() == 1 {
            // One PATCH: the plain single-row statement, as without `coalesce`.
            let w = part.remove(0);
            let answer = core.update_email(w.id, &w.email, core.deadline()).await;
            let _ = w.reply.send(answer);
            continue;
        }
        let ids: Vec<i64> = part.iter().map(|w| w.id).collect();
        let emails: Vec<&str> = part.iter().map(|w| w.email.as_str()).collect();
        match core.update_emails(&ids, &emails, core.deadline()).await {
            Ok(rows) => {
                for w in part {
                    let answer = answer_applied(w.id, &rows);
                    let _ = w.reply.send(answer);
                }
            }
            Err(BatchError::Rejected(e)) => {
                tracing::debug!(error = %e, ids = part.len(), "batch rejected: retrying in halves");
                metrics::observe_batch_halving("write");
                let right = part.split_off(part.len() / 2);
                pending.push(right);
                pending.push(part);
            }
            Err(BatchError::Failed(e)) => {
                for w in part {
                    let _ = w.reply.send(Err(e.clone()));
                }
            }
        }
    }
}

/// A PATCH's answer from its committed batch: its row, a decoding error for its row (a
/// 500; the write was applied), no row for a missing user, or a 503 for a batch that
/// started too late and changed nothing.
fn answer_applied(id: i64, rows: &Decoded) -> Answer {
    match rows.rows.get(&id) {
        Some(Ok(row)) => Ok(Some(row.clone())),
        Some(Err(e)) => Err(e.clone()),
        None if rows.late.contains(&id) => Err(started_late()),
        None => match (&rows.undecodable, &rows.unresolved) {
            (Some(e), _) | (None, Some(e)) => Err(e.clone()),
            (None, None) => Ok(None),
        },
    }
}

/// Whether PostgreSQL itself rejected a statement for a reason that is not transient
/// (bad data, a constraint): an error it raised, so the statement did not commit.
fn rejected(e: &tokio_postgres::Error) -> bool {
    e.as_db_error().is_some() && kind_of(e) == ErrorKind::Statement
}

/// The batch statements, on the core every request path shares.
impl Core {
    /// Profiles of `ids` by one statement; ids with no user have no entry, and a row
    /// that does not decode is an error for its id alone.
    pub(crate) async fn users(&self, ids: &[i64], deadline: Instant) -> Result<Decoded, AppError> {
        let rows = self
            .run(deadline, async |s: &Session| {
                s.query(&SELECT_USERS, &[&ids]).await
            })
            .await?
            .map_err(classify)?;
        Ok(Decoded::from_rows(&rows))
    }

    /// Applies `emails[i]` to each distinct `ids[i]` by one statement, one commit;
    /// returns the rows as they are after it. Only a statement PostgreSQL rejected is
    /// [`BatchError::Rejected`]: once it has returned, it committed, and a row that does
    /// not decode is an error for its id alone. Ids it returned no row for are read
    /// again: a user that exists was not changed because the statement started late.
    pub(crate) async fn update_emails(
        &self,
        ids: &[i64],
        emails: &[&str],
        deadline: Instant,
    ) -> Result<Decoded, BatchError> {
        let answer = self
            .run_write(deadline, async |s: &Session| {
                let apply_by = self.apply_by();
                s.query(&UPDATE_EMAILS, &[&ids, &emails, &apply_by]).await
            })
            .await
            .map_err(BatchError::Failed)?;
        let mut decoded = match answer {
            Ok(rows) => Decoded::from_rows(&rows),
            Err(e) if rejected(&e) => return Err(BatchError::Rejected(classify(e))),
            Err(e) => return Err(BatchError::Failed(classify_sent(e))),
        };
        let missing: Vec<i64> = ids
            .iter()
            .copied()
            .filter(|id| !decoded.rows.contains_key(id))
            .collect();
        if !missing.is_empty() && decoded.undecodable.is_none() {
            // The batch committed: a failed read fails only the ids it was about, whose
            // writes changed nothing either way.
            match self.users(&missing, self.deadline()).await {
                Ok(exist) => decoded.late = exist.rows.into_keys().collect(),
                Err(e) => decoded.unresolved = Some(not_applied(e)),
            }
        }
        Ok(decoded)
    }
}

/// How a batch UPDATE failed.
#[derive(Debug)]
pub(crate) enum BatchError {
    /// PostgreSQL raised an error for the statement: it was rolled back, nothing of the
    /// batch was applied, and running parts of it again applies each write once.
    Rejected(AppError),
    /// Unavailable or timed out: answered like a single request would be.
    Failed(AppError),
}

/// The rows a batch statement returned, by id, each decoded or not: one bad row fails
/// only the requests for its id.
#[derive(Debug, Default)]
pub(crate) struct Decoded {
    pub rows: HashMap<i64, Result<User, AppError>>,
    /// Set when a row's very id did not decode: an id without a row then cannot be
    /// called missing.
    pub undecodable: Option<AppError>,
    /// Ids of users that exist but that a conditional UPDATE did not change: it started
    /// after its apply-by time.
    pub late: std::collections::HashSet<i64>,
    /// Set when the read that tells missing users from late writes failed: the answer
    /// of every id without a row (none of them was changed).
    pub unresolved: Option<AppError>,
}

impl Decoded {
    fn from_rows(rows: &[Row]) -> Self {
        let mut applied = Self::default();
        for row in rows {
            match row.try_get::<_, i64>(0) {
                Ok(id) => {
                    applied.rows.insert(id, user_from_row(row));
                }
                Err(e) => {
                    applied.undecodable =
                        Some(AppError::Internal(format!("decoding a row's id: {e}")));
                }
            }
        }
        applied
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(id: i64, email: &str) -> (Write, oneshot::Receiver<Answer>) {
        let (reply, rx) = oneshot::channel();
        (
            Write {
                id,
                email: email.into(),
                ticket: Ticket::default(),
                reply,
                _admitted: None,
            },
            rx,
        )
    }

    #[test]
    fn duplicate_ids_run_in_rounds_in_arrival_order() {
        let (a, _ra) = write(7, "a@x");
        let (b, _rb) = write(9, "b@x");
        let (c, _rc) = write(7, "c@x");
        let (d, _rd) = write(3, "d@x");
        let (e, _re) = write(7, "e@x");
        let rounds = rounds([a, b, c, d, e].into_iter());
        let shape: Vec<Vec<(i64, &str)>> = rounds
            .iter()
            .map(|r| r.iter().map(|w| (w.id, w.email.as_str())).collect())
            .collect();
        assert_eq!(
            shape,
            vec![
                vec![(3, "d@x"), (7, "a@x"), (9, "b@x")],
                vec![(7, "c@x")],
                vec![(7, "e@x")],
            ]
        );
    }

    #[test]
    fn a_committed_batch_answers_each_id_from_its_row() {
        let row = User {
            id: 7,
            name: "User 7".into(),
            email: "c@x".into(),
            updated_at: "t".into(),
            version: 12,
        };
        let mut rows = Decoded::default();
        rows.rows.insert(7, Ok(row.clone()));
        rows.late.insert(8);
        assert_eq!(answer_applied(7, &rows), Ok(Some(row)));
        assert_eq!(answer_applied(5, &rows), Ok(None), "no such user");
        assert_eq!(answer_applied(8, &rows).unwrap_err().status(), 503);
    }

    #[tokio::test]
    async fn a_panicking_batch_is_answered_500_and_the_worker_goes_on() {
        let (a, ra) = write(7, "a@x");
        supervised("write", async move {
            let _owned = a;
            panic!("a batch that panics");
        })
        .await;
        let answer = ra.await.unwrap_or_else(|_| Err(batch_failed()));
        assert_eq!(answer.unwrap_err().status(), 500);
        // The next batch of the same worker runs as usual.
        let (b, rb) = write(8, "b@x");
        supervised("write", async move {
            let _ = b.reply.send(Ok(None));
        })
        .await;
        assert_eq!(rb.await.unwrap(), Ok(None));
    }

    #[tokio::test]
    async fn a_ticket_is_taken_or_withdrawn_once() {
        let t = Ticket::default();
        assert!(t.take());
        assert!(!t.withdraw(), "a taken request cannot be withdrawn");
        let t = Ticket::default();
        assert!(t.withdraw());
        assert!(!t.take(), "a withdrawn request is never run");
        // A caller past its deadline with its request untaken gets 503 at once.
        let (_reply, answer) = oneshot::channel();
        let t = Ticket::default();
        let got = wait(&t, Instant::now(), answer).await;
        assert_eq!(got.unwrap_err().status(), 503);
        assert!(!t.take());
        // A taken request's caller waits past its deadline for the outcome.
        let (reply, answer) = oneshot::channel();
        let t = Ticket::default();
        assert!(t.take());
        let waiter = tokio::spawn({
            let t = t.clone();
            async move { wait(&t, Instant::now(), answer).await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        let _ = reply.send(Ok(None));
        assert_eq!(waiter.await.unwrap(), Ok(None));
    }

    #[test]
    fn ids_are_partitioned_between_writers() {
        assert_eq!(writer_of(8, 4), 0);
        assert_eq!(writer_of(9, 4), 1);
        assert_eq!(writer_of(-3, 4), 1);
    }
}
