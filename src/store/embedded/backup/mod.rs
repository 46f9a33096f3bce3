//! Online backup: a consistent, verified copy of a data directory, taken
//! while the server runs.
//!
//! The backup never takes the data directory's lock and never changes
//! anything in it: it only lists and reads. Meanwhile a running server may
//! append to the newest journal segment, start a new segment, publish a
//! snapshot and then remove the segments and snapshots it covers. The copy is
//! made so that none of that can make it wrong:
//!
//! 1. List the directory; take the newest snapshot (at rotation sequence R)
//!    and every journal segment not wholly covered by it.
//! 2. Read the snapshot first, then the segments oldest first. The server
//!    publishes a snapshot only once the journal holds everything in it, so
//!    segments read after the snapshot hold at least what it does. A listed
//!    file that is gone when read was removed by a newer snapshot: start over.
//! 3. Older segments must be whole. The newest may be growing: keep its valid
//!    prefix, cut before a batch still being written, decided by the same
//!    code that cuts a torn tail at start-up; a newest segment whose header
//!    is not written yet holds no record and is left out. The newest is
//!    written in place over preallocated zeros, so a read racing the writer
//!    can look damaged (an old page of zeros before a newly synced batch):
//!    if it reads differently a second time, start over.
//! 4. Write each file as `*.tmp` in the destination and fsync it; then rename
//!    the segments into place oldest first and the snapshot last, and fsync
//!    the directory. A file under its final name is always whole.
//! 5. Verify by reading the copy back: every file's bytes against what was
//!    written, then the same checks as start-up (`recovery::scan`). If the
//!    files do not fit together (the listing raced a snapshot or a
//!    rotation), remove them and start over, at most [`MAX_ATTEMPTS`] times.
//!
//! The copy holds every change acknowledged before the backup started: such
//! a change was in a journal segment that existed when the directory was
//! listed (or in a snapshot, with the journal after it), and every segment is
//! read after the listing.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::file_system::{FileSystem, OsFileSystem};
use super::files::{self, Listing};
use super::recovery;
use super::wal::read;
use crate::store::OpenError;

/// How many times a copy is started over because the data directory changed
/// under it before the backup gives up.
pub const MAX_ATTEMPTS: u32 = 10;

/// What a finished, verified backup holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupSummary {
    /// The data directory copied.
    pub source: PathBuf,
    /// Where the copy is.
    pub destination: PathBuf,
    /// Files in the copy.
    pub files: usize,
    /// Bytes in the copy.
    pub bytes: u64,
    /// The rotation sequence of the snapshot in the copy, if any.
    pub snapshot_sequence: Option<u64>,
    /// The last journal sequence the copy holds.
    pub last_sequence: u64,
    /// Users in the copy.
    pub users: usize,
    /// Attempts it took (more than one when the directory changed under it).
    pub attempts: u32,
}

impl fmt::Display for BackupSummary {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            formatter,
            "backed up {} to {}: {} files, {} bytes, through journal sequence {}, {} users",
            self.source.display(),
            self.destination.display(),
            self.files,
            self.bytes,
            self.last_sequence,
            self.users
        )?;
        match self.snapshot_sequence {
            Some(sequence) => write!(formatter, " (snapshot {sequence} and the journal after it)")?,
            None => write!(formatter, " (journal only)")?,
        }
        write!(formatter, "; verified by reading it back")?;
        if self.attempts > 1 {
            write!(
                formatter,
                " (attempt {}: the directory changed during earlier ones)",
                self.attempts
            )?;
        }
        Ok(())
    }
}

