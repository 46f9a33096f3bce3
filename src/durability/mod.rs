//! Durability: the layer between the service and the ledger core that makes
//! every acknowledged change survive restarts, kill -9 and power loss, and
//! never shows what a crash could take back.
//!
//! Each user has an in-memory [`Ledger`] behind its own lock, the source of
//! every read. Each accepted command is applied under that lock and appended,
//! in the same order, to an append-only journal shared by all users; the
//! caller's reply waits until the journal has it on disk (see [`journal`] for
//! group commit). Refused commands write nothing, except refusals of calls
//! with a request id, which retries must see again. Every reply (a read, a
//! refusal, a retry) waits until every change it reflects is durable; a user
//! with nothing pending never waits. When the current journal segment grows
//! past a threshold, a background thread writes a snapshot of every user's
//! ledger and removes the segments it covers. Start-up loads the newest
//! snapshot and replays the journal after it (see [`recovery`]).
//!
//! Modules: [`file_system`] (the seam to the disk), [`frame`] (checksummed
//! frames), [`files`] (the data directory), [`records`] (what is stored),
//! [`journal`] (group commit), [`snapshot`], [`recovery`], [`backup`].

pub mod backup;
pub mod file_system;
pub mod files;
pub mod frame;
pub mod journal;
pub mod records;
pub mod recovery;
pub mod snapshot;

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard, TryLockError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use dashmap::DashMap;

use crate::ledger::{
    HistoryCursor, HistoryPage, Ledger, LedgerError, NewTransaction, Outcome, Request, Spend,
    Transaction,
};
use file_system::{FileSystem, OsFileSystem};
use files::DataDir;
pub use journal::FsyncPolicy;
use journal::{Journal, JournalFailed, JournalOptions, SnapshotTrigger};
use records::{AddTransactionRecord, AddTransactionsRecord, Command, JournalRecord, SpendRecord};
pub use recovery::replay;
use snapshot::SnapshotFile;

/// The user of calls that name none.
pub const DEFAULT_USER: &str = "default";

/// How often remembered request ids past their retention are released.
const REQUEST_SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// Where the store keeps its data.
#[derive(Debug, Clone)]
pub enum Storage {
    /// No files at all: everything is lost when the process ends.
    InMemory,
    /// A journal and snapshots in a data directory.
    Durable {
        /// The data directory; created if missing, locked while open.
        data_dir: PathBuf,
        /// When a change counts as written.
        fsync: FsyncPolicy,
        /// Journal segment size that triggers a snapshot.
        snapshot_threshold_bytes: u64,
        /// Bytes appended and not yet durable past which new writes are refused.
        max_journal_backlog_bytes: u64,
        /// How far ahead of its records a journal segment's file is extended
        /// with zeros, so that a commit's `fdatasync` changes no file size
        /// (only data); 0 for none. Worth it only under `--fsync always`.
        journal_preallocate_bytes: u64,
        /// The file system the directory is on: the operating system's,
        /// or a simulated disk in tests.
        file_system: Arc<dyn FileSystem>,
    },
}

/// How the store keeps its data, remembers request ids, and bounds memory.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Where the data lives.
    pub storage: Storage,
    /// How long a request id is remembered, in milliseconds.
    pub request_id_retention_ms: i64,
    /// The most users with a ledger; a write for a new user past it is refused.
    pub max_users: usize,
    /// The most payers one user may have; crediting a new payer past it is refused.
    pub max_payers_per_user: usize,
    /// The most request ids one user may have remembered at once; a command
    /// with a new request id past it is refused.
    pub max_request_ids_per_user: usize,
}

impl StoreOptions {
    /// Request ids remembered for 24 hours.
    pub const DEFAULT_REQUEST_ID_RETENTION_MS: i64 = 24 * 3600 * 1000;
    /// The default limit of users.
    pub const DEFAULT_MAX_USERS: usize = 1_000_000;
    /// The default limit of payers per user.
    pub const DEFAULT_MAX_PAYERS_PER_USER: usize = 10_000;
    /// The default limit of request ids remembered per user: more than one
    /// a second for the whole default retention of 24 hours, and at most a
    /// few tens of MB for one user.
    pub const DEFAULT_MAX_REQUEST_IDS_PER_USER: usize = 100_000;
    /// The default limit of journal bytes waiting for the disk: far above
    /// what a healthy disk ever has pending (a few batches), small enough
    /// that a stalled disk cannot exhaust memory.
    pub const DEFAULT_MAX_JOURNAL_BACKLOG_BYTES: u64 = 64 << 20;
    /// The default preallocation of journal segments under `--fsync always`:
    /// one extension (a few milliseconds of writing zeros) per ~40,000
    /// single-call records; none under `--fsync never`, which never waits
    /// for an fsync anyway.
    pub const DEFAULT_JOURNAL_PREALLOCATE_BYTES: u64 = 4 << 20;

