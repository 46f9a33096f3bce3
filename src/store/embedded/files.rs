//! The data directory: its lock, the names of its files, their headers, and
//! the fsyncs that make creating, renaming and removing files durable.
//!
//! Layout:
//! - `LOCK`: held with flock by the running server;
//! - `journal-<first sequence>.log`: journal segments, each a file header then
//!   one frame per accepted command, numbered from the segment's first sequence;
//! - `snapshot-<last sequence>.snap`: the whole ledger as of that sequence;
//! - `*.tmp`: a snapshot being written; removed at start-up.
//!
//! Every file operation goes through the [`FileSystem`] seam.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::file_system::{FileSystem, LockGuard};
use crate::store::OpenError;

/// Every durable file starts with a 24-byte header:
/// `magic (8) | format version (u32 LE) | base sequence (u64 LE) | CRC32C of the first 20 bytes (u32 LE)`.
pub const FILE_HEADER_BYTES: usize = 24;
/// The format version of journal segments this build writes: version 2
/// frames whole group-commit batches, each with the sequence of its first
/// record. Version 1 (one frame per record, sequences implied by position) is
/// still read.
pub const JOURNAL_FORMAT_VERSION: u32 = 2;
/// The journal format version that framed each record alone.
pub const JOURNAL_FORMAT_VERSION_1: u32 = 1;
/// Bytes of a journal segment's header from format version 2 on: the file
/// header, then the segment's salt (u64 LE) and the CRC32C of those 8 bytes
/// (u32 LE). Every frame's checksums in the segment are seeded from the salt,
/// so bytes a client chose (a payer name inside a record) can never pass for
/// a valid frame when reading looks for valid data after a torn one.
pub const JOURNAL_HEADER_BYTES: usize = FILE_HEADER_BYTES + 12;
/// The format version of snapshots this build writes and reads.
pub const SNAPSHOT_FORMAT_VERSION: u32 = 1;
/// Magic of a journal segment.
pub const JOURNAL_MAGIC: &[u8; 8] = b"PNTSJRNL";
/// Magic of a snapshot.
pub const SNAPSHOT_MAGIC: &[u8; 8] = b"PNTSSNAP";

const LOCK_FILE: &str = "LOCK";

/// The encoded header of a file of kind `magic` whose sequences start after
/// (snapshot) or at (journal) `base_sequence`.
pub fn encode_header(magic: &[u8; 8], version: u32, base_sequence: u64) -> [u8; FILE_HEADER_BYTES] {
    let mut header = [0u8; FILE_HEADER_BYTES];
    header[0..8].copy_from_slice(magic);
    header[8..12].copy_from_slice(&version.to_le_bytes());
    header[12..20].copy_from_slice(&base_sequence.to_le_bytes());
    let checksum = crc32c::crc32c(&header[0..20]);
    header[20..24].copy_from_slice(&checksum.to_le_bytes());
    header
}

/// The salt block that follows the file header of a journal segment.
pub fn encode_journal_salt(salt: u64) -> [u8; JOURNAL_HEADER_BYTES - FILE_HEADER_BYTES] {
    let mut block = [0u8; JOURNAL_HEADER_BYTES - FILE_HEADER_BYTES];
    block[0..8].copy_from_slice(&salt.to_le_bytes());
    let checksum = crc32c::crc32c(&block[0..8]);
    block[8..12].copy_from_slice(&checksum.to_le_bytes());
    block
}

/// Reads the salt of the journal segment `data` (from `path`), version 2 on.
pub fn decode_journal_salt(path: &Path, data: &[u8]) -> Result<u64, OpenError> {
    let invalid = |reason: &str| OpenError::Damaged {
        path: path.to_owned(),
        offset: FILE_HEADER_BYTES,
        reason: reason.to_owned(),
    };
    let block = data
        .get(FILE_HEADER_BYTES..JOURNAL_HEADER_BYTES)
        .ok_or_else(|| invalid("the journal header ends before its salt"))?;
    let checksum = u32::from_le_bytes([block[8], block[9], block[10], block[11]]);
    if crc32c::crc32c(&block[0..8]) != checksum {
        return Err(invalid("journal salt checksum mismatch"));
    }
    Ok(u64::from_le_bytes(block[0..8].try_into().expect("8 bytes")))
}

/// The checksum seed of a segment's frames, from its salt.
pub fn frame_seed(salt: u64) -> u32 {
    (salt ^ (salt >> 32)) as u32
}

/// A checked file header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The format version the file was written in.
    pub version: u32,
    /// The sequence the file's name also gives.
    pub base_sequence: u64,
}

