//! Reading a journal segment back: its header, its batches in sequence
//! order, and where its records end (the end of the data, preallocated
//! zeros, or a torn tail, told apart from damage). Generic: records are
//! handed on as bytes with their sequence.

use std::path::Path;

use super::super::files;
use super::batch::decode_batch;
use super::frame;
use crate::store::OpenError;

/// Whether `data`, a newest segment, is shorter than its header or nothing
/// but zeros: it was being created when the machine stopped (its header is
/// synced before any record is written, so one with anything after a zeroed
/// header is damage, not this).
pub(crate) fn header_never_written(data: &[u8]) -> bool {
    let version_1 = data.get(8..12) == Some(&files::JOURNAL_FORMAT_VERSION_1.to_le_bytes()[..]);
    let header_bytes =
        if version_1 { files::FILE_HEADER_BYTES } else { files::JOURNAL_HEADER_BYTES };
    data.len() < header_bytes || data.iter().all(|&byte| byte == 0)
}

/// How a segment's records ended.
pub(crate) struct SegmentRead {
    /// The segment's format version.
    pub(crate) version: u32,
    /// How many records it holds (before any torn tail).
    pub(crate) record_count: u64,
    /// Where the records end: the end of the data, the start of a torn
    /// tail, or the start of the zeros a preallocated segment ends with.
    pub(crate) valid_bytes: usize,
    /// Where a torn tail starts, and why.
    pub(crate) torn_at: Option<(usize, &'static str)>,
    /// The checksum seed of its frames.
    pub(crate) seed: u32,
}

/// Reads the journal segment `data` (from `path`), checks its header against
/// the first sequence its name gives and every record's sequence against its
/// place, and hands each record's sequence and payload to `visit`. Also
/// decides, for a backup, how much of a segment to copy.
pub(crate) fn read_segment(
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
            let batch = decode_batch(payload)?;
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
        match decode_batch(payload) {
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