/// Why no backup was made. Each says what to do; the data directory is never
/// changed, and whatever the backup wrote to the destination is removed.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The destination holds files already.
    #[error(
        "the destination {path} already exists and is not empty; back up into a new or empty \
         directory (a backup never overwrites or merges into another)"
    )]
    DestinationNotEmpty {
        /// The destination.
        path: PathBuf,
    },
    /// The destination is inside the data directory.
    #[error(
        "the destination {destination} is inside the data directory {data_dir}; choose a \
         directory outside it (a backup changes nothing in the data directory)"
    )]
    DestinationInsideSource {
        /// The data directory.
        data_dir: PathBuf,
        /// The destination.
        destination: PathBuf,
    },
    /// The source holds no journal or snapshot.
    #[error(
        "{path} holds no journal segment or snapshot, so it is not a points-server data \
         directory; check --data-dir"
    )]
    NotADataDirectory {
        /// The directory named as the source.
        path: PathBuf,
    },
    /// A file operation failed.
    #[error(
        "cannot {action} {path}: {error}; check that the path exists and is readable (the \
         data directory) or writable with free space (the destination), then run the backup \
         again"
    )]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        error: io::Error,
    },
    /// A file of the data directory is damaged.
    #[error(
        "the data directory is damaged, so no consistent backup can be made: {0}. Restore from \
         an earlier backup"
    )]
    Damaged(#[source] OpenError),
    /// A copied file reads back different from what was written.
    #[error(
        "the copy {path} reads back different from what was written: the destination's disk or \
         file system is faulty; back up to another disk"
    )]
    ReadBackMismatch {
        /// The copied file.
        path: PathBuf,
    },
    /// Every attempt raced a change of the data directory.
    #[error(
        "no consistent copy after {attempts} attempts: the data directory kept changing during \
         the copy (last: {last}). Run the backup again; if it keeps failing with the same \
         message, the data directory itself does not fit together (start a server on it to \
         see)"
    )]
    KeptChanging {
        /// Attempts made.
        attempts: u32,
        /// What went wrong the last time.
        last: String,
    },
}

/// Backs up the data directory `source` into `destination` (new or empty) on
/// the operating system's file system; see the module documentation.
pub fn backup(source: &Path, destination: &Path) -> Result<BackupSummary, BackupError> {
    if let (Ok(data_dir), Some(target)) = (source.canonicalize(), resolve(destination))
        && target.starts_with(&data_dir)
    {
        return Err(BackupError::DestinationInsideSource {
            data_dir: source.to_owned(),
            destination: destination.to_owned(),
        });
    }
    backup_with(&OsFileSystem, source, destination)
}

/// `path` made absolute with its existing part's symbolic links resolved,
/// whether or not all of it exists.
fn resolve(path: &Path) -> Option<PathBuf> {
    let mut missing = Vec::new();
    let mut existing = path;
    loop {
        if let Ok(resolved) = existing.canonicalize() {
            return Some(missing.into_iter().rev().fold(resolved, |path, name| path.join(name)));
        }
        missing.push(existing.file_name()?);
        existing = match existing.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
    }
}

/// [`backup`] on the file system `fs`.
pub fn backup_with(
    fs: &dyn FileSystem,
    source: &Path,
    destination: &Path,
) -> Result<BackupSummary, BackupError> {
    let destination_exists = match fs.list(destination) {
        Ok(names) if names.is_empty() => true,
        Ok(_) => return Err(BackupError::DestinationNotEmpty { path: destination.to_owned() }),
        Err(error) if error.kind() == io::ErrorKind::NotFound => false,
        Err(error) => return Err(io_error("list", destination)(error)),
    };
    list_data_dir(fs, source)?;
    if !destination_exists {
        fs.create_dir_all(destination).map_err(io_error("create", destination))?;
        let parent = match destination.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
        fs.sync_dir(parent).map_err(io_error("sync", parent))?;
    }
    let mut last = String::new();
    for attempt in 1..=MAX_ATTEMPTS {
        let mut created = Vec::new();
        match copy_once(fs, source, destination, &mut created) {
            Ok(Ok(copy)) => {
                return Ok(BackupSummary {
                    source: source.to_owned(),
                    destination: destination.to_owned(),
                    files: copy.files,
                    bytes: copy.bytes,
                    snapshot_sequence: copy.snapshot_sequence,
                    last_sequence: copy.last_sequence,
                    users: copy.users,
                    attempts: attempt,
                });
            }
            Ok(Err(problem)) => {
                tracing::info!(
                    attempt,
                    %problem,
                    "the data directory changed during the backup; starting over"
                );
                remove_copies(fs, destination, &created)?;
                last = problem;
                // Give a snapshot in progress a moment to finish removing files.
                std::thread::sleep(Duration::from_millis(10 * u64::from(attempt)));
            }
            Err(error) => {
                if let Err(cleanup) = remove_copies(fs, destination, &created) {
                    tracing::warn!(%cleanup, "cannot remove a failed backup's files");
                }
                return Err(error);
            }
        }
    }
    Err(BackupError::KeptChanging { attempts: MAX_ATTEMPTS, last })
}