/// Checks a file's header, of one of the `versions` this build reads.
pub fn decode_header(
    path: &Path,
    data: &[u8],
    magic: &[u8; 8],
    versions: &[u32],
) -> Result<Header, OpenError> {
    let invalid = |reason: String| OpenError::Damaged { path: path.to_owned(), offset: 0, reason };
    let Some(header) = data.get(..FILE_HEADER_BYTES) else {
        return Err(invalid(format!("only {} bytes, shorter than the file header", data.len())));
    };
    if &header[0..8] != magic {
        return Err(invalid("not a points file of this kind (wrong magic bytes)".to_owned()));
    }
    let checksum = u32::from_le_bytes(header[20..24].try_into().expect("4 bytes"));
    if crc32c::crc32c(&header[0..20]) != checksum {
        return Err(invalid("file header checksum mismatch".to_owned()));
    }
    let version = u32::from_le_bytes(header[8..12].try_into().expect("4 bytes"));
    if !versions.contains(&version) {
        return Err(invalid(format!(
            "format version {version}, but this build reads versions {versions:?}: run the \
             points-server release that wrote it"
        )));
    }
    let base_sequence = u64::from_le_bytes(header[12..20].try_into().expect("8 bytes"));
    Ok(Header { version, base_sequence })
}

/// An I/O failure on `path`, with what was being done.
pub fn io_error<'path>(
    action: &'static str,
    path: &'path Path,
) -> impl FnOnce(io::Error) -> OpenError + 'path {
    move |source| OpenError::Io { action, path: path.to_owned(), source }
}

/// The data directory, locked for this process for as long as this lives,
/// and the file system it lives on.
pub struct DataDir {
    path: PathBuf,
    fs: Arc<dyn FileSystem>,
    /// Holds the lock; released when dropped.
    _lock: LockGuard,
}

impl std::fmt::Debug for DataDir {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("DataDir").field("path", &self.path).finish()
    }
}

impl DataDir {
    /// Creates the directory if needed and takes its lock, failing at once if
    /// another process holds it.
    pub fn lock(fs: Arc<dyn FileSystem>, path: &Path) -> Result<Self, OpenError> {
        fs.create_dir_all(path).map_err(io_error("create the data directory", path))?;
        let lock_path = path.join(LOCK_FILE);
        let lock = fs.try_lock(&lock_path).map_err(io_error("lock", &lock_path))?;
        let Some(lock) = lock else {
            return Err(OpenError::Locked { path: path.to_owned(), lock: lock_path });
        };
        Ok(Self { path: path.to_owned(), fs, _lock: lock })
    }

    /// The directory's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file system the directory is on.
    pub fn fs(&self) -> &dyn FileSystem {
        &*self.fs
    }

    /// The path of the journal segment whose first sequence is `first_sequence`.
    pub fn journal_path(&self, first_sequence: u64) -> PathBuf {
        journal_path(&self.path, first_sequence)
    }

    /// The path of the snapshot that holds everything up to `last_sequence`.
    pub fn snapshot_path(&self, last_sequence: u64) -> PathBuf {
        snapshot_path(&self.path, last_sequence)
    }

    /// The journal segments and snapshots present, each sorted by sequence,
    /// after removing leftover temporary files.
    pub fn list(&self) -> Result<Listing, OpenError> {
        let listing = list(self.fs(), &self.path)?;
        for path in &listing.temporary {
            tracing::info!(file = %path.display(), "removing an unfinished snapshot");
            self.fs.remove_file(path).map_err(io_error("remove", path))?;
        }
        Ok(listing)
    }

    /// Makes creations, renames and removals in the directory durable.
    pub fn sync(&self) -> io::Result<()> {
        self.fs.sync_dir(&self.path)
    }
}

/// The path of the journal segment in `directory` whose first sequence is `first_sequence`.
pub fn journal_path(directory: &Path, first_sequence: u64) -> PathBuf {
    directory.join(format!("journal-{first_sequence:020}.log"))
}

/// The path of the snapshot in `directory` that holds everything up to `last_sequence`.
pub fn snapshot_path(directory: &Path, last_sequence: u64) -> PathBuf {
    directory.join(format!("snapshot-{last_sequence:020}.snap"))
}

/// The durable files of a data directory.
#[derive(Debug, Default)]
pub struct Listing {
    /// (first sequence, path) of each journal segment, oldest first.
    pub journals: Vec<(u64, PathBuf)>,
    /// (rotation sequence, path) of each snapshot, oldest first.
    pub snapshots: Vec<(u64, PathBuf)>,
    /// Unfinished snapshots.
    pub temporary: Vec<PathBuf>,
}

/// Lists the files of the data directory at `path` without changing anything.
pub fn list(fs: &dyn FileSystem, path: &Path) -> Result<Listing, OpenError> {
    let mut listing = Listing::default();
    for name in fs.list(path).map_err(io_error("list", path))? {
        if name.ends_with(".tmp") {
            listing.temporary.push(path.join(&name));
        } else if let Some(sequence) = sequence_in(&name, "journal-", ".log") {
            listing.journals.push((sequence, path.join(&name)));
        } else if let Some(sequence) = sequence_in(&name, "snapshot-", ".snap") {
            listing.snapshots.push((sequence, path.join(&name)));
        }
    }
    listing.journals.sort();
    listing.snapshots.sort();
    Ok(listing)
}

fn sequence_in(name: &str, prefix: &str, suffix: &str) -> Option<u64> {
    let digits = name.strip_prefix(prefix)?.strip_suffix(suffix)?;
    if digits.len() != 20 || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}
