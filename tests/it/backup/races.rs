//! `points-server backup` racing a server that changes its files: a
//! snapshot that removes the files being copied, or a read that races the
//! journal writer, makes the backup start over; a directory that never
//! stops changing, or damage read the same every time, makes it give up.

use super::{SMALL_SNAPSHOTS, copy_by_hand, sequence_of, write_until_a_new_snapshot};
use crate::common::ServerProcess;
use crate::common::client::add;
use crate::common::files::{
    files_in, frame_end, frame_offsets, journal_files, journal_records, journal_records_bytes,
};

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

use points::BackupError;
use points::testing::{MAX_ATTEMPTS, backup_with};
use points::{FileSystem, LockGuard, OsFileSystem, WritableFile};

/// The data directory as a running server changes it between two states:
/// reading a journal segment first replaces every file of `live` with those
/// of the other state, as a snapshot that removes the segments it covers
/// would between the backup's listing and its reads.
#[derive(Debug)]
struct SnapshotDuringCopy {
    live: PathBuf,
    states: [PathBuf; 2],
    /// Which state `live` holds.
    current: AtomicUsize,
    /// How many more times to change it.
    changes_left: AtomicU32,
}

impl SnapshotDuringCopy {
    fn new(live: &Path, states: [&Path; 2], changes: u32) -> Self {
        std::fs::create_dir(live).unwrap();
        let this = Self {
            live: live.to_owned(),
            states: states.map(Path::to_owned),
            current: AtomicUsize::new(1),
            changes_left: AtomicU32::new(changes),
        };
        this.change();
        this
    }

    /// Replaces the files of `live` with those of the other state.
    fn change(&self) {
        let next = 1 - self.current.load(Ordering::SeqCst);
        for name in files_in(&self.live).into_keys() {
            std::fs::remove_file(self.live.join(name)).unwrap();
        }
        for (name, bytes) in files_in(&self.states[next]) {
            std::fs::write(self.live.join(name), bytes).unwrap();
        }
        self.current.store(next, Ordering::SeqCst);
    }
}

impl SnapshotDuringCopy {
    /// Before a read of `path`: changes the state when it is a live segment
    /// and changes are left.
    fn before_read(&self, path: &Path) {
        let is_live_segment =
            path.starts_with(&self.live) && path.to_string_lossy().ends_with(".log");
        if is_live_segment
            && self
                .changes_left
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| left.checked_sub(1))
                .is_ok()
        {
            self.change();
        }
    }
}

/// The operating system's file system with a hook on reads: `on_read` sees
/// every path read and may hand back other bytes than the file's, for
/// backups racing a server that changes its files.
struct ReadHook<Hook>(Hook);

impl<Hook> std::fmt::Debug for ReadHook<Hook> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("ReadHook")
    }
}

impl<Hook: Fn(&Path) -> Option<Vec<u8>> + Send + Sync> FileSystem for ReadHook<Hook> {
    fn create_dir_all(&self, path: &Path) -> std::io::Result<()> {
        OsFileSystem.create_dir_all(path)
    }
    fn try_lock(&self, path: &Path) -> std::io::Result<Option<LockGuard>> {
        OsFileSystem.try_lock(path)
    }
    fn list(&self, path: &Path) -> std::io::Result<Vec<String>> {
        OsFileSystem.list(path)
    }
    fn read(&self, path: &Path) -> std::io::Result<Vec<u8>> {
        match (self.0)(path) {
            Some(bytes) => Ok(bytes),
            None => OsFileSystem.read(path),
        }
    }
    fn create_new(&self, path: &Path) -> std::io::Result<Box<dyn WritableFile>> {
        OsFileSystem.create_new(path)
    }
    fn open_append(&self, path: &Path) -> std::io::Result<Box<dyn WritableFile>> {
        OsFileSystem.open_append(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
        OsFileSystem.rename(from, to)
    }
    fn remove_file(&self, path: &Path) -> std::io::Result<()> {
        OsFileSystem.remove_file(path)
    }
    fn sync_dir(&self, path: &Path) -> std::io::Result<()> {
        OsFileSystem.sync_dir(path)
    }
}

/// A snapshot that removes the files being copied makes the backup start
/// over and copy the new state; a directory that changes under every attempt
/// makes it give up after a bounded number of attempts with an error saying
/// what to do, leaving the destination empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_starts_over_when_a_snapshot_removes_the_files_it_is_copying() {
    let scratch = tempfile::tempdir().expect("temporary directory");
    let (older, newer) = (scratch.path().join("older"), scratch.path().join("newer"));
    let mut server = ServerProcess::start_durable(&older, &SMALL_SNAPSHOTS);
    let mut client = server.client().await;
    write_until_a_new_snapshot(&mut client, &older, 0).await;
    server.terminate();
    std::fs::create_dir(&newer).unwrap();
    copy_by_hand(&older, &newer, ".log");
    copy_by_hand(&older, &newer, ".snap");
    let mut server = ServerProcess::start_durable(&newer, &SMALL_SNAPSHOTS);
    let mut client = server.client().await;
    write_until_a_new_snapshot(&mut client, &newer, 3).await;
    server.terminate();
    let mut newer_files = files_in(&newer);
    newer_files.remove("LOCK");
    // A copy's segments end with their records, without preallocated zeros.
    for path in journal_files(&newer) {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        newer_files.get_mut(&name).unwrap().truncate(journal_records_bytes(&path));
    }
    assert!(
        journal_files(&older).iter().all(|path| !newer_files
            .contains_key(&path.file_name().unwrap().to_string_lossy().into_owned())),
        "the newer snapshot removed the older state's segments"
    );

