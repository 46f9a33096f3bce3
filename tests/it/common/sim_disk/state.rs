//! The simulated disk's state and what a power cut does to it.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use super::file_system::SimFile;
use super::{MACHINE_OFF, POWER_WAS_CUT, SECTOR_BYTES, SimFault, SimOp};

/// Which file an inode number is: handles and names refer to inodes.
pub(super) type InodeId = u64;

/// The disk's whole state, behind one mutex.
pub(super) struct State {
    /// The only source of randomness, so a seed replays a run.
    pub(super) rng: fastrand::Rng,
    /// Directories, always durable. Keys are normalised paths.
    pub(super) directories: BTreeSet<PathBuf>,
    /// File names as calls see them.
    pub(super) current_names: BTreeMap<PathBuf, InodeId>,
    /// File names as they would survive a power cut.
    pub(super) durable_names: BTreeMap<PathBuf, InodeId>,
    /// Per directory, the name changes since its last sync, oldest first.
    pub(super) pending_names: BTreeMap<PathBuf, Vec<NameOp>>,
    /// Every inode that a name (current or durable) or a live handle may
    /// refer to; pruned to the durable ones at each cut.
    pub(super) inodes: BTreeMap<InodeId, Inode>,
    /// The number the next inode gets.
    pub(super) next_inode: InodeId,
    /// Bumped at each power cut; handles remember the one they were opened
    /// in, so older handles can be refused.
    pub(super) generation: u64,
    /// Held lock paths, each with the token of the guard holding it, so an
    /// old guard dropped after a cut cannot release a newer holder's lock.
    pub(super) locks: BTreeMap<PathBuf, u64>,
    /// The token the next lock guard gets.
    pub(super) next_lock_token: u64,
    /// Whether the machine is off: every call fails until power-on.
    pub(super) off: bool,
    /// The mutating call index at which to cut the power, if any.
    pub(super) power_cut_at: Option<u64>,
    /// How many mutating calls were accepted so far.
    pub(super) mutating_calls: u64,
    /// Random faults: each mutating call fails with probability
    /// numerator / denominator.
    pub(super) fault_rate: (u32, u32),
    /// Targeted faults, checked in the order they were added.
    pub(super) targeted_faults: Vec<TargetedFault>,
}

/// A change to a directory's entries, queued until the directory is synced.
#[derive(Debug, Clone)]
pub(super) enum NameOp {
    /// A name now refers to an inode (a creation, or a rename's target in
    /// another directory).
    Link { path: PathBuf, inode: InodeId },
    /// A name is gone (a removal, or a rename's source in another directory).
    Unlink { path: PathBuf },
    /// A rename within one directory: atomic, as in every journaling file
    /// system.
    Rename { from: PathBuf, to: PathBuf, inode: InodeId },
}

/// One file's data.
#[derive(Debug, Default)]
pub(super) struct Inode {
    /// What reads return.
    pub(super) current: Vec<u8>,
    /// What survived the last sync (or power cut).
    pub(super) durable: Vec<u8>,
    /// The changes since then, oldest first; a power cut decides which land.
    pub(super) pending: Vec<DataOp>,
}

/// An unsynced change to a file's data.
#[derive(Debug, Clone)]
pub(super) enum DataOp {
    /// `bytes` were written at `offset` (for an append, the file's length
    /// at the time).
    Write { offset: usize, bytes: Vec<u8> },
    /// The file's length was set to `length` (cut, or extended by zeros).
    Truncate { length: usize },
}

/// A fault a test asked for: the next `remaining` calls of `op` whose path
/// contains `path_substring` fail with `fault`.
#[derive(Debug, Clone)]
pub(super) struct TargetedFault {
    pub(super) op: SimOp,
    pub(super) path_substring: String,
    pub(super) fault: SimFault,
    pub(super) remaining: u32,
}

/// What a mutating call may do after the disk has counted it.
pub(super) enum Gate {
    /// Go ahead.
    Proceed,
    /// The power goes out instead of this call.
    Cut,
    /// Fail with this injected fault.
    Fail(io::Error),
}

/// The error of every call while the machine is off.
pub(super) fn machine_off() -> io::Error {
    io::Error::other(MACHINE_OFF)
}

/// The error of every call on a handle opened before a power cut.
pub(super) fn power_was_cut() -> io::Error {
    io::Error::other(POWER_WAS_CUT)
}

/// Locks the state, ignoring poisoning: a test that panicked with the lock
/// held must not turn every later call into a second, confusing panic.
pub(super) fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The key a path is stored under: `a//b/./c/` and `a/b/c` are one file.
pub(super) fn key(path: &Path) -> PathBuf {
    path.components().collect()
}

/// The directory holding `path` (the empty path for a bare name).
pub(super) fn parent_of(path: &Path) -> PathBuf {
    path.parent().map(Path::to_path_buf).unwrap_or_default()
}

/// Writes `bytes` at `offset` of `image`, growing it with zeros as needed:
/// how data that lands past a gap reads back.
pub(super) fn write_at(image: &mut Vec<u8>, offset: usize, bytes: &[u8]) {
    let end = offset + bytes.len();
    if image.len() < end {
        image.resize(end, 0);
    }
    image[offset..end].copy_from_slice(bytes);
}