    /// The default preallocation of journal segments under `fsync`.
    pub fn default_journal_preallocate_bytes(fsync: FsyncPolicy) -> u64 {
        match fsync {
            FsyncPolicy::Always => Self::DEFAULT_JOURNAL_PREALLOCATE_BYTES,
            FsyncPolicy::Never => 0,
        }
    }

    /// In memory, with the default retention and limits.
    pub fn in_memory() -> Self {
        Self {
            storage: Storage::InMemory,
            request_id_retention_ms: Self::DEFAULT_REQUEST_ID_RETENTION_MS,
            max_users: Self::DEFAULT_MAX_USERS,
            max_payers_per_user: Self::DEFAULT_MAX_PAYERS_PER_USER,
            max_request_ids_per_user: Self::DEFAULT_MAX_REQUEST_IDS_PER_USER,
        }
    }

    /// In `data_dir`, with the default retention and limits.
    pub fn durable(data_dir: &Path, fsync: FsyncPolicy, snapshot_threshold_bytes: u64) -> Self {
        Self {
            storage: Storage::Durable {
                data_dir: data_dir.to_owned(),
                fsync,
                snapshot_threshold_bytes,
                max_journal_backlog_bytes: Self::DEFAULT_MAX_JOURNAL_BACKLOG_BYTES,
                journal_preallocate_bytes: Self::default_journal_preallocate_bytes(fsync),
                file_system: Arc::new(OsFileSystem),
            },
            ..Self::in_memory()
        }
    }
}

/// Why the store could not open. Each names the file and what to do.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Another process holds the data directory.
    #[error(
        "data directory {path} is in use by another points-server (lock file {lock} is held); \
         stop that server or choose another --data-dir"
    )]
    Locked {
        /// The data directory.
        path: PathBuf,
        /// Its lock file.
        lock: PathBuf,
    },
    /// A file operation failed.
    #[error("cannot {action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// A file is damaged; nothing was changed or dropped.
    #[error(
        "{path} is damaged at byte offset {offset}: {reason}. Refusing to start so that no data \
         is dropped silently; restore the file from a backup, or move it aside only if you \
         accept losing what it holds from that offset on"
    )]
    Damaged {
        /// The damaged file.
        path: PathBuf,
        /// Where the damage starts.
        offset: usize,
        /// What is wrong.
        reason: String,
    },
    /// The files are each intact but do not fit together.
    #[error("{path}: {reason}")]
    Inconsistent {
        /// The file where the inconsistency shows.
        path: PathBuf,
        /// What does not fit.
        reason: String,
    },
}

/// Why a store operation did not happen.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The ledger refused the command; nothing changed.
    #[error(transparent)]
    Refused(#[from] LedgerError),
    /// A limit of the server would be passed; nothing changed.
    #[error("{message}")]
    LimitReached {
        /// Stable UPPER_SNAKE_CASE name of the limit.
        reason: &'static str,
        /// What was refused and why.
        message: String,
    },
    /// The store cannot serve: the journal failed (fail-stop) or the ledger
    /// was left unusable by an internal error.
    #[error("{0}")]
    Unavailable(String),
    /// The store cannot take this write now, but may shortly (the disk is
    /// behind); nothing changed.
    #[error("{message}")]
    Busy {
        /// Stable UPPER_SNAKE_CASE name of the condition.
        reason: &'static str,
        /// What is wrong and what to do.
        message: String,
    },
}

impl From<JournalFailed> for StoreError {
    fn from(failure: JournalFailed) -> Self {
        StoreError::Unavailable(failure.to_string())
    }
}

impl From<journal::Refusal> for StoreError {
    fn from(refusal: journal::Refusal) -> Self {
        match refusal {
            journal::Refusal::Failed(failure) => failure.into(),
            backlog @ journal::Refusal::Backlog { .. } => {
                StoreError::Busy { reason: "JOURNAL_BACKLOG", message: backlog.to_string() }
            }
        }
    }
}

