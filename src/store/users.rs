//! The users a store holds in memory: one ledger per user behind its own
//! lock, and how calls on the async runtime take those locks.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard, TryLockError};

use dashmap::DashMap;

use super::StoreError;
use crate::ledger::Ledger;

/// One user's ledger and the sequence of the last journal record applied to
/// it (0 in memory), which snapshots and retries need.
#[derive(Debug, Default)]
pub(crate) struct UserLedger {
    pub(crate) ledger: Ledger,
    pub(crate) last_sequence: u64,
    /// How far a shared backend (a database other replicas write too) holds
    /// this user's records; unused by the embedded backend.
    pub(crate) stored: Arc<StoredPosition>,
    /// When the ledger next changes by itself, as last given to the store's
    /// deadlines (so that they are touched only when it changes).
    pub(crate) due_ms: Option<i64>,
}

/// Where a cached user stands against a shared backend: the place of the
/// last stored record chunk the ledger reflects, and whether the ledger has
/// gone stale (a record of it was refused as conflicting with another
/// replica's, or its fate is unknown), so that it must be dropped and
/// loaded anew. Atomics, so that the backend's committer updates them
/// without the user's lock.
#[derive(Debug, Default)]
pub(crate) struct StoredPosition {
    seq: AtomicU64,
    stale: AtomicBool,
    /// The chunk from which the next snapshot is counted: the last one the
    /// stored snapshot reflects (0: none), or where a failed one was tried.
    snapshot_seq: AtomicU64,
    /// Chunks stored after the snapshot past which a new one is due.
    snapshot_interval: AtomicU64,
    /// A snapshot of this user is being taken.
    snapshot_taking: AtomicBool,
    /// Writes left that first catch up with what other replicas stored
    /// (see [`StoredPosition::note_contention`]).
    contended_writes: AtomicU32,
    /// What the backend's row of when this user is next due holds, as of
    /// the chunk at the first number, as far as this replica knows (it
    /// wrote that chunk); `None`: unknown. Lets a chunk that leaves the due
    /// time as it was skip the row.
    deadline_row: Mutex<Option<(u64, Option<i64>)>>,
}

/// Writes of a user that first catch up after another replica was seen
/// writing them.
const CONTENDED_WRITES: u32 = 64;

impl StoredPosition {
    /// At `seq`, not stale.
    pub(crate) fn at(seq: u64) -> Self {
        Self { seq: AtomicU64::new(seq), ..Self::default() }
    }

    /// The place of the last stored chunk the ledger reflects (0: none).
    pub(crate) fn seq(&self) -> u64 {
        self.seq.load(Ordering::Acquire)
    }

    /// The ledger now reflects the stored chunk at `seq`.
    pub(crate) fn set_seq(&self, seq: u64) {
        debug_assert!(seq > self.seq(), "stored chunks are reflected in order");
        self.seq.store(seq, Ordering::Release);
    }

    /// Whether the ledger must be dropped and loaded anew.
    pub(crate) fn is_stale(&self) -> bool {
        self.stale.load(Ordering::Acquire)
    }

    /// The ledger may differ from what is stored: nobody may use it again.
    pub(crate) fn mark_stale(&self) {
        self.stale.store(true, Ordering::Release);
    }

    /// A snapshot reflecting the chunks up to `seq` is stored; the next is
    /// due `interval` chunks after it.
    pub(crate) fn set_snapshot(&self, seq: u64, interval: u64) {
        self.snapshot_interval.store(interval, Ordering::Relaxed);
        self.snapshot_seq.fetch_max(seq, Ordering::AcqRel);
    }

    /// Claims the taking of a snapshot if one is due (at least
    /// `min_interval` chunks after the last) and nobody is taking one; the
    /// claim ends with [`StoredPosition::snapshot_done`].
    pub(crate) fn claim_snapshot(&self, min_interval: u64) -> bool {
        let interval = self.snapshot_interval.load(Ordering::Relaxed).max(min_interval);
        let due = self.snapshot_seq.load(Ordering::Acquire).saturating_add(interval);
        self.seq() >= due
            && self
                .snapshot_taking
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
    }

