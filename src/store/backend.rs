//! The storage seam: what a store needs from where it keeps users' commands.
//!
//! The [`Store`](super::Store) does everything that is the same for every
//! backend once: it caches users in the ledger core behind per-user locks,
//! enforces the limits, replays request ids, and decides each command's
//! outcome on the cached ledger. A [`Backend`] only makes outcomes durable and
//! says when they are: it admits a write before anything changes, takes the
//! record of each command applied (under that user's write lock, so each
//! user's records are in the order its ledger applied them), reports when a
//! sequence is durable, loads users the cache has not seen, and shuts down.
//!
//! Three backends exist: [`InMemory`] (durable at once, nothing kept), the
//! embedded journal ([`Embedded`](super::embedded::Embedded)), and
//! PostgreSQL ([`Postgres`](super::postgres::Postgres)), which loads users
//! lazily ([`Backend::load_user`]) and is shared by replicas: another
//! process may have written a cached user, so the store refreshes it before
//! a read or an outcome that records nothing ([`Backend::refresh`]), and a
//! record computed on a stale ledger is refused at commit
//! ([`StoreError::Conflict`]) and the write decided again on the stored
//! state. The embedded one recovers every user at start and never has one
//! to load.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use super::embedded::records::JournalRecord;
use super::embedded::wal::{DurableReceipt, Journal};
use super::{SnapshotFailed, StoreError, UserLedger};

/// A future a backend returns through the seam.
pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where a store keeps what it accepted; see the module documentation.
pub(crate) trait Backend: Send + Sync + std::fmt::Debug {
    /// Loads `user_id`'s ledger when the store has no ledger for them in
    /// memory: `None` when no command of theirs was ever kept. By default a
    /// backend has every user in memory from the start, so it never has one
    /// to load; a backend that caches users lazily loads them here.
    fn load_user<'a>(
        &'a self,
        _user_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<UserLedger>, StoreError>> {
        Box::pin(std::future::ready(Ok(None)))
    }

    /// Whether other processes write the same users (replicas sharing a
    /// database), so that a cached user may be behind and reads and
    /// unrecorded outcomes must [`Backend::refresh`] it first.
    fn is_shared(&self) -> bool {
        false
    }

    /// Brings a cached user up to what the backend holds, applying records
    /// other processes wrote; only called when [`Backend::is_shared`].
    fn refresh<'a>(
        &'a self,
        _user_id: &'a str,
        _user: &'a Arc<RwLock<UserLedger>>,
    ) -> BoxFuture<'a, Result<Freshness, StoreError>> {
        Box::pin(std::future::ready(Ok(Freshness::Current)))
    }

    /// Told that a write of `user_id`'s is stored, so that a backend that
    /// keeps per-user snapshots can take one when enough was written since
    /// the last; only called when [`Backend::is_shared`].
    fn stored(&self, _user_id: &str, _user: &Arc<RwLock<UserLedger>>) {}

    /// Up to `limit` users whose ledger the backend holds as due to change
    /// by itself by `now_ms` (a hold times out, points expire), earliest
    /// first, with the due time it holds; for a backend that keeps due
    /// times of users no replica has in memory. By default none: every user
    /// is in memory, and the store knows when each is due.
    fn due_users(
        &self,
        _now_ms: i64,
        _limit: usize,
    ) -> BoxFuture<'_, Result<Vec<(String, i64)>, StoreError>> {
        Box::pin(std::future::ready(Ok(Vec::new())))
    }

    /// Told that `user_id`, listed by [`Backend::due_users`] as due at
    /// `listed_due_ms`, was brought to now (`user`: their cached ledger;
    /// `None`: they have none): if the backend still lists them at that
    /// time though they are due otherwise (nothing changed, such as under a
    /// changed points validity), it corrects the listing so that they are
    /// not listed again for nothing.
    fn due_user_advanced<'a>(
        &'a self,
        _user_id: &'a str,
        _listed_due_ms: i64,
        _user: Option<&'a Arc<RwLock<UserLedger>>>,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(std::future::ready(Ok(())))
    }

    /// Told that `user_id`, listed as due at `listed_due_ms`, could not be
    /// brought forward (their records cannot be loaded, the database
    /// failed): lists them at `retry_at_ms` instead, so that they do not
    /// keep others waiting behind them.
    fn postpone_due_user<'a>(
        &'a self,
        _user_id: &'a str,
        _listed_due_ms: i64,
        _retry_at_ms: i64,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(std::future::ready(Ok(())))
    }

    /// The place of the newest chunk stored for each of `user_ids` that has
    /// any, for a [shared](Backend::is_shared) backend: a follower of a
    /// user whose place moved has entries to read that another process
    /// wrote. By default none: every change is this process's own, and
    /// its followers are woken when it is durable.
    fn latest_chunks<'a>(
        &'a self,
        _user_ids: &'a [Arc<str>],
    ) -> BoxFuture<'a, Result<Vec<(String, u64)>, StoreError>> {
        Box::pin(std::future::ready(Ok(Vec::new())))
    }

    /// The most users the store may keep in memory, for a backend that
    /// loads users lazily; `None`: every user stays (they cannot be loaded
    /// again).
    fn cache_max_users(&self) -> Option<usize> {
        None
    }

    /// Whether the backend can serve now, as it changes (a database that
    /// becomes unreachable and comes back); `None` for a backend that is
    /// serving until it [`failed`](Backend::failed).
    fn serving(&self) -> Option<tokio::sync::watch::Receiver<bool>> {
        None
    }

    /// Refuses a write before anything changes when its record could not be
    /// taken ([`Backend::append`] never refuses).
    fn admit(&self) -> Result<(), StoreError>;

    /// Refuses a read when what memory holds may be ahead of what a restart
    /// would recover (the backend failed).
    fn check_healthy(&self) -> Result<(), StoreError>;

    /// Takes the record `record` builds, of a command just applied to
    /// `user`'s ledger whose write lock the caller holds, and returns its
    /// sequence (greater than any before it) and what to wait on for it.
    fn append(&self, user: &UserLedger, record: &dyn Fn() -> JournalRecord) -> (u64, Receipt);

    /// Whether every record up to `sequence` is durable now.
    fn is_durable(&self, sequence: u64) -> Result<bool, StoreError>;

    /// Completes once every record up to `sequence` is durable.
    fn wait_durable(&self, sequence: u64) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Completes when the backend stops taking changes because it failed,
    /// with why; never, while it is healthy.
    fn failed(&self) -> BoxFuture<'_, String>;

    /// Writes a snapshot now, if the backend takes them.
    fn snapshot_now(&self) -> Result<(), SnapshotFailed>;

    /// Makes everything taken durable and stops the backend's threads,
    /// giving up at `deadline` (`None`: waiting as long as that takes).
    /// Returns whether everything stopped.
    fn close(&self, deadline: Option<Instant>) -> bool;
}