/// One user's ledger and the sequence of the last journal record applied to
/// it (0 in memory), which snapshots and retries need.
#[derive(Debug, Default)]
struct UserLedger {
    ledger: Ledger,
    last_sequence: u64,
}

type Users = DashMap<Arc<str>, Arc<RwLock<UserLedger>>>;

/// Every user's ledger with its durability: what the service calls. Each
/// user has its own lock, so calls for different users never wait on each
/// other; the journal is shared and keeps each user's commands in order.
pub struct Store {
    users: Arc<Users>,
    /// `None` in memory-only mode.
    journal: Option<Arc<Journal>>,
    /// `None` in memory-only mode.
    snapshotter: Option<Arc<Snapshotter>>,
    request_id_retention_ms: i64,
    max_users: usize,
    max_payers_per_user: usize,
    max_request_ids_per_user: usize,
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// Dropping it stops the request-id sweeper.
    stop_sweeper: Mutex<Option<mpsc::Sender<()>>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Store")
            .field("durable", &self.journal.is_some())
            .field("users", &self.users.len())
            .finish()
    }
}

/// What recovery found, for the start-up log.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// The rotation sequence of the snapshot loaded, if any.
    pub snapshot_sequence: Option<u64>,
    /// Journal records replayed after the snapshot.
    pub records_replayed: u64,
    /// Bytes of a torn journal tail cut off (not counting zeros after it).
    pub torn_bytes_cut: u64,
}

impl Store {
    /// A store that keeps nothing on disk.
    pub fn in_memory() -> Self {
        Self::open(&StoreOptions::in_memory()).expect("an in-memory store always opens").0
    }