    /// Another replica was seen writing this user (a conflict, or newer
    /// chunks caught up with): its next writes first catch up, as reads
    /// do, rather than be decided on a ledger that is likely behind, which
    /// would conflict and cost a reload. A user written through one replica
    /// only stops paying for that after [`CONTENDED_WRITES`] writes.
    pub(crate) fn note_contention(&self) {
        self.contended_writes.store(CONTENDED_WRITES, Ordering::Relaxed);
    }

    /// Whether a write should catch up first; counts it.
    pub(crate) fn take_contended_write(&self) -> bool {
        self.contended_writes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| left.checked_sub(1))
            .is_ok()
    }

    /// A snapshot could not be taken: the next is due after twice the
    /// interval (at least `min_interval`), counted from now, rather than at
    /// the next write.
    pub(crate) fn postpone_snapshot(&self, min_interval: u64) {
        let interval = self.snapshot_interval.load(Ordering::Relaxed).max(min_interval);
        self.snapshot_interval.store(interval.saturating_mul(2), Ordering::Relaxed);
        self.snapshot_seq.fetch_max(self.seq(), Ordering::AcqRel);
    }

    /// What the backend's due-time row holds right after the chunk at
    /// `seq`, if this replica knows: `Some(None)` for no row.
    pub(crate) fn deadline_row_after(&self, seq: u64) -> Option<Option<i64>> {
        let known = *self.deadline_row.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        known.filter(|(known_seq, _)| *known_seq == seq).map(|(_, due_ms)| due_ms)
    }

    /// The backend's due-time row holds `due_ms` as of the chunk at `seq`
    /// (`None`: unknown, such as after the row was changed by others).
    pub(crate) fn set_deadline_row(&self, known: Option<(u64, Option<i64>)>) {
        *self.deadline_row.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = known;
    }

    /// Ends a claim of [`StoredPosition::claim_snapshot`].
    pub(crate) fn snapshot_done(&self) {
        self.snapshot_taking.store(false, Ordering::Release);
    }
}

/// Every user's ledger, by user id.
pub(crate) type Users = DashMap<Arc<str>, Arc<RwLock<UserLedger>>>;

/// Every user with their ledger, collected so that no map shard stays locked
/// while each is visited.
pub(crate) fn collect_users(users: &Users) -> Vec<(Arc<str>, Arc<RwLock<UserLedger>>)> {
    users.iter().map(|entry| (Arc::clone(entry.key()), Arc::clone(entry.value()))).collect()
}

/// A user's read lock, taken by a call on the async runtime. Uncontended it
/// is taken at once; if a writer or a snapshot's encoding holds it, the wait
/// happens off the runtime's worker ([`off_runtime`]), so that calls of other
/// users keep being served meanwhile.
pub(crate) fn read_lock(
    user: &RwLock<UserLedger>,
) -> Result<RwLockReadGuard<'_, UserLedger>, StoreError> {
    match user.try_read() {
        Ok(guard) => Ok(guard),
        Err(TryLockError::WouldBlock) => off_runtime(|| user.read()).map_err(|_| poisoned()),
        Err(TryLockError::Poisoned(_)) => Err(poisoned()),
    }
}

/// A user's write lock, taken as [`read_lock`] takes the read lock.
pub(crate) fn write_lock(
    user: &RwLock<UserLedger>,
) -> Result<RwLockWriteGuard<'_, UserLedger>, StoreError> {
    match user.try_write() {
        Ok(guard) => Ok(guard),
        Err(TryLockError::WouldBlock) => off_runtime(|| user.write()).map_err(|_| poisoned()),
        Err(TryLockError::Poisoned(_)) => Err(poisoned()),
    }
}

/// Runs `wait` (blocking) so that it does not hold up the async runtime: on
/// a multi-threaded runtime the worker hands its other tasks to a new worker
/// first (`block_in_place`); elsewhere (a current-thread runtime, no
/// runtime) it simply runs.
pub(crate) fn off_runtime<T>(wait: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(wait)
        }
        _ => wait(),
    }
}

/// A panic while a ledger was being changed may have left it half-updated;
/// refusing every later call to it (fail-stop) beats serving a state nobody
/// vouches for.
pub(crate) fn poisoned() -> StoreError {
    StoreError::Unavailable(
        "the ledger is unavailable after an internal error; restart the server".to_owned(),
    )
}
