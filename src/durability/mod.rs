//! Durability: the layer between the service and the ledger core that makes
//! every acknowledged change survive restarts, kill -9 and power loss.
//!
//! The in-memory [`Ledger`] stays the source of every read. Each accepted
//! command is applied to it under its write lock and appended, in the same
//! order, to an append-only journal; the caller's reply waits until the
//! journal has it on disk (see [`journal`] for group commit). Refused commands
//! write nothing. When the current journal segment grows past a threshold, a
//! background thread writes a snapshot of the whole ledger and removes the
//! segments it covers. Start-up loads the newest snapshot and replays the
//! journal after it.
//!
//! Modules: [`frame`] (checksummed records), [`files`] (the data directory),
//! [`records`] (what is stored), [`journal`] (group commit), [`snapshot`].

pub mod files;
pub mod frame;
pub mod journal;
pub mod records;
pub mod snapshot;

use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread::JoinHandle;
use std::time::Instant;

use chrono::{DateTime, Utc};
use prost::Message;

use crate::ledger::{Ledger, LedgerError, PayerPoints, Transaction};
use files::DataDir;
pub use journal::FsyncPolicy;
use journal::{Journal, JournalFailed, Segment, SnapshotTrigger};
use records::{AddTransactionRecord, Command, JournalRecord, SpendRecord};

/// Where and how the store keeps its data.
#[derive(Debug, Clone)]
pub enum StoreOptions {
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
    },
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
    /// The store cannot serve: the journal failed (fail-stop) or the ledger
    /// was left unusable by an internal error.
    #[error("{0}")]
    Unavailable(String),
}

impl From<JournalFailed> for StoreError {
    fn from(failure: JournalFailed) -> Self {
        StoreError::Unavailable(failure.to_string())
    }
}

/// The ledger with its durability: what the service calls.
pub struct Store {
    ledger: Arc<RwLock<Ledger>>,
    /// `None` in memory-only mode.
    journal: Option<Arc<Journal>>,
    snapshotter: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("Store").field("durable", &self.journal.is_some()).finish()
    }
}

/// What recovery found, for the start-up log.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// The sequence of the snapshot loaded, if any.
    pub snapshot_sequence: Option<u64>,
    /// Journal records replayed after the snapshot.
    pub records_replayed: u64,
    /// Bytes cut off a torn journal tail.
    pub torn_bytes_cut: u64,
}

impl Store {
    /// A store that keeps nothing on disk.
    pub fn in_memory() -> Self {
        Self { ledger: Arc::default(), journal: None, snapshotter: Mutex::new(None) }
    }