    /// Opens the store: in memory, or recovering the data directory (newest
    /// snapshot, then the journal after it) and starting the journal writer.
    pub fn open(options: &StoreOptions) -> Result<(Self, Recovery), OpenError> {
        let retention_ms = options.request_id_retention_ms;
        let Storage::Durable {
            data_dir,
            fsync,
            snapshot_threshold_bytes,
            max_journal_backlog_bytes,
            journal_preallocate_bytes,
            file_system,
        } = &options.storage
        else {
            let store = Self::assemble(Arc::default(), None, options, Vec::new());
            return Ok((store, Recovery::default()));
        };
        let started = Instant::now();
        let data_dir = Arc::new(DataDir::lock(Arc::clone(file_system), data_dir)?);
        let listing = data_dir.list()?;
        let recovered = recovery::scan(data_dir.fs(), &listing)?;
        let segment = recovery::prepare(&data_dir, &recovered, *journal_preallocate_bytes)?;
        let now_ms = Utc::now().timestamp_millis();
        let users: Arc<Users> = Arc::new(DashMap::new());
        let (mut transactions, mut spends, mut payers, mut lots) = (0, 0, 0, 0);
        for (user_id, mut user) in recovered.users {
            user.ledger.purge_requests(now_ms, retention_ms);
            payers += user.ledger.payer_count();
            lots += user.ledger.lot_count();
            transactions += user.ledger.next_transaction_id() - 1;
            spends += user.ledger.history_len() as u64 - (user.ledger.next_transaction_id() - 1);
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
        let trigger = SnapshotTrigger { threshold_bytes: *snapshot_threshold_bytes, requests };
        let journal_options =
            JournalOptions { fsync: *fsync, max_backlog_bytes: *max_journal_backlog_bytes };
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
            users: Arc::clone(&users),
            journal: Arc::clone(&journal),
            data_dir,
            one_at_a_time: Mutex::new(()),
        });
        let thread = {
            let snapshotter = Arc::clone(&snapshotter);
            std::thread::Builder::new()
                .name("snapshotter".to_owned())
                .spawn(move || {
                    for () in requested {
                        if let Err(reason) = snapshotter.take() {
                            tracing::error!(%reason, "snapshot failed; the journal still holds everything");
                        }
                    }
                })
                .map_err(|source| OpenError::Io {
                    action: "start the snapshot thread for",
                    path: PathBuf::new(),
                    source,
                })?
        };
        let mut store = Self::assemble(users, Some(journal), options, vec![thread]);
        store.snapshotter = Some(snapshotter);
        Ok((store, recovered.recovery))
    }

    fn assemble(
        users: Arc<Users>,
        journal: Option<Arc<Journal>>,
        options: &StoreOptions,
        mut threads: Vec<JoinHandle<()>>,
    ) -> Self {
        let request_id_retention_ms = options.request_id_retention_ms;
        let (stop_sweeper, stopped) = mpsc::channel::<()>();
        let sweeper_users = Arc::clone(&users);
        // A store that cannot start its sweeper still works; it only keeps
        // expired request ids until their users write again.
        match std::thread::Builder::new().name("request-id-sweeper".to_owned()).spawn(move || {
            while let Err(mpsc::RecvTimeoutError::Timeout) =
                stopped.recv_timeout(REQUEST_SWEEP_INTERVAL)
            {
                let now_ms = Utc::now().timestamp_millis();
                for user in collect_users(&sweeper_users) {
                    if let Ok(mut user) = user.1.write() {
                        user.ledger.purge_requests(now_ms, request_id_retention_ms);
                    }
                }
            }
        }) {
            Ok(sweeper) => threads.push(sweeper),
            Err(error) => tracing::warn!(%error, "cannot start the request-id sweeper"),
        }
        Self {
            users,
            journal,
            snapshotter: None,
            request_id_retention_ms,
            max_users: options.max_users,
            max_payers_per_user: options.max_payers_per_user,
            max_request_ids_per_user: options.max_request_ids_per_user,
            threads: Mutex::new(threads),
            stop_sweeper: Mutex::new(Some(stop_sweeper)),
        }
    }

    /// Records a transaction for `user_id`; see [`Ledger::execute_add_transaction`].
    /// Returns once the change is durable.
    pub async fn add_transaction(
        &self,
        user_id: &str,
        request_id: Option<&str>,
        payer: &str,
        points: i64,
        timestamp: DateTime<Utc>,
    ) -> Result<Transaction, StoreError> {
        let max_payers = self.max_payers_per_user;
        self.write(
            user_id,
            request_id,
            false,
            |ledger, request| {
                // Only new payers count; a retry of an accepted credit always
                // names a payer that exists.
                if points > 0 && !ledger.has_payer(payer) && ledger.payer_count() >= max_payers {
                    return Outcome::Fresh(Err(LedgerError::PayerLimitReached {
                        limit: max_payers,
                    }));
                }
                ledger.execute_add_transaction(request, payer, points, timestamp)
            },
            |result| {
                let id = result.as_ref().map_or(0, |transaction| transaction.id);
                Command::AddTransaction(AddTransactionRecord::new(payer, points, timestamp, id))
            },
        )
        .await
    }

    /// Records a batch for `user_id`, all or nothing; see
    /// [`Ledger::add_transactions`]. One journal record, so one fsync.
    pub async fn add_transactions(
        &self,
        user_id: &str,
        batch: &[NewTransaction<'_>],
    ) -> Result<Vec<Transaction>, StoreError> {
        let max_payers = self.max_payers_per_user;
        self.write(
            user_id,
            None,
            batch.len() >= HEAVY_BATCH_ENTRIES,
            |ledger, _| {
                // New payers count against the limit in the order they appear.
                let mut new_payers = std::collections::HashSet::new();
                for (index, entry) in batch.iter().enumerate() {
                    if entry.points > 0
                        && !ledger.has_payer(entry.payer)
                        && new_payers.insert(entry.payer)
                        && ledger.payer_count() + new_payers.len() > max_payers
                    {
                        let error = LedgerError::PayerLimitReached { limit: max_payers };
                        return Outcome::Fresh(Err(LedgerError::InBatch {
                            index,
                            error: Box::new(error),
                        }));
                    }
                }
                Outcome::Fresh(ledger.add_transactions(batch))
            },
            |result| {
                let transactions = result.as_deref().unwrap_or_default();
                Command::AddTransactions(AddTransactionsRecord {
                    transactions: transactions
                        .iter()
                        .map(|done| {
                            AddTransactionRecord::new(
                                &done.payer,
                                done.points,
                                done.timestamp,
                                done.id,
                            )
                        })
                        .collect(),
                })
            },
        )
        .await
    }

    /// Spends `user_id`'s points; see [`Ledger::execute_spend`]. Returns once
    /// the change is durable.
    pub async fn spend(
        &self,
        user_id: &str,
        request_id: Option<&str>,
        points: i64,
    ) -> Result<Spend, StoreError> {
        self.write(
            user_id,
            request_id,
            false,
            |ledger, request| ledger.execute_spend(request, points),
            |result| {
                Command::Spend(SpendRecord {
                    points,
                    spend_id: result.as_ref().map_or(0, |spend| spend.id),
                })
            },
        )
        .await
    }

    /// Every payer ever credited to `user_id` with its balance (none for an
    /// unknown user), once every change it reflects is durable.
    pub async fn balances(&self, user_id: &str) -> Result<Vec<(String, i64)>, StoreError> {
        self.read(user_id, |ledger| {
            ledger.balances().map(|(payer, points)| (payer.to_owned(), points)).collect()
        })
        .await
    }

    /// A page of `user_id`'s history, or `None` if `cursor` is not a position
    /// of it, once every change it reflects is durable. An unknown user has
    /// an empty history. The page stops before its entries' encoded size
    /// passes `max_bytes` (one entry always fits); see
    /// [`Ledger::history_page_within`].
    pub async fn history_page(
        &self,
        user_id: &str,
        cursor: HistoryCursor,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Option<HistoryPage>, StoreError> {
        self.read(user_id, |ledger| ledger.history_page_within(cursor, limit, max_bytes)).await
    }

    /// Runs `read` on `user_id`'s ledger (an empty one for an unknown user)
    /// and returns its result once every change it saw is durable, so that
    /// no reply shows what a crash could take back. A user with nothing
    /// pending does not wait.
    pub async fn read<T>(
        &self,
        user_id: &str,
        read: impl FnOnce(&Ledger) -> T,
    ) -> Result<T, StoreError> {
        // After a journal failure the in-memory state may hold changes that a
        // restart would not have: serve nothing rather than contradict it.
        if let Some(journal) = &self.journal {
            journal.check_healthy()?;
        }
        let user = self.users.get(user_id).map(|entry| Arc::clone(entry.value()));
        let (result, seen_sequence) = match user {
            Some(user) => {
                let user = read_lock(&user)?;
                (read(&user.ledger), user.last_sequence)
            }
            None => (read(&Ledger::new()), 0),
        };
        if let Some(journal) = &self.journal {
            journal.wait_durable(seen_sequence).await?;
        }
        Ok(result)
    }

    /// Completes when the store stops accepting changes because its journal
    /// failed; never, for a healthy or in-memory store.
    pub async fn failed(&self) -> String {
        match &self.journal {
            Some(journal) => journal.failed().await.to_string(),
            None => std::future::pending().await,
        }
    }

    /// Takes a snapshot now and returns once it is written (or why not);
    /// normally the journal's growth triggers snapshots on their own. For
    /// tests and tools; an in-memory store has nothing to snapshot.
    pub fn snapshot_now(&self) -> Result<(), String> {
        self.snapshotter.as_ref().map_or(Ok(()), |snapshotter| snapshotter.take())
    }

    /// Writes out everything buffered and stops the background threads,
    /// waiting as long as that takes.
    pub fn close(&self) {
        self.close_within(Duration::MAX);
    }

    /// Writes out everything buffered and stops the background threads,
    /// giving up after `grace` (a stalled disk, a long snapshot): returns
    /// whether everything stopped. What was acknowledged is durable either
    /// way; giving up only leaves the writing of unacknowledged records, or a
    /// snapshot, unfinished, which start-up handles as after a crash.
    pub fn close_within(&self, grace: Duration) -> bool {
        let deadline = Instant::now().checked_add(grace);
        if let Some(journal) = &self.journal {
            journal.begin_close();
        }
        drop(self.stop_sweeper.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take());
        // The snapshot thread ends once the journal writer, which holds the
        // other end of its request channel, has stopped.
        let mut threads = self.threads.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        // Bounded by the deadline: each turn sleeps a millisecond.
        loop {
            let journal_stopped = self.journal.as_ref().is_none_or(|journal| journal.is_stopped());
            if journal_stopped && threads.iter().all(JoinHandle::is_finished) {
                break;
            }
            if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
                tracing::error!(
                    "the store did not stop within the shutdown grace period (a stalled disk or \
                     a long snapshot); exiting anyway: every acknowledged change is durable"
                );
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        if let Some(journal) = &self.journal {
            journal.join();
        }
        for thread in threads.drain(..) {
            if thread.join().is_err() {
                tracing::error!("a store thread panicked");
            }
        }
        true
    }

    /// Executes a command under the user's write lock and, if it changed
    /// anything or is a refusal to remember, appends its record in the same
    /// critical section (so the journal has each user's commands in order);
    /// then waits outside the lock until everything the reply reflects is
    /// durable: its own record, or for a refusal or a retry, every record
    /// of the user it was decided on.
    async fn write<T>(
        &self,
        user_id: &str,
        request_id: Option<&str>,
        heavy: bool,
        execute: impl FnOnce(&mut Ledger, Option<Request<'_>>) -> Outcome<T>,
        command: impl FnOnce(&Result<T, LedgerError>) -> Command,
    ) -> Result<T, StoreError> {
        if let Some(journal) = &self.journal {
            // Before anything changes: the journal must be able to take the
            // record, so that no applied change is ever left unjournaled.
            journal.admit()?;
        }
        let now_ms = Utc::now().timestamp_millis();
        let request = request_id.map(|id| Request {
            id,
            now_ms,
            retention_ms: self.request_id_retention_ms,
            max_remembered: self.max_request_ids_per_user,
        });
        let step = WriteStep { user_id, request_id, now_ms, request, new_user: false };
        let existing = self.users.get(user_id).map(|entry| Arc::clone(entry.value()));
        let run = || match existing {
            Some(user) => {
                let (result, durable, _) =
                    self.execute_locked(&mut *write_lock(&user)?, step, execute, command)?;
                Ok::<_, StoreError>((result, durable))
            }
            None => self.first_write(step, execute, command),
        };
        // A large batch is milliseconds of ledger work under the user's
        // lock: not on a worker of the async runtime.
        let (result, durable) = if heavy { off_runtime(run)? } else { run()? };
        if let Some(journal) = &self.journal {
            match durable {
                Durability::Receipt(receipt) => Journal::wait_receipt(receipt).await?,
                Durability::Sequence(sequence) => journal.wait_durable(sequence).await?,
            }
        }
        Ok(result?)
    }

    /// Executes a command on a user's ledger whose write lock the caller
    /// holds, and appends its record if it changed anything or is a refusal
    /// to remember. Returns the result, what to wait for, and whether the
    /// ledger changed.
    fn execute_locked<T>(
        &self,
        user: &mut UserLedger,
        step: WriteStep<'_>,
        execute: impl FnOnce(&mut Ledger, Option<Request<'_>>) -> Outcome<T>,
        command: impl FnOnce(&Result<T, LedgerError>) -> Command,
    ) -> Result<(Result<T, LedgerError>, Durability, bool), StoreError> {
        let before = (user.ledger.payer_count(), user.ledger.lot_count());
        let outcome = execute(&mut user.ledger, step.request);
        let after = (user.ledger.payer_count(), user.ledger.lot_count());
        if after != before {
            metrics::gauge!("points_payers").increment((after.0 - before.0) as f64);
            metrics::gauge!("points_lots").increment((after.1 - before.1) as f64);
        }
        let result = match outcome {
            Outcome::Repeated(result) => {
                return Ok((result, Durability::Sequence(user.last_sequence), false));
            }
            Outcome::Fresh(result) => result,
        };
        // A refusal is remembered (for retries with its request id) only for
        // a user who exists: remembering it would create the user, and made-up
        // user ids would then fill the user limit. A retry of a refusal for a
        // user with no ledger is decided afresh.
        let changed = match &result {
            Ok(_) => true,
            Err(error) => !step.new_user && step.request_id.is_some() && error.depends_on_state(),
        };
        // A refusal not journaled was decided on everything the user has.
        let mut durable = Durability::Sequence(user.last_sequence);
        if changed && let Some(journal) = &self.journal {
            let (sequence, receipt) = journal.append(&JournalRecord {
                command: Some(command(&result)),
                user_id: step.user_id.to_owned(),
                request_id: step.request_id.unwrap_or_default().to_owned(),
                accepted_at_ms: step.now_ms,
                refused: result.is_err(),
            });
            debug_assert!(sequence > user.last_sequence, "a user's records are in journal order");
            user.last_sequence = sequence;
            durable = Durability::Receipt(receipt);
        }
        Ok((result, durable, changed))
    }

    /// A write for a user without a ledger. It runs on a new ledger while
    /// holding the user's vacant map entry (so concurrent first writes wait
    /// for it), and the user is kept only if the write changed something: a
    /// refused write creates no user, so refusals cannot fill the user limit.
    fn first_write<T>(
        &self,
        step: WriteStep<'_>,
        execute: impl FnOnce(&mut Ledger, Option<Request<'_>>) -> Outcome<T>,
        command: impl FnOnce(&Result<T, LedgerError>) -> Command,
    ) -> Result<(Result<T, LedgerError>, Durability), StoreError> {
        // Checked before taking the entry: counting users reads every shard,
        // including the one the entry locks. Concurrent first writes may pass
        // together, so the bound is exact up to the calls in flight.
        if self.users.len() >= self.max_users && !self.users.contains_key(step.user_id) {
            return Err(StoreError::LimitReached {
                reason: "USER_LIMIT_REACHED",
                message: format!(
                    "the server already holds its maximum of {} users; no new user can be added",
                    self.max_users
                ),
            });
        }
        match self.users.entry(step.user_id.into()) {
            dashmap::Entry::Occupied(entry) => {
                let user = Arc::clone(entry.get());
                drop(entry);
                let (result, durable, _) =
                    self.execute_locked(&mut *write_lock(&user)?, step, execute, command)?;
                Ok((result, durable))
            }
            dashmap::Entry::Vacant(entry) => {
                let mut user = UserLedger::default();
                let step = WriteStep { new_user: true, ..step };
                let (result, durable, changed) =
                    self.execute_locked(&mut user, step, execute, command)?;
                if changed {
                    entry.insert(Arc::new(RwLock::new(user)));
                    metrics::gauge!("points_users").increment(1.0);
                }
                Ok((result, durable))
            }
        }
    }
}

/// Batches at least this long run off the async runtime's workers: about a
/// millisecond of ledger work or more under the user's lock.
const HEAVY_BATCH_ENTRIES: usize = 1_000;

/// The request-scoped facts of one write.
#[derive(Clone, Copy)]
struct WriteStep<'a> {
    user_id: &'a str,
    request_id: Option<&'a str>,
    now_ms: i64,
    request: Option<Request<'a>>,
    /// Whether the user has no ledger yet (so a refusal must leave none).
    new_user: bool,
}

/// What a write must wait for before its reply.
enum Durability {
    /// Its own record.
    Receipt(journal::DurableReceipt),
    /// Nothing of its own was journaled (a retry, or a refusal not
    /// remembered): the user's records up to this sequence, on which its
    /// outcome was decided (0 in memory, or for a new user).
    Sequence(u64),
}

fn collect_users(users: &Users) -> Vec<(Arc<str>, Arc<RwLock<UserLedger>>)> {
    users.iter().map(|entry| (Arc::clone(entry.key()), Arc::clone(entry.value()))).collect()
}

/// A user's read lock, taken by a call on the async runtime. Uncontended it
/// is taken at once; if a writer or a snapshot's encoding holds it, the wait
/// happens off the runtime's worker ([`off_runtime`]), so that calls of other
/// users keep being served meanwhile.
fn read_lock(user: &RwLock<UserLedger>) -> Result<RwLockReadGuard<'_, UserLedger>, StoreError> {
    match user.try_read() {
        Ok(guard) => Ok(guard),
        Err(TryLockError::WouldBlock) => off_runtime(|| user.read()).map_err(|_| poisoned()),
        Err(TryLockError::Poisoned(_)) => Err(poisoned()),
    }
}

/// A user's write lock, taken as [`read_lock`] takes the read lock.
fn write_lock(user: &RwLock<UserLedger>) -> Result<RwLockWriteGuard<'_, UserLedger>, StoreError> {
    match user.try_write() {
        Ok(guard) => Ok(guard),
        Err(TryLockError::WouldBlock) => off_runtime(|| user.write()).map_err(|_| poisoned()),
        Err(TryLockError::Poisoned(_)) => Err(poisoned()),
    }
}

/// Runs `wait` (blocking) so that it does not hold up the async runtime: on
/// a multi-threaded runtime the worker hands its other tasks to a new worker
/// first (`block_in_place`); elsewhere (a current-thread runtime, no
/// runtime) it simply runs.
fn off_runtime<T>(wait: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(wait)
        }
        _ => wait(),
    }
}

