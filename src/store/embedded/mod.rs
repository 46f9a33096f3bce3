//! The embedded backend: a journal and snapshots in a data directory that
//! make every acknowledged change survive restarts, kill -9 and power loss.
//!
//! Each accepted command's record is appended, in the order its user's
//! ledger applied it, to an append-only journal shared by all users; the
//! caller's reply waits until the journal has it on disk ([`wal::journal`],
//! group commit). When the current journal segment grows past a threshold,
//! the [`snapshotter`] writes a snapshot of every user's ledger and removes
//! the segments it covers. Opening recovers the newest snapshot and the
//! journal after it ([`recovery`], checking that the files fit together,
//! then [`replay`] of each record into its user's ledger), so every user is
//! in memory from the start.
//!
//! Modules: [`file_system`] (the seam to the disk, simulated in tests),
//! [`files`] (the data directory and its file headers), [`wal`] (generic
//! log mechanics: frames, batches, segments, the journal writer),
//! [`records`] (what is stored), [`replay`], [`snapshot`], [`snapshotter`],
//! [`recovery`], [`backup`].

pub mod backup;
pub mod file_system;
pub mod files;
pub mod records;
pub mod recovery;
pub mod replay;
pub mod snapshot;
mod snapshotter;
pub mod wal;

use std::sync::mpsc;
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::Instant;

use chrono::Utc;

use self::files::DataDir;
use self::records::JournalRecord;
use self::snapshotter::Snapshotter;
use self::wal::{Journal, JournalFailed, JournalOptions, Refusal, SnapshotTrigger};
use super::backend::{Backend, BoxFuture, Receipt};
use super::sweeper::wait_finished;
use super::users::{UserLedger, Users};
use super::{DurableOptions, OpenError, Recovery, SnapshotFailed, StoreError};

/// The journal, its writer thread and the snapshotter of one open data
/// directory, which stays locked while this lives.
pub(crate) struct Embedded {
    journal: Arc<Journal>,
    snapshotter: Arc<Snapshotter>,
    snapshot_thread: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Embedded {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Embedded")
            .field("data_dir", &self.snapshotter.data_dir.path())
            .finish_non_exhaustive()
    }
}

/// Reads the ledger of the data directory at `path` into memory with the
/// checks of start-up, changing nothing in it: no torn tail is cut, no file
/// is created or removed. While reading it holds the directory's lock, if a
/// server ever made one, so that no server runs on it meanwhile. `None` when
/// it holds no journal or snapshot (not a data directory).
pub(crate) fn read_ledgers(
    path: &std::path::Path,
) -> Result<Option<std::collections::HashMap<String, UserLedger>>, OpenError> {
    let fs: Arc<dyn file_system::FileSystem> = Arc::new(file_system::OsFileSystem);
    let listing = files::list(fs.as_ref(), path)?;
    if listing.journals.is_empty() && listing.snapshots.is_empty() {
        return Ok(None);
    }
    // A server creates its lock file; without one, none ever ran here.
    let _lock =
        if path.join("LOCK").exists() { Some(DataDir::lock(Arc::clone(&fs), path)?) } else { None };
    let listing = files::list(fs.as_ref(), path)?;
    Ok(Some(recovery::scan(fs.as_ref(), &listing)?.users))
}

