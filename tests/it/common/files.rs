//! The files of a data directory, read and copied by tests: journal
//! segments and the frames in them, snapshots, whole-directory copies, and
//! the ledger a journal replays to.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use points::ledger::Ledger;
use points::testing::{read_journal, replay};

use super::wait::eventually;

/// Bytes of a file header, the shortest a journal segment's header is.
pub const FILE_HEADER_BYTES: usize = 24;
/// Bytes of a frame header: payload length (u32 LE), CRC32C of the length
/// bytes, CRC32C of the payload.
pub const FRAME_HEADER_BYTES: usize = 12;

/// The paths in `directory` whose names end with `suffix`, sorted.
pub fn paths_ending(directory: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(directory)
        .expect("list the directory")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| path.to_string_lossy().ends_with(suffix))
        .collect();
    paths.sort();
    paths
}

/// The journal segment files of a data directory, oldest first.
pub fn journal_files(data_dir: &Path) -> Vec<PathBuf> {
    paths_ending(data_dir, ".log")
}

/// The snapshot files of a data directory, oldest first.
pub fn snapshot_files(data_dir: &Path) -> Vec<PathBuf> {
    paths_ending(data_dir, ".snap")
}

/// Waits (at most 30 s) until a snapshot file exists: snapshots run in the
/// background, and closing the store skips one that has not started.
pub async fn wait_for_snapshot(data_dir: &Path) {
    eventually("a snapshot", Duration::from_secs(30), || async {
        (!snapshot_files(data_dir).is_empty()).then_some(())
    })
    .await;
}

/// Where the records of the journal segment `path` end: a segment's file is
/// preallocated with zeros after its records, so its length says nothing of
/// what it holds.
pub fn journal_records_bytes(path: &Path) -> usize {
    let directory = path.parent().expect("a segment's directory");
    let ends = points::testing::journal_records_bytes(directory).expect("read the journal");
    let end = ends.iter().find(|(segment, _)| segment == path).expect("the segment is listed");
    usize::try_from(end.1).expect("a segment's length fits in memory")
}

/// The records of the journal segment `path`, without the zeros after them.
pub fn journal_records(path: &Path) -> Vec<u8> {
    let mut records = std::fs::read(path).expect("read a journal segment");
    records.truncate(journal_records_bytes(path));
    records
}

/// Where each batch frame of a journal segment (its records, without the
/// zeros after them) starts. The segment's header is the 24-byte file
/// header, possibly followed by more fields (a format may add some): the
/// batches start at the first offset from which the frames' lengths lead
/// exactly to the end of the records.
pub fn frame_offsets(journal: &[u8]) -> Vec<usize> {
    let walk = |start: usize| {
        let mut offsets = Vec::new();
        let mut offset = start;
        while offset + FRAME_HEADER_BYTES <= journal.len() {
            offsets.push(offset);
            offset = frame_end(journal, offset);
        }
        (offset == journal.len() && !offsets.is_empty()).then_some(offsets)
    };
    (FILE_HEADER_BYTES..=FILE_HEADER_BYTES + 64)
        .find_map(walk)
        .expect("the journal is a header and whole frames")
}

/// Where the frame that starts at `offset` of `journal` ends.
pub fn frame_end(journal: &[u8], offset: usize) -> usize {
    let length = u32::from_le_bytes(journal[offset..offset + 4].try_into().unwrap()) as usize;
    offset + FRAME_HEADER_BYTES + length
}

/// One frame of the documented format: payload length (u32 LE), CRC32C of
/// the length bytes, CRC32C of the payload, then the payload.
pub fn frame(payload: &[u8]) -> Vec<u8> {
    let length = (payload.len() as u32).to_le_bytes();
    let mut out = Vec::with_capacity(FRAME_HEADER_BYTES + payload.len());
    out.extend_from_slice(&length);
    out.extend_from_slice(&crc32c::crc32c(&length).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// A ledger rebuilt in the test from the journal records of `data_dir` alone.
pub fn replay_journal(data_dir: &Path) -> Ledger {
    let mut ledger = Ledger::new();
    for (sequence, record) in read_journal(data_dir).expect("read the journal") {
        replay(&mut ledger, record).unwrap_or_else(|error| panic!("sequence {sequence}: {error}"));
    }
    ledger
}

/// Every file of `directory` with its bytes.
pub fn files_in(directory: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(directory)
        .expect("list the directory")
        .map(|entry| {
            let path = entry.expect("entry").path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&path).expect("read a file"))
        })
        .collect()
}

/// Copies every file of `from` into a new temporary directory.
pub fn copy_dir(from: &Path) -> tempfile::TempDir {
    let copy = tempfile::tempdir().expect("temporary directory");
    for entry in std::fs::read_dir(from).expect("list") {
        let path = entry.expect("entry").path();
        std::fs::copy(&path, copy.path().join(path.file_name().expect("a file name")))
            .expect("copy");
    }
    copy
}
