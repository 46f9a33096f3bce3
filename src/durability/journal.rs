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

use std::path::PathBuf;
use std::sync::mpsc::{self, SyncSender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use tokio::sync::{oneshot, watch};

use super::file_system::WritableFile;
use super::files::{self, DataDir};
use super::frame::{self, FRAME_HEADER_BYTES, MAX_PAYLOAD_BYTES};
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

/// Bytes of a batch header inside its frame: first sequence (u64 LE),
/// record count (u32 LE), synced-through sequence (u64 LE).
pub const BATCH_HEADER_BYTES: usize = 20;

/// Bytes of the length (u32 LE) before each record inside a batch. Records
/// carry no checksum of their own (the batch's covers them), so no record
/// inside a torn batch can pass for a valid frame when reading looks for
/// valid data after a torn one.
pub const RECORD_LENGTH_BYTES: usize = 4;

/// Appends `record` to `out`, length-prefixed, as batches hold it.
pub fn encode_record(record: &JournalRecord, out: &mut Vec<u8>) {
    use prost::Message;
    let length = record.encoded_len();
    assert!(
        length <= MAX_PAYLOAD_BYTES - BATCH_HEADER_BYTES - RECORD_LENGTH_BYTES,
        "record of {length} bytes is too large"
    );
    out.reserve(RECORD_LENGTH_BYTES + length);
    out.extend_from_slice(&(length as u32).to_le_bytes());
    record.encode_raw(out);
}

/// How far the journal is durable, as published to waiting callers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Horizon {
    /// Every sequence up to this one counts as written under the policy
    /// (fsynced under `always`, handed to the OS under `never`).
    durable: u64,
    /// Every sequence up to this one is fsynced (equal to `durable` under
    /// `always`).
    synced: u64,
}

/// What the writer publishes.
#[derive(Debug, Clone)]
enum Published {
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

/// The segment being appended to.
///
/// Under `--fsync always` a segment is kept *preallocated*: its file is
/// extended with zeros ahead of the records, `preallocate_bytes` at a time
/// (`Storage::Durable::journal_preallocate_bytes`), so that a commit writes
/// over zeros already on disk and its `fdatasync` has no new file size (a
/// metadata commit) to make durable, only the data. Reading takes zeros
/// after the last valid batch as the end of the records (see
/// `recovery::read_segment`).
pub struct Segment {
    file: Box<dyn WritableFile>,
    path: PathBuf,
    first_sequence: u64,
    /// Where the records end: the next batch is written here.
    size_bytes: u64,
    /// The file's length: zeros from `size_bytes` up to it.
    file_bytes: u64,
    /// How far ahead of the records the file is extended; 0 for never.
    preallocate_bytes: u64,
    /// Set when extending this segment failed for lack of room: it goes on
    /// without preallocation (the next segment tries again).
    preallocation_failed: bool,
    /// The checksum seed of its frames, from its salt.
    seed: u32,
}

/// Whether `error` says there is no room for more bytes: the disk is full,
/// a quota is reached, or the process's file size limit.
fn is_out_of_room(error: &std::io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT | libc::EFBIG))
}

/// A block of zeros to extend segments with, written in pieces of this size
/// so that preallocating never needs a buffer as large as the extension.
static ZEROS: [u8; 64 << 10] = [0; 64 << 10];

impl Segment {
    /// Creates a new, empty segment whose first record will be `first_sequence`,
    /// durable (file, preallocated zeros and directory entry) before it is
    /// used. A segment that cannot be completed is removed again, so no
    /// partial file is left.
    pub fn create(
        data_dir: &DataDir,
        first_sequence: u64,
        preallocate_bytes: u64,
    ) -> std::io::Result<Self> {
        let path = data_dir.journal_path(first_sequence);
        let file = data_dir.fs().create_new(&path)?;
        let salt = data_dir.fs().new_salt();
        let mut header = files::encode_header(
            files::JOURNAL_MAGIC,
            files::JOURNAL_FORMAT_VERSION,
            first_sequence,
        )
        .to_vec();
        header.extend_from_slice(&files::encode_journal_salt(salt));
        let mut segment = Self {
            file,
            path,
            first_sequence,
            size_bytes: 0,
            file_bytes: 0,
            preallocate_bytes,
            preallocation_failed: false,
            seed: files::frame_seed(salt),
        };
        let written = segment
            .write_unsynced(&header)
            .and_then(|()| segment.file.sync())
            .and_then(|()| data_dir.sync());
        if let Err(error) = written {
            let path = segment.path;
            drop(segment.file);
            if let Err(remove_error) = data_dir.fs().remove_file(&path) {
                tracing::warn!(path = %path.display(), %remove_error, "cannot remove a partial journal segment; start-up will");
            }
            return Err(error);
        }
        debug_assert_eq!(segment.size_bytes, files::JOURNAL_HEADER_BYTES as u64);
        Ok(segment)
    }

