//! The journal writer: appends accepted commands to the current segment and
//! makes them durable with group commit.
//!
//! Commands are framed into a shared buffer while their user's write lock is
//! held, so the journal has each user's commands in the order its ledger
//! applied them; no I/O happens under that lock. One writer thread takes
//! everything buffered, frames it as one *batch* (the sequence of its first
//! record, the record count, the records, one checksum over all of it),
//! writes it with one `write`, makes it durable with one `fdatasync` (under
//! `--fsync always`), and publishes the highest durable sequence. Callers wait
//! for their own sequence outside any lock, so one fsync acknowledges every
//! command that arrived while the previous one was running: throughput grows
//! with concurrency instead of being one fsync per call.
//!
//! A batch is the unit of tearing: after a power cut the last batch written
//! may be partly on disk in any pattern of sectors, and reading treats an
//! invalid batch with nothing valid after it as the torn end. Every earlier
//! batch was synced before the next one was written, so an invalid batch
//! followed by a valid one is damage.
//!
//! Bounded: bytes appended but not yet durable are limited by
//! `max_backlog_bytes`; past it, [`Journal::admit`] refuses new commands
//! before they change anything (a stalled disk turns into refusals, not
//! unbounded memory).
//!
//! Any write or fsync error is final (fail-stop): the journal reports itself
//! failed, every waiting and later command fails, and nothing is acknowledged
//! that might not be on disk.

use std::sync::mpsc::{self, SyncSender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use tokio::sync::{oneshot, watch};

use super::super::files::DataDir;
use super::batch::encode_record;
use super::segment::Segment;
use super::writer::Writer;

/// When an appended record counts as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// After `fdatasync`: survives power loss and kernel crashes.
    Always,
    /// After `write` to the operating system: survives the process dying
    /// (kill -9), but a power loss can lose the last moments of writes.
    Never,
}

/// How far the journal is durable, as published to waiting callers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Horizon {
    /// Every sequence up to this one counts as written under the policy
    /// (fsynced under `always`, handed to the OS under `never`).
    pub(super) durable: u64,
    /// Every sequence up to this one is fsynced (equal to `durable` under
    /// `always`).
    pub(super) synced: u64,
}

/// What the writer publishes.
#[derive(Debug, Clone)]
pub(super) enum Published {
    Healthy(Horizon),
    /// The journal failed; nothing more will be acknowledged.
    Failed(Arc<str>),
}

/// Why a command could not be made durable.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the journal failed and the server no longer accepts changes: {0}")]
pub struct JournalFailed(pub Arc<str>);

/// Why the journal does not take a new command now.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Refusal {
    /// Failed or closing: it never will again.
    #[error(transparent)]
    Failed(#[from] JournalFailed),
    /// Too many bytes wait to be made durable; try again shortly.
    #[error(
        "the journal has {pending_bytes} bytes waiting for the disk, past its limit of \
         {limit_bytes} (--max-journal-backlog-bytes); the disk is slower than the writes: retry \
         shortly"
    )]
    Backlog {
        /// Bytes appended and not yet durable.
        pending_bytes: u64,
        /// The limit.
        limit_bytes: u64,
    },
}

/// Snapshot scheduling: the writer asks for a snapshot each time the current
/// segment grows by `threshold_bytes` past its last request.
pub struct SnapshotTrigger {
    /// Segment size that asks for a snapshot.
    pub threshold_bytes: u64,
    /// Where requests go; a full channel means one is already pending.
    pub requests: SyncSender<()>,
}

/// A requested segment switch, as the snapshot sees it.
pub struct RotationTicket {
    /// The last sequence of the old segment.
    pub last_sequence: u64,
    /// Reports once the new segment is in place (or why it is not).
    pub switched: mpsc::Receiver<Result<(), String>>,
}

/// A snapshot's request to start a new segment at an exact point.
pub(super) struct Rotation {
    /// How many of the pending records go to the old segment: those appended
    /// before the request; later ones start the new segment.
    pub(super) at_record: usize,
    /// Where in the pending bytes those records end.
    pub(super) at_byte: usize,
    /// The last sequence of the old segment.
    pub(super) after_sequence: u64,
    /// Told when the new segment is in place.
    pub(super) done: mpsc::Sender<Result<(), String>>,
}

/// Told once its record is durable, or that the journal failed.
pub type DurableReceipt = oneshot::Receiver<Result<(), JournalFailed>>;