/// What a verified copy holds.
struct Verified {
    files: usize,
    bytes: u64,
    snapshot_sequence: Option<u64>,
    last_sequence: u64,
    users: usize,
}

/// One file written to the destination.
struct Copied {
    /// Where it was written.
    temporary: PathBuf,
    /// Its final name.
    path: PathBuf,
    length: u64,
    checksum: u32,
}

/// One attempt: `Ok(Err(why))` when the data directory changed under it and
/// it must start over; `created` collects every file it wrote.
fn copy_once(
    fs: &dyn FileSystem,
    source: &Path,
    destination: &Path,
    created: &mut Vec<PathBuf>,
) -> Result<Result<Verified, String>, BackupError> {
    let listing = list_data_dir(fs, source)?;
    let vanished = |path: &Path| {
        format!("{} was removed while being copied (a newer snapshot covers it)", path.display())
    };
    let snapshot = listing.snapshots.last();
    let mut snapshot_copy = None;
    if let Some((_, path)) = snapshot {
        let Some(data) = read_source(fs, path)? else { return Ok(Err(vanished(path))) };
        snapshot_copy = Some(write_copy(fs, destination, path, &data, created)?);
    }
    let rotation_sequence = snapshot.map_or(0, |(sequence, _)| *sequence);
    let segments = segments_to_copy(&listing, rotation_sequence);
    let mut copies = Vec::new();
    for (index, (first_sequence, path)) in segments.iter().enumerate() {
        let is_newest = index + 1 == segments.len();
        let Some(mut data) = read_source(fs, path)? else { return Ok(Err(vanished(path))) };
        let length = match journal_length(path, *first_sequence, &data, is_newest) {
            Ok(Some(length)) => length,
            Ok(None) => continue,
            // The newest segment is written in place, over its preallocated
            // zeros: a read racing the writer may see an older page (zeros)
            // before a newer one (a batch synced meanwhile), which looks like
            // damage. If the file reads differently now, it was that.
            Err(damaged) if is_newest => match read_source(fs, path)? {
                Some(again) if again != data => {
                    return Ok(Err(format!("{} changed while it was read", path.display())));
                }
                _ => return Err(damaged),
            },
            Err(error) => return Err(error),
        };
        data.truncate(length);
        copies.push(write_copy(fs, destination, path, &data, created)?);
    }
    // The segments first, the snapshot last: a copy cut short never has a
    // snapshot without the journal after it.
    copies.extend(snapshot_copy);
    for copy in &copies {
        fs.rename(&copy.temporary, &copy.path).map_err(io_error("rename", &copy.temporary))?;
        created.push(copy.path.clone());
    }
    fs.sync_dir(destination).map_err(io_error("sync", destination))?;

    for copy in &copies {
        let data = fs.read(&copy.path).map_err(io_error("read back", &copy.path))?;
        if data.len() as u64 != copy.length || crc32c::crc32c(&data) != copy.checksum {
            return Err(BackupError::ReadBackMismatch { path: copy.path.clone() });
        }
    }
    let listing = files::list(fs, destination).map_err(from_open)?;
    let in_source = |message: String| {
        message.replace(&destination.display().to_string(), &source.display().to_string())
    };
    let scan = match recovery::scan(fs, &listing) {
        Ok(scan) => scan,
        Err(OpenError::Inconsistent { path, reason }) => {
            return Ok(Err(in_source(format!("{}: {reason}", path.display()))));
        }
        Err(OpenError::Damaged { path, offset, reason }) => {
            // The bytes read back as written, so the damage came with them.
            let path = path.file_name().map_or(path.clone(), |name| source.join(name));
            return Err(BackupError::Damaged(OpenError::Damaged {
                path,
                offset,
                reason: in_source(reason),
            }));
        }
        Err(error) => return Err(from_open(error)),
    };
    if let Some((path, _)) = scan.torn {
        return Ok(Err(format!("{} ends torn in the copy", in_source(path.display().to_string()))));
    }
    Ok(Ok(Verified {
        files: copies.len(),
        bytes: copies.iter().map(|copy| copy.length).sum(),
        snapshot_sequence: scan.recovery.snapshot_sequence,
        last_sequence: scan.last_sequence,
        users: scan.users.len(),
    }))
}

