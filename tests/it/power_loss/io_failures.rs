//! Single I/O failures and stalls of the simulated disk, aimed at one
//! operation: a stalled disk's backlog is bounded, and a failed snapshot or
//! segment creation leaves no partial file.

use super::{epoch, options};
use crate::common::sim_disk::{SimDisk, SimFault, SimOp};

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chrono::TimeDelta;
use points::{
    FileSystem, FsyncPolicy, LockGuard, Storage, Store, StoreError, StoreOptions, WritableFile,
};
use points::{PayerName, UserId};

/// A disk whose syncs can be held, to stand for one that stalls.
#[derive(Debug)]
struct StallingDisk {
    inner: Arc<SimDisk>,
    held: Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>,
}

impl StallingDisk {
    fn hold(&self, held: bool) {
        *self.held.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = held;
        self.held.1.notify_all();
    }
}

struct StallingFile {
    inner: Box<dyn WritableFile>,
    held: Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>,
}

impl WritableFile for StallingFile {
    fn append(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.inner.append(bytes)
    }

    fn write_at(&mut self, offset: u64, bytes: &[u8]) -> std::io::Result<()> {
        self.inner.write_at(offset, bytes)
    }

    fn sync(&mut self) -> std::io::Result<()> {
        let (held, released) = &*self.held;
        let mut guard = held.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        while *guard {
            guard = released.wait(guard).unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        self.inner.sync()
    }

    fn truncate(&mut self, length_bytes: u64) -> std::io::Result<()> {
        self.inner.truncate(length_bytes)
    }
}

impl FileSystem for StallingDisk {
    fn create_dir_all(&self, path: &Path) -> std::io::Result<()> {
        self.inner.create_dir_all(path)
    }
    fn try_lock(&self, path: &Path) -> std::io::Result<Option<LockGuard>> {
        self.inner.try_lock(path)
    }
    fn list(&self, path: &Path) -> std::io::Result<Vec<String>> {
        self.inner.list(path)
    }
    fn read(&self, path: &Path) -> std::io::Result<Vec<u8>> {
        self.inner.read(path)
    }
    fn create_new(&self, path: &Path) -> std::io::Result<Box<dyn WritableFile>> {
        let inner = self.inner.create_new(path)?;
        Ok(Box::new(StallingFile { inner, held: Arc::clone(&self.held) }))
    }
    fn open_append(&self, path: &Path) -> std::io::Result<Box<dyn WritableFile>> {
        let inner = self.inner.open_append(path)?;
        Ok(Box::new(StallingFile { inner, held: Arc::clone(&self.held) }))
    }
    fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
        self.inner.rename(from, to)
    }
    fn remove_file(&self, path: &Path) -> std::io::Result<()> {
        self.inner.remove_file(path)
    }
    fn sync_dir(&self, path: &Path) -> std::io::Result<()> {
        self.inner.sync_dir(path)
    }
    fn new_salt(&self) -> u64 {
        self.inner.new_salt()
    }
}

/// While the disk stalls, appended bytes pile up only to the backlog limit:
/// past it, writes are refused with JOURNAL_BACKLOG before they change
/// anything, also when the callers that filled it gave up waiting; once the
/// disk catches up, exactly the admitted writes are there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_disk_turns_into_journal_backlog_refusals_that_change_nothing() {
    let disk = Arc::new(StallingDisk {
        inner: SimDisk::new(7),
        held: Arc::new((std::sync::Mutex::new(false), std::sync::Condvar::new())),
    });
    let mut options = options(disk.clone(), FsyncPolicy::Always);
    if let Storage::Durable(durable) = &mut options.storage {
        durable.max_journal_backlog_bytes = 2048;
    }
    let (store, _) = Store::open(&options).expect("open");
    let store = Arc::new(store);
    disk.hold(true);
    let mut admitted = 0u64;
    let mut refused = 0u64;
    let timestamp = epoch();
    // Each write waits for a disk that does not answer; its caller gives
    // up after a moment (a cancelled call), which must not free room.
    for _ in 0..400 {
        let store = Arc::clone(&store);
        let attempt = tokio::time::timeout(Duration::from_millis(2), async move {
            store
                .add_transaction(UserId::new("alice"), None, PayerName::new("DANNON"), 5, timestamp)
                .await
        })
        .await;
        match attempt {
            Err(_elapsed) => admitted += 1,
            Ok(Err(StoreError::Busy { reason, message })) => {
                assert_eq!(reason, "JOURNAL_BACKLOG");
                assert!(message.contains("--max-journal-backlog-bytes"), "{message}");
                refused += 1;
            }
            Ok(other) => panic!("a write on a stalled disk finished: {other:?}"),
        }
    }
    assert!(refused > 0, "nothing was refused: the backlog is not bounded");
    assert!(admitted > 0 && admitted < 400, "admitted {admitted}");
    disk.hold(false);
    let transactions = store
        .read(UserId::new("alice"), |ledger| ledger.next_transaction_id() - 1)
        .await
        .expect("read once the disk caught up");
    assert_eq!(transactions, admitted, "refused writes left no trace, admitted ones all stayed");
    store.close();
    drop(store);
    let (store, _) = Store::open(&options).expect("reopen");
    let recovered = store
        .read(UserId::new("alice"), |ledger| ledger.next_transaction_id() - 1)
        .await
        .expect("read");
    assert_eq!(recovered, admitted);
    store.close();
}

