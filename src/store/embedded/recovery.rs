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
//!   preallocated room (see `wal::segment::Segment`), in any segment.
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
use super::records::JournalRecord;
use super::replay::replay;
use super::snapshot;
use super::wal::Segment;
use super::wal::read::{header_never_written, read_segment};
use super::wal::segment::SegmentEnd;
use crate::store::users::UserLedger;
use crate::store::{OpenError, Recovery};

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
    Append(SegmentEnd),
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
                UserLedger {
                    ledger: user.ledger,
                    last_sequence: user.last_sequence,
                    ..UserLedger::default()
                },
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
            Tail::Append(SegmentEnd {
                path: newest.path,
                first_sequence: newest.first_sequence,
                valid_bytes,
                file_bytes,
                seed,
            })
        }
        // A newest segment with no record (its header never written, or of
        // the old format) would have the new segment's name.
        (Some(newest), _) if newest.record_count == 0 => Tail::New { remove: Some(newest.path) },
        _ => Tail::New { remove: None },
    };
    Ok(Scan { users, last_sequence, recovery, files_read, torn, tail })
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
        Tail::Append(end) => Segment::open_existing(data_dir, end, preallocate_bytes)
            .map_err(files::io_error("open for appending", &end.path))?,
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
#[cfg(any(test, feature = "testing"))]
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
/// `store::journal_records_bytes`).
#[cfg(any(test, feature = "testing"))]
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