/// The listing of the data directory `source`, which must hold a journal
/// segment or a snapshot. Changes nothing (not even leftover `*.tmp` files).
fn list_data_dir(fs: &dyn FileSystem, source: &Path) -> Result<Listing, BackupError> {
    let listing = files::list(fs, source).map_err(from_open)?;
    if listing.journals.is_empty() && listing.snapshots.is_empty() {
        return Err(BackupError::NotADataDirectory { path: source.to_owned() });
    }
    Ok(listing)
}

/// The journal segments the copy needs, oldest first: all but those wholly
/// covered by the snapshot at `rotation_sequence` (whose successor starts at
/// or before the sequence after it). The newest is always kept.
fn segments_to_copy(listing: &Listing, rotation_sequence: u64) -> Vec<(u64, PathBuf)> {
    let journals = &listing.journals;
    journals
        .iter()
        .enumerate()
        .filter(|(index, _)| {
            journals
                .get(index + 1)
                .is_none_or(|(next, _)| *next > rotation_sequence.saturating_add(1))
        })
        .map(|(_, segment)| segment.clone())
        .collect()
}

/// How many bytes of the journal segment `data` (read from `path`, named for
/// `first_sequence`) to copy, decided exactly as start-up reads it: all of an
/// older segment, which must end clean; the valid prefix of the newest, which
/// may be growing (or, after a power cut under `--fsync never`, end in a hole
/// of unsynced data); `None` for a newest segment whose header is not written
/// yet (it holds no record). Anything else is damage.
fn journal_length(
    path: &Path,
    first_sequence: u64,
    data: &[u8],
    is_newest: bool,
) -> Result<Option<usize>, BackupError> {
    if is_newest && read::header_never_written(data) {
        return Ok(None);
    }
    let read = read::read_segment(path, first_sequence, data, |_, _| Ok(()))
        .map_err(BackupError::Damaged)?;
    match read.torn_at {
        // Without the zeros a preallocated segment ends with.
        None => Ok(Some(read.valid_bytes)),
        Some((offset, _)) if is_newest => Ok(Some(offset)),
        Some((offset, reason)) => Err(BackupError::Damaged(OpenError::Damaged {
            path: path.to_owned(),
            offset,
            reason: format!("{reason} in a journal segment that is not the newest"),
        })),
    }
}

/// The bytes of `path`, or `None` if it was removed since it was listed.
fn read_source(fs: &dyn FileSystem, path: &Path) -> Result<Option<Vec<u8>>, BackupError> {
    match fs.read(path) {
        Ok(data) => Ok(Some(data)),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(io_error("read", path)(error)),
    }
}

/// Writes `data`, the bytes of `source_path`, durably to a temporary file in
/// `destination`, and records it in `created`.
fn write_copy(
    fs: &dyn FileSystem,
    destination: &Path,
    source_path: &Path,
    data: &[u8],
    created: &mut Vec<PathBuf>,
) -> Result<Copied, BackupError> {
    let name = source_path.file_name().unwrap_or_default().to_string_lossy();
    let path = destination.join(&*name);
    let temporary = destination.join(format!("{name}.tmp"));
    let mut file = fs.create_new(&temporary).map_err(io_error("create", &temporary))?;
    created.push(temporary.clone());
    file.append(data).map_err(io_error("write", &temporary))?;
    file.sync().map_err(io_error("sync", &temporary))?;
    Ok(Copied { temporary, path, length: data.len() as u64, checksum: crc32c::crc32c(data) })
}

/// Removes the files an attempt wrote to `destination`.
fn remove_copies(
    fs: &dyn FileSystem,
    destination: &Path,
    created: &[PathBuf],
) -> Result<(), BackupError> {
    for path in created {
        match fs.remove_file(path) {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => return Err(io_error("remove", path)(error)),
        }
    }
    fs.sync_dir(destination).map_err(io_error("sync", destination))
}

fn io_error<'path>(
    action: &'static str,
    path: &'path Path,
) -> impl FnOnce(io::Error) -> BackupError + 'path {
    move |error| BackupError::Io { action, path: path.to_owned(), error }
}

fn from_open(error: OpenError) -> BackupError {
    match error {
        OpenError::Io { action, path, source } => BackupError::Io { action, path, error: source },
        other => BackupError::Damaged(other),
    }
}

#[cfg(test)]
mod tests;