pub(super) struct Pending {
    /// Record frames appended but not yet taken by the writer.
    pub(super) bytes: Vec<u8>,
    /// One notification per record in `bytes`, in the same order, so that
    /// each caller is woken exactly once, when its own batch is durable.
    pub(super) waiters: Vec<oneshot::Sender<Result<(), JournalFailed>>>,
    /// The sequence of the last record appended.
    pub(super) last_sequence: u64,
    /// Bytes appended and not yet durable: those in `bytes` and those the
    /// writer is writing now.
    pub(super) backlog_bytes: u64,
    /// Set by a snapshot: switch segments at a point in `bytes`.
    pub(super) rotation: Option<Rotation>,
    /// Set by a snapshot under `--fsync never`: fsync up to this sequence.
    pub(super) sync_through: u64,
    pub(super) closing: bool,
    /// The writer has stopped; records appended now can never be written.
    pub(super) writer_stopped: bool,
    pub(super) failure: Option<Arc<str>>,
}

pub(super) struct Shared {
    pub(super) pending: Mutex<Pending>,
    pub(super) wake_writer: Condvar,
}

impl Shared {
    pub(super) fn lock(&self) -> MutexGuard<'_, Pending> {
        // A panic while holding this lock is a bug in this module; the data it
        // guards (a byte buffer and counters) stays usable, so carry on.
        self.pending.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// How the journal runs.
#[derive(Debug, Clone, Copy)]
pub struct JournalOptions {
    /// When a change counts as written.
    pub fsync: FsyncPolicy,
    /// The most bytes appended and not yet durable before new commands are refused.
    pub max_backlog_bytes: u64,
}

/// The journal: the append side used by the store, and its writer thread.
pub struct Journal {
    shared: Arc<Shared>,
    published: watch::Receiver<Published>,
    max_backlog_bytes: u64,
    writer: Mutex<Option<JoinHandle<()>>>,
}

/// The most bytes the writer's reusable buffers keep between batches.
pub(super) const BATCH_BUFFER_KEEP_BYTES: usize = 1 << 20;

impl Journal {
    /// Starts the writer thread on `segment`, after `last_sequence`, which
    /// must already be durable.
    pub fn start(
        data_dir: Arc<DataDir>,
        segment: Segment,
        last_sequence: u64,
        options: JournalOptions,
        snapshots: Option<SnapshotTrigger>,
    ) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending {
                bytes: Vec::new(),
                waiters: Vec::new(),
                last_sequence,
                backlog_bytes: 0,
                rotation: None,
                sync_through: 0,
                closing: false,
                writer_stopped: false,
                failure: None,
            }),
            wake_writer: Condvar::new(),
        });
        let horizon = Horizon { durable: last_sequence, synced: last_sequence };
        let (publisher, published) = watch::channel(Published::Healthy(horizon));
        let writer = Writer {
            shared: Arc::clone(&shared),
            segment,
            fsync: options.fsync,
            horizon,
            publisher,
            data_dir,
            snapshots,
            last_request_size: None,
        };
        let handle = std::thread::Builder::new()
            .name("journal-writer".to_owned())
            .spawn(move || writer.run_to_end())?;
        Ok(Self {
            shared,
            published,
            max_backlog_bytes: options.max_backlog_bytes,
            writer: Mutex::new(Some(handle)),
        })
    }

    /// Refuses when the journal has failed, before anything reads or changes.
    pub fn check_healthy(&self) -> Result<(), JournalFailed> {
        match &self.shared.lock().failure {
            Some(reason) => Err(JournalFailed(Arc::clone(reason))),
            None => Ok(()),
        }
    }

    /// Whether a new command may run now: refused when the journal failed,
    /// is closing, or has too many bytes waiting for the disk. Checked before
    /// the ledger changes, so that [`Journal::append`] never has to refuse a
    /// change that is already applied.
    pub fn admit(&self) -> Result<(), Refusal> {
        let pending = self.shared.lock();
        if let Some(reason) = &pending.failure {
            return Err(JournalFailed(Arc::clone(reason)).into());
        }
        if pending.closing {
            return Err(JournalFailed("the journal is closing".into()).into());
        }
        if pending.backlog_bytes >= self.max_backlog_bytes {
            return Err(Refusal::Backlog {
                pending_bytes: pending.backlog_bytes,
                limit_bytes: self.max_backlog_bytes,
            });
        }
        Ok(())
    }

    /// Buffers `record` for the writer and returns its sequence with a
    /// receipt that completes once it is durable. Must be called under the
    /// user's write lock, right after applying the record, after
    /// [`Journal::admit`]. Never refuses: a record appended after the journal
    /// failed or stopped gets a receipt that reports so.
    pub fn append(&self, record: &impl prost::Message) -> (u64, DurableReceipt) {
        let mut pending = self.shared.lock();
        let before = pending.bytes.len();
        encode_record(record, &mut pending.bytes);
        pending.backlog_bytes += (pending.bytes.len() - before) as u64;
        pending.last_sequence += 1;
        let sequence = pending.last_sequence;
        let (durable, receipt) = oneshot::channel();
        if pending.writer_stopped {
            let reason = pending.failure.clone().unwrap_or_else(|| "the journal is closed".into());
            let _ = durable.send(Err(JournalFailed(reason)));
        } else {
            pending.waiters.push(durable);
        }
        drop(pending);
        self.shared.wake_writer.notify_one();
        (sequence, receipt)
    }

    /// Waits on a receipt from [`Journal::append`].
    pub async fn wait_receipt(receipt: DurableReceipt) -> Result<(), JournalFailed> {
        receipt.await.unwrap_or_else(|_| Err(JournalFailed("the journal writer stopped".into())))
    }

    /// Whether `sequence` is durable already (no waiting), or the journal failed.
    pub fn is_durable(&self, sequence: u64) -> Result<bool, JournalFailed> {
        match &*self.published.borrow() {
            Published::Healthy(horizon) => Ok(horizon.durable >= sequence),
            Published::Failed(reason) => Err(JournalFailed(Arc::clone(reason))),
        }
    }

    /// Waits until `sequence` is durable, or the journal fails.
    pub async fn wait_durable(&self, sequence: u64) -> Result<(), JournalFailed> {
        if self.is_durable(sequence)? {
            return Ok(());
        }
        let mut published = self.published.clone();
        let outcome = published
            .wait_for(|state| match state {
                Published::Healthy(horizon) => horizon.durable >= sequence,
                Published::Failed(_) => true,
            })
            .await;
        match outcome.as_deref() {
            Ok(Published::Healthy(_)) => Ok(()),
            Ok(Published::Failed(reason)) => Err(JournalFailed(Arc::clone(reason))),
            Err(_) => Err(JournalFailed("the journal writer stopped".into())),
        }
    }

    /// Blocks this (non-async) thread until `sequence` is fsynced, whatever
    /// the policy, or the journal fails. For background threads only: a
    /// snapshot must never hold a change the journal could still lose.
    pub fn wait_synced_blocking(&self, sequence: u64) -> Result<(), JournalFailed> {
        {
            let mut pending = self.shared.lock();
            pending.sync_through = pending.sync_through.max(sequence);
        }
        self.shared.wake_writer.notify_one();
        // The writer publishes after every batch and every requested sync, so
        // this polls a short while at most; each turn sleeps a millisecond.
        loop {
            match &*self.published.borrow() {
                Published::Healthy(horizon) if horizon.synced >= sequence => return Ok(()),
                Published::Failed(reason) => return Err(JournalFailed(Arc::clone(reason))),
                Published::Healthy(_) => {}
            }
            if self.shared.lock().writer_stopped {
                return Err(JournalFailed("the journal writer stopped".into()));
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    /// Completes when the journal fails (never, while it is healthy).
    pub async fn failed(&self) -> JournalFailed {
        let mut published = self.published.clone();
        match published.wait_for(|state| matches!(state, Published::Failed(_))).await.as_deref() {
            Ok(Published::Failed(reason)) => JournalFailed(Arc::clone(reason)),
            _ => JournalFailed("the journal writer stopped".into()),
        }
    }

    /// Asks the writer to start a new segment right after everything appended
    /// so far; `None` when the journal is closing. Every record up to the
    /// ticket's sequence was appended, so applied, before this returns.
    pub fn request_rotation(&self) -> Result<Option<RotationTicket>, JournalFailed> {
        let (done, finished) = mpsc::channel();
        let mut pending = self.shared.lock();
        if let Some(reason) = &pending.failure {
            return Err(JournalFailed(Arc::clone(reason)));
        }
        if pending.closing || pending.writer_stopped {
            // The writer may already be gone: nobody would ever answer.
            return Ok(None);
        }
        let last_sequence = pending.last_sequence;
        let rotation = Rotation {
            at_record: pending.waiters.len(),
            at_byte: pending.bytes.len(),
            after_sequence: last_sequence,
            done,
        };
        if let Some(earlier) = pending.rotation.replace(rotation) {
            let _ = earlier.done.send(Err("superseded by a later rotation".to_owned()));
        }
        drop(pending);
        self.shared.wake_writer.notify_one();
        Ok(Some(RotationTicket { last_sequence, switched: finished }))
    }

    /// Asks the writer to write and sync everything buffered and stop; later
    /// commands are refused. Does not wait.
    pub fn begin_close(&self) {
        self.shared.lock().closing = true;
        self.shared.wake_writer.notify_one();
    }

    /// Whether the writer thread has stopped.
    pub fn is_stopped(&self) -> bool {
        self.shared.lock().writer_stopped
    }

    /// Joins the writer thread once it has stopped.
    pub fn join(&self) {
        let handle = self.writer.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take();
        if let Some(handle) = handle
            && handle.join().is_err()
        {
            tracing::error!("the journal writer thread panicked");
        }
    }
}
