//! Moving up from one machine: `points-server migrate` reads the ledger of
//! a data directory (changing nothing in it), copies it into an empty
//! database, checks what the database holds before committing, and after
//! committing reads every user back through the database backend and checks
//! that they are equal.
//!
//! Each user becomes one chunk 1 holding their whole ledger as imported
//! ([`RecordChunk::imported_ledger`]): loading replays it like any chunk,
//! the primary key still arbitrates (a replica that decided a write on no
//! history conflicts at chunk 1), and it is kept forever as the user's
//! history before the move. Everything is copied in one transaction holding
//! both tables locked, so replicas started early see all users or none.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::super::backend::Backend;
use super::super::embedded::read_ledgers;
use super::super::embedded::snapshot::{decode_one_user, encode_one_user};
use super::super::users::UserLedger;
use super::super::{Storage, Store, StoreOptions, UserId};
use super::{Postgres, RecordChunk, database_error};
use crate::store::{DatabaseOptions, OpenError};

/// Snapshot bytes sent per insert statement: large enough to amortise the
/// round trip, small enough to bound the memory of one statement.
const IMPORT_BATCH_BYTES: usize = 8 << 20;

/// What `points-server migrate` copied and verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrateSummary {
    /// The data directory copied from.
    pub data_dir: PathBuf,
    /// The database copied into (never the password).
    pub database: String,
    /// Users copied.
    pub users: u64,
    /// Their transactions, in total.
    pub transactions: u64,
    /// Their spends, in total.
    pub spends: u64,
}

impl std::fmt::Display for MigrateSummary {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            formatter,
            "migrated {} users ({} transactions, {} spends) from {} into {}; verified: every \
             user's balances, history and remembered request ids read back equal from the \
             database",
            self.users,
            self.transactions,
            self.spends,
            self.data_dir.display(),
            self.database
        )
    }
}

/// Why `points-server migrate` did not finish; each says what to do.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// The data directory is not there (a typo would otherwise copy nothing).
    #[error("the data directory {} does not exist; pass the server's --data-dir", path.display())]
    NoDataDir {
        /// The path given.
        path: PathBuf,
    },
    /// The directory holds no ledger (no journal, no snapshot, no user).
    #[error(
        "{} holds no ledger (no journal or snapshot, or no user): pass the server's --data-dir",
        path.display()
    )]
    NoLedger {
        /// The path given.
        path: PathBuf,
    },
    /// The data directory cannot be read (in use, damaged, unreadable).
    #[error("{0}")]
    Source(#[source] OpenError),
    /// The database cannot be reached or migrated.
    #[error("{0}")]
    Database(#[source] OpenError),
    /// The database already holds users.
    #[error(
        "the database at {location} already holds users: migrate only into an empty database \
         (create a new one, or drop its points_* tables)"
    )]
    NotEmpty {
        /// Where it is.
        location: String,
    },
    /// Copying failed; the transaction rolled back, nothing was copied.
    #[error("copying into the database at {location} failed and nothing was copied: {reason}")]
    Copy {
        /// Where it is.
        location: String,
        /// What went wrong.
        reason: String,
    },
    /// The commit's outcome is unknown (the connection broke during it).
    #[error(
        "the database at {location} did not confirm the commit ({reason}): the copy may or may \
         not be there. Do not start replicas on it; if its points_user_snapshots table holds \
         rows, drop the database's points_* tables, then migrate again"
    )]
    CommitUnknown {
        /// Where it is.
        location: String,
        /// What went wrong.
        reason: String,
    },
    /// A user reads back differently from the database after the commit.
    #[error(
        "verification after the commit failed: user {user_id:?} {problem}. The copy in the \
         database at {location} must not be used: stop any replica on it, drop the database's \
         points_* tables and migrate again"
    )]
    Mismatch {
        /// Where it is.
        location: String,
        /// The user.
        user_id: String,
        /// What differs, or why they could not be read.
        problem: String,
    },
}