    /// Opens an existing segment, already checked, to append after its last
    /// record: its records end at `size_bytes`, and the file, `file_bytes`
    /// long, holds only zeros after them. `seed` is its frames' checksum seed.
    pub fn open_existing(
        data_dir: &DataDir,
        location: (PathBuf, u64),
        size_bytes: u64,
        file_bytes: u64,
        preallocate_bytes: u64,
        seed: u32,
    ) -> std::io::Result<Self> {
        let (path, first_sequence) = location;
        assert!(size_bytes <= file_bytes, "records cannot end past the file");
        let file = data_dir.fs().open_append(&path)?;
        Ok(Self {
            file,
            path,
            first_sequence,
            size_bytes,
            file_bytes,
            preallocate_bytes,
            preallocation_failed: false,
            seed,
        })
    }

    fn write(&mut self, bytes: &[u8], fsync: FsyncPolicy) -> std::io::Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        self.write_unsynced(bytes)?;
        if fsync == FsyncPolicy::Always {
            self.sync()?;
        }
        metrics::counter!("points_journal_bytes_total").increment(bytes.len() as u64);
        metrics::gauge!("points_journal_segment_bytes").set(self.size_bytes as f64);
        Ok(())
    }

    /// Writes `bytes` after the records, first extending the file with zeros
    /// if they would not fit in it (and preallocation is on).
    ///
    /// Preallocation only makes syncs cheaper, so running out of room for
    /// it (a disk, quota or file size limit nearly reached) is no reason to
    /// refuse records that still fit: this segment goes on without it, and
    /// the next one tries again. Any other error fails the journal, as a
    /// failed record write would.
    fn write_unsynced(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let end = self.size_bytes + bytes.len() as u64;
        // The records before the zeros, so that a failed call never leaves
        // a new segment without its header (a crash may still keep the
        // zeros and not the header, before the sync: that file is all
        // zeros, and reads as a segment whose header was never written).
        self.file.write_at(self.size_bytes, bytes)?;
        self.size_bytes = end;
        self.file_bytes = self.file_bytes.max(end);
        if end == self.file_bytes && self.preallocate_bytes > 0 && !self.preallocation_failed {
            let target = (end / self.preallocate_bytes + 1) * self.preallocate_bytes;
            match self.extend_with_zeros(target) {
                Ok(()) => {}
                Err(error) if is_out_of_room(&error) => {
                    tracing::warn!(
                        path = %self.path.display(),
                        %error,
                        "cannot preallocate the journal segment (is the disk nearly full?); \
                         writing it without preallocation, so each commit also syncs its size"
                    );
                    self.preallocation_failed = true;
                }
                Err(error) => return Err(error),
            }
        }
        debug_assert!(self.size_bytes <= self.file_bytes);
        Ok(())
    }

    /// Extends the file, which ends with the records, with zeros to
    /// `target_bytes`. On failure, `file_bytes` covers the pieces written;
    /// whatever a failed piece left past it is zeros too, so reading still
    /// finds the records' end.
    fn extend_with_zeros(&mut self, target_bytes: u64) -> std::io::Result<()> {
        debug_assert_eq!(self.file_bytes, self.size_bytes);
        let mut offset = self.file_bytes;
        // Each turn writes at least one byte, so this ends within
        // `preallocate_bytes` bytes.
        while offset < target_bytes {
            let length = (target_bytes - offset).min(ZEROS.len() as u64);
            self.file.write_at(offset, &ZEROS[..length as usize])?;
            offset += length;
            self.file_bytes = self.file_bytes.max(offset);
        }
        Ok(())
    }

    fn sync(&mut self) -> std::io::Result<()> {
        let started = std::time::Instant::now();
        self.file.sync()?;
        metrics::histogram!("points_journal_fsync_seconds").record(started.elapsed().as_secs_f64());
        Ok(())
    }
}

