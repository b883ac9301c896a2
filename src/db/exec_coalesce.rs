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
//! - A request whose caller has already given up (timed out) is dropped from its batch
//!   before the batch runs: a write answered 503 is then never applied.
//! - On shutdown, the server stops accepting and waits for in-flight requests; the
//!   workers keep running until then, so every queued request is answered.
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::{BatchError, Core, Decoded, User};
use crate::config::Config;
use crate::error::AppError;
use crate::metrics;

type Answer = Result<Option<User>, AppError>;

struct Read {
    id: i64,
    reply: oneshot::Sender<Answer>,
}

struct Write {
    id: i64,
    email: String,
    reply: oneshot::Sender<Answer>,
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

    pub async fn user(&self, core: &Core, id: i64) -> Answer {
        let (reply, answer) = oneshot::channel();
        let i = self.next_reader.fetch_add(1, Ordering::Relaxed) % self.readers.len();
        self.readers[i]
            .send(Read { id, reply })
            .map_err(|_| stopped())?;
        core.bounded(async { answer.await.unwrap_or_else(|_| Err(batch_failed())) })
            .await
    }

    pub async fn update_email(&self, core: &Core, id: i64, email: &str) -> Answer {
        let (reply, answer) = oneshot::channel();
        self.writers[writer_of(id, self.writers.len())]
            .send(Write {
                id,
                email: email.to_owned(),
                reply,
            })
            .map_err(|_| stopped())?;
        core.bounded(async { answer.await.unwrap_or_else(|_| Err(batch_failed())) })
            .await
    }
}

/// The write worker that owns `id`.
fn writer_of(id: i64, writers: usize) -> usize {
    id.rem_euclid(writers as i64) as usize
}

async fn read_worker(core: Arc<Core>, mut rx: mpsc::UnboundedReceiver<Read>, max: usize) {
    let mut batch = Vec::with_capacity(max);
    while rx.recv_many(&mut batch, max).await > 0 {
        batch.retain(|r: &Read| !r.reply.is_closed());
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
            let answer = core.user(r.id).await;
            let _ = r.reply.send(answer);
        }
        return;
    }
    let mut ids: Vec<i64> = batch.iter().map(|r| r.id).collect();
    ids.sort_unstable();
    ids.dedup();
    match core.users(&ids).await {
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
        batch.retain(|w: &Write| !w.reply.is_closed());
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
                let answer = core.update_email(w.id, &w.email).await;
                let _ = w.reply.send(answer);
                continue;
            }
        }
        let ids: Vec<i64> = part.iter().map(|g| g.id).collect();
        let emails: Vec<&str> = part.iter().map(last_email).collect();
        let counts: Vec<i64> = part.iter().map(|g| g.writes.len() as i64).collect();
        match core.update_emails(&ids, &emails, &counts).await {
            Ok(rows) => {
                for g in part {
                    answer_applied(g, &rows);
                }
            }
            Err(BatchError::Rejected(_)) if part.len() > 1 => {
                let right = part.split_off(part.len() / 2);
                pending.push(right);
                pending.push(part);
            }
            Err(BatchError::Rejected(e) | BatchError::Failed(e)) => {
                for g in part {
                    for w in g.writes {
                        let _ = w.reply.send(Err(e.clone()));
                    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn write(id: i64, email: &str) -> (Write, oneshot::Receiver<Answer>) {
        let (reply, rx) = oneshot::channel();
        (
            Write {
                id,
                email: email.into(),
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

    #[test]
    fn ids_are_partitioned_between_writers() {
        assert_eq!(writer_of(8, 4), 0);
        assert_eq!(writer_of(9, 4), 1);
        assert_eq!(writer_of(-3, 4), 1);
    }
}