impl Embedded {
    /// Locks and recovers the data directory into `users` (dropping request
    /// ids remembered longer than `retention_ms`), then starts the journal
    /// writer and the snapshotter.
    pub(crate) fn open(
        options: &DurableOptions,
        users: &Arc<Users>,
        retention_ms: i64,
    ) -> Result<(Self, Recovery), OpenError> {
        let started = Instant::now();
        let data_dir =
            Arc::new(DataDir::lock(Arc::clone(&options.file_system), &options.data_dir)?);
        let listing = data_dir.list()?;
        let recovered = recovery::scan(data_dir.fs(), &listing)?;
        let segment = recovery::prepare(&data_dir, &recovered, options.journal_preallocate_bytes)?;
        let now_ms = Utc::now().timestamp_millis();
        let (mut transactions, mut spends, mut payers, mut lots) = (0, 0, 0, 0);
        for (user_id, mut user) in recovered.users {
            user.ledger.purge_requests(now_ms, retention_ms);
            payers += user.ledger.payer_count();
            lots += user.ledger.lot_count();
            let user_transactions = user.ledger.next_transaction_id() - 1;
            transactions += user_transactions;
            spends += user.ledger.history_len() as u64 - user_transactions;
            users.insert(user_id.into(), Arc::new(RwLock::new(user)));
        }
        metrics::gauge!("points_users").set(users.len() as f64);
        metrics::gauge!("points_payers").set(payers as f64);
        metrics::gauge!("points_lots").set(lots as f64);
        tracing::info!(
            data_dir = %data_dir.path().display(),
            snapshot_sequence = ?recovered.recovery.snapshot_sequence,
            records_replayed = recovered.recovery.records_replayed,
            last_sequence = recovered.last_sequence,
            users = users.len(),
            transactions,
            spends,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "recovered the ledger"
        );

        let (requests, requested) = mpsc::sync_channel(1);
        let trigger =
            SnapshotTrigger { threshold_bytes: options.snapshot_threshold_bytes, requests };
        let journal_options = JournalOptions {
            fsync: options.fsync,
            max_backlog_bytes: options.max_journal_backlog_bytes,
        };
        let journal = Journal::start(
            Arc::clone(&data_dir),
            segment,
            recovered.last_sequence,
            journal_options,
            Some(trigger),
        )
        .map_err(files::io_error("start the journal writer for", data_dir.path()))?;
        let journal = Arc::new(journal);
        let snapshotter = Arc::new(Snapshotter {
            users: Arc::clone(users),
            journal: Arc::clone(&journal),
            data_dir,
            one_at_a_time: Mutex::new(()),
        });
        let snapshot_thread = match snapshotter.spawn(requested) {
            Ok(thread) => thread,
            Err(error) => {
                // Nothing was accepted yet: stop the writer before refusing.
                journal.begin_close();
                journal.join();
                return Err(error);
            }
        };
        let embedded =
            Self { journal, snapshotter, snapshot_thread: Mutex::new(Some(snapshot_thread)) };
        Ok((embedded, recovered.recovery))
    }
}

/// Every user is recovered at open, so the default `load_user` (none to
/// load) holds.
impl Backend for Embedded {
    fn admit(&self) -> Result<(), StoreError> {
        Ok(self.journal.admit()?)
    }

    fn check_healthy(&self) -> Result<(), StoreError> {
        Ok(self.journal.check_healthy()?)
    }

    fn append(&self, _user: &UserLedger, record: &dyn Fn() -> JournalRecord) -> (u64, Receipt) {
        let (sequence, receipt) = self.journal.append(&record());
        (sequence, Receipt::Journal(receipt))
    }

    fn is_durable(&self, sequence: u64) -> Result<bool, StoreError> {
        Ok(self.journal.is_durable(sequence)?)
    }

    fn wait_durable(&self, sequence: u64) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move { Ok(self.journal.wait_durable(sequence).await?) })
    }

    fn failed(&self) -> BoxFuture<'_, String> {
        Box::pin(async move { self.journal.failed().await.to_string() })
    }

    fn snapshot_now(&self) -> Result<(), SnapshotFailed> {
        self.snapshotter.take().map_err(SnapshotFailed)
    }

    fn close(&self, deadline: Option<Instant>) -> bool {
        self.journal.begin_close();
        // The snapshot thread ends once the journal writer, which holds the
        // other end of its request channel, has stopped. Bounded by the
        // deadline: each turn sleeps a millisecond.
        while !self.journal.is_stopped() {
            if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        self.journal.join();
        let mut snapshot_thread =
            self.snapshot_thread.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(thread) = snapshot_thread.take() {
            if !wait_finished(&thread, deadline) {
                *snapshot_thread = Some(thread);
                return false;
            }
            if thread.join().is_err() {
                tracing::error!("the snapshot thread panicked");
            }
        }
        true
    }
}

impl From<JournalFailed> for StoreError {
    fn from(failure: JournalFailed) -> Self {
        StoreError::Unavailable(failure.to_string())
    }
}

impl From<Refusal> for StoreError {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::Failed(failure) => failure.into(),
            backlog @ Refusal::Backlog { .. } => {
                StoreError::Busy { reason: "JOURNAL_BACKLOG", message: backlog.to_string() }
            }
        }
    }
}

/// Reads every journal record in `data_dir` in sequence order, without
/// locking or changing anything (a torn tail is left in place and skipped).
/// Records already folded into a snapshot and removed are not returned. For
/// tests and offline inspection.
#[cfg(any(test, feature = "testing"))]
pub fn read_journal(data_dir: &std::path::Path) -> Result<Vec<(u64, JournalRecord)>, OpenError> {
    recovery::read_journal(&file_system::OsFileSystem, data_dir)
}

/// Where the records of each journal segment in `data_dir` end, oldest
/// segment first: its length without the zeros a preallocated segment ends
/// with or a torn tail. For tests and offline inspection, since a segment's
/// file length says little about what it holds.
#[cfg(any(test, feature = "testing"))]
pub fn journal_records_bytes(
    data_dir: &std::path::Path,
) -> Result<Vec<(std::path::PathBuf, u64)>, OpenError> {
    recovery::journal_records_bytes(&file_system::OsFileSystem, data_dir)
}
