//! The users a store holds in memory: one ledger per user behind its own
//! lock, and how calls on the async runtime take those locks.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard, TryLockError};

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
}

impl StoredPosition {
    /// At `seq`, not stale.
    pub(crate) fn at(seq: u64) -> Self {
        Self { seq: AtomicU64::new(seq), stale: AtomicBool::new(false) }
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