/// Frames the first records of `records` (length-prefixed by
/// [`encode_record`], `count` of them, the first with sequence
/// `first_sequence`) as one batch appended to `out`, taking as many as fit
/// under the frame size limit (at least one, or none for an empty batch when
/// `count` is 0). Returns how many records and bytes of `records` it took.
///
/// `synced_through` is the highest sequence fsynced before this batch is
/// written: reading uses it to tell damage (an invalid batch that a later
/// batch says was synced) from the unsynced end of a journal written under
/// `--fsync never`, whose batches may reach the disk in any order. `seed` is
/// the segment's checksum seed.
pub fn encode_batch(
    records: &[u8],
    count: usize,
    first_sequence: u64,
    synced_through: u64,
    seed: u32,
    out: &mut Vec<u8>,
) -> (usize, usize) {
    let (mut length, mut taken) = (0, 0);
    // Each turn takes one record, so this ends within `count` turns.
    while taken < count {
        let record = RECORD_LENGTH_BYTES + record_length(&records[length..]);
        if taken > 0 && BATCH_HEADER_BYTES + length + record > MAX_PAYLOAD_BYTES {
            break;
        }
        length += record;
        taken += 1;
    }
    let start = out.len();
    out.resize(start + FRAME_HEADER_BYTES, 0);
    out.extend_from_slice(&first_sequence.to_le_bytes());
    out.extend_from_slice(&(taken as u32).to_le_bytes());
    out.extend_from_slice(&synced_through.to_le_bytes());
    out.extend_from_slice(&records[..length]);
    frame::seal(out, start, seed);
    (taken, length)
}

/// Frames all `count` records of `records` as batches, each marked as
/// written after everything before it was synced: for tools that write a
/// whole journal segment offline and sync it.
pub fn encode_batches(
    records: &[u8],
    count: usize,
    first_sequence: u64,
    seed: u32,
    out: &mut Vec<u8>,
) {
    let (mut rest, mut left, mut sequence) = (records, count, first_sequence);
    // Each turn takes at least one record, so this ends within `count` turns.
    while left > 0 {
        let (taken, bytes) = encode_batch(rest, left, sequence, sequence - 1, seed, out);
        (rest, left, sequence) = (&rest[bytes..], left - taken, sequence + taken as u64);
    }
    assert!(rest.is_empty(), "the record count must match the records");
}

/// The length of the record at the start of `bytes`, which this process
/// encoded itself.
fn record_length(bytes: &[u8]) -> usize {
    u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize
}

/// One batch as read back.
#[derive(Debug)]
pub struct Batch<'data> {
    /// The sequence of its first record.
    pub first_sequence: u64,
    /// The highest sequence fsynced before it was written.
    pub synced_through: u64,
    /// Its records, encoded.
    pub records: Vec<&'data [u8]>,
}

/// Reads one batch frame's payload.
pub fn decode_batch(payload: &[u8]) -> Result<Batch<'_>, String> {
    let Some(header) = payload.get(..BATCH_HEADER_BYTES) else {
        return Err("a journal batch shorter than its header".to_owned());
    };
    let first_sequence = u64::from_le_bytes(header[0..8].try_into().expect("8 bytes"));
    let count = u32::from_le_bytes(header[8..12].try_into().expect("4 bytes")) as usize;
    let synced_through = u64::from_le_bytes(header[12..20].try_into().expect("8 bytes"));
    let mut records = Vec::with_capacity(count.min(payload.len() / RECORD_LENGTH_BYTES));
    let mut rest = &payload[BATCH_HEADER_BYTES..];
    // Each turn consumes at least the length bytes, so this ends.
    while !rest.is_empty() {
        let Some(length) = rest.get(..RECORD_LENGTH_BYTES) else {
            return Err("a journal batch ends inside a record length".to_owned());
        };
        let length = u32::from_le_bytes([length[0], length[1], length[2], length[3]]) as usize;
        let Some(record) = rest.get(RECORD_LENGTH_BYTES..RECORD_LENGTH_BYTES + length) else {
            return Err("a journal batch ends inside a record".to_owned());
        };
        records.push(record);
        rest = &rest[RECORD_LENGTH_BYTES + length..];
    }
    // The batch's own checksum passed, so anything odd inside is damage.
    if records.len() != count {
        return Err(format!(
            "a journal batch announces {count} records but holds {}",
            records.len()
        ));
    }
    Ok(Batch { first_sequence, synced_through, records })
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
    /// How many of the pending records go to the old segment: those appended
    /// before the request; later ones start the new segment.
    at_record: usize,
    /// Where in the pending bytes those records end.
    at_byte: usize,
    /// The last sequence of the old segment.
    after_sequence: u64,
    /// Told when the new segment is in place.
    done: mpsc::Sender<Result<(), String>>,
}

