//! The simulated disk behind the store's seam: [`FileSystem`] for the
//! disk, [`WritableFile`] for its handles, and its lock guards.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use points::{FileSystem, LockGuard, WritableFile};

use super::state::{DataOp, Gate, InodeId, NameOp, State, apply_name_op, key, lock, parent_of};
use super::{SimDisk, SimOp};

impl SimDisk {
    /// Locks the state for a call on `path`: fails if the machine is off,
    /// counts the call if it is a mutating `op` (see `State::enter`), and
    /// returns the state with the path's normalised key.
    fn begin(
        &self,
        op: Option<SimOp>,
        path: &Path,
    ) -> io::Result<(MutexGuard<'_, State>, PathBuf)> {
        let mut state = lock(&self.state);
        state.check_on()?;
        let path = key(path);
        if let Some(op) = op {
            state.enter(op, &[&path])?;
        }
        Ok((state, path))
    }
}

impl FileSystem for SimDisk {
    /// Directories are always durable and never fail by injection: the store
    /// makes them once, and faults there would test nothing interesting.
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        let (mut state, path) = self.begin(None, path)?;
        if path.ancestors().any(|ancestor| state.current_names.contains_key(ancestor)) {
            return Err(io::Error::new(io::ErrorKind::NotADirectory, "a file is in the way"));
        }
        for ancestor in path.ancestors() {
            if ancestor.parent().is_some() {
                state.directories.insert(ancestor.to_path_buf());
            }
        }
        Ok(())
    }

    fn try_lock(&self, path: &Path) -> io::Result<Option<LockGuard>> {
        let (mut state, path) = self.begin(Some(SimOp::TryLock), path)?;
        if state.locks.contains_key(&path) {
            return Ok(None);
        }
        if !state.current_names.contains_key(&path) {
            state.create_file(&path)?;
        }
        let token = state.next_lock_token;
        state.next_lock_token += 1;
        state.locks.insert(path.clone(), token);
        Ok(Some(Box::new(SimLockGuard { state: Arc::downgrade(&self.state), path, token })))
    }

    /// Files and subdirectories of the current namespace, shuffled by the
    /// PRNG: the order is unspecified, and code must not depend on it.
    fn list(&self, path: &Path) -> io::Result<Vec<String>> {
        let (mut state, path) = self.begin(None, path)?;
        state.check_dir(&path)?;
        let files = state.current_names.keys();
        let directories = state.directories.iter().filter(|directory| **directory != path);
        let mut names: Vec<String> = files
            .chain(directories)
            .filter(|entry| entry.parent() == Some(path.as_path()))
            .filter_map(|entry| entry.file_name()?.to_str().map(str::to_owned))
            .collect();
        state.rng.shuffle(&mut names);
        Ok(names)
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        let (state, path) = self.begin(None, path)?;
        state.check_not_dir(&path)?;
        let inode = state
            .current_names
            .get(&path)
            .and_then(|inode| state.inodes.get(inode))
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such file"))?;
        Ok(inode.current.clone())
    }

    fn create_new(&self, path: &Path) -> io::Result<Box<dyn WritableFile>> {
        let (mut state, path) = self.begin(Some(SimOp::CreateNew), path)?;
        let inode = state.create_file(&path)?;
        Ok(state.handle(&self.state, inode, path))
    }

    fn open_append(&self, path: &Path) -> io::Result<Box<dyn WritableFile>> {
        let (state, path) = self.begin(Some(SimOp::OpenAppend), path)?;
        state.check_not_dir(&path)?;
        let inode = *state
            .current_names
            .get(&path)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such file"))?;
        Ok(state.handle(&self.state, inode, path))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut state = lock(&self.state);
        state.check_on()?;
        let (from, to) = (key(from), key(to));
        state.enter(SimOp::Rename, &[&from, &to])?;
        if state.is_dir(&from) || state.is_dir(&to) {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "the simulated disk renames files only",
            ));
        }
        let inode = *state
            .current_names
            .get(&from)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such file"))?;
        state.check_parent(&to)?;
        if from == to {
            return Ok(());
        }
        state.current_names.remove(&from);
        state.current_names.insert(to.clone(), inode);
        let (from_directory, to_directory) = (parent_of(&from), parent_of(&to));
        if from_directory == to_directory {
            state.pending_names.entry(from_directory).or_default().push(NameOp::Rename {
                from,
                to,
                inode,
            });
        } else {
            state
                .pending_names
                .entry(from_directory)
                .or_default()
                .push(NameOp::Unlink { path: from });
            state
                .pending_names
                .entry(to_directory)
                .or_default()
                .push(NameOp::Link { path: to, inode });
        }
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let (mut state, path) = self.begin(Some(SimOp::RemoveFile), path)?;
        state.check_not_dir(&path)?;
        if state.current_names.remove(&path).is_none() {
            return Err(io::Error::new(io::ErrorKind::NotFound, "no such file"));
        }
        state.pending_names.entry(parent_of(&path)).or_default().push(NameOp::Unlink { path });
        Ok(())
    }

    /// Salts come from the seeded PRNG too, so a seed replays exactly.
    fn new_salt(&self) -> u64 {
        lock(&self.state).rng.u64(..)
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        let (mut state, path) = self.begin(Some(SimOp::SyncDir), path)?;
        state.check_dir(&path)?;
        let ops = state.pending_names.remove(&path).unwrap_or_default();
        for op in ops {
            apply_name_op(&mut state.durable_names, op);
        }
        Ok(())
    }
}

