//! `coalesce`: request coalescing, the DataLoader pattern applied to a database.
//! Concurrent GETs are served by one `SELECT … WHERE id = ANY($1)` per batch, and
//! concurrent PATCHes by one `UPDATE … FROM unnest(…)` per batch, in one durable commit.
//!
//! - **No timer.** Each worker takes whatever is queued (up to `COALESCE_MAX_BATCH`) the
//!   moment it is free, so under light load a batch is one request and adds no latency;
//!   under load, batches grow by themselves while the previous one runs.
//! - **Each PATCH is answered after its batch has committed**, with its own email and
//!   its own version.
//! - **Duplicate ids in a batch are folded**: `UPDATE … FROM` would apply a row once
//!   however often it appears (and every duplicate would be acknowledged: writes lost).
//!   Folded, the row gets the last email and `version + n` for its n PATCHes, and the k-th
//!   of them is answered with version `final − (n − k)`, in arrival order.
//! - **No deadlocks, and each id's writes in order**: write workers partition the ids
//!   (`id % COALESCE_WRITERS`), so two batches never lock the same row, and one worker
//!   runs one batch at a time.
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
    classify, classify_code, user_from_row, Core, Statement, User, SELECT_USER, SELECT_USERS,
    UPDATE_EMAIL, UPDATE_EMAILS,
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
}

struct Write {
    id: i64,
    email: String,
    ticket: Ticket,
    reply: oneshot::Sender<Answer>,
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

/// All the PATCHes of one id in a batch, in arrival order.
struct Group {
    id: i64,
    writes: Vec<Write>,
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

    pub async fn user(&self, _core: &Core, id: i64, deadline: Instant) -> Answer {
        let (reply, answer) = oneshot::channel();
        let ticket = Ticket::default();
        let i = self.next_reader.fetch_add(1, Ordering::Relaxed) % self.readers.len();
        self.readers[i]
            .send(Read {
                id,
                ticket: ticket.clone(),
                reply,
            })
            .map_err(|_| stopped())?;
        wait(&ticket, deadline, answer).await
    }

