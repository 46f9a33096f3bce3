//! The one seam between the journal and snapshot code and the file system.
//!
//! Everything the store does to its data directory goes through
//! [`FileSystem`]: the operating system's in production ([`OsFileSystem`]),
//! a deterministic simulated disk in tests (one that keeps written-but-not-
//! synced data apart from synced data, can lose or tear it on a simulated
//! power cut, and can fail any call). The seam is deliberately narrow: whole
//! files are read at once, files are only ever appended to, truncated or
//! synced, and directories are only listed, renamed in, removed from and
//! synced.

use std::any::Any;
use std::fmt::Debug;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, Write};
use std::path::Path;

/// A held lock on a data directory; dropping it releases the lock.
pub type LockGuard = Box<dyn Any + Send + Sync>;

/// The file operations the store needs.
///
/// Durability contract (what the store relies on, and what a simulation must
/// model): data written to a file survives a power cut only once
/// [`WritableFile::sync`] returned after it; a file's creation, rename or
/// removal survives only once [`FileSystem::sync_dir`] returned after it.
pub trait FileSystem: Debug + Send + Sync {
    /// Creates `path` and its parents if missing.
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;

    /// Takes the exclusive lock file `path` (creating it if missing), or
    /// returns `None` if another process holds it.
    fn try_lock(&self, path: &Path) -> io::Result<Option<LockGuard>>;

    /// The names of the entries of directory `path`, in no particular order.
    fn list(&self, path: &Path) -> io::Result<Vec<String>>;

    /// The whole content of the file at `path`.
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;

    /// Creates a new, empty file at `path` (failing if it exists), open for
    /// appending.
    fn create_new(&self, path: &Path) -> io::Result<Box<dyn WritableFile>>;

    /// Opens the existing file at `path` for writing; appends go after its
    /// current end.
    fn open_append(&self, path: &Path) -> io::Result<Box<dyn WritableFile>>;

    /// Renames `from` to `to`, replacing `to` if it exists.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;

    /// Removes the file at `path`.
    fn remove_file(&self, path: &Path) -> io::Result<()>;

    /// Makes the creations, renames and removals in directory `path` durable.
    fn sync_dir(&self, path: &Path) -> io::Result<()>;

    /// A fresh number nobody can predict, for a new journal segment's salt.
    /// Here so that a simulation can make it deterministic.
    fn new_salt(&self) -> u64 {
        use std::hash::{BuildHasher, Hasher};
        // The standard library keys each `RandomState` from the operating
        // system's randomness; hashing the clock mixes in the time too.
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher
            .write_u128(std::time::SystemTime::UNIX_EPOCH.elapsed().unwrap_or_default().as_nanos());
        hasher.finish()
    }
}

/// A file open for writing.
pub trait WritableFile: Send {
    /// Appends all of `bytes` at the end of the file.
    fn append(&mut self, bytes: &[u8]) -> io::Result<()>;

    /// Writes all of `bytes` at byte `offset`, over what is there and past
    /// the end as needed (a gap before `offset` reads as zeros).
    fn write_at(&mut self, offset: u64, bytes: &[u8]) -> io::Result<()>;

    /// Makes everything written to this file (data and length) durable.
    fn sync(&mut self) -> io::Result<()>;

    /// Cuts the file to `length_bytes`; later appends go after it.
    fn truncate(&mut self, length_bytes: u64) -> io::Result<()>;
}

/// The operating system's file system.
#[derive(Debug, Default, Clone, Copy)]
pub struct OsFileSystem;

impl FileSystem for OsFileSystem {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        fs::create_dir_all(path)
    }

    fn try_lock(&self, path: &Path) -> io::Result<Option<LockGuard>> {
        let file = OpenOptions::new().create(true).truncate(false).write(true).open(path)?;
        match file.try_lock() {
            Ok(()) => Ok(Some(Box::new(file))),
            Err(TryLockError::WouldBlock) => Ok(None),
            Err(TryLockError::Error(error)) => Err(error),
        }
    }

    fn list(&self, path: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(path)? {
            // Names that are not UTF-8 are not ours.
            if let Ok(name) = entry?.file_name().into_string() {
                names.push(name);
            }
        }
        Ok(names)
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        fs::read(path)
    }

    fn create_new(&self, path: &Path) -> io::Result<Box<dyn WritableFile>> {
        let file = OpenOptions::new().create_new(true).write(true).open(path)?;
        Ok(Box::new(OsFile { file, length_bytes: 0 }))
    }

    fn open_append(&self, path: &Path) -> io::Result<Box<dyn WritableFile>> {
        let file = OpenOptions::new().write(true).open(path)?;
        let length_bytes = file.metadata()?.len();
        Ok(Box::new(OsFile { file, length_bytes }))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        File::open(path)?.sync_all()
    }
}

/// A file of the operating system, written with positional writes.
///
/// Not opened with `O_APPEND`: on Linux that makes `pwrite` ignore its
/// offset. Appends go at the length this handle tracks instead, which is
/// exact because the store has one writer per file.
struct OsFile {
    file: File,
    /// Where the next append goes: the file's length as this handle left it.
    length_bytes: u64,
}

impl WritableFile for OsFile {
    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.write_at(self.length_bytes, bytes)
    }

    fn write_at(&mut self, offset: u64, bytes: &[u8]) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        self.file.write_all_at(bytes, offset)?;
        self.length_bytes = self.length_bytes.max(offset + bytes.len() as u64);
        Ok(())
    }

    fn sync(&mut self) -> io::Result<()> {
        // fdatasync: the length is data too, so appends are covered.
        self.file.sync_data()
    }

    fn truncate(&mut self, length_bytes: u64) -> io::Result<()> {
        self.file.set_len(length_bytes)?;
        self.length_bytes = length_bytes;
        Ok(())
    }
}

/// Adapts a [`WritableFile`] to [`std::io::Write`], for buffered writers.
pub struct AppendWriter(pub Box<dyn WritableFile>);

impl Write for AppendWriter {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.0.append(bytes)?;
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