/// Told once its record is durable, or that the journal failed.
pub type DurableReceipt = oneshot::Receiver<Result<(), JournalFailed>>;

struct Pending {
    /// Record frames appended but not yet taken by the writer.
    bytes: Vec<u8>,
    /// One notification per record in `bytes`, in the same order, so that
    /// each caller is woken exactly once, when its own batch is durable.
    waiters: Vec<oneshot::Sender<Result<(), JournalFailed>>>,
    /// The sequence of the last record appended.
    last_sequence: u64,
    /// Bytes appended and not yet durable: those in `bytes` and those the
    /// writer is writing now.
    backlog_bytes: u64,
    /// Set by a snapshot: switch segments at a point in `bytes`.
    rotation: Option<Rotation>,
    /// Set by a snapshot under `--fsync never`: fsync up to this sequence.
    sync_through: u64,
    closing: bool,
    /// The writer has stopped; records appended now can never be written.
    writer_stopped: bool,
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
const BATCH_BUFFER_KEEP_BYTES: usize = 1 << 20;

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
            .spawn(move || writer.run())?;
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
    pub fn append(&self, record: &JournalRecord) -> (u64, DurableReceipt) {
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

struct Writer {
    shared: Arc<Shared>,
    segment: Segment,
    fsync: FsyncPolicy,
    /// What was last published.
    horizon: Horizon,
    publisher: watch::Sender<Published>,
    data_dir: Arc<DataDir>,
    snapshots: Option<SnapshotTrigger>,
    /// Segment size at the last snapshot request, so that a failed snapshot
    /// is retried after another threshold of growth rather than on every write.
    last_request_size: Option<u64>,
}

/// One turn's work, taken from [`Pending`] under its lock.
struct Turn {
    last_sequence: u64,
    rotation: Option<Rotation>,
    sync_through: u64,
    closing: bool,
}

impl Writer {
    fn run(mut self) {
        let mut batch: Vec<u8> = Vec::new();
        let mut framed: Vec<u8> = Vec::new();
        let mut waiters = Vec::new();
        self.maybe_request_snapshot();
        loop {
            let turn = {
                let mut pending = self.shared.lock();
                while pending.bytes.is_empty()
                    && pending.rotation.is_none()
                    && pending.sync_through <= self.horizon.synced
                    && !pending.closing
                {
                    pending = self
                        .shared
                        .wake_writer
                        .wait(pending)
                        .unwrap_or_else(|poisoned| poisoned.into_inner());
                }
                std::mem::swap(&mut pending.bytes, &mut batch);
                std::mem::swap(&mut pending.waiters, &mut waiters);
                Turn {
                    last_sequence: pending.last_sequence,
                    rotation: pending.rotation.take(),
                    sync_through: pending.sync_through,
                    closing: pending.closing,
                }
            };
            debug_assert_eq!(turn.last_sequence - self.horizon.durable, waiters.len() as u64);
            let written = self.write_turn(&batch, waiters.len(), &turn, &mut framed);
            if let Err(reason) = written {
                let failure = self.fail(reason);
                for waiter in waiters.drain(..) {
                    let _ = waiter.send(Err(failure.clone()));
                }
                return;
            }
            let batch_bytes = batch.len() as u64;
            batch.clear();
            batch.shrink_to(BATCH_BUFFER_KEEP_BYTES);
            framed.clear();
            framed.shrink_to(BATCH_BUFFER_KEEP_BYTES);
            self.shared.lock().backlog_bytes -= batch_bytes;
            self.publisher.send_replace(Published::Healthy(self.horizon));
            // A caller that gave up waiting has dropped its receiver: fine.
            for waiter in waiters.drain(..) {
                let _ = waiter.send(Ok(()));
            }

            self.maybe_request_snapshot();
            if turn.closing && self.shared.lock().bytes.is_empty() {
                self.stop();
                return;
            }
        }
    }

    /// Writes one turn's records (across a segment switch if a rotation was
    /// asked for) and syncs as the policy and any sync request demand.
    fn write_turn(
        &mut self,
        batch: &[u8],
        count: usize,
        turn: &Turn,
        framed: &mut Vec<u8>,
    ) -> Result<(), String> {
        let first_sequence = self.horizon.durable + 1;
        let last_sequence = self.horizon.durable + count as u64;
        match &turn.rotation {
            None => self.write_records(batch, count, first_sequence, framed)?,
            Some(rotation) => {
                let (old, new) = batch.split_at(rotation.at_byte);
                let switched = self
                    .write_records(old, rotation.at_record, first_sequence, framed)
                    .and_then(|()| self.rotate(rotation.after_sequence + 1));
                // The snapshot waits for this answer either way.
                let _ = rotation.done.send(switched.clone());
                switched?;
                framed.clear();
                let new_first = rotation.after_sequence + 1;
                self.write_records(new, count - rotation.at_record, new_first, framed)?;
            }
        }
        self.horizon.durable = last_sequence;
        if self.fsync == FsyncPolicy::Never
            && (turn.sync_through > self.horizon.synced || turn.closing)
        {
            self.segment.sync().map_err(|error| self.write_failure(&error))?;
            self.horizon.synced = last_sequence;
            // An empty batch that says so, synced too: were a synced batch
            // later damaged, reading must not take it for the unsynced end.
            framed.clear();
            encode_batch(&[], 0, last_sequence + 1, last_sequence, self.segment.seed, framed);
            self.segment
                .write(framed, FsyncPolicy::Always)
                .map_err(|error| self.write_failure(&error))?;
        }
        debug_assert!(self.horizon.synced <= self.horizon.durable);
        Ok(())
    }

    /// Writes `count` records, the first with sequence `first_sequence`, as
    /// batches. Under `--fsync always` each batch is synced before the next
    /// is written, and says so, so that an invalid batch followed by a valid
    /// one is always recognised as damage.
    fn write_records(
        &mut self,
        records: &[u8],
        count: usize,
        first_sequence: u64,
        framed: &mut Vec<u8>,
    ) -> Result<(), String> {
        let (mut rest, mut left, mut sequence) = (records, count, first_sequence);
        // Each turn writes at least one record, so this ends within `count` turns.
        while left > 0 {
            framed.clear();
            let synced = self.horizon.synced;
            let (taken, bytes) =
                encode_batch(rest, left, sequence, synced, self.segment.seed, framed);
            self.segment.write(framed, self.fsync).map_err(|error| self.write_failure(&error))?;
            (rest, left, sequence) = (&rest[bytes..], left - taken, sequence + taken as u64);
            if self.fsync == FsyncPolicy::Always {
                self.horizon.synced = sequence - 1;
            }
        }
        Ok(())
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
            .sync()
            .map_err(|error| format!("cannot sync {}: {error}", self.segment.path.display()))?;
        self.horizon.synced = first_sequence - 1;
        let preallocate_bytes = self.segment.preallocate_bytes;
        self.segment = Segment::create(&self.data_dir, first_sequence, preallocate_bytes)
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

    /// Stops after a clean close: everything written is synced; a rotation
    /// asked for meanwhile is told no, and records appended after the last
    /// turn (none, once closing is seen) are told the journal is closed.
    fn stop(&mut self) {
        let leftovers = {
            let mut pending = self.shared.lock();
            pending.writer_stopped = true;
            if let Some(rotation) = pending.rotation.take() {
                let _ = rotation.done.send(Err("the journal closed".to_owned()));
            }
            std::mem::take(&mut pending.waiters)
        };
        for waiter in leftovers {
            let _ = waiter.send(Err(JournalFailed("the journal is closed".into())));
        }
    }

    /// Fails the journal for good; callers still waiting, and a snapshot
    /// waiting for its rotation, are told so.
    fn fail(&self, reason: String) -> JournalFailed {
        tracing::error!(%reason, "journal failed: refusing all further changes (fail-stop)");
        let reason: Arc<str> = reason.into();
        let (waiting, rotation) = {
            let mut pending = self.shared.lock();
            pending.failure = Some(Arc::clone(&reason));
            pending.writer_stopped = true;
            (std::mem::take(&mut pending.waiters), pending.rotation.take())
        };
        if let Some(rotation) = rotation {
            let _ = rotation.done.send(Err(reason.to_string()));
        }
        for waiter in waiting {
            let _ = waiter.send(Err(JournalFailed(Arc::clone(&reason))));
        }
        self.publisher.send_replace(Published::Failed(Arc::clone(&reason)));
        JournalFailed(reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn record_frames(payloads: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for payload in payloads {
            out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            out.extend_from_slice(payload);
        }
        out
    }

    /// A file in memory that takes bytes only below `limit_bytes`: a write
    /// past it writes what fits, then fails with the OS error `error`, as a
    /// real `write` at a full disk does.
    struct LimitedFile {
        data: std::sync::Arc<Mutex<Vec<u8>>>,
        limit_bytes: usize,
        error: i32,
    }

    impl WritableFile for LimitedFile {
        fn append(&mut self, bytes: &[u8]) -> std::io::Result<()> {
            let length = self.data.lock().expect("not poisoned").len();
            self.write_at(length as u64, bytes)
        }

        fn write_at(&mut self, offset: u64, bytes: &[u8]) -> std::io::Result<()> {
            let mut data = self.data.lock().expect("not poisoned");
            let offset = offset as usize;
            let fits = self.limit_bytes.saturating_sub(offset).min(bytes.len());
            if data.len() < offset + fits {
                data.resize(offset + fits, 0);
            }
            data[offset..offset + fits].copy_from_slice(&bytes[..fits]);
            if fits < bytes.len() {
                return Err(std::io::Error::from_raw_os_error(self.error));
            }
            Ok(())
        }

        fn sync(&mut self) -> std::io::Result<()> {
            Ok(())
        }

        fn truncate(&mut self, length_bytes: u64) -> std::io::Result<()> {
            self.data.lock().expect("not poisoned").resize(length_bytes as usize, 0);
            Ok(())
        }
    }

    /// A segment over a [`LimitedFile`], and the file's bytes.
    fn limited_segment(
        limit_bytes: usize,
        error: i32,
        preallocate_bytes: u64,
    ) -> (Segment, std::sync::Arc<Mutex<Vec<u8>>>) {
        let data = std::sync::Arc::default();
        let file = LimitedFile { data: std::sync::Arc::clone(&data), limit_bytes, error };
        let segment = Segment {
            file: Box::new(file),
            path: PathBuf::from("journal-test.log"),
            first_sequence: 1,
            size_bytes: 0,
            file_bytes: 0,
            preallocate_bytes,
            preallocation_failed: false,
            seed: 0,
        };
        (segment, data)
    }

    /// The file grows by whole preallocation steps, written as zeros in
    /// several pieces, and records go over the zeros right after each other.
    #[test]
    fn a_preallocated_segment_grows_in_steps_of_zeros_after_its_records() {
        let (mut segment, data) = limited_segment(usize::MAX, libc::ENOSPC, 200_000);
        segment.write_unsynced(&[7; 100]).expect("room");
        assert_eq!((segment.size_bytes, segment.file_bytes), (100, 200_000));
        {
            let data = data.lock().expect("not poisoned");
            assert_eq!(data.len(), 200_000);
            assert!(data[..100].iter().all(|&byte| byte == 7));
            assert!(data[100..].iter().all(|&byte| byte == 0));
        }
        segment.write_unsynced(&[8; 1_000]).expect("room");
        assert_eq!((segment.size_bytes, segment.file_bytes), (1_100, 200_000), "within the zeros");
        segment.write_unsynced(&[9; 199_000]).expect("room");
        assert_eq!((segment.size_bytes, segment.file_bytes), (200_100, 400_000));
        let data = data.lock().expect("not poisoned");
        assert_eq!(data.len(), 400_000);
        assert!(data[1_100..200_100].iter().all(|&byte| byte == 9));
        assert!(data[200_100..].iter().all(|&byte| byte == 0));
    }

    /// Out of room for the zeros (ENOSPC, EDQUOT or EFBIG), the segment
    /// keeps the pieces it wrote and takes the records that still fit,
    /// without trying to preallocate again.
    #[test]
    fn a_segment_out_of_room_for_its_zeros_keeps_taking_the_records_that_fit() {
        for error in [libc::ENOSPC, libc::EDQUOT, libc::EFBIG] {
            let (mut segment, data) = limited_segment(150_000, error, 1 << 20);
            segment.write_unsynced(&[7; 100]).expect("the records fit");
            assert!(segment.preallocation_failed);
            // Two whole 64 KiB pieces landed after the records; the third in part.
            let whole_pieces = 100 + 2 * ZEROS.len() as u64;
            assert_eq!((segment.size_bytes, segment.file_bytes), (100, whole_pieces));
            assert_eq!(data.lock().expect("not poisoned").len(), 150_000);
            segment.write_unsynced(&[8; 149_000]).expect("the records fit");
            assert_eq!(segment.size_bytes, 149_100);
            assert_eq!(data.lock().expect("not poisoned").len(), 150_000, "no zeros tried");
            let refused = segment.write_unsynced(&[9; 1_000]).expect_err("past the limit");
            assert_eq!(refused.raw_os_error(), Some(error));
        }
    }

    /// Any other error while writing the zeros fails the write, as a failed
    /// record write does: the journal fails stop.
    #[test]
    fn an_io_error_while_preallocating_fails_the_write() {
        let (mut segment, _data) = limited_segment(1_000, libc::EIO, 1 << 20);
        let failed = segment.write_unsynced(&[7; 100]).expect_err("EIO is not a full disk");
        assert_eq!(failed.raw_os_error(), Some(libc::EIO));
    }

    /// Batches read back as the records they were made of, with their sequence.
    #[test]
    fn batches_round_trip_with_their_first_sequence() {
        let records = record_frames(&[b"one", b"", b"three"]);
        let mut out = Vec::new();
        encode_batches(&records, 3, 41, 9, &mut out);
        let mut seen = Vec::new();
        let ending = frame::scan(&out, 0, 9, |_, payload| {
            let batch = decode_batch(payload)?;
            assert_eq!(batch.synced_through, 40);
            let records = batch.records.iter().map(|record| record.to_vec()).collect::<Vec<_>>();
            seen.push((batch.first_sequence, records));
            Ok(())
        });
        assert_eq!(ending, Ok(frame::Ending::Clean));
        assert_eq!(seen, vec![(41, vec![b"one".to_vec(), vec![], b"three".to_vec()])]);
    }

    /// Records past the frame size limit are split into several batches,
    /// each numbered from its own first record.
    #[test]
    fn large_batches_split_at_record_boundaries() {
        let big = vec![7u8; MAX_PAYLOAD_BYTES / 2];
        let records = record_frames(&[&big, &big, b"small"]);
        let mut out = Vec::new();
        encode_batches(&records, 3, 1, 0, &mut out);
        let mut firsts = Vec::new();
        frame::scan(&out, 0, 0, |_, payload| {
            let batch = decode_batch(payload)?;
            firsts.push((batch.first_sequence, batch.records.len()));
            Ok(())
        })
        .expect("valid batches");
        assert_eq!(firsts, vec![(1, 1), (2, 2)]);
    }

    /// A batch whose record count disagrees with its records is refused.
    #[test]
    fn batch_with_a_wrong_record_count_is_refused() {
        let mut payload = Vec::new();
        payload.extend_from_slice(&1u64.to_le_bytes());
        payload.extend_from_slice(&2u32.to_le_bytes());
        payload.extend_from_slice(&0u64.to_le_bytes());
        payload.extend_from_slice(&record_frames(&[b"only one"]));
        assert!(decode_batch(&payload).is_err());
        let record = JournalRecord::default().encode_to_vec();
        assert!(record.is_empty() || decode_batch(&record).is_err());
    }
}