    pub async fn update_email(
        &self,
        _core: &Core,
        id: i64,
        email: &str,
        deadline: Instant,
    ) -> Answer {
        let (reply, answer) = oneshot::channel();
        let ticket = Ticket::default();
        self.writers[writer_of(id, self.writers.len())]
            .send(Write {
                id,
                email: email.to_owned(),
                ticket: ticket.clone(),
                reply,
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
        let groups = fold(batch.drain(..));
        let core = core.clone();
        supervised("write", async move { apply(&core, groups).await }).await;
    }
}

/// Groups a batch by id, ids in order of first arrival, each id's PATCHes in arrival order.
fn fold(writes: impl Iterator<Item = Write>) -> Vec<Group> {
    let mut groups: Vec<Group> = Vec::new();
    let mut index: HashMap<i64, usize> = HashMap::new();
    for w in writes {
        match index.get(&w.id) {
            Some(&i) => groups[i].writes.push(w),
            None => {
                index.insert(w.id, groups.len());
                groups.push(Group {
                    id: w.id,
                    writes: vec![w],
                });
            }
        }
    }
    groups
}

/// Runs a folded batch; a statement PostgreSQL rejects is retried in halves, so only the
/// requests of the id at fault get the error.
async fn apply(core: &Core, groups: Vec<Group>) {
    let mut pending = vec![groups];
    while let Some(mut part) = pending.pop() {
        if let [one] = part.as_mut_slice() {
            if one.writes.len() == 1 {
                // One PATCH: the plain single-row statement, as without `coalesce`.
                let w = one.writes.remove(0);
                let answer = core.update_email(w.id, &w.email, core.deadline()).await;
                let _ = w.reply.send(answer);
                continue;
            }
        }
        let ids: Vec<i64> = part.iter().map(|g| g.id).collect();
        let emails: Vec<&str> = part.iter().map(last_email).collect();
        let counts: Vec<i64> = part.iter().map(|g| g.writes.len() as i64).collect();
        match core
            .update_emails(&ids, &emails, &counts, core.deadline())
            .await
        {
            Ok(rows) => {
                for g in part {
                    answer_applied(g, &rows);
                }
            }
            Err(BatchError::Rejected(e)) if part.len() > 1 => {
                tracing::debug!(error = %e, ids = part.len(), "batch rejected: retrying in halves");
                let right = part.split_off(part.len() / 2);
                pending.push(right);
                pending.push(part);
            }
            Err(BatchError::Rejected(e)) => {
                tracing::debug!(error = %e, "batch of one id rejected: its PATCHes one by one");
                // One id's folded PATCHes, rejected together (nothing applied): each on
                // its own, so only the bad ones fail.
                for g in part {
                    for w in g.writes {
                        let answer = core.update_email(w.id, &w.email, core.deadline()).await;
                        let _ = w.reply.send(answer);
                    }
                }
            }
            Err(BatchError::Failed(e)) => {
                for g in part {
                    fail(g, &e);
                }
            }
        }
    }
}

/// Answers an id's PATCHes from a committed batch: its row, a decoding error for its
/// row (a 500; the write was applied), or no row (no such user, unless some row's id
/// could not be read).
fn answer_applied(g: Group, rows: &Decoded) {
    match rows.rows.get(&g.id) {
        Some(Ok(row)) => answer(g, Some(row)),
        Some(Err(e)) => fail(g, e),
        None => match &rows.undecodable {
            Some(e) => fail(g, e),
            None => answer(g, None),
        },
    }
}

fn fail(g: Group, e: &AppError) {
    for w in g.writes {
        let _ = w.reply.send(Err(e.clone()));
    }
}

fn last_email(g: &Group) -> &str {
    g.writes.last().map_or("", |w| w.email.as_str())
}

/// Answers an id's PATCHes from the row after the batch: each its own email and version.
fn answer(g: Group, after: Option<&User>) {
    let n = g.writes.len() as i64;
    for (k, w) in g.writes.into_iter().enumerate() {
        let reply = after.map(|row| User {
            email: w.email.clone(),
            version: row.version - (n - 1 - k as i64),
            ..row.clone()
        });
        let _ = w.reply.send(Ok(reply));
    }
}

/// Whether PostgreSQL itself rejected a statement for a reason that is not transient
/// (bad data, a constraint): an error it raised, so the statement did not commit.
fn rejected(e: &tokio_postgres::Error) -> bool {
    e.as_db_error().is_some() && matches!(classify_code(e), Some(false))
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

    /// Applies `counts[i]` PATCHes ending with `emails[i]` to each distinct `ids[i]` by
    /// one statement, one commit; returns the rows as they are after it. Only a
    /// statement PostgreSQL rejected is [`BatchError::Rejected`]: once it has returned,
    /// it committed, and a row that does not decode is an error for its id alone.
    pub(crate) async fn update_emails(
        &self,
        ids: &[i64],
        emails: &[&str],
        counts: &[i64],
        deadline: Instant,
    ) -> Result<Decoded, BatchError> {
        let answer = self
            .run(deadline, async |s: &Session| {
                s.query(&UPDATE_EMAILS, &[&ids, &emails, &counts]).await
            })
            .await
            .map_err(BatchError::Failed)?;
        match answer {
            Ok(rows) => Ok(Decoded::from_rows(&rows)),
            Err(e) if rejected(&e) => Err(BatchError::Rejected(classify(e))),
            Err(e) => Err(BatchError::Failed(classify(e))),
        }
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
            },
            rx,
        )
    }

    #[test]
    fn duplicates_fold_in_arrival_order() {
        let (a, _ra) = write(7, "a@x");
        let (b, _rb) = write(9, "b@x");
        let (c, _rc) = write(7, "c@x");
        let groups = fold([a, b, c].into_iter());
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[0].id, 7);
        assert_eq!(groups[0].writes.len(), 2);
        assert_eq!(last_email(&groups[0]), "c@x");
        assert_eq!(groups[1].id, 9);
    }

    #[test]
    fn each_folded_patch_gets_its_own_version_and_email() {
        let (a, mut ra) = write(7, "a@x");
        let (c, mut rc) = write(7, "c@x");
        let mut groups = fold([a, c].into_iter());
        let row = User {
            id: 7,
            name: "User 7".into(),
            email: "c@x".into(),
            updated_at: "t".into(),
            version: 12,
        };
        answer(groups.remove(0), Some(&row));
        let first = ra.try_recv().unwrap().unwrap().unwrap();
        let second = rc.try_recv().unwrap().unwrap().unwrap();
        assert_eq!((first.email.as_str(), first.version), ("a@x", 11));
        assert_eq!((second.email.as_str(), second.version), ("c@x", 12));
    }

    #[test]
    fn a_missing_id_is_none_for_each_request() {
        let (a, mut ra) = write(5, "a@x");
        let mut groups = fold([a].into_iter());
        answer(groups.remove(0), None);
        assert_eq!(ra.try_recv().unwrap(), Ok(None));
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