/// A panic while a ledger was being changed may have left it half-updated;
/// refusing every later call to it (fail-stop) beats serving a state nobody
/// vouches for.
fn poisoned() -> StoreError {
    StoreError::Unavailable(
        "the ledger is unavailable after an internal error; restart the server".to_owned(),
    )
}

/// Reads every journal record in `data_dir` in sequence order, without
/// locking or changing anything (a torn tail is left in place and skipped).
/// Records already folded into a snapshot and removed are not returned. For
/// tests and offline inspection.
pub fn read_journal(data_dir: &Path) -> Result<Vec<(u64, JournalRecord)>, OpenError> {
    recovery::read_journal(&OsFileSystem, data_dir)
}

/// Where the records of each journal segment in `data_dir` end, oldest
/// segment first: its length without the zeros a preallocated segment ends
/// with or a torn tail. For tests and offline inspection, since a segment's
/// file length says little about what it holds.
pub fn journal_records_bytes(data_dir: &Path) -> Result<Vec<(PathBuf, u64)>, OpenError> {
    recovery::journal_records_bytes(&OsFileSystem, data_dir)
}

/// Writes snapshots: from its own thread when the journal asks, or when
/// called.
struct Snapshotter {
    users: Arc<Users>,
    journal: Arc<Journal>,
    data_dir: Arc<DataDir>,
    /// Snapshots never overlap.
    one_at_a_time: Mutex<()>,
}

