//! `points-server backup` of a stopped server's directory: the copy holds
//! exactly what restoring needs (a batch still being written left out) and
//! the source is not changed.

use super::{SMALL_SNAPSHOTS, Written, run_backup};
use crate::common::ServerProcess;
use crate::common::client::{
    add_request, balances, balances_of, spend_request, try_add, try_spend,
};
use crate::common::files::{
    files_in, frame_offsets, journal_files, journal_records_bytes, snapshot_files,
};
use crate::common::history::entries;

use std::collections::HashMap;

/// A backup of a stopped server's directory (with snapshots, several
/// segments and two users): nothing in the directory changes, the copy holds
/// only what restoring needs, and a server on the copy has the same
/// histories and balances and goes on with the next ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_of_a_stopped_servers_directory_restores_it_and_changes_nothing_in_it() {
    let source = tempfile::tempdir().expect("temporary directory");
    let backups = tempfile::tempdir().expect("temporary directory");
    let mut server = ServerProcess::start_durable(source.path(), &SMALL_SNAPSHOTS);
    let mut client = server.client().await;
    for step in 0..300u32 {
        let user_id = if step % 2 == 0 { "alice" } else { "bob" };
        if step % 4 == 3 {
            try_spend(&mut client, spend_request(user_id, "", 3)).await.expect("spend accepted");
            continue;
        }
        let when = format!("2024-06-{:02}T00:00:00Z", 1 + step % 28);
        let request = add_request(user_id, "", &format!("P{}", step % 3), 5, &when);
        try_add(&mut client, request).await.expect("transaction accepted");
    }
    let mut expected = HashMap::new();
    for user in ["alice", "bob"] {
        let written = Written::all(&entries(&mut client, user).await);
        expected.insert(user, (written, balances_of(&mut client, user).await));
    }
    server.terminate();
    assert!(!snapshot_files(source.path()).is_empty(), "snapshots were taken");
    let before = files_in(source.path());
    let records_ends: HashMap<String, usize> = journal_files(source.path())
        .iter()
        .map(|path| {
            (path.file_name().unwrap().to_string_lossy().into_owned(), journal_records_bytes(path))
        })
        .collect();

    let destination = backups.path().join("nightly").join("copy");
    let output = run_backup(source.path(), &destination).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("2 users") && stdout.contains("verified"), "{stdout}");
    assert_eq!(files_in(source.path()), before, "the backup changed the data directory");
    let copied = files_in(&destination);
    for (name, bytes) in &copied {
        let source = &before[name];
        // A segment is copied without the zeros preallocated after its records.
        let length = records_ends.get(name).copied().unwrap_or(source.len());
        assert!(source[length..].iter().all(|&byte| byte == 0), "{name} has only zeros after");
        assert_eq!(bytes, &source[..length], "{name} is a whole copy of the source's records");
    }
    let newest_snapshot = before.keys().filter(|name| name.ends_with(".snap")).max().unwrap();
    assert!(copied.contains_key(newest_snapshot), "{:?}", copied.keys());
    assert!(!copied.contains_key("LOCK"));

    let server = ServerProcess::start_durable(&destination, &[]);
    let mut client = server.client().await;
    for user in ["alice", "bob"] {
        let written = Written::all(&entries(&mut client, user).await);
        assert_eq!((written, balances_of(&mut client, user).await), expected[user], "{user}");
    }
    let transactions = expected["alice"]
        .0
        .iter()
        .filter(|write| matches!(write, Written::Transaction { .. }))
        .count() as u64;
    let request = add_request("alice", "", "P0", 1, "2024-07-01T00:00:00Z");
    let written = try_add(&mut client, request).await.expect("write after restoring");
    assert_eq!(written.id, transactions + 1);
}

/// A batch still being written at the end of the newest segment (a frame
/// header and part of its payload) is left out of the copy, as start-up
/// would cut it, while the source keeps its bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_leaves_out_a_batch_still_being_written() {
    let source = ServerProcess::data_dir_with_daily_writes(&[], 3, 10).await;
    let backups = tempfile::tempdir().expect("temporary directory");
    let segment = journal_files(source.path()).pop().unwrap();
    let file = std::fs::read(&segment).unwrap();
    let whole = file[..journal_records_bytes(&segment)].to_vec();
    // The first 20 bytes of a frame (its 12-byte header and part of its
    // payload) written over the preallocated zeros after the records.
    let first = frame_offsets(&whole)[0];
    let mut growing = file.clone();
    growing.splice(whole.len()..whole.len() + 20, whole[first..first + 20].iter().copied());
    std::fs::write(&segment, &growing).unwrap();

    let destination = backups.path().join("copy");
    let output = run_backup(source.path(), &destination).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("through journal sequence 3"), "{stdout}");
    let name = segment.file_name().unwrap();
    assert_eq!(std::fs::read(destination.join(name)).unwrap(), whole);
    assert_eq!(std::fs::read(&segment).unwrap(), growing, "the source was changed");

    let server = ServerProcess::start_durable(&destination, &[]);
    let mut client = server.client().await;
    assert_eq!(balances(&mut client).await["DANNON"], 30);
    assert!(!server.log().contains("torn"), "the copy needed no repair: {}", server.log());
}