/// A file handle of the simulated disk: writes to its inode, whatever names
/// it has now, until the next power cut.
pub(super) struct SimFile {
    /// The disk's state.
    pub(super) state: Arc<Mutex<State>>,
    /// The file written to.
    pub(super) inode: InodeId,
    /// The power-cut generation the handle was opened in.
    pub(super) generation: u64,
    /// The (normalised) path it was opened with, for targeted faults.
    pub(super) path: PathBuf,
}

impl SimFile {
    /// One write: at `offset`, or at the end for `None`.
    fn write(&mut self, offset: Option<usize>, bytes: &[u8]) -> io::Result<()> {
        let mut state = lock(&self.state);
        state.check_handle(self.generation)?;
        match state.admit(SimOp::Write, &[&self.path]) {
            Gate::Proceed => {}
            Gate::Cut => {
                // The power went during the write: any prefix may be cached.
                let written = state.rng.usize(0..=bytes.len());
                state.write_to(self.inode, offset, &bytes[..written])?;
                return Err(state.cut_and_switch_off());
            }
            Gate::Fail(error) => {
                // A real write() may be partial before it fails.
                let written = if bytes.is_empty() || state.rng.bool() {
                    0
                } else {
                    state.rng.usize(0..bytes.len())
                };
                state.write_to(self.inode, offset, &bytes[..written])?;
                return Err(error);
            }
        }
        state.write_to(self.inode, offset, bytes)
    }
}

impl WritableFile for SimFile {
    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.write(None, bytes)
    }

    fn write_at(&mut self, offset: u64, bytes: &[u8]) -> io::Result<()> {
        let offset = usize::try_from(offset)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset too large"))?;
        self.write(Some(offset), bytes)
    }

    fn sync(&mut self) -> io::Result<()> {
        let mut state = lock(&self.state);
        state.check_handle(self.generation)?;
        // A failed sync leaves the data unsynced: a later cut may drop it.
        state.enter(SimOp::Sync, &[&self.path])?;
        let inode = state.inode_mut(self.inode)?;
        inode.durable = inode.current.clone();
        inode.pending.clear();
        Ok(())
    }

    fn truncate(&mut self, length_bytes: u64) -> io::Result<()> {
        let mut state = lock(&self.state);
        state.check_handle(self.generation)?;
        state.enter(SimOp::Truncate, &[&self.path])?;
        let length = usize::try_from(length_bytes)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "length too large"))?;
        let inode = state.inode_mut(self.inode)?;
        inode.current.resize(length, 0);
        inode.pending.push(DataOp::Truncate { length });
        Ok(())
    }
}

/// A held lock of the simulated disk; dropping it releases the lock, unless
/// a power cut released it already (and someone may have taken it since).
struct SimLockGuard {
    /// The disk's state, weakly: a guard outliving the disk must not keep it.
    state: Weak<Mutex<State>>,
    /// The lock file's normalised path.
    path: PathBuf,
    /// Which taking of the lock this guard is.
    token: u64,
}

impl Drop for SimLockGuard {
    fn drop(&mut self) {
        if let Some(state) = self.state.upgrade() {
            let mut state = lock(&state);
            if state.locks.get(&self.path) == Some(&self.token) {
                state.locks.remove(&self.path);
            }
        }
    }
}
