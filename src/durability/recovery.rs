//! Recovery: rebuilds every user's ledger from a data directory, checking
//! that its files fit together, and readies the journal for appending.
//!
//! Reading (`scan`) changes nothing, so the same code verifies a backup.
//! The rules, in the order they are checked:
//! - the newest snapshot at rotation sequence R holds every record up to R
//!   (and, per user, possibly some after it);
//! - every journal record carries its sequence (version 2: each batch names
//!   its first), which must match its segment's name and run contiguously;
//! - segments must not overlap, and no sequence after R may be missing
//!   between them (segments wholly at or before R are covered by the
//!   snapshot and ignored);
//! - no user in the snapshot may be ahead of the journal's end;
//! - only the newest segment may end torn; an older one ending torn is damage.
//!   Zeros after the last valid batch are not a torn end but the segment's
//!   preallocated room (see `journal::Segment`), in any segment.
//!
//! Files that do not fit together are refused with a message naming them,
//! never silently repaired into a loss. Opening (`prepare`) then cuts a
//! torn tail, replaces a newest segment whose header never reached the disk,
//! starts a new segment unless the newest one ends exactly at the last
//! sequence, and fsyncs everything it read before the store serves, so that
//! nothing replayed is later lost to a power cut.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use prost::Message;

use super::file_system::FileSystem;
use super::files::{self, DataDir, Listing};
use super::frame;
use super::journal::{self, Segment};
use super::records::{Command, JournalRecord};
use super::snapshot;
use super::{OpenError, Recovery, UserLedger};
use crate::ledger::{Ledger, NewTransaction};

/// What reading a data directory found; nothing has been changed yet.
pub(super) struct Scan {
    /// Every user's rebuilt ledger.
    pub users: HashMap<String, UserLedger>,
    /// The last sequence the snapshot or journal holds.
    pub last_sequence: u64,
    /// What was found, for the log.
    pub recovery: Recovery,
    /// Files whose content was used: made durable before serving.
    pub files_read: Vec<PathBuf>,
    /// A torn tail to cut off the newest segment: (path, valid bytes).
    pub torn: Option<(PathBuf, u64)>,
    /// Where the journal continues.
    pub tail: Tail,
}

/// Where the journal continues after recovery.
pub(super) enum Tail {
    /// Append to the newest segment (after cutting any torn tail).
    Append {
        /// The segment.
        path: PathBuf,
        /// Its first sequence.
        first_sequence: u64,
        /// Where its records end (once a torn tail is cut).
        valid_bytes: u64,
        /// Its file's length once cut: zeros from `valid_bytes` on.
        file_bytes: u64,
        /// The checksum seed of its frames.
        seed: u32,
    },
    /// Start a new segment after the last sequence, first removing a newest
    /// segment of that name that holds no record (a header that never
    /// reached the disk, or an empty segment of the old format).
    New {
        /// The file to remove first.
        remove: Option<PathBuf>,
    },
}

/// One journal segment as read.
struct SegmentSpan {
    path: PathBuf,
    first_sequence: u64,
    /// Records it holds (after any torn tail).
    record_count: u64,
}

impl SegmentSpan {
    /// Its last sequence, or `first_sequence - 1` when it holds none.
    fn last_sequence(&self) -> u64 {
        (self.first_sequence + self.record_count).saturating_sub(1)
    }
}