    /// Opens the store: in memory, or recovering the data directory (newest
    /// snapshot, then the journal after it) and starting the journal writer.
    pub fn open(options: &StoreOptions) -> Result<(Self, Recovery), OpenError> {
        let StoreOptions::Durable { data_dir, fsync, snapshot_threshold_bytes } = options else {
            return Ok((Self::in_memory(), Recovery::default()));
        };
        let started = Instant::now();
        let data_dir = Arc::new(DataDir::lock(data_dir)?);
        let (ledger, segment, last_sequence, recovery) = recover(&data_dir)?;
        tracing::info!(
            data_dir = %data_dir.path().display(),
            snapshot_sequence = ?recovery.snapshot_sequence,
            records_replayed = recovery.records_replayed,
            last_sequence,
            payers = ledger.payer_count(),
            lots = ledger.lot_count(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "recovered the ledger"
        );

        let ledger = Arc::new(RwLock::new(ledger));
        let (requests, requested) = mpsc::sync_channel(1);
        let trigger = SnapshotTrigger { threshold_bytes: *snapshot_threshold_bytes, requests };
        let journal =
            Journal::start(Arc::clone(&data_dir), segment, last_sequence, *fsync, Some(trigger))
                .map_err(files::io_error("start the journal writer for", data_dir.path()))?;
        let journal = Arc::new(journal);
        let snapshotter = {
            let (ledger, journal) = (Arc::clone(&ledger), Arc::clone(&journal));
            std::thread::Builder::new()
                .name("snapshotter".to_owned())
                .spawn(move || {
                    for () in requested {
                        if let Err(reason) = take_snapshot(&ledger, &journal, &data_dir) {
                            tracing::error!(%reason, "snapshot failed; the journal still holds everything");
                        }
                    }
                })
                .map_err(|source| OpenError::Io { action: "start the snapshot thread for", path: PathBuf::new(), source })?
        };
        let store =
            Self { ledger, journal: Some(journal), snapshotter: Mutex::new(Some(snapshotter)) };
        Ok((store, recovery))
    }

    /// Records a transaction; see [`Ledger::add_transaction`]. Returns once
    /// the change is durable.
    pub async fn add_transaction(
        &self,
        payer: &str,
        points: i64,
        timestamp: DateTime<Utc>,
    ) -> Result<Transaction, StoreError> {
        self.write(
            |ledger| ledger.add_transaction(payer, points, timestamp),
            |transaction| {
                Command::AddTransaction(AddTransactionRecord {
                    payer: transaction.payer.clone(),
                    points: transaction.points,
                    timestamp_seconds: transaction.timestamp.timestamp(),
                    timestamp_nanos: transaction.timestamp.timestamp_subsec_nanos(),
                    transaction_id: transaction.id,
                })
            },
        )
        .await
    }

    /// Spends points; see [`Ledger::spend`]. Returns once the change is durable.
    pub async fn spend(&self, points: i64) -> Result<Vec<PayerPoints>, StoreError> {
        self.write(|ledger| ledger.spend(points), |_| Command::Spend(SpendRecord { points })).await
    }

    /// Every payer ever credited with its balance. Never waits for the disk.
    pub fn balances(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let ledger = self.read_ledger()?;
        Ok(ledger.balances().map(|(payer, points)| (payer.to_owned(), points)).collect())
    }

    /// Runs `read` on the ledger; for tests and tools.
    pub fn with_ledger<T>(&self, read: impl FnOnce(&Ledger) -> T) -> Result<T, StoreError> {
        Ok(read(&*self.read_ledger()?))
    }

    /// Completes when the store stops accepting changes because its journal
    /// failed; never, for a healthy or in-memory store.
    pub async fn failed(&self) -> String {
        match &self.journal {
            Some(journal) => journal.failed().await.to_string(),
            None => std::future::pending().await,
        }
    }

    /// Writes out everything buffered and stops the background threads.
    pub fn close(&self) {
        if let Some(journal) = &self.journal {
            journal.close();
        }
        // The snapshot thread ends once the journal writer, which holds the
        // other end of its request channel, has stopped.
        let handle =
            self.snapshotter.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take();
        if let Some(handle) = handle
            && handle.join().is_err()
        {
            tracing::error!("the snapshot thread panicked");
        }
    }

    /// Applies a command under the write lock, appends its record in the same
    /// critical section (so journal order is apply order), then waits for
    /// durability outside the lock so readers and other writers go on.
    async fn write<T>(
        &self,
        apply: impl FnOnce(&mut Ledger) -> Result<T, LedgerError>,
        record: impl FnOnce(&T) -> Command,
    ) -> Result<T, StoreError> {
        let (outcome, sequence) = {
            let mut ledger = self.write_ledger()?;
            if let Some(journal) = &self.journal {
                journal.check_healthy()?;
            }
            let outcome = apply(&mut ledger)?;
            let sequence = match &self.journal {
                Some(journal) => {
                    Some(journal.append(&JournalRecord { command: Some(record(&outcome)) })?)
                }
                None => None,
            };
            (outcome, sequence)
        };
        if let (Some(journal), Some(sequence)) = (&self.journal, sequence) {
            journal.wait_durable(sequence).await?;
        }
        Ok(outcome)
    }

    fn read_ledger(&self) -> Result<RwLockReadGuard<'_, Ledger>, StoreError> {
        // After a journal failure the in-memory state may hold changes that a
        // restart would not have: serve nothing rather than contradict it.
        if let Some(journal) = &self.journal {
            journal.check_healthy()?;
        }
        self.ledger.read().map_err(|_| poisoned())
    }

    fn write_ledger(&self) -> Result<RwLockWriteGuard<'_, Ledger>, StoreError> {
        self.ledger.write().map_err(|_| poisoned())
    }
}

/// A panic while the ledger was being changed may have left it half-updated;
/// refusing every later call (fail-stop) beats serving a state nobody vouches for.
fn poisoned() -> StoreError {
    StoreError::Unavailable(
        "the ledger is unavailable after an internal error; restart the server".to_owned(),
    )
}