/// Decides what of one unsynced data op reached the disk before the power
/// went, and applies that to `image` (the file as the disk will have it).
pub(super) fn land_at_cut(rng: &mut fastrand::Rng, image: &mut Vec<u8>, op: DataOp) {
    match op {
        DataOp::Truncate { length } => {
            // Metadata: it committed or it did not.
            if rng.bool() {
                image.resize(length, 0);
            }
        }
        DataOp::Write { offset, bytes } => {
            let end = offset + bytes.len();
            match rng.u32(0..16) {
                // The new length committed, the data blocks were never written.
                0 => {
                    if image.len() < end {
                        image.resize(end, 0);
                    }
                }
                // Dropped entirely.
                1..=5 => {}
                // Torn: each sector independently.
                6..=10 => tear(rng, image, offset, &bytes),
                // Kept.
                _ => write_at(image, offset, &bytes),
            }
        }
    }
}

/// Lands a random subset of the sectors a write covered (sectors aligned
/// to absolute file offsets); a file it extended ends after the last one
/// that landed, or sometimes at the write's end (its length committed
/// anyway).
pub(super) fn tear(rng: &mut fastrand::Rng, image: &mut Vec<u8>, offset: usize, bytes: &[u8]) {
    let end = offset + bytes.len();
    if bytes.is_empty() {
        return;
    }
    let first_sector = offset / SECTOR_BYTES;
    let last_sector = (end - 1) / SECTOR_BYTES;
    for sector in first_sector..=last_sector {
        let low = (sector * SECTOR_BYTES).max(offset);
        let high = ((sector + 1) * SECTOR_BYTES).min(end);
        if rng.bool() {
            write_at(image, low, &bytes[low - offset..high - offset]);
        }
    }
    if rng.u32(0..4) == 0 && image.len() < end {
        image.resize(end, 0);
    }
}

/// Applies one directory change to a namespace.
pub(super) fn apply_name_op(names: &mut BTreeMap<PathBuf, InodeId>, op: NameOp) {
    match op {
        NameOp::Link { path, inode } => {
            names.insert(path, inode);
        }
        NameOp::Unlink { path } => {
            names.remove(&path);
        }
        NameOp::Rename { from, to, inode } => {
            names.remove(&from);
            names.insert(to, inode);
        }
    }
}

impl State {
    /// A fresh, empty disk's state whose every random choice comes from `seed`.
    pub(super) fn new(seed: u64) -> Self {
        State {
            rng: fastrand::Rng::with_seed(seed),
            directories: BTreeSet::new(),
            current_names: BTreeMap::new(),
            durable_names: BTreeMap::new(),
            pending_names: BTreeMap::new(),
            inodes: BTreeMap::new(),
            next_inode: 1,
            generation: 0,
            locks: BTreeMap::new(),
            next_lock_token: 1,
            off: false,
            power_cut_at: None,
            mutating_calls: 0,
            fault_rate: (0, 1),
            targeted_faults: Vec::new(),
        }
    }

    /// Fails if the machine is off.
    pub(super) fn check_on(&self) -> io::Result<()> {
        if self.off { Err(machine_off()) } else { Ok(()) }
    }

    /// Fails if the machine is off or the handle predates the last cut.
    pub(super) fn check_handle(&self, generation: u64) -> io::Result<()> {
        self.check_on()?;
        if generation == self.generation { Ok(()) } else { Err(power_was_cut()) }
    }

    /// Counts a mutating call and decides whether it runs, fails or is where
    /// the power goes out. `paths` are what targeted faults match against.
    pub(super) fn admit(&mut self, op: SimOp, paths: &[&Path]) -> Gate {
        let index = self.mutating_calls;
        self.mutating_calls += 1;
        if self.power_cut_at.is_some_and(|at| index >= at) {
            return Gate::Cut;
        }
        let targeted = self.targeted_faults.iter().position(|fault| {
            fault.op == op
                && paths.iter().any(|path| path.to_string_lossy().contains(&fault.path_substring))
        });
        if let Some(position) = targeted {
            let fault = &mut self.targeted_faults[position];
            let error = fault.fault.to_error();
            fault.remaining = fault.remaining.saturating_sub(1);
            if fault.remaining == 0 {
                self.targeted_faults.remove(position);
            }
            return Gate::Fail(error);
        }
        let (numerator, denominator) = self.fault_rate;
        if numerator > 0 && denominator > 0 && self.rng.u32(0..denominator) < numerator {
            let fault = if self.rng.bool() { SimFault::Eio } else { SimFault::Enospc };
            return Gate::Fail(fault.to_error());
        }
        Gate::Proceed
    }