/// Reads the data directory whose files are `listing` and rebuilds every
/// user's ledger; see the module documentation for the checks.
pub(super) fn scan(fs: &dyn FileSystem, listing: &Listing) -> Result<Scan, OpenError> {
    let mut recovery = Recovery::default();
    let mut users: HashMap<String, UserLedger> = HashMap::new();
    let mut files_read = Vec::new();
    let mut rotation_sequence = 0;
    let mut snapshot_path = None;
    if let Some((sequence, path)) = listing.snapshots.last() {
        recovery.snapshot_sequence = Some(*sequence);
        rotation_sequence = *sequence;
        for user in snapshot::read(fs, path, *sequence)? {
            users.insert(
                user.user_id,
                UserLedger { ledger: user.ledger, last_sequence: user.last_sequence },
            );
        }
        files_read.push(path.clone());
        snapshot_path = Some(path.clone());
    }

    let mut previous: Option<SegmentSpan> = None;
    let mut torn = None;
    // The newest segment's format version, valid length and checksum seed;
    // `None` if its header never reached the disk.
    let mut newest_version = None;
    let segment_count = listing.journals.len();
    for (index, (first_sequence, path)) in listing.journals.iter().enumerate() {
        let is_newest = index + 1 == segment_count;
        let data = fs.read(path).map_err(files::io_error("read", path))?;
        let mut span =
            SegmentSpan { path: path.clone(), first_sequence: *first_sequence, record_count: 0 };
        check_fits(previous.as_ref(), &span, rotation_sequence, snapshot_path.as_deref())?;
        if is_newest && header_never_written(&data) {
            tracing::warn!(
                path = %path.display(),
                bytes = data.len(),
                "the newest journal segment's header never reached the disk (a crash while it \
                 was created); it holds no record and will be created again"
            );
            previous = Some(span);
            break;
        }
        let read = read_segment(path, *first_sequence, &data, |sequence, payload| {
            if sequence <= rotation_sequence {
                return Ok(());
            }
            let record = JournalRecord::decode(payload).map_err(|error| error.to_string())?;
            let user = users.entry(record.user_id.clone()).or_default();
            if sequence > user.last_sequence {
                replay(&mut user.ledger, record)
                    .map_err(|reason| format!("cannot replay sequence {sequence}: {reason}"))?;
                user.last_sequence = sequence;
                recovery.records_replayed += 1;
            }
            Ok(())
        })?;
        span.record_count = read.record_count;
        if let Some((offset, reason)) = read.torn_at {
            if !is_newest {
                return Err(OpenError::Damaged {
                    path: path.clone(),
                    offset,
                    reason: format!("{reason} in a journal segment that is not the newest"),
                });
            }
            // What was torn, without the preallocated zeros after it.
            let torn_bytes =
                data[offset..].iter().rposition(|&byte| byte != 0).map_or(0, |last| last + 1);
            tracing::warn!(
                path = %path.display(),
                offset,
                bytes_cut = torn_bytes,
                reason,
                "the journal ends in a torn batch (a write cut short by a crash or power cut); \
                 cutting it off: none of it was acknowledged"
            );
            recovery.torn_bytes_cut = torn_bytes as u64;
            torn = Some((path.clone(), offset as u64));
        }
        if span.last_sequence() > rotation_sequence || is_newest {
            files_read.push(path.clone());
        }
        if is_newest {
            // A torn tail is cut off, zeros and all; preallocated zeros stay.
            let file_bytes = if read.torn_at.is_some() { read.valid_bytes } else { data.len() };
            newest_version =
                Some((read.version, read.valid_bytes as u64, file_bytes as u64, read.seed));
        }
        previous = Some(span);
    }

    let last_sequence =
        finish(&users, rotation_sequence, previous.as_ref(), snapshot_path.as_deref())?;
    let tail = match (previous, newest_version) {
        // Appending needs a segment of the current format that ends exactly
        // at the last sequence (a snapshot may be ahead of it).
        (Some(newest), Some((version, valid_bytes, file_bytes, seed)))
            if version == files::JOURNAL_FORMAT_VERSION
                && newest.last_sequence() == last_sequence =>
        {
            Tail::Append {
                path: newest.path,
                first_sequence: newest.first_sequence,
                valid_bytes,
                file_bytes,
                seed,
            }
        }
        // A newest segment with no record (its header never written, or of
        // the old format) would have the new segment's name.
        (Some(newest), _) if newest.record_count == 0 => Tail::New { remove: Some(newest.path) },
        _ => Tail::New { remove: None },
    };
    Ok(Scan { users, last_sequence, recovery, files_read, torn, tail })
}

/// Whether `data`, a newest segment, is shorter than its header or nothing
/// but zeros: it was being created when the machine stopped (its header is
/// synced before any record is written, so one with anything after a zeroed
/// header is damage, not this).
pub(super) fn header_never_written(data: &[u8]) -> bool {
    let version_1 = data.get(8..12) == Some(&files::JOURNAL_FORMAT_VERSION_1.to_le_bytes()[..]);
    let header_bytes =
        if version_1 { files::FILE_HEADER_BYTES } else { files::JOURNAL_HEADER_BYTES };
    data.len() < header_bytes || data.iter().all(|&byte| byte == 0)
}