    let live = scratch.path().join("live");
    let changing = SnapshotDuringCopy::new(&live, [&older, &newer], 1);
    let file_system = ReadHook(|path: &Path| {
        changing.before_read(path);
        None
    });
    let destination = scratch.path().join("copy");
    let summary = backup_with(&file_system, &live, &destination).expect("backup");
    assert_eq!(summary.attempts, 2, "{summary}");
    assert_eq!(files_in(&destination), newer_files, "the copy is the newer state");
    let snapshot = newer_files.keys().find(|name| name.ends_with(".snap")).unwrap();
    assert_eq!(summary.snapshot_sequence, Some(sequence_of(Path::new(snapshot))));

    let live = scratch.path().join("always-changing");
    let changing = SnapshotDuringCopy::new(&live, [&older, &newer], u32::MAX);
    let file_system = ReadHook(|path: &Path| {
        changing.before_read(path);
        None
    });
    let destination = scratch.path().join("never");
    let error = backup_with(&file_system, &live, &destination).expect_err("gives up");
    assert!(matches!(error, BackupError::KeptChanging { attempts: MAX_ATTEMPTS, .. }), "{error:?}");
    let message = error.to_string();
    assert!(message.contains("was removed while being copied"), "{message}");
    assert!(message.contains("Run the backup again"), "{message}");
    assert!(files_in(&destination).is_empty(), "a failed backup leaves nothing behind");
}

/// A read hook that hands back `racy` for the first `reads` reads of
/// `segment`: what a read racing the server's writer can see in a segment
/// written in place (one batch still the zeros it replaced, the batches
/// after it already there).
fn racing_reads(segment: PathBuf, racy: Vec<u8>, reads: u32) -> impl Fn(&Path) -> Option<Vec<u8>> {
    let left = AtomicU32::new(reads);
    move |path: &Path| {
        let racy_now = path == segment
            && left
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| left.checked_sub(1))
                .is_ok();
        racy_now.then(|| racy.clone())
    }
}

/// A backup whose read of the newest segment raced the writer (a batch
/// still zeros, a later synced batch already there: damage, read once)
/// starts over and copies the whole journal; the same bytes read every time
/// are real damage, and the backup refuses them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_starts_over_when_a_read_races_the_writer_and_refuses_real_damage() {
    let scratch = tempfile::tempdir().expect("temporary directory");
    let source = scratch.path().join("source");
    let mut server = ServerProcess::start_durable(&source, &[]);
    let mut client = server.client().await;
    for day in 1..=4 {
        add(&mut client, "DANNON", 10, &format!("2024-01-0{day}T00:00:00Z")).await;
    }
    server.terminate();
    let segment = journal_files(&source).pop().unwrap();
    let records = journal_records(&segment);
    // The second batch frame (after the segment header and the first
    // frame), read as zeros.
    let second = frame_offsets(&records)[1];
    let mut racy = std::fs::read(&segment).unwrap();
    racy[second..frame_end(&records, second)].fill(0);

    let file_system = ReadHook(racing_reads(segment.clone(), racy.clone(), 1));
    let destination = scratch.path().join("copy");
    let summary = backup_with(&file_system, &source, &destination).expect("backup");
    assert_eq!(summary.attempts, 2, "{summary}");
    let copied = std::fs::read(destination.join(segment.file_name().unwrap())).unwrap();
    assert_eq!(copied, records, "the whole journal was copied");

    let always_racy = ReadHook(racing_reads(segment, racy, u32::MAX));
    let destination = scratch.path().join("refused");
    match backup_with(&always_racy, &source, &destination) {
        Err(BackupError::Damaged(error)) => {
            assert!(error.to_string().contains(&format!("damaged at byte offset {second}")));
        }
        other => panic!("damage read the same twice must be refused: {other:?}"),
    }
}