/// Copies the ledger in `data_dir` (no server may be running on it; it is
/// only read) into the empty database of `database`, verifying it before
/// and after committing.
pub async fn migrate(
    data_dir: &Path,
    database: &DatabaseOptions,
) -> Result<MigrateSummary, MigrateError> {
    if !data_dir.is_dir() {
        return Err(MigrateError::NoDataDir { path: data_dir.to_owned() });
    }
    let users = read_ledgers(data_dir)
        .map_err(MigrateError::Source)?
        .ok_or_else(|| MigrateError::NoLedger { path: data_dir.to_owned() })?;
    if users.is_empty() {
        return Err(MigrateError::NoLedger { path: data_dir.to_owned() });
    }
    let mut users: Vec<(String, UserLedger)> = users.into_iter().collect();
    users.sort_by(|(left, _), (right, _)| left.cmp(right));

    let target = Postgres::open(database).await.map_err(MigrateError::Database)?;
    let location = target.location.clone();
    let copied = copy_users(&users, &target).await;
    target.close(None);
    let summary = copied?;

    // Committed: read every user back through the database backend, as a
    // replica will.
    let verify_options =
        StoreOptions { storage: Storage::Database(database.clone()), ..StoreOptions::in_memory() };
    let verifier = Store::connect(&verify_options).await.map_err(MigrateError::Database)?;
    for (user_id, user) in &users {
        let mismatch = |problem: String| MigrateError::Mismatch {
            location: location.clone(),
            user_id: user_id.clone(),
            problem,
        };
        let expected = encode_one_user(user_id, 1, &user.ledger)
            .map_err(|error| mismatch(error.to_string()))?;
        let read_back = verifier
            .read(UserId::new(user_id), |ledger| encode_one_user(user_id, 1, ledger))
            .await
            .map_err(|error| mismatch(format!("cannot be read back: {error}")))?
            .map_err(|error| mismatch(format!("reads back inconsistent: {error}")))?;
        if read_back != expected {
            return Err(mismatch("reads back different from the data directory".to_owned()));
        }
    }
    verifier.close();
    Ok(MigrateSummary { data_dir: data_dir.to_owned(), ..summary })
}