/// Checks that `segment` continues `previous` with no overlap, and with no
/// gap in the sequences after the snapshot's `rotation_sequence`.
fn check_fits(
    previous: Option<&SegmentSpan>,
    segment: &SegmentSpan,
    rotation_sequence: u64,
    snapshot: Option<&Path>,
) -> Result<(), OpenError> {
    let first = segment.first_sequence;
    let expected = match previous {
        Some(previous) => {
            if first <= previous.last_sequence() {
                return Err(OpenError::Inconsistent {
                    path: segment.path.clone(),
                    reason: format!(
                        "this journal segment starts at sequence {first}, but {} already holds \
                         sequences up to {}: the two files come from different copies of the \
                         data directory. Restore the whole directory from one backup",
                        previous.path.display(),
                        previous.last_sequence()
                    ),
                });
            }
            previous.last_sequence() + 1
        }
        None => 1,
    };
    if first > expected.max(rotation_sequence.saturating_add(1)) {
        let after = match snapshot {
            Some(snapshot) if expected <= rotation_sequence.saturating_add(1) => {
                format!("snapshot {} ends at sequence {rotation_sequence}", snapshot.display())
            }
            _ => match previous {
                Some(previous) => {
                    format!("{} ends at sequence {}", previous.path.display(), expected - 1)
                }
                None => "no snapshot or earlier segment holds them".to_owned(),
            },
        };
        return Err(OpenError::Inconsistent {
            path: segment.path.clone(),
            reason: format!(
                "this journal segment starts at sequence {first}, but {after}: sequences {}..{} \
                 are missing (a journal segment or snapshot was removed or not copied). Restore \
                 the missing file, or the whole directory from one backup",
                expected.max(rotation_sequence.saturating_add(1)),
                first - 1
            ),
        });
    }
    Ok(())
}

/// The last sequence recovered, after checking that no user in the snapshot
/// is ahead of the journal.
fn finish(
    users: &HashMap<String, UserLedger>,
    rotation_sequence: u64,
    newest: Option<&SegmentSpan>,
    snapshot: Option<&Path>,
) -> Result<u64, OpenError> {
    let journal_end = newest.map_or(0, SegmentSpan::last_sequence);
    let last_sequence = rotation_sequence.max(journal_end);
    for (user_id, user) in users {
        if user.last_sequence > last_sequence {
            return Err(OpenError::Inconsistent {
                path: snapshot.map_or_else(PathBuf::new, Path::to_owned),
                reason: format!(
                    "user {user_id:?} in this snapshot includes journal sequence {}, but the \
                     journal ends at {last_sequence}: the journal segment that follows the \
                     snapshot (journal-{:020}.log) is missing or was copied before the \
                     snapshot. Copy it too, or make backups with `points-server backup`",
                    user.last_sequence,
                    rotation_sequence.saturating_add(1)
                ),
            });
        }
        if cfg!(debug_assertions) {
            user.ledger.check_invariants().map_err(|reason| OpenError::Inconsistent {
                path: snapshot.map_or_else(PathBuf::new, Path::to_owned),
                reason: format!("user {user_id:?} breaks an invariant after recovery: {reason}"),
            })?;
        }
    }
    Ok(last_sequence)
}