/// Rebuilds the ledger from the data directory and returns it with the
/// segment to append to and the last sequence applied.
fn recover(data_dir: &DataDir) -> Result<(Ledger, Segment, u64, Recovery), OpenError> {
    let listing = data_dir.list()?;
    let mut recovery = Recovery::default();
    let (mut ledger, mut last_sequence) = match listing.snapshots.last() {
        Some((sequence, path)) => {
            recovery.snapshot_sequence = Some(*sequence);
            (snapshot::read(path, *sequence)?, *sequence)
        }
        None => (Ledger::new(), 0),
    };

    let mut append_to = None;
    for (index, (first_sequence, path)) in listing.journals.iter().enumerate() {
        let is_last = index + 1 == listing.journals.len();
        if *first_sequence > last_sequence + 1 {
            return Err(OpenError::Inconsistent {
                path: path.clone(),
                reason: format!(
                    "the journal is missing sequences {}..{first_sequence}: a segment or \
                     snapshot was removed",
                    last_sequence + 1
                ),
            });
        }
        let data = fs::read(path).map_err(files::io_error("read", path))?;
        let header_sequence = files::decode_header(path, &data, files::JOURNAL_MAGIC)?;
        if header_sequence != *first_sequence {
            return Err(OpenError::Damaged {
                path: path.clone(),
                offset: 0,
                reason: format!(
                    "header says sequence {header_sequence}, the name says {first_sequence}"
                ),
            });
        }
        let mut sequence = *first_sequence;
        let ending = frame::scan(&data, files::FILE_HEADER_BYTES, |_, payload| {
            if sequence > last_sequence {
                replay_payload(&mut ledger, payload)
                    .map_err(|reason| format!("cannot replay sequence {sequence}: {reason}"))?;
                last_sequence = sequence;
                recovery.records_replayed += 1;
            }
            sequence += 1;
            Ok(())
        })
        .map_err(|damage| OpenError::Damaged {
            path: path.clone(),
            offset: damage.offset,
            reason: damage.reason,
        })?;

        let mut valid_bytes = data.len();
        if let frame::Ending::Torn { offset, reason } = ending {
            if !is_last {
                return Err(OpenError::Damaged {
                    path: path.clone(),
                    offset,
                    reason: format!("{reason} in a journal segment that is not the newest"),
                });
            }
            cut_torn_tail(path, offset, data.len(), reason)?;
            recovery.torn_bytes_cut = (data.len() - offset) as u64;
            valid_bytes = offset;
        }
        if is_last {
            append_to = Some((path.clone(), *first_sequence, valid_bytes as u64));
        }
    }
    if cfg!(debug_assertions) {
        ledger.check_invariants().map_err(|reason| OpenError::Inconsistent {
            path: data_dir.path().to_owned(),
            reason: format!("the recovered ledger breaks an invariant: {reason}"),
        })?;
    }

    let segment = match append_to {
        // Append to the newest segment unless a snapshot already covers all of it.
        Some((path, first_sequence, size)) if first_sequence <= last_sequence + 1 => {
            Segment::open_existing(path.clone(), first_sequence, size)
                .map_err(files::io_error("open for appending", &path))?
        }
        _ => Segment::create(data_dir, last_sequence + 1)
            .map_err(files::io_error("create a journal segment in", data_dir.path()))?,
    };
    Ok((ledger, segment, last_sequence, recovery))
}

/// Reads every journal record in `data_dir` in sequence order, without
/// locking or changing anything (a torn tail is left in place and skipped).
/// Records already folded into a snapshot and removed are not returned. For
/// tests and offline inspection.
pub fn read_journal(data_dir: &Path) -> Result<Vec<(u64, JournalRecord)>, OpenError> {
    let mut journals: Vec<(u64, PathBuf)> = Vec::new();
    for entry in fs::read_dir(data_dir).map_err(files::io_error("list", data_dir))? {
        let path = entry.map_err(files::io_error("list", data_dir))?.path();
        let name = path.file_name().and_then(|name| name.to_str()).unwrap_or_default();
        if let Some(digits) =
            name.strip_prefix("journal-").and_then(|rest| rest.strip_suffix(".log"))
            && let Ok(sequence) = digits.parse()
        {
            journals.push((sequence, path));
        }
    }
    journals.sort();
    let mut records = Vec::new();
    for (first_sequence, path) in journals {
        let data = fs::read(&path).map_err(files::io_error("read", &path))?;
        files::decode_header(&path, &data, files::JOURNAL_MAGIC)?;
        let mut sequence = first_sequence;
        frame::scan(&data, files::FILE_HEADER_BYTES, |_, payload| {
            records.push((
                sequence,
                JournalRecord::decode(payload).map_err(|error| error.to_string())?,
            ));
            sequence += 1;
            Ok(())
        })
        .map_err(|damage| OpenError::Damaged {
            path: path.clone(),
            offset: damage.offset,
            reason: damage.reason,
        })?;
    }
    Ok(records)
}

