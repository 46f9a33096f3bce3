//! A deterministic simulated disk behind the store's file-system seam
//! ([`FileSystem`]), so tests can cut the power at any point and check that
//! recovery copes with exactly what a real Linux file system may have kept.
//!
//! What it models, and why:
//!
//! * **Data.** Each file (an inode) has the content calls see (`current`),
//!   the content that would survive a power cut (`durable`), and the ordered
//!   writes (appends, or at an offset) and truncates made since its last
//!   [`WritableFile::sync`]. A sync makes the current content durable. A
//!   power cut decides, op by op, which unsynced ops reached the platter: each
//!   is kept or dropped, a write may also be torn at 512-byte sector
//!   boundaries (sectors are aligned to absolute file offsets, each persists
//!   or not on its own), and now and then a write past the end has its new
//!   length land without its data (the file grows by zeros).
//!   Bytes that never landed below the new end of a file read back as zeros.
//!   A file with nothing unsynced is never touched by a cut, and no cut
//!   changes bytes below the lowest offset an unsynced op touched.
//! * **Names.** Directories (made by [`FileSystem::create_dir_all`]) are
//!   always durable. Creating, renaming and removing a file changes the
//!   current namespace at once and queues the change on its directory;
//!   [`FileSystem::sync_dir`] makes that directory's queue durable. A power
//!   cut keeps a random in-order prefix of each directory's queue (journaling
//!   file systems commit metadata in order). A rename between two directories
//!   is queued as a removal in one and an addition in the other, so a cut may
//!   keep either, both or neither: the store should not rely on more.
//! * **Handles** write to their inode, not to a path (a renamed or removed
//!   file's open handle keeps working, as in POSIX). Handles opened before a
//!   cut fail every call afterwards, like file descriptors of a process that
//!   died with the machine.
//! * **The machine being off** ([`SimDisk::set_power_cut_at`]): a cut at a
//!   chosen mutating call, after which every call fails until
//!   [`SimDisk::power_on`], so the code under test stops exactly there.
//! * **Faults** ([`SimDisk::set_fault_rate`], [`SimDisk::fail_calls_matching`]):
//!   EIO or ENOSPC on mutating calls. A failed write may have written a
//!   prefix of its bytes first (unsynced); a failed sync leaves its data
//!   unsynced; a failed create, rename, removal, truncate or directory sync
//!   changes nothing.
//!
//! All randomness comes from one PRNG seeded by [`SimDisk::new`]: the same
//! seed and the same sequence of calls give the same results, so a failure
//! replays from its seed.
//!
//! Include it from a test binary with
//! `#[path = "common/sim_disk.rs"] mod sim_disk;`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use points::durability::file_system::{FileSystem, LockGuard, WritableFile};

/// The unit in which an unsynced write can be torn by a power cut: real
/// disks write whole sectors atomically, never half of one.
pub const SECTOR_BYTES: usize = 512;

/// The message of every error returned while the machine is off, so tests can
/// tell a simulated power loss from a real failure.
pub const MACHINE_OFF: &str = "simulated disk: the machine is off (the power was cut)";

/// The message of every error returned by a handle opened before a power
/// cut, so tests can tell a stale handle from a real failure.
pub const POWER_WAS_CUT: &str =
    "simulated disk: the power was cut after this handle was opened; it is gone";

/// The mutating calls of the seam, to aim targeted faults and to name the
/// calls that count towards [`SimDisk::mutating_calls`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SimOp {
    /// [`FileSystem::create_new`].
    CreateNew,
    /// [`FileSystem::open_append`].
    OpenAppend,
    /// [`WritableFile::append`] or [`WritableFile::write_at`].
    Write,
    /// [`WritableFile::sync`].
    Sync,
    /// [`WritableFile::truncate`].
    Truncate,
    /// [`FileSystem::rename`].
    Rename,
    /// [`FileSystem::remove_file`].
    RemoveFile,
    /// [`FileSystem::sync_dir`].
    SyncDir,
    /// [`FileSystem::try_lock`].
    TryLock,
}

/// The errors the simulated disk injects: the two a real disk returns to
/// the store's kind of calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SimFault {
    /// An I/O error (`EIO`): the device failed.
    Eio,
    /// No space left on the device (`ENOSPC`).
    Enospc,
}

