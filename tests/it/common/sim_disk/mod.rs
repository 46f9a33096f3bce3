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

mod file_system;
mod state;

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use state::{InodeId, State, TargetedFault, key, lock};

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

impl SimDisk {
    /// A fresh, empty disk whose every random choice comes from `seed`.
    pub fn new(seed: u64) -> Arc<SimDisk> {
        let state = State::new(seed);
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
        self.files(true)
    }

    /// Every file as calls see it now.
    pub fn current_files(&self) -> BTreeMap<PathBuf, Vec<u8>> {
        self.files(false)
    }

    /// Every durable file with its durable content, or every current file
    /// with its current content.
    fn files(&self, durable: bool) -> BTreeMap<PathBuf, Vec<u8>> {
        let state = lock(&self.state);
        let names = if durable { &state.durable_names } else { &state.current_names };
        let content = |inode: &InodeId| {
            let inode = state.inodes.get(inode)?;
            Some(if durable { inode.durable.clone() } else { inode.current.clone() })
        };
        names.iter().filter_map(|(path, inode)| Some((path.clone(), content(inode)?))).collect()
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