/// Decodes and applies one journal record.
fn replay_payload(ledger: &mut Ledger, payload: &[u8]) -> Result<(), String> {
    replay(ledger, JournalRecord::decode(payload).map_err(|error| error.to_string())?)
}

/// Applies one journal record; the command was accepted once, so it must be
/// accepted again with the same outcome.
pub fn replay(ledger: &mut Ledger, record: JournalRecord) -> Result<(), String> {
    match record.command {
        Some(Command::AddTransaction(add)) => {
            let timestamp = records::timestamp(add.timestamp_seconds, add.timestamp_nanos)?;
            let transaction = ledger
                .add_transaction(&add.payer, add.points, timestamp)
                .map_err(|error| format!("the ledger refused it: {error}"))?;
            if transaction.id != add.transaction_id {
                return Err(format!(
                    "replay assigned id {}, the journal recorded id {}",
                    transaction.id, add.transaction_id
                ));
            }
        }
        Some(Command::Spend(spend)) => {
            ledger
                .spend(spend.points)
                .map_err(|error| format!("the ledger refused it: {error}"))?;
        }
        None => {
            return Err("a record with an unknown command (written by a newer version?)".to_owned());
        }
    }
    Ok(())
}

/// Cuts a torn tail off the newest segment, like Redis's aof-load-truncated,
/// and says so in the log.
fn cut_torn_tail(path: &Path, offset: usize, length: usize, reason: &str) -> Result<(), OpenError> {
    tracing::warn!(
        path = %path.display(),
        offset,
        bytes_cut = length - offset,
        reason,
        "the journal ends in a torn record (a write cut short by a crash); cutting it off: that \
         command was never acknowledged"
    );
    let file = OpenOptions::new().write(true).open(path).map_err(files::io_error("open", path))?;
    file.set_len(offset as u64).map_err(files::io_error("truncate", path))?;
    file.sync_all().map_err(files::io_error("sync", path))
}

/// Writes a snapshot of the current ledger, then removes the journal segments
/// and older snapshots it covers.
fn take_snapshot(
    ledger: &RwLock<Ledger>,
    journal: &Journal,
    data_dir: &DataDir,
) -> Result<(), String> {
    let started = Instant::now();
    // Under the read lock no command is applied or appended, so the copy is
    // exactly the state after `last_sequence`.
    let (last_sequence, rotated, copy) = {
        let ledger = ledger.read().map_err(|_| "the ledger lock is poisoned".to_owned())?;
        let Some(ticket) = journal.request_rotation().map_err(|failure| failure.to_string())?
        else {
            tracing::info!("snapshot skipped: the store is closing");
            return Ok(());
        };
        (ticket.last_sequence, ticket.switched, ledger.clone())
    };
    let copied_ms = started.elapsed().as_millis() as u64;
    rotated.recv().map_err(|_| "the journal writer stopped".to_owned())??;
    let size_bytes = snapshot::write(data_dir, last_sequence, &copy)
        .map_err(|error| format!("cannot write snapshot {last_sequence}: {error}"))?;
    drop(copy);

    let listing = data_dir.list().map_err(|error| error.to_string())?;
    let covered_journals = listing.journals.iter().filter(|(first, _)| *first <= last_sequence);
    let older_snapshots =
        listing.snapshots.iter().filter(|(sequence, _)| *sequence < last_sequence);
    for (_, path) in covered_journals.chain(older_snapshots) {
        fs::remove_file(path)
            .map_err(|error| format!("cannot remove {}: {error}", path.display()))?;
    }
    data_dir.sync().map_err(|error| format!("cannot sync the data directory: {error}"))?;
    tracing::info!(
        last_sequence,
        size_bytes,
        copy_ms = copied_ms,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "snapshot written"
    );
    Ok(())
}