/// A store on `disk` (`--fsync always`) in which alice received 10 DANNON
/// points a day for `days` days; also returns its options, to reopen it.
async fn store_with_daily_writes(disk: &Arc<SimDisk>, days: i64) -> (Store, StoreOptions) {
    let options = options(disk.clone(), FsyncPolicy::Always);
    let (store, _) = Store::open(&options).expect("open");
    for day in 0..days {
        let timestamp = epoch() + TimeDelta::days(day);
        store
            .add_transaction(UserId::new("alice"), None, PayerName::new("DANNON"), 10, timestamp)
            .await
            .expect("write");
    }
    (store, options)
}

/// A snapshot that fails part-way leaves no temporary file behind.
#[tokio::test]
async fn a_failed_snapshot_leaves_no_temporary_file() {
    let disk = SimDisk::new(11);
    let (store, _) = store_with_daily_writes(&disk, 20).await;
    for (op, kind) in [
        (SimOp::Write, SimFault::Enospc),
        (SimOp::Sync, SimFault::Eio),
        (SimOp::Rename, SimFault::Eio),
    ] {
        disk.fail_calls_matching(op, ".snap", kind, 1);
        let failed = store.snapshot_now();
        assert!(failed.is_err(), "{op:?} failing did not fail the snapshot");
        let leftovers: Vec<_> = disk
            .current_files()
            .into_keys()
            .filter(|path| path.to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{op:?}: left {leftovers:?}");
    }
    // The store still works and a later snapshot succeeds.
    store.snapshot_now().expect("a snapshot on a healthy disk");
    assert_eq!(store.read(UserId::new("alice"), |ledger| ledger.total()).await.expect("read"), 200);
    store.close();
}

/// A journal segment whose creation fails part-way is removed again, the
/// journal fails stop, and the directory opens afterwards with everything
/// acknowledged.
#[tokio::test]
async fn a_failed_segment_creation_leaves_no_partial_file() {
    let disk = SimDisk::new(13);
    let (store, options) = store_with_daily_writes(&disk, 3).await;
    let new_segment = format!("journal-{:020}.log", 4);
    disk.fail_calls_matching(SimOp::Write, &new_segment, SimFault::Enospc, 1);
    assert!(store.snapshot_now().is_err(), "the rotation cannot succeed");
    let names: Vec<_> = disk.current_files().into_keys().collect();
    assert!(
        !names.iter().any(|path| path.ends_with(&new_segment)),
        "a partial segment was left: {names:?}"
    );
    let refused = store
        .add_transaction(UserId::new("alice"), None, PayerName::new("DANNON"), 10, epoch())
        .await;
    assert!(matches!(refused, Err(StoreError::Unavailable(_))), "{refused:?}");
    store.close();
    drop(store);
    disk.clear_faults();
    let (store, _) = Store::open(&options).expect("reopen");
    assert_eq!(store.read(UserId::new("alice"), |ledger| ledger.total()).await.expect("read"), 30);
    store.close();
}
