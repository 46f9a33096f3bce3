//! The journal writer: appends accepted commands to the current segment and
//! makes them durable with group commit.
//!
//! Commands are framed into a shared buffer while their user's write lock is
//! held, so the journal has each user's commands in the order its ledger
//! applied them; no I/O happens under that lock. One writer thread takes everything buffered,
//! writes it with one `write`, makes it durable with one `fdatasync` (under
//! `--fsync always`), and publishes the highest durable sequence. Callers wait
//! for their own sequence outside any lock, so one fsync acknowledges every
//! command that arrived while the previous one was running: throughput grows
//! with concurrency instead of being one fsync per call.
//!
//! The buffer holds at most one record per call waiting for its reply, so the
//! server's concurrency bounds it; the writer's own batch buffer is trimmed
//! back to 1 MiB after each batch.
//!
//! Any write or fsync error is final (fail-stop): the journal reports itself
//! failed, every waiting and later command fails, and nothing is acknowledged
//! that might not be on disk.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::mpsc::{self, SyncSender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use tokio::sync::{oneshot, watch};

use super::files::{self, DataDir};
use super::frame;
use super::records::JournalRecord;

/// When an appended command counts as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FsyncPolicy {
    /// After `fdatasync`: survives power loss and kernel crashes.
    Always,
    /// After `write` to the operating system: survives the process dying
    /// (kill -9), but a power loss can lose the last moments of writes.
    Never,
}

/// How far the journal is durable, as published to waiting callers.
#[derive(Debug, Clone)]
enum Durable {
    /// Every sequence up to and including this one is written (and synced under `always`).
    UpTo(u64),
    /// The journal failed; nothing more will be acknowledged.
    Failed(Arc<str>),
}

/// Why a command could not be made durable.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the journal failed and the server no longer accepts changes: {0}")]
pub struct JournalFailed(pub Arc<str>);

/// The segment being appended to.
pub struct Segment {
    file: File,
    path: PathBuf,
    first_sequence: u64,
    size_bytes: u64,
}

impl Segment {
    /// Creates a new, empty segment whose first record will be `first_sequence`,
    /// durable (file and directory entry) before it is used.
    pub fn create(data_dir: &DataDir, first_sequence: u64) -> std::io::Result<Self> {
        let path = data_dir.journal_path(first_sequence);
        let mut file = OpenOptions::new().create_new(true).append(true).open(&path)?;
        file.write_all(&files::encode_header(files::JOURNAL_MAGIC, first_sequence))?;
        file.sync_all()?;
        data_dir.sync()?;
        Ok(Self { file, path, first_sequence, size_bytes: files::FILE_HEADER_BYTES as u64 })
    }

    /// Opens an existing segment, already checked and cut to `size_bytes`, to
    /// append after its last record.
    pub fn open_existing(
        path: PathBuf,
        first_sequence: u64,
        size_bytes: u64,
    ) -> std::io::Result<Self> {
        let file = OpenOptions::new().append(true).open(&path)?;
        Ok(Self { file, path, first_sequence, size_bytes })
    }

    fn write(&mut self, bytes: &[u8], fsync: FsyncPolicy) -> std::io::Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        self.file.write_all(bytes)?;
        if fsync == FsyncPolicy::Always {
            let started = std::time::Instant::now();
            self.file.sync_data()?;
            metrics::histogram!("points_journal_fsync_seconds")
                .record(started.elapsed().as_secs_f64());
        }
        self.size_bytes += bytes.len() as u64;
        metrics::counter!("points_journal_bytes_total").increment(bytes.len() as u64);
        metrics::gauge!("points_journal_segment_bytes").set(self.size_bytes as f64);
        Ok(())
    }
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
struct Rotation {
    /// Where in the pending bytes the old segment ends: frames appended after
    /// the request go to the new segment, never the old one.
    at_byte: usize,
    /// The last sequence of the old segment.
    after_sequence: u64,
    /// Told when the new segment is in place.
    done: mpsc::Sender<Result<(), String>>,
}

/// Told once its record is durable, or that the journal failed.
pub type DurableReceipt = oneshot::Receiver<Result<(), JournalFailed>>;

struct Pending {
    /// Frames appended but not yet taken by the writer.
    bytes: Vec<u8>,
    /// One notification per frame in `bytes`, in the same order, so that each
    /// caller is woken exactly once, when its own batch is durable.
    waiters: Vec<oneshot::Sender<Result<(), JournalFailed>>>,
    /// The sequence of the last frame appended.
    last_sequence: u64,
    /// Set by a snapshot: switch segments at a point in `bytes`.
    rotation: Option<Rotation>,
    closing: bool,
    failure: Option<Arc<str>>,
}