    /// Counts a mutating call ([`State::admit`]) that has nothing to do
    /// before it fails: an error if the power goes out instead of it or an
    /// injected fault fails it (a failed sync leaves its data unsynced, and
    /// nothing else changes anything before it fails).
    pub(super) fn enter(&mut self, op: SimOp, paths: &[&Path]) -> io::Result<()> {
        match self.admit(op, paths) {
            Gate::Proceed => Ok(()),
            Gate::Cut => Err(self.cut_and_switch_off()),
            Gate::Fail(error) => Err(error),
        }
    }

    /// Cuts the power and leaves the machine off; returns the error the
    /// interrupted call reports.
    pub(super) fn cut_and_switch_off(&mut self) -> io::Error {
        self.power_cut();
        self.off = true;
        machine_off()
    }

    /// Whether `path` is a directory: created ones, plus the root and the
    /// empty path (the directory of bare names), which always exist.
    pub(super) fn is_dir(&self, path: &Path) -> bool {
        path.parent().is_none() || self.directories.contains(path)
    }

    /// Fails if `path` is a directory, as opening or removing one as a file does.
    pub(super) fn check_not_dir(&self, path: &Path) -> io::Result<()> {
        if self.is_dir(path) {
            Err(io::Error::new(io::ErrorKind::IsADirectory, "is a directory"))
        } else {
            Ok(())
        }
    }

    /// Fails unless `path` is a directory, as listing or syncing one does.
    pub(super) fn check_dir(&self, path: &Path) -> io::Result<()> {
        if self.is_dir(path) {
            Ok(())
        } else if self.current_names.contains_key(path) {
            Err(io::Error::new(io::ErrorKind::NotADirectory, "not a directory"))
        } else {
            Err(io::Error::new(io::ErrorKind::NotFound, "no such directory"))
        }
    }

    /// Fails unless `path`'s directory exists, as opening in a missing
    /// directory does.
    pub(super) fn check_parent(&self, path: &Path) -> io::Result<()> {
        let parent = parent_of(path);
        if self.is_dir(&parent) {
            Ok(())
        } else if self.current_names.contains_key(&parent) {
            Err(io::Error::new(io::ErrorKind::NotADirectory, "a parent is a file"))
        } else {
            Err(io::Error::new(io::ErrorKind::NotFound, "no such directory"))
        }
    }

    /// Creates an empty file at the normalised `path` (its name unsynced).
    pub(super) fn create_file(&mut self, path: &Path) -> io::Result<InodeId> {
        self.check_parent(path)?;
        if self.is_dir(path) || self.current_names.contains_key(path) {
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, "the path exists"));
        }
        let inode = self.next_inode;
        self.next_inode += 1;
        self.inodes.insert(inode, Inode::default());
        self.current_names.insert(path.to_path_buf(), inode);
        self.pending_names
            .entry(parent_of(path))
            .or_default()
            .push(NameOp::Link { path: path.to_path_buf(), inode });
        Ok(inode)
    }

    /// The inode a handle writes to.
    pub(super) fn inode_mut(&mut self, inode: InodeId) -> io::Result<&mut Inode> {
        // Inodes are only pruned at a cut, and handles from before a cut are
        // refused first; this error would be a bug in the simulation.
        self.inodes
            .get_mut(&inode)
            .ok_or_else(|| io::Error::other("simulated disk: a live handle lost its inode"))
    }

    /// Writes `bytes` at `offset` of an inode (its end for `None`) as an
    /// unsynced op.
    pub(super) fn write_to(
        &mut self,
        inode: InodeId,
        offset: Option<usize>,
        bytes: &[u8],
    ) -> io::Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        let inode = self.inode_mut(inode)?;
        let offset = offset.unwrap_or(inode.current.len());
        write_at(&mut inode.current, offset, bytes);
        inode.pending.push(DataOp::Write { offset, bytes: bytes.to_vec() });
        Ok(())
    }

    /// The power goes out and comes back: decides what of every unsynced
    /// change landed, then everything current becomes what landed.
    pub(super) fn power_cut(&mut self) {
        let rng = &mut self.rng;
        for inode in self.inodes.values_mut() {
            let pending = std::mem::take(&mut inode.pending);
            if pending.is_empty() {
                inode.current = inode.durable.clone();
                continue;
            }
            let mut image = std::mem::take(&mut inode.durable);
            for op in pending {
                land_at_cut(rng, &mut image, op);
            }
            inode.current = image.clone();
            inode.durable = image;
        }
        for (_directory, ops) in std::mem::take(&mut self.pending_names) {
            let landed = self.rng.usize(0..=ops.len());
            for op in ops.into_iter().take(landed) {
                apply_name_op(&mut self.durable_names, op);
            }
        }
        self.current_names = self.durable_names.clone();
        let live: BTreeSet<InodeId> = self.durable_names.values().copied().collect();
        self.inodes.retain(|inode, _| live.contains(inode));
        self.locks.clear();
        self.generation += 1;
    }

    /// A handle on `inode`, opened through `path`, valid until the next cut.
    pub(super) fn handle(
        &self,
        state: &Arc<Mutex<State>>,
        inode: InodeId,
        path: PathBuf,
    ) -> Box<SimFile> {
        Box::new(SimFile { state: Arc::clone(state), inode, generation: self.generation, path })
    }
}