/// How a segment's records ended.
pub(super) struct SegmentRead {
    version: u32,
    record_count: u64,
    /// Where the records end: the end of the data, the start of a torn
    /// tail, or the start of the zeros a preallocated segment ends with.
    pub(super) valid_bytes: usize,
    /// Where a torn tail starts, and why.
    pub(super) torn_at: Option<(usize, &'static str)>,
    /// The checksum seed of its frames.
    seed: u32,
}

/// Reads the journal segment `data` (from `path`), checks its header against
/// the first sequence its name gives and every record's sequence against its
/// place, and hands each record's sequence and payload to `visit`. Also
/// decides, for a backup, how much of a segment to copy.
pub(super) fn read_segment(
    path: &Path,
    first_sequence: u64,
    data: &[u8],
    mut visit: impl FnMut(u64, &[u8]) -> Result<(), String>,
) -> Result<SegmentRead, OpenError> {
    let versions = [files::JOURNAL_FORMAT_VERSION, files::JOURNAL_FORMAT_VERSION_1];
    let header = files::decode_header(path, data, files::JOURNAL_MAGIC, &versions)?;
    if header.base_sequence != first_sequence {
        return Err(OpenError::Damaged {
            path: path.to_owned(),
            offset: 0,
            reason: format!(
                "header says sequence {}, the name says {first_sequence}",
                header.base_sequence
            ),
        });
    }
    let damaged = |damage: frame::Damage| OpenError::Damaged {
        path: path.to_owned(),
        offset: damage.offset,
        reason: damage.reason,
    };
    if first_sequence == 0 {
        return Err(OpenError::Inconsistent {
            path: path.to_owned(),
            reason: "journal sequences start at 1; this file is not one this server wrote"
                .to_owned(),
        });
    }
    let mut next = first_sequence;
    let advance = |next: &mut u64| {
        *next = next.checked_add(1).ok_or("journal sequences overflow")?;
        Ok::<(), String>(())
    };
    if header.version == files::JOURNAL_FORMAT_VERSION_1 {
        let ending = frame::scan(data, files::FILE_HEADER_BYTES, frame::UNSALTED, |_, payload| {
            visit(next, payload)?;
            advance(&mut next)
        })
        .map_err(damaged)?;
        let torn_at = match ending {
            frame::Ending::Clean => None,
            frame::Ending::Torn { offset, reason } => Some((offset, reason)),
        };
        return Ok(SegmentRead {
            version: header.version,
            record_count: next - first_sequence,
            valid_bytes: torn_at.map_or(data.len(), |(offset, _)| offset),
            torn_at,
            seed: frame::UNSALTED,
        });
    }
    let seed = files::frame_seed(files::decode_journal_salt(path, data)?);
    let invalid =
        frame::scan_until_invalid(data, files::JOURNAL_HEADER_BYTES, seed, |_, payload| {
            let batch = journal::decode_batch(payload)?;
            if batch.first_sequence != next {
                return Err(format!(
                    "a batch starts at sequence {} where sequence {next} belongs",
                    batch.first_sequence
                ));
            }
            for record in batch.records {
                visit(next, record)?;
                advance(&mut next)?;
            }
            Ok(())
        })
        .map_err(damaged)?;
    let (valid_bytes, torn_at) = match invalid {
        None => (data.len(), None),
        // Preallocated room (segments are written over zeros), or a batch
        // none of whose sectors reached the disk: the records end here.
        Some((offset, _)) if data[offset..].iter().all(|&byte| byte == 0) => (offset, None),
        Some((offset, reason)) => {
            check_unsynced_end(data, offset, next, seed).map_err(damaged)?;
            (offset, Some((offset, reason)))
        }
    };
    let record_count = next - first_sequence;
    Ok(SegmentRead { version: header.version, record_count, valid_bytes, torn_at, seed })
}

/// Decides whether the invalid batch at `offset`, where sequence `next`
/// belongs, is the unsynced end of the journal (Ok) or damage. It is damage
/// if any valid batch after it says that sequence `next` had been fsynced
/// before it was written: synced data cannot tear. Under `--fsync always`
/// every batch is written after the one before it was synced, so any valid
/// batch after an invalid one means damage; under `--fsync never`, unsynced
/// batches may reach the disk in any order after a power cut, and the valid
/// ones after a hole were never synced, so they end the journal too.
fn check_unsynced_end(
    data: &[u8],
    offset: usize,
    next: u64,
    seed: u32,
) -> Result<(), frame::Damage> {
    let mut unsynced_after = 0;
    for (at, payload) in frame::valid_frames_after(data, offset, seed) {
        match journal::decode_batch(payload) {
            Ok(batch) if batch.synced_through < next => unsynced_after += 1,
            Ok(batch) => {
                return Err(frame::Damage {
                    offset,
                    reason: format!(
                        "an invalid batch where sequence {next} belongs, but the valid batch at \
                         byte offset {at} was written after sequences up to {} were synced",
                        batch.synced_through
                    ),
                });
            }
            Err(reason) => {
                return Err(frame::Damage {
                    offset,
                    reason: format!("an invalid batch, and at byte offset {at} {reason}"),
                });
            }
        }
    }
    if unsynced_after > 0 {
        tracing::warn!(
            offset,
            batches = unsynced_after,
            "the journal has a hole in data that was never fsynced (--fsync never and a power \
             cut): it ends at the hole, and the later unsynced batches are dropped"
        );
    }
    Ok(())
}

/// Applies what [`scan`] decided: removes leftover temporary files (done by
/// the listing), cuts a torn tail, makes every file read durable, and opens
/// or creates the segment to append to.
///
/// A segment appended to keeps its preallocated zeros; a new one, and one
/// extended later, is preallocated by `preallocate_bytes` at a time.
pub(super) fn prepare(
    data_dir: &DataDir,
    scan: &Scan,
    preallocate_bytes: u64,
) -> Result<Segment, OpenError> {
    let fs = data_dir.fs();
    // The cut is synced with the other files read, just below.
    if let Some((path, valid_bytes)) = &scan.torn {
        let mut file = fs.open_append(path).map_err(files::io_error("open", path))?;
        file.truncate(*valid_bytes).map_err(files::io_error("truncate", path))?;
    }
    // What was read may so far be only in the page cache (a crash during an
    // fsync, or files just copied in): make it durable before anything that
    // depends on it is acknowledged.
    for path in &scan.files_read {
        let mut file = fs.open_append(path).map_err(files::io_error("open", path))?;
        file.sync().map_err(files::io_error("sync", path))?;
    }
    data_dir.sync().map_err(files::io_error("sync", data_dir.path()))?;
    let segment = match &scan.tail {
        Tail::Append { path, first_sequence, valid_bytes, file_bytes, seed } => {
            Segment::open_existing(
                data_dir,
                (path.clone(), *first_sequence),
                *valid_bytes,
                *file_bytes,
                preallocate_bytes,
                *seed,
            )
            .map_err(files::io_error("open for appending", path))?
        }
        Tail::New { remove } => {
            if let Some(path) = remove {
                fs.remove_file(path).map_err(files::io_error("remove", path))?;
            }
            Segment::create(data_dir, scan.last_sequence + 1, preallocate_bytes)
                .map_err(files::io_error("create a journal segment in", data_dir.path()))?
        }
    };
    Ok(segment)
}

/// Reads every journal record in `data_dir` in sequence order, without
/// locking or changing anything (a torn tail is left in place and skipped).
/// Records already folded into a snapshot and removed are not returned. For
/// tests and offline inspection.
pub fn read_journal(
    fs: &dyn FileSystem,
    data_dir: &Path,
) -> Result<Vec<(u64, JournalRecord)>, OpenError> {
    let mut records = Vec::new();
    for (first_sequence, path) in files::list(fs, data_dir)?.journals {
        let data = fs.read(&path).map_err(files::io_error("read", &path))?;
        read_segment(&path, first_sequence, &data, |sequence, payload| {
            records.push((
                sequence,
                JournalRecord::decode(payload).map_err(|error| error.to_string())?,
            ));
            Ok(())
        })?;
    }
    Ok(records)
}

/// Where the records of each journal segment in `data_dir` end (see
/// `durability::journal_records_bytes`).
pub fn journal_records_bytes(
    fs: &dyn FileSystem,
    data_dir: &Path,
) -> Result<Vec<(PathBuf, u64)>, OpenError> {
    let mut ends = Vec::new();
    for (first_sequence, path) in files::list(fs, data_dir)?.journals {
        let data = fs.read(&path).map_err(files::io_error("read", &path))?;
        let read = read_segment(&path, first_sequence, &data, |_, _| Ok(()))?;
        ends.push((path, read.valid_bytes as u64));
    }
    Ok(ends)
}

/// Executes one journal record again. It was executed once on the same
/// state, so it must have the same outcome: the same id, or a refusal.
pub fn replay(ledger: &mut Ledger, record: JournalRecord) -> Result<(), String> {
    let request = (!record.request_id.is_empty())
        .then_some((record.request_id.as_str(), record.accepted_at_ms));
    let (outcome, recorded_id) = match record.command {
        Some(Command::AddTransaction(add)) => {
            let timestamp = add.timestamp()?;
            let result = ledger.replay_add_transaction(request, &add.payer, add.points, timestamp);
            (result.map(|transaction| transaction.id), add.transaction_id)
        }
        Some(Command::Spend(spend)) => {
            (ledger.replay_spend(request, spend.points).map(|spend| spend.id), spend.spend_id)
        }
        Some(Command::AddTransactions(batch)) => {
            let entries = batch
                .transactions
                .iter()
                .map(|add| {
                    let timestamp = add.timestamp()?;
                    Ok(NewTransaction { payer: &add.payer, points: add.points, timestamp })
                })
                .collect::<Result<Vec<_>, String>>()?;
            let recorded: Vec<u64> =
                batch.transactions.iter().map(|add| add.transaction_id).collect();
            let ids = ledger
                .add_transactions(&entries)
                .map_err(|error| format!("the ledger refused the batch: {error}"))?
                .iter()
                .map(|transaction| transaction.id)
                .collect::<Vec<_>>();
            if ids != recorded {
                return Err(format!(
                    "replay assigned ids {ids:?}, the journal recorded {recorded:?}"
                ));
            }
            return Ok(());
        }
        None => {
            return Err("a record with an unknown command (written by a newer version?)".to_owned());
        }
    };
    match (outcome, record.refused) {
        (Ok(id), false) if id == recorded_id => Ok(()),
        (Ok(id), false) => {
            Err(format!("replay assigned id {id}, the journal recorded id {recorded_id}"))
        }
        (Ok(id), true) => {
            Err(format!("the command was refused, but replay accepted it as id {id}"))
        }
        (Err(_), true) => Ok(()),
        (Err(error), false) => Err(format!("the ledger refused it: {error}")),
    }
}
