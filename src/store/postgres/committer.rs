//! Group commit against PostgreSQL: the records writers hand over are
//! stored in one multi-row insert per round trip, one chunk per user.
//!
//! The committer runs on its own thread with its own small runtime and
//! connection, so that closing a store (from any thread, even a runtime's
//! worker) can wait for it. Rounds are sequential: a round takes every
//! record queued so far, groups each user's records (in the order their
//! ledger applied them) into one chunk at the place after the last chunk
//! the cached ledger reflects, and inserts all chunks in one statement with
//! `ON CONFLICT DO NOTHING`. A chunk that conflicts means another replica
//! stored that place first: the cached ledger is marked stale and its
//! writers decide again on the stored state. A statement that fails leaves
//! its outcome unknown: every user in it is marked stale (loaded anew from
//! what is stored) and its writers get UNAVAILABLE. Only after a round is
//! resolved does the next start, so a user's later records never pass an
//! earlier one of theirs that conflicted.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Statement};

use super::{RecordChunk, Shared, connect, database_error};
use crate::store::StoreError;
use crate::store::embedded::records::JournalRecord;
use crate::store::users::StoredPosition;

/// A record waiting to be stored, and who waits for it.
pub(super) struct Pending {
    /// Its place among every record this replica took (not stored).
    pub(super) sequence: u64,
    /// Where its user's cached ledger stands.
    pub(super) stored: Arc<StoredPosition>,
    pub(super) record: JournalRecord,
    /// When the user's ledger next changes by itself, after this record.
    pub(super) due_ms: Option<i64>,
    pub(super) reply: Reply,
}

/// Where a writer waits for its record's outcome.
pub(super) type Reply = tokio::sync::oneshot::Sender<Result<(), StoreError>>;

/// How often an idle committer checks that the database still answers, and
/// an unreachable one tries again, so that health follows the database.
const PROBE_INTERVAL: Duration = Duration::from_millis(500);

/// The insert of one round: every user's chunk, at most one per user, and
/// in the same statement (so atomically with it) the due-time row of each
/// user whose chunk is stored and changed it ($4, $5: null for none). A
/// user's chunks are stored one after another (the next is decided on the
/// stored one), so their rows are written in chunk order too.
const INSERT_CHUNKS: &str = "WITH inserted AS ( \
         INSERT INTO points_user_records (user_id, seq, records) \
         SELECT * FROM unnest($1::text[], $2::int8[], $3::bytea[]) \
         ON CONFLICT DO NOTHING RETURNING user_id \
     ), due AS ( \
         SELECT d.user_id, d.due_at_ms FROM unnest($4::text[], $5::int8[]) AS d(user_id, due_at_ms) \
         WHERE d.user_id IN (SELECT user_id FROM inserted) \
     ), upserted AS ( \
         INSERT INTO points_user_deadlines (user_id, due_at_ms) \
         SELECT user_id, due_at_ms FROM due WHERE due_at_ms IS NOT NULL \
         ON CONFLICT (user_id) DO UPDATE SET due_at_ms = excluded.due_at_ms \
     ), deleted AS ( \
         DELETE FROM points_user_deadlines \
         WHERE user_id IN (SELECT user_id FROM due WHERE due_at_ms IS NULL) \
     ) \
     SELECT user_id FROM inserted";

/// Runs rounds until the store closes and nothing is left queued.
pub(super) fn run(shared: Arc<Shared>, config: tokio_postgres::Config) {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(%error, "cannot start the database committer's runtime");
            fail_everything(&shared, &format!("the database committer cannot run: {error}"));
            return;
        }
    };
    runtime.block_on(async move {
        let mut client: Option<Connection> = None;
        loop {
            let (batch, closing) = shared.take_queued();
            if batch.is_empty() {
                if closing && shared.stop_if_empty() {
                    break;
                }
                // Idle: wait for records, checking the database meanwhile.
                let woken = tokio::time::timeout(PROBE_INTERVAL, shared.wake.notified()).await;
                if woken.is_err() {
                    probe(&shared, &config, &mut client).await;
                }
                continue;
            }
            commit_round(&shared, &config, &mut client, batch).await;
        }
    });
}

