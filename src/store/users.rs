//! The users a store holds in memory: one ledger per user behind its own
//! lock, and how calls on the async runtime take those locks.

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