struct Shared {
    pending: Mutex<Pending>,
    wake_writer: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        // A panic while holding this lock is a bug in this module; the data it
        // guards (a byte buffer and counters) stays usable, so carry on.
        self.pending.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The journal: the append side used by the store, and its writer thread.
pub struct Journal {
    shared: Arc<Shared>,
    durable: watch::Receiver<Durable>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

/// The most bytes the writer's reusable batch buffer keeps between batches.
const BATCH_BUFFER_KEEP_BYTES: usize = 1 << 20;

impl Journal {
    /// Starts the writer thread on `segment`, after `last_sequence`.
    pub fn start(
        data_dir: Arc<DataDir>,
        segment: Segment,
        last_sequence: u64,
        fsync: FsyncPolicy,
        snapshots: Option<SnapshotTrigger>,
    ) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending {
                bytes: Vec::new(),
                waiters: Vec::new(),
                last_sequence,
                rotation: None,
                closing: false,
                failure: None,
            }),
            wake_writer: Condvar::new(),
        });
        let (durable_sender, durable) = watch::channel(Durable::UpTo(last_sequence));
        let writer = Writer {
            shared: Arc::clone(&shared),
            segment,
            fsync,
            durable_sender,
            data_dir,
            snapshots,
            last_request_size: None,
        };
        let handle = std::thread::Builder::new()
            .name("journal-writer".to_owned())
            .spawn(move || writer.run())?;
        Ok(Self { shared, durable, writer: Mutex::new(Some(handle)) })
    }

    /// Refuses early when the journal has failed, before the ledger changes.
    pub fn check_healthy(&self) -> Result<(), JournalFailed> {
        match &self.shared.lock().failure {
            Some(reason) => Err(JournalFailed(Arc::clone(reason))),
            None => Ok(()),
        }
    }

    /// Buffers `record` for the writer and returns its sequence with a
    /// receipt that completes once it is durable. Must be called under the
    /// user's write lock, right after applying the record.
    pub fn append(&self, record: &JournalRecord) -> Result<(u64, DurableReceipt), JournalFailed> {
        let mut pending = self.shared.lock();
        if let Some(reason) = &pending.failure {
            return Err(JournalFailed(Arc::clone(reason)));
        }
        if pending.closing {
            return Err(JournalFailed("the journal is closing".into()));
        }
        frame::encode_message(record, &mut pending.bytes);
        pending.last_sequence += 1;
        let sequence = pending.last_sequence;
        let (durable, receipt) = oneshot::channel();
        pending.waiters.push(durable);
        drop(pending);
        self.shared.wake_writer.notify_one();
        Ok((sequence, receipt))
    }

    /// Waits on a receipt from [`Journal::append`].
    pub async fn wait_receipt(receipt: DurableReceipt) -> Result<(), JournalFailed> {
        receipt.await.unwrap_or_else(|_| Err(JournalFailed("the journal writer stopped".into())))
    }

    /// Waits until `sequence` is durable, or the journal fails.
    pub async fn wait_durable(&self, sequence: u64) -> Result<(), JournalFailed> {
        let mut durable = self.durable.clone();
        let outcome = durable
            .wait_for(|state| match state {
                Durable::UpTo(durable) => *durable >= sequence,
                Durable::Failed(_) => true,
            })
            .await;
        match outcome.as_deref() {
            Ok(Durable::UpTo(_)) => Ok(()),
            Ok(Durable::Failed(reason)) => Err(JournalFailed(Arc::clone(reason))),
            Err(_) => Err(JournalFailed("the journal writer stopped".into())),
        }
    }

    /// Blocks this (non-async) thread until `sequence` is durable, or the
    /// journal fails. For background threads only.
    pub fn wait_durable_blocking(&self, sequence: u64) -> Result<(), JournalFailed> {
        // The writer publishes after every batch, so this polls a short while
        // at most; each turn is bounded by a millisecond sleep.
        loop {
            match &*self.durable.borrow() {
                Durable::UpTo(durable) if *durable >= sequence => return Ok(()),
                Durable::Failed(reason) => return Err(JournalFailed(Arc::clone(reason))),
                Durable::UpTo(_) => {}
            }
            if self.writer.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).is_none() {
                return Err(JournalFailed("the journal writer stopped".into()));
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    /// Completes when the journal fails (never, while it is healthy).
    pub async fn failed(&self) -> JournalFailed {
        let mut durable = self.durable.clone();
        match durable.wait_for(|state| matches!(state, Durable::Failed(_))).await.as_deref() {
            Ok(Durable::Failed(reason)) => JournalFailed(Arc::clone(reason)),
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
        if pending.closing {
            // The writer may already be gone: nobody would ever answer.
            return Ok(None);
        }
        let last_sequence = pending.last_sequence;
        let at_byte = pending.bytes.len();
        pending.rotation = Some(Rotation { at_byte, after_sequence: last_sequence, done });
        drop(pending);
        self.shared.wake_writer.notify_one();
        Ok(Some(RotationTicket { last_sequence, switched: finished }))
    }

    /// Writes and syncs everything buffered, then stops the writer thread.
    pub fn close(&self) {
        self.shared.lock().closing = true;
        self.shared.wake_writer.notify_one();
        let handle = self.writer.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take();
        if let Some(handle) = handle
            && handle.join().is_err()
        {
            tracing::error!("the journal writer thread panicked");
        }
    }
}

struct Writer {
    shared: Arc<Shared>,
    segment: Segment,
    fsync: FsyncPolicy,
    durable_sender: watch::Sender<Durable>,
    data_dir: Arc<DataDir>,
    snapshots: Option<SnapshotTrigger>,
    /// Segment size at the last snapshot request, so that a failed snapshot
    /// is retried after another threshold of growth rather than on every write.
    last_request_size: Option<u64>,
}

impl Writer {
    fn run(mut self) {
        let mut batch: Vec<u8> = Vec::new();
        let mut waiters = Vec::new();
        self.maybe_request_snapshot();
        loop {
            let (last_sequence, rotation, closing) = {
                let mut pending = self.shared.lock();
                while pending.bytes.is_empty() && pending.rotation.is_none() && !pending.closing {
                    pending = self
                        .shared
                        .wake_writer
                        .wait(pending)
                        .unwrap_or_else(|poisoned| poisoned.into_inner());
                }
                std::mem::swap(&mut pending.bytes, &mut batch);
                std::mem::swap(&mut pending.waiters, &mut waiters);
                (pending.last_sequence, pending.rotation.take(), pending.closing)
            };
            let written = match rotation {
                None => self
                    .segment
                    .write(&batch, self.fsync)
                    .map_err(|error| self.write_failure(&error)),
                Some(rotation) => self.write_rotating(&batch, rotation),
            };
            if let Err(reason) = written {
                let failure = self.fail(reason);
                for waiter in waiters.drain(..) {
                    let _ = waiter.send(Err(failure.clone()));
                }
                return;
            }
            batch.clear();
            batch.shrink_to(BATCH_BUFFER_KEEP_BYTES);
            self.durable_sender.send_replace(Durable::UpTo(last_sequence));
            // A caller that gave up waiting has dropped its receiver: fine.
            for waiter in waiters.drain(..) {
                let _ = waiter.send(Ok(()));
            }

            self.maybe_request_snapshot();
            if closing {
                if let Err(error) = self.segment.file.sync_all() {
                    tracing::error!(%error, "cannot sync the journal at shutdown");
                }
                return;
            }
        }
    }

    /// Writes `batch` across a segment switch: the frames before the rotation
    /// point end the old segment, the rest start the new one.
    fn write_rotating(&mut self, batch: &[u8], rotation: Rotation) -> Result<(), String> {
        let (old, new) = batch.split_at(rotation.at_byte);
        let switched = self
            .segment
            .write(old, self.fsync)
            .map_err(|error| self.write_failure(&error))
            .and_then(|()| self.rotate(rotation.after_sequence + 1));
        // The snapshot waits for this answer either way.
        let _ = rotation.done.send(switched.clone());
        switched?;
        self.segment.write(new, self.fsync).map_err(|error| self.write_failure(&error))
    }

    fn write_failure(&self, error: &std::io::Error) -> String {
        format!("cannot write the journal {}: {error}", self.segment.path.display())
    }

    /// Closes the current segment and starts a new one at `first_sequence`.
    fn rotate(&mut self, first_sequence: u64) -> Result<(), String> {
        if first_sequence == self.segment.first_sequence {
            return Ok(()); // nothing written since the segment began
        }
        self.segment
            .file
            .sync_all()
            .map_err(|error| format!("cannot sync {}: {error}", self.segment.path.display()))?;
        self.segment = Segment::create(&self.data_dir, first_sequence)
            .map_err(|error| format!("cannot create journal segment {first_sequence}: {error}"))?;
        self.last_request_size = None;
        tracing::info!(path = %self.segment.path.display(), "started a new journal segment");
        Ok(())
    }

    fn maybe_request_snapshot(&mut self) {
        let Some(trigger) = &self.snapshots else { return };
        let size = self.segment.size_bytes;
        let due = match self.last_request_size {
            None => size >= trigger.threshold_bytes,
            Some(requested_at) => size >= requested_at.saturating_add(trigger.threshold_bytes),
        };
        if due {
            // A full channel means a snapshot is already on its way.
            let _ = trigger.requests.try_send(());
            self.last_request_size = Some(size);
        }
    }

    /// Fails the journal for good; callers still waiting are told so.
    fn fail(&self, reason: String) -> JournalFailed {
        tracing::error!(%reason, "journal failed: refusing all further changes (fail-stop)");
        let reason: Arc<str> = reason.into();
        let waiting = {
            let mut pending = self.shared.lock();
            pending.failure = Some(Arc::clone(&reason));
            std::mem::take(&mut pending.waiters)
        };
        for waiter in waiting {
            let _ = waiter.send(Err(JournalFailed(Arc::clone(&reason))));
        }
        self.durable_sender.send_replace(Durable::Failed(Arc::clone(&reason)));
        JournalFailed(reason)
    }
}