/// Checks that the database answers, reconnecting if needed, and reports
/// the result as the backend's readiness.
async fn probe(shared: &Shared, config: &tokio_postgres::Config, client: &mut Option<Connection>) {
    let answered = match ready_client(shared, config, client).await {
        Ok(ready) => {
            let query = ready.client.simple_query("SELECT 1");
            matches!(tokio::time::timeout(shared.operation_timeout, query).await, Ok(Ok(_)))
        }
        Err(_) => false,
    };
    if !answered {
        *client = None;
    }
    shared.set_serving(answered, "the database does not answer");
}

/// The committer's connection, with its insert prepared once.
struct Connection {
    client: Client,
    insert: Statement,
}

/// The committer's connection, connecting if it has none.
async fn ready_client<'a>(
    shared: &Shared,
    config: &tokio_postgres::Config,
    connection: &'a mut Option<Connection>,
) -> Result<&'a Connection, String> {
    if connection.as_ref().is_some_and(|connection| connection.client.is_closed()) {
        *connection = None;
    }
    if connection.is_none() {
        let client = connect(config, shared.operation_timeout).await?;
        let prepare = client.prepare(INSERT_CHUNKS);
        let insert = tokio::time::timeout(shared.operation_timeout, prepare)
            .await
            .map_err(|_| "preparing the insert timed out".to_owned())?
            .map_err(|error| database_error(&error))?;
        *connection = Some(Connection { client, insert });
    }
    connection.as_ref().ok_or_else(|| "no connection".to_owned())
}

/// One user's records in a round.
struct Chunk {
    user_id: String,
    stored: Arc<StoredPosition>,
    seq: u64,
    records: Vec<JournalRecord>,
    /// When the user is next due after the chunk's last record.
    due_ms: Option<i64>,
    replies: Vec<Reply>,
}

/// Stores one round's records and tells each writer the outcome.
async fn commit_round(
    shared: &Shared,
    config: &tokio_postgres::Config,
    client: &mut Option<Connection>,
    batch: Vec<Pending>,
) {
    let last_sequence = batch.last().map_or(0, |pending| pending.sequence);
    let mut chunks: Vec<Chunk> = Vec::new();
    let mut chunk_of_user: HashMap<String, usize> = HashMap::new();
    for pending in batch {
        // A user gone stale (an earlier chunk of theirs conflicted) keeps
        // nothing more: these were decided on a ledger that was not stored.
        if pending.stored.is_stale() {
            let _ = pending.reply.send(Err(StoreError::Conflict { attempts: 1 }));
            continue;
        }
        let index = *chunk_of_user.entry(pending.record.user_id.clone()).or_insert_with(|| {
            chunks.push(Chunk {
                user_id: pending.record.user_id.clone(),
                seq: pending.stored.seq() + 1,
                stored: Arc::clone(&pending.stored),
                records: Vec::new(),
                due_ms: None,
                replies: Vec::new(),
            });
            chunks.len() - 1
        });
        let chunk = &mut chunks[index];
        debug_assert!(Arc::ptr_eq(&chunk.stored, &pending.stored), "one cached ledger per user");
        chunk.records.push(pending.record);
        chunk.due_ms = pending.due_ms;
        chunk.replies.push(pending.reply);
    }
    // Every replica inserts in user order, so that two rounds waiting on
    // each other's rows cannot deadlock.
    chunks.sort_unstable_by(|left, right| left.user_id.cmp(&right.user_id));
    if !chunks.is_empty() {
        match insert(shared, config, client, &mut chunks).await {
            Ok(inserted) => {
                for chunk in chunks {
                    if inserted.contains(chunk.user_id.as_str()) {
                        chunk.stored.set_deadline_row(Some((chunk.seq, chunk.due_ms)));
                        chunk.stored.set_seq(chunk.seq);
                        answer(chunk.replies, || Ok(()));
                    } else {
                        chunk.stored.mark_stale();
                        metrics::counter!("points_database_conflicts_total").increment(1);
                        answer(chunk.replies, || Err(StoreError::Conflict { attempts: 1 }));
                    }
                }
                shared.set_serving(true, "");
            }
            Err(InsertError::RolledBack(error)) => {
                // Certainly not stored (a deadlock, a serialization
                // failure): decided again, like a conflict.
                tracing::warn!(%error, "a round of records was rolled back; deciding them again");
                for chunk in chunks {
                    chunk.stored.mark_stale();
                    answer(chunk.replies, || Err(StoreError::Conflict { attempts: 1 }));
                }
            }
            Err(InsertError::Unknown(error)) => {
                tracing::error!(%error, "storing a round of records failed; their outcome is unknown");
                *client = None;
                shared.set_serving(false, &error);
                for chunk in chunks {
                    chunk.stored.mark_stale();
                    answer(chunk.replies, || {
                        Err(StoreError::Unavailable(format!(
                            "the database did not confirm storing the change ({error}); it may \
                             or may not be stored: retry with the same request_id to find out"
                        )))
                    });
                }
            }
        }
    }
    shared.resolved.send_replace(last_sequence);
}