impl SimFault {
    /// The `io::Error` a real system call would return for this fault, with
    /// its raw OS error code, so code under test sees exactly what it would
    /// in production.
    pub fn to_error(self) -> io::Error {
        match self {
            SimFault::Eio => io::Error::from_raw_os_error(libc::EIO),
            SimFault::Enospc => io::Error::from_raw_os_error(libc::ENOSPC),
        }
    }
}

/// A deterministic simulated disk; see the module documentation for what it
/// models. Shared by every thread of the code under test and by the test
/// itself, which inspects and cuts it.
pub struct SimDisk {
    /// The seed the PRNG started from, to print in failure messages.
    seed: u64,
    /// Everything else. Handles and lock guards share it, so they keep
    /// working (or fail properly) whatever the test does with the disk.
    state: Arc<Mutex<State>>,
}

/// Which file an inode number is: handles and names refer to inodes.
type InodeId = u64;

/// The disk's whole state, behind one mutex.
struct State {
    /// The only source of randomness, so a seed replays a run.
    rng: fastrand::Rng,
    /// Directories, always durable. Keys are normalised paths.
    directories: BTreeSet<PathBuf>,
    /// File names as calls see them.
    current_names: BTreeMap<PathBuf, InodeId>,
    /// File names as they would survive a power cut.
    durable_names: BTreeMap<PathBuf, InodeId>,
    /// Per directory, the name changes since its last sync, oldest first.
    pending_names: BTreeMap<PathBuf, Vec<NameOp>>,
    /// Every inode that a name (current or durable) or a live handle may
    /// refer to; pruned to the durable ones at each cut.
    inodes: BTreeMap<InodeId, Inode>,
    /// The number the next inode gets.
    next_inode: InodeId,
    /// Bumped at each power cut; handles remember the one they were opened
    /// in, so older handles can be refused.
    generation: u64,
    /// Held lock paths, each with the token of the guard holding it, so an
    /// old guard dropped after a cut cannot release a newer holder's lock.
    locks: BTreeMap<PathBuf, u64>,
    /// The token the next lock guard gets.
    next_lock_token: u64,
    /// Whether the machine is off: every call fails until power-on.
    off: bool,
    /// The mutating call index at which to cut the power, if any.
    power_cut_at: Option<u64>,
    /// How many mutating calls were accepted so far.
    mutating_calls: u64,
    /// Random faults: each mutating call fails with probability
    /// numerator / denominator.
    fault_rate: (u32, u32),
    /// Targeted faults, checked in the order they were added.
    targeted_faults: Vec<TargetedFault>,
}