/// Whether a cached user was up to date with a shared backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Freshness {
    /// Nothing newer was stored: what the ledger decided stands.
    Current,
    /// Newer records were stored and are now applied: decide again.
    CaughtUp,
    /// The cached ledger may differ from what is stored: drop it, load anew.
    Stale,
}

/// What a write waits on before its reply: its own record being durable.
pub(crate) enum Receipt {
    /// Durable already.
    Durable,
    /// Told by the journal writer.
    Journal(DurableReceipt),
    /// Told by a database backend's committer: stored, refused as
    /// conflicting ([`StoreError::Conflict`]), or failed.
    Database(tokio::sync::oneshot::Receiver<Result<(), StoreError>>),
}

impl Receipt {
    /// Completes once the record is durable, or with why it never will be.
    /// Inside a call, the wait is a child span of the call's
    /// (`journal_wait`, `database_commit`).
    pub(crate) async fn wait(self) -> Result<(), StoreError> {
        match self {
            Receipt::Durable => Ok(()),
            Receipt::Journal(receipt) => {
                let span = crate::telemetry::call_child_span!("journal_wait");
                Ok(crate::telemetry::spanning(span, Journal::wait_receipt(receipt)).await?)
            }
            Receipt::Database(receipt) => {
                let span = crate::telemetry::call_child_span!("database_commit");
                crate::telemetry::spanning(span, receipt).await.unwrap_or_else(|_| {
                    Err(StoreError::Unavailable(
                        "the database committer stopped before storing the change".to_owned(),
                    ))
                })
            }
        }
    }
}

/// Nothing kept: everything is durable at once and lost when the process
/// ends.
#[derive(Debug, Default)]
pub(crate) struct InMemory {
    /// The sequence of the last record "taken", so that sequences mean the
    /// same in every backend.
    last_sequence: AtomicU64,
}

impl Backend for InMemory {
    fn admit(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn check_healthy(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn append(&self, _user: &UserLedger, _record: &dyn Fn() -> JournalRecord) -> (u64, Receipt) {
        (self.last_sequence.fetch_add(1, Ordering::Relaxed) + 1, Receipt::Durable)
    }

    fn is_durable(&self, _sequence: u64) -> Result<bool, StoreError> {
        Ok(true)
    }

    fn wait_durable(&self, _sequence: u64) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(std::future::ready(Ok(())))
    }

    fn failed(&self) -> BoxFuture<'_, String> {
        Box::pin(std::future::pending())
    }

    fn snapshot_now(&self) -> Result<(), SnapshotFailed> {
        Ok(())
    }

    fn close(&self, _deadline: Option<Instant>) -> bool {
        true
    }
}