/// Tells each writer of a chunk its outcome (a reply nobody waits for any
/// more is dropped).
fn answer(replies: Vec<Reply>, outcome: impl Fn() -> Result<(), StoreError>) {
    for reply in replies {
        let _ = reply.send(outcome());
    }
}

/// Inserts the chunks in one statement; returns the users whose chunk was
/// stored (the others conflicted).
async fn insert(
    shared: &Shared,
    config: &tokio_postgres::Config,
    client: &mut Option<Connection>,
    chunks: &mut [Chunk],
) -> Result<HashSet<String>, InsertError> {
    let encoded: Vec<Vec<u8>> = chunks
        .iter_mut()
        .map(|chunk| {
            RecordChunk { records: std::mem::take(&mut chunk.records), imported_ledger: Vec::new() }
                .encode_to_vec()
        })
        .collect();
    let user_ids: Vec<&str> = chunks.iter().map(|chunk| chunk.user_id.as_str()).collect();
    let seqs = chunks
        .iter()
        .map(|chunk| {
            i64::try_from(chunk.seq)
                .map_err(|_| InsertError::RolledBack("a chunk place past i64".to_owned()))
        })
        .collect::<Result<Vec<i64>, InsertError>>()?;
    // Only rows that change: what this replica knows the row holds after
    // the chunk before (it wrote that one) needs no write.
    let (due_user_ids, due_ms): (Vec<&str>, Vec<Option<i64>>) = chunks
        .iter()
        .filter(|chunk| chunk.stored.deadline_row_after(chunk.seq - 1) != Some(chunk.due_ms))
        .map(|chunk| (chunk.user_id.as_str(), chunk.due_ms))
        .unzip();
    let ready = ready_client(shared, config, client).await.map_err(InsertError::Unknown)?;
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 5] =
        [&user_ids, &seqs, &encoded, &due_user_ids, &due_ms];
    let query = ready.client.query(&ready.insert, &params);
    let rows = tokio::time::timeout(shared.operation_timeout, query)
        .await
        .map_err(|_| InsertError::Unknown("the insert timed out".to_owned()))?
        .map_err(|error| {
            let rolled_back = error.code().is_some_and(|code| {
                [SqlState::T_R_DEADLOCK_DETECTED, SqlState::T_R_SERIALIZATION_FAILURE]
                    .contains(code)
            });
            let message = database_error(&error);
            if rolled_back {
                InsertError::RolledBack(message)
            } else {
                InsertError::Unknown(message)
            }
        })?;
    let mut inserted = HashSet::with_capacity(rows.len());
    for row in rows {
        let user_id: String =
            row.try_get(0).map_err(|error| InsertError::Unknown(database_error(&error)))?;
        inserted.insert(user_id);
    }
    Ok(inserted)
}

/// Why a round's insert did not return.
enum InsertError {
    /// The database answered that it rolled the statement back.
    RolledBack(String),
    /// The outcome is unknown (the connection broke, the client timed out).
    Unknown(String),
}

/// The committer cannot run at all: every writer, now and later, is told.
fn fail_everything(shared: &Shared, reason: &str) {
    shared.set_serving(false, reason);
    let (batch, _) = shared.take_queued();
    let last_sequence = batch.last().map_or(0, |pending| pending.sequence);
    for pending in batch {
        pending.stored.mark_stale();
        let _ = pending.reply.send(Err(StoreError::Unavailable(reason.to_owned())));
    }
    shared.resolved.send_replace(last_sequence);
}