/// Copies every user of `source` into `target` in one transaction.
async fn copy_users(
    users: &[(String, UserLedger)],
    target: &Postgres,
) -> Result<MigrateSummary, MigrateError> {
    let location = target.location.clone();
    let failed = |reason: String| MigrateError::Copy { location: location.clone(), reason };
    let mut client = target.pool.get().await.map_err(|error| failed(error.to_string()))?;
    let transaction = client.transaction().await.map_err(|error| failed(database_error(&error)))?;
    // An operator's one-off copy: as long as it takes (Ctrl-C stops it, and
    // the transaction rolls back).
    transaction
        .batch_execute(
            "SET LOCAL statement_timeout = 0; \
             LOCK TABLE points_user_records, points_user_snapshots, points_user_deadlines \
             IN EXCLUSIVE MODE",
        )
        .await
        .map_err(|error| failed(database_error(&error)))?;
    let holds_users = transaction
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM points_user_records) \
             OR EXISTS (SELECT 1 FROM points_user_snapshots) \
             OR EXISTS (SELECT 1 FROM points_user_deadlines)",
            &[],
        )
        .await
        .map_err(|error| failed(database_error(&error)))?;
    if holds_users.try_get::<_, bool>(0).map_err(|error| failed(error.to_string()))? {
        return Err(MigrateError::NotEmpty { location });
    }
    let insert_chunks = transaction
        .prepare(
            "INSERT INTO points_user_records (user_id, seq, records) \
             SELECT user_id, 1, chunk FROM unnest($1::text[], $2::bytea[]) AS c(user_id, chunk)",
        )
        .await
        .map_err(|error| failed(database_error(&error)))?;

    // Users with a hold open or points that will expire (under the
    // validity the data directory last ran with), so that replicas bring
    // them forward before anyone calls them.
    let insert_deadlines = transaction
        .prepare(
            "INSERT INTO points_user_deadlines (user_id, due_at_ms) \
             SELECT * FROM unnest($1::text[], $2::int8[])",
        )
        .await
        .map_err(|error| failed(database_error(&error)))?;
    let mut summary = MigrateSummary {
        data_dir: PathBuf::new(),
        database: location.clone(),
        users: 0,
        transactions: 0,
        spends: 0,
    };
    let read_back = transaction
        .prepare(
            "SELECT user_id, records FROM points_user_records WHERE user_id = ANY($1) AND seq = 1",
        )
        .await
        .map_err(|error| failed(database_error(&error)))?;
    let mut batch_ids: Vec<String> = Vec::new();
    let mut batch_states: Vec<Vec<u8>> = Vec::new();
    let mut batch_chunks: Vec<Vec<u8>> = Vec::new();
    let mut batch_bytes = 0;
    let mut due_ids: Vec<&str> = Vec::new();
    let mut due_ms: Vec<i64> = Vec::new();
    for (index, (user_id, user)) in users.iter().enumerate() {
        let validity_ms = user.ledger.clock().points_validity_ms;
        if let Some(due) = user.ledger.next_due_ms(validity_ms) {
            due_ids.push(user_id);
            due_ms.push(due);
        }
        let state = encode_one_user(user_id, 1, &user.ledger)
            .map_err(|error| failed(format!("user {user_id:?}: {error}")))?;
        let view = user.ledger.view();
        summary.users += 1;
        summary.transactions += view.transactions.len() as u64;
        summary.spends += view.spends.len() as u64;
        batch_bytes += state.len();
        batch_ids.push(user_id.clone());
        let chunk = RecordChunk { records: Vec::new(), imported_ledger: state.clone() };
        batch_chunks.push(prost::Message::encode_to_vec(&chunk));
        batch_states.push(state);
        if batch_bytes < IMPORT_BATCH_BYTES && index + 1 < users.len() {
            continue;
        }
        transaction
            .execute(&insert_chunks, &[&batch_ids, &batch_chunks])
            .await
            .map_err(|error| failed(database_error(&error)))?;
        // Checked before committing: what the database holds decodes to
        // exactly what was sent.
        let rows = transaction
            .query(&read_back, &[&batch_ids])
            .await
            .map_err(|error| failed(database_error(&error)))?;
        if rows.len() != batch_ids.len() {
            return Err(failed(format!(
                "{} of {} snapshots read back",
                rows.len(),
                batch_ids.len()
            )));
        }
        let sent: HashMap<&str, &[u8]> = batch_ids
            .iter()
            .map(String::as_str)
            .zip(batch_states.iter().map(Vec::as_slice))
            .collect();
        for row in rows {
            let user_id: &str = row.try_get(0).map_err(|error| failed(error.to_string()))?;
            let chunk: &[u8] = row.try_get(1).map_err(|error| failed(error.to_string()))?;
            let chunk = <RecordChunk as prost::Message>::decode(chunk)
                .map_err(|error| failed(format!("user {user_id:?} reads back damaged: {error}")))?;
            let decoded = decode_one_user(&chunk.imported_ledger)
                .and_then(|snapshot| {
                    encode_one_user(&snapshot.user_id, 1, &snapshot.ledger)
                        .map_err(|error| error.to_string())
                })
                .map_err(|error| failed(format!("user {user_id:?} reads back damaged: {error}")))?;
            if sent.get(user_id) != Some(&decoded.as_slice()) {
                return Err(failed(format!("user {user_id:?} reads back different")));
            }
        }
        batch_ids.clear();
        batch_states.clear();
        batch_chunks.clear();
        batch_bytes = 0;
    }
    transaction
        .execute(&insert_deadlines, &[&due_ids, &due_ms])
        .await
        .map_err(|error| failed(database_error(&error)))?;
    transaction.commit().await.map_err(|error| MigrateError::CommitUnknown {
        location: location.clone(),
        reason: database_error(&error),
    })?;
    Ok(summary)
}