/// A change to a directory's entries, queued until the directory is synced.
#[derive(Debug, Clone)]
enum NameOp {
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
struct Inode {
    /// What reads return.
    current: Vec<u8>,
    /// What survived the last sync (or power cut).
    durable: Vec<u8>,
    /// The changes since then, oldest first; a power cut decides which land.
    pending: Vec<DataOp>,
}

/// An unsynced change to a file's data.
#[derive(Debug, Clone)]
enum DataOp {
    /// `bytes` were written at `offset` (for an append, the file's length
    /// at the time).
    Write { offset: usize, bytes: Vec<u8> },
    /// The file's length was set to `length` (cut, or extended by zeros).
    Truncate { length: usize },
}

/// A fault a test asked for: the next `remaining` calls of `op` whose path
/// contains `path_substring` fail with `fault`.
#[derive(Debug, Clone)]
struct TargetedFault {
    op: SimOp,
    path_substring: String,
    fault: SimFault,
    remaining: u32,
}

/// What a mutating call may do after the disk has counted it.
enum Gate {
    /// Go ahead.
    Proceed,
    /// The power goes out instead of this call.
    Cut,
    /// Fail with this injected fault.
    Fail(io::Error),
}

/// The error of every call while the machine is off.
fn machine_off() -> io::Error {
    io::Error::other(MACHINE_OFF)
}

/// The error of every call on a handle opened before a power cut.
fn power_was_cut() -> io::Error {
    io::Error::other(POWER_WAS_CUT)
}

/// Locks the state, ignoring poisoning: a test that panicked with the lock
/// held must not turn every later call into a second, confusing panic.
fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The key a path is stored under: `a//b/./c/` and `a/b/c` are one file.
fn key(path: &Path) -> PathBuf {
    path.components().collect()
}

/// The directory holding `path` (the empty path for a bare name).
fn parent_of(path: &Path) -> PathBuf {
    path.parent().map(Path::to_path_buf).unwrap_or_default()
}

/// Writes `bytes` at `offset` of `image`, growing it with zeros as needed:
/// how data that lands past a gap reads back.
fn write_at(image: &mut Vec<u8>, offset: usize, bytes: &[u8]) {
    let end = offset + bytes.len();
    if image.len() < end {
        image.resize(end, 0);
    }
    image[offset..end].copy_from_slice(bytes);
}

/// Decides what of one unsynced data op reached the disk before the power
/// went, and applies that to `image` (the file as the disk will have it).
fn land_at_cut(rng: &mut fastrand::Rng, image: &mut Vec<u8>, op: DataOp) {
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
fn tear(rng: &mut fastrand::Rng, image: &mut Vec<u8>, offset: usize, bytes: &[u8]) {
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
fn apply_name_op(names: &mut BTreeMap<PathBuf, InodeId>, op: NameOp) {
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
    /// Fails if the machine is off.
    fn check_on(&self) -> io::Result<()> {
        if self.off { Err(machine_off()) } else { Ok(()) }
    }

    /// Fails if the machine is off or the handle predates the last cut.
    fn check_handle(&self, generation: u64) -> io::Result<()> {
        self.check_on()?;
        if generation == self.generation { Ok(()) } else { Err(power_was_cut()) }
    }

    /// Counts a mutating call and decides whether it runs, fails or is where
    /// the power goes out. `paths` are what targeted faults match against.
    fn admit(&mut self, op: SimOp, paths: &[&Path]) -> Gate {
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

    /// Cuts the power and leaves the machine off; returns the error the
    /// interrupted call reports.
    fn cut_and_switch_off(&mut self) -> io::Error {
        self.power_cut();
        self.off = true;
        machine_off()
    }

    /// Whether `path` is a directory: created ones, plus the root and the
    /// empty path (the directory of bare names), which always exist.
    fn is_dir(&self, path: &Path) -> bool {
        path.parent().is_none() || self.directories.contains(path)
    }

    /// Fails unless `path`'s directory exists, as opening in a missing
    /// directory does.
    fn check_parent(&self, path: &Path) -> io::Result<()> {
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
    fn create_file(&mut self, path: &Path) -> io::Result<InodeId> {
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
    fn inode_mut(&mut self, inode: InodeId) -> io::Result<&mut Inode> {
        // Inodes are only pruned at a cut, and handles from before a cut are
        // refused first; this error would be a bug in the simulation.
        self.inodes
            .get_mut(&inode)
            .ok_or_else(|| io::Error::other("simulated disk: a live handle lost its inode"))
    }

    /// Writes `bytes` at `offset` of an inode (its end for `None`) as an
    /// unsynced op.
    fn write_to(&mut self, inode: InodeId, offset: Option<usize>, bytes: &[u8]) -> io::Result<()> {
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
    fn power_cut(&mut self) {
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
    fn handle(&self, state: &Arc<Mutex<State>>, inode: InodeId, path: PathBuf) -> Box<SimFile> {
        Box::new(SimFile { state: Arc::clone(state), inode, generation: self.generation, path })
    }
}

impl SimDisk {
    /// A fresh, empty disk whose every random choice comes from `seed`.
    pub fn new(seed: u64) -> Arc<SimDisk> {
        let state = State {
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
        };
        Arc::new(SimDisk { seed, state: Arc::new(Mutex::new(state)) })
    }

    /// Cuts the power and brings it straight back: every unsynced data op is
    /// kept, dropped or torn, each directory keeps an in-order prefix of its
    /// unsynced name changes, locks are released and every handle opened
    /// before now fails from then on. Synced data is never altered.
    pub fn power_cut(&self) {
        lock(&self.state).power_cut();
    }

    /// Cuts the power at the mutating call with index `call_index` (counting
    /// from 0, as [`SimDisk::mutating_calls`] does) instead of running that
    /// call, then keeps the machine off until [`SimDisk::power_on`], so the
    /// code under test stops exactly there. An index already passed cuts at
    /// the next mutating call. A write cut this way may first have put a
    /// random prefix of its bytes in the cache (unsynced).
    pub fn set_power_cut_at(&self, call_index: u64) {
        lock(&self.state).power_cut_at = Some(call_index);
    }

    /// Turns the machine back on after [`SimDisk::set_power_cut_at`] fired
    /// (and forgets that cut point), so recovery can run on what was kept.
    pub fn power_on(&self) {
        let mut state = lock(&self.state);
        state.off = false;
        state.power_cut_at = None;
    }

    /// Whether the machine is off (a planned cut fired and no power-on yet),
    /// so a test knows its crash point was reached.
    pub fn is_off(&self) -> bool {
        lock(&self.state).off
    }

    /// How many mutating calls (see [`SimOp`]) the disk accepted so far,
    /// calls that failed included, calls refused because the machine was off
    /// or the handle stale excluded: a dry run's count bounds the crash
    /// points worth trying.
    pub fn mutating_calls(&self) -> u64 {
        lock(&self.state).mutating_calls
    }

    /// Makes each mutating call fail with probability `numerator /
    /// denominator`, with EIO or ENOSPC at random; `(0, 1)` turns random
    /// faults off. A failed write may have written a prefix of its bytes
    /// (unsynced); other failed calls change nothing.
    pub fn set_fault_rate(&self, numerator: u32, denominator: u32) {
        lock(&self.state).fault_rate = (numerator, denominator);
    }

    /// Makes the next `times` calls of `op` whose path contains
    /// `path_substring` fail with `fault` (`u32::MAX` for ever), for tests of
    /// one exact failure such as "the next journal create_new hits ENOSPC".
    /// A rename matches on either path; a handle's calls match on the path it
    /// was opened with. Targeted faults are checked before random ones.
    pub fn fail_calls_matching(
        &self,
        op: SimOp,
        path_substring: &str,
        fault: SimFault,
        times: u32,
    ) {
        if times == 0 {
            return;
        }
        lock(&self.state).targeted_faults.push(TargetedFault {
            op,
            path_substring: path_substring.to_owned(),
            fault,
            remaining: times,
        });
    }

    /// Removes every random and targeted fault, so recovery after a faulty
    /// run can proceed on a healthy disk.
    pub fn clear_faults(&self) {
        let mut state = lock(&self.state);
        state.fault_rate = (0, 1);
        state.targeted_faults.clear();
    }

    /// Every file that would survive a power cut now, with the content it
    /// would have if no unsynced op landed: what a test compares with its
    /// model after a cut.
    pub fn durable_files(&self) -> BTreeMap<PathBuf, Vec<u8>> {
        let state = lock(&self.state);
        state
            .durable_names
            .iter()
            .filter_map(|(path, inode)| {
                state.inodes.get(inode).map(|inode| (path.clone(), inode.durable.clone()))
            })
            .collect()
    }

    /// Every file as calls see it now.
    pub fn current_files(&self) -> BTreeMap<PathBuf, Vec<u8>> {
        let state = lock(&self.state);
        state
            .current_names
            .iter()
            .filter_map(|(path, inode)| {
                state.inodes.get(inode).map(|inode| (path.clone(), inode.current.clone()))
            })
            .collect()
    }

    /// Damages the synced byte at `offset` of the durable file `path` (xor
    /// with `xor_mask`), for tests that recovery refuses real corruption.
    /// If the file has no unsynced changes, reads see the damage at once;
    /// otherwise after the next cut.
    pub fn corrupt_durable(&self, path: &Path, offset: u64, xor_mask: u8) -> io::Result<()> {
        let mut state = lock(&self.state);
        let path = key(path);
        let inode = *state
            .durable_names
            .get(&path)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such durable file"))?;
        let inode = state.inode_mut(inode)?;
        let offset = usize::try_from(offset)
            .ok()
            .filter(|offset| *offset < inode.durable.len())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "past the durable end"))?;
        inode.durable[offset] ^= xor_mask;
        if inode.pending.is_empty() {
            inode.current[offset] ^= xor_mask;
        }
        Ok(())
    }
}

impl fmt::Debug for SimDisk {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.debug_struct("SimDisk").field("seed", &self.seed).finish_non_exhaustive()
    }
}

impl FileSystem for SimDisk {
    /// Directories are always durable and never fail by injection: the store
    /// makes them once, and faults there would test nothing interesting.
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        let mut state = lock(&self.state);
        state.check_on()?;
        let path = key(path);
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
        let mut state = lock(&self.state);
        state.check_on()?;
        let path = key(path);
        match state.admit(SimOp::TryLock, &[&path]) {
            Gate::Proceed => {}
            Gate::Cut => return Err(state.cut_and_switch_off()),
            Gate::Fail(error) => return Err(error),
        }
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
        let mut state = lock(&self.state);
        state.check_on()?;
        let path = key(path);
        if !state.is_dir(&path) {
            return Err(if state.current_names.contains_key(&path) {
                io::Error::new(io::ErrorKind::NotADirectory, "not a directory")
            } else {
                io::Error::new(io::ErrorKind::NotFound, "no such directory")
            });
        }
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
        let state = lock(&self.state);
        state.check_on()?;
        let path = key(path);
        if state.is_dir(&path) {
            return Err(io::Error::new(io::ErrorKind::IsADirectory, "is a directory"));
        }
        let inode = state
            .current_names
            .get(&path)
            .and_then(|inode| state.inodes.get(inode))
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such file"))?;
        Ok(inode.current.clone())
    }

    fn create_new(&self, path: &Path) -> io::Result<Box<dyn WritableFile>> {
        let mut state = lock(&self.state);
        state.check_on()?;
        let path = key(path);
        match state.admit(SimOp::CreateNew, &[&path]) {
            Gate::Proceed => {}
            Gate::Cut => return Err(state.cut_and_switch_off()),
            Gate::Fail(error) => return Err(error),
        }
        let inode = state.create_file(&path)?;
        Ok(state.handle(&self.state, inode, path))
    }

    fn open_append(&self, path: &Path) -> io::Result<Box<dyn WritableFile>> {
        let mut state = lock(&self.state);
        state.check_on()?;
        let path = key(path);
        match state.admit(SimOp::OpenAppend, &[&path]) {
            Gate::Proceed => {}
            Gate::Cut => return Err(state.cut_and_switch_off()),
            Gate::Fail(error) => return Err(error),
        }
        if state.is_dir(&path) {
            return Err(io::Error::new(io::ErrorKind::IsADirectory, "is a directory"));
        }
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
        match state.admit(SimOp::Rename, &[&from, &to]) {
            Gate::Proceed => {}
            Gate::Cut => return Err(state.cut_and_switch_off()),
            Gate::Fail(error) => return Err(error),
        }
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
        let mut state = lock(&self.state);
        state.check_on()?;
        let path = key(path);
        match state.admit(SimOp::RemoveFile, &[&path]) {
            Gate::Proceed => {}
            Gate::Cut => return Err(state.cut_and_switch_off()),
            Gate::Fail(error) => return Err(error),
        }
        if state.is_dir(&path) {
            return Err(io::Error::new(io::ErrorKind::IsADirectory, "is a directory"));
        }
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
        let mut state = lock(&self.state);
        state.check_on()?;
        let path = key(path);
        match state.admit(SimOp::SyncDir, &[&path]) {
            Gate::Proceed => {}
            Gate::Cut => return Err(state.cut_and_switch_off()),
            Gate::Fail(error) => return Err(error),
        }
        if !state.is_dir(&path) {
            return Err(if state.current_names.contains_key(&path) {
                io::Error::new(io::ErrorKind::NotADirectory, "not a directory")
            } else {
                io::Error::new(io::ErrorKind::NotFound, "no such directory")
            });
        }
        let ops = state.pending_names.remove(&path).unwrap_or_default();
        for op in ops {
            apply_name_op(&mut state.durable_names, op);
        }
        Ok(())
    }
}

/// A file handle of the simulated disk: writes to its inode, whatever names
/// it has now, until the next power cut.
struct SimFile {
    /// The disk's state.
    state: Arc<Mutex<State>>,
    /// The file written to.
    inode: InodeId,
    /// The power-cut generation the handle was opened in.
    generation: u64,
    /// The (normalised) path it was opened with, for targeted faults.
    path: PathBuf,
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
        match state.admit(SimOp::Sync, &[&self.path]) {
            Gate::Proceed => {}
            Gate::Cut => return Err(state.cut_and_switch_off()),
            // The data stays unsynced: a later cut may drop it.
            Gate::Fail(error) => return Err(error),
        }
        let inode = state.inode_mut(self.inode)?;
        inode.durable = inode.current.clone();
        inode.pending.clear();
        Ok(())
    }

    fn truncate(&mut self, length_bytes: u64) -> io::Result<()> {
        let mut state = lock(&self.state);
        state.check_handle(self.generation)?;
        match state.admit(SimOp::Truncate, &[&self.path]) {
            Gate::Proceed => {}
            Gate::Cut => return Err(state.cut_and_switch_off()),
            Gate::Fail(error) => return Err(error),
        }
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