impl Snapshotter {
    /// Writes a snapshot of every user, then removes the journal segments and
    /// older snapshots it covers.
    ///
    /// No global lock and no second copy of the ledgers: the journal is
    /// rotated at sequence R first, then each user is written out under its
    /// own read lock with the sequence of its last record. Every record up to
    /// R is in its user's copy (it was applied before R was read); later ones
    /// may be, and recovery skips exactly those a user's copy holds. The
    /// snapshot is put in place only once the journal has everything it holds
    /// fsynced, whatever the fsync policy, so a snapshot is never ahead of the
    /// journal on disk.
    fn take(&self) -> Result<(), String> {
        let _one_at_a_time =
            self.one_at_a_time.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let (journal, data_dir) = (&self.journal, &*self.data_dir);
        let started = Instant::now();
        let Some(ticket) = journal.request_rotation().map_err(|failure| failure.to_string())?
        else {
            tracing::info!("snapshot skipped: the store is closing");
            return Ok(());
        };
        let rotation_sequence = ticket.last_sequence;
        // The new segment first: then a failed rotation costs no snapshot
        // work, and the snapshot's file operations never interleave with the
        // rotation's (which keeps simulated-disk runs deterministic).
        ticket.switched.recv().map_err(|_| "the journal writer stopped".to_owned())??;
        let cannot_write =
            |error: std::io::Error| format!("cannot write snapshot {rotation_sequence}: {error}");
        let mut file = SnapshotFile::create(data_dir, rotation_sequence).map_err(cannot_write)?;
        let mut newest = 0;
        for (user_id, user) in collect_users(&self.users) {
            {
                // Encoding only, under the lock: a stalled disk must never
                // hold a user's lock (and with it the callers of that user).
                let user = user.read().map_err(|_| format!("user {user_id:?} is poisoned"))?;
                newest = newest.max(user.last_sequence);
                file.encode_user(&user_id, user.last_sequence, &user.ledger);
            }
            file.write_encoded(snapshot::ENCODED_KEEP_BYTES).map_err(cannot_write)?;
        }
        let written_ms = started.elapsed().as_millis() as u64;
        let size_bytes = file.finish().map_err(cannot_write)?;
        journal.wait_synced_blocking(newest).map_err(|failure| failure.to_string())?;
        file.publish().map_err(cannot_write)?;

        let listing = data_dir.list().map_err(|error| error.to_string())?;
        let covered_journals =
            listing.journals.iter().filter(|(first, _)| *first <= rotation_sequence);
        let older_snapshots =
            listing.snapshots.iter().filter(|(sequence, _)| *sequence < rotation_sequence);
        for (_, path) in covered_journals.chain(older_snapshots) {
            data_dir
                .fs()
                .remove_file(path)
                .map_err(|error| format!("cannot remove {}: {error}", path.display()))?;
        }
        data_dir.sync().map_err(|error| format!("cannot sync the data directory: {error}"))?;
        metrics::histogram!("points_snapshot_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        tracing::info!(
            rotation_sequence,
            size_bytes,
            write_ms = written_ms,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "snapshot written"
        );
        Ok(())
    }
}
