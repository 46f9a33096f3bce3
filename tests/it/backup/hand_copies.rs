//! Copies of a data directory made by hand, with files from different
//! moments: a journal older than the snapshot next to it loses no new
//! write, while a snapshot ahead of the journal copied, or segments from
//! different copies that overlap, refuse start naming the files.

use super::{
    SMALL_SNAPSHOTS, Written, assert_consistent, copy_by_hand, sequence_of,
    write_until_a_new_snapshot,
};
use crate::common::ServerProcess;
use crate::common::client::{add, balances};
use crate::common::files::{files_in, journal_files, replay_journal};
use crate::common::history::entries;

use std::path::Path;
use std::sync::Arc;

use points::OsFileSystem;
use points::testing::SnapshotFile;
use points::testing::files::DataDir;

/// The scenario: a copy made by hand in the old README order (the
/// journal files first, then, after more writes and a snapshot, the snapshot
/// files) has `journal-…001.log` with records 1..=n and a snapshot at R > n.
/// A server started on it takes a new write; after a restart the write is
/// still there with the id it was acknowledged with, and that id is not
/// handed out again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restored_copy_with_an_older_journal_and_a_newer_snapshot_loses_no_new_write() {
    let source = tempfile::tempdir().expect("temporary directory");
    let copy = tempfile::tempdir().expect("temporary directory");
    let server = ServerProcess::start_durable(source.path(), &SMALL_SNAPSHOTS);
    let mut client = server.client().await;
    for day in 1..=5 {
        add(&mut client, "DANNON", 10, &format!("2024-01-{day:02}T00:00:00Z")).await;
    }
    assert_eq!(
        copy_by_hand(source.path(), copy.path(), ".log"),
        ["journal-00000000000000000001.log"]
    );
    let more = write_until_a_new_snapshot(&mut client, source.path(), 5).await;
    let snapshots = copy_by_hand(source.path(), copy.path(), ".snap");
    drop(server);
    assert_eq!(snapshots.len(), 1, "{snapshots:?}");
    let rotation = sequence_of(Path::new(&snapshots[0]));
    assert!(rotation > 5, "the snapshot ({rotation}) is newer than the journal copied (5)");
    assert_eq!(u64::from(5 + more), rotation, "the snapshot holds every write so far");

    let mut server = ServerProcess::start_durable(copy.path(), &[]);
    let mut client = server.client().await;
    let mut expected = balances(&mut client).await;
    assert_eq!(expected["DANNON"], 10 * rotation as i64, "the snapshot's state is served");
    let new = add(&mut client, "KRAFT", 7, "2024-02-01T00:00:00Z").await;
    assert_eq!(new.id, rotation + 1);
    server.terminate();

    let server = ServerProcess::start_durable(copy.path(), &[]);
    let mut client = server.client().await;
    let entries = entries(&mut client, "").await;
    let kept = Written::all(&entries).contains(&Written::transaction(&new));
    assert!(kept, "the write acknowledged as id {} was lost: {entries:?}", new.id);
    expected.insert("KRAFT".to_owned(), 7);
    let now = balances(&mut client).await;
    assert_eq!(now, expected);
    assert_consistent(&entries, &now, "after the restart");
    assert_eq!(add(&mut client, "KRAFT", 1, "2024-02-02T00:00:00Z").await.id, new.id + 1);
}

/// A copy by hand whose snapshot was taken while writes went on (its user
/// holds sequences past its rotation sequence) next to a journal copied
/// before it: the server refuses to start, naming the snapshot and the
/// journal segment that is missing, and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_ahead_of_the_journal_copied_is_refused_naming_the_missing_segment() {
    let source = tempfile::tempdir().expect("temporary directory");
    let copy = tempfile::tempdir().expect("temporary directory");
    let mut server = ServerProcess::start_durable(source.path(), &[]);
    let mut client = server.client().await;
    for day in 1..=10 {
        add(&mut client, "DANNON", day, &format!("2024-01-{day:02}T00:00:00Z")).await;
    }
    copy_by_hand(source.path(), copy.path(), ".log");
    for day in 11..=15 {
        add(&mut client, "DANNON", day, &format!("2024-01-{day:02}T00:00:00Z")).await;
    }
    server.terminate();

    // The snapshot a server writes when it rotates the journal at sequence
    // 12 while writes 13..=15 go on: its user holds everything up to 15.
    // Written with the server's own snapshot writer, so that this is certain
    // rather than a matter of timing.
    let ledger = replay_journal(source.path());
    {
        let data_dir = DataDir::lock(Arc::new(OsFileSystem), copy.path()).expect("lock the copy");
        let mut snapshot = SnapshotFile::create(&data_dir, 12).expect("create a snapshot");
        snapshot.encode_user("default", 15, &ledger).expect("a sound ledger");
        snapshot.finish().expect("finish the snapshot");
        snapshot.publish().expect("publish the snapshot");
    }
    let before = files_in(copy.path());

    let exited = ServerProcess::run_to_exit(ServerProcess::durable(copy.path(), &[]));
    assert!(!exited.status.success(), "a server started on an inconsistent copy");
    let stderr = exited.log;
    for name in ["snapshot-00000000000000000012.snap", "journal-00000000000000000013.log"] {
        assert!(stderr.contains(name), "the refusal names {name}: {stderr}");
    }
    assert_eq!(files_in(copy.path()), before, "refusing changed the copy");
}

/// A copy by hand mixing segments of two different data directories whose
/// sequences overlap: the server refuses to start, naming both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hand_copy_with_overlapping_segments_from_different_copies_is_refused() {
    let first = tempfile::tempdir().expect("temporary directory");
    let second = tempfile::tempdir().expect("temporary directory");
    let mixed = tempfile::tempdir().expect("temporary directory");

    // The first directory snapshots and goes on in a later segment...
    let mut server = ServerProcess::start_durable(first.path(), &SMALL_SNAPSHOTS);
    let mut client = server.client().await;
    write_until_a_new_snapshot(&mut client, first.path(), 0).await;
    for day in 1..=3 {
        add(&mut client, "UNILEVER", 5, &format!("2024-02-{day:02}T00:00:00Z")).await;
    }
    server.terminate();
    let later = journal_files(first.path()).pop().expect("a journal segment");
    let later_first = sequence_of(&later);
    assert!(later_first > 1, "{}", later.display());

    // ...the second holds one long segment reaching past that segment's start.
    let mut server = ServerProcess::start_durable(second.path(), &[]);
    let mut client = server.client().await;
    for step in 0..later_first + 5 {
        add(&mut client, "KRAFT", 1, &format!("2024-01-{:02}T00:00:00Z", 1 + step % 28)).await;
    }
    server.terminate();

    copy_by_hand(second.path(), mixed.path(), ".log");
    let later_name = later.file_name().unwrap().to_string_lossy().into_owned();
    std::fs::copy(&later, mixed.path().join(&later_name)).expect("copy a file by hand");
    let exited = ServerProcess::run_to_exit(ServerProcess::durable(mixed.path(), &[]));
    assert!(!exited.status.success(), "a server started on overlapping segments");
    let stderr = exited.log;
    for expected in [later_name.as_str(), "journal-00000000000000000001.log", "different copies"] {
        assert!(stderr.contains(expected), "the refusal mentions {expected}: {stderr}");
    }
}
