//! Backups of the real binary on real files: `points-server backup` while
//! writes, snapshots and rotations go on, restoring each copy; hand-made
//! copies whose files come from different moments; and the backup's refusals.

use crate::common;
use crate::common::wait::eventually;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::ServerProcess;
use common::client::{Client, add, balances};
use points::durability::backup::{BackupError, MAX_ATTEMPTS, backup_with};
use points::durability::file_system::{FileSystem, LockGuard, OsFileSystem, WritableFile};
use points::durability::files::DataDir;
use points::durability::snapshot::SnapshotFile;
use points::durability::{read_journal, replay};
use points::ledger::Ledger;
use points::proto::v1::history_entry::Entry;
use points::proto::v1::points_service_client::PointsServiceClient;
use points::proto::v1::{
    AddTransactionRequest, GetBalancesRequest, ListTransactionsRequest, SpendRequest,
};
use tonic::Code;
use tonic::transport::Channel;

/// A snapshot threshold small enough that snapshots and rotations happen
/// every few dozen writes.
const SMALL_SNAPSHOTS: [&str; 2] = ["--snapshot-threshold-bytes", "4096"];

/// One accepted write as a user's history shows it (without the remaining
/// points of a lot, which later spends change).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Written {
    Transaction { id: u64, payer: String, points: i64, seconds: i64 },
    Spend { id: u64, points: i64, spent: Vec<(String, i64)> },
}

impl Written {
    fn of(entry: &Entry) -> Self {
        match entry {
            Entry::Transaction(transaction) => Written::Transaction {
                id: transaction.id,
                payer: transaction.payer.clone(),
                points: transaction.points,
                seconds: transaction.timestamp.map_or(0, |time| time.seconds),
            },
            Entry::Spend(spend) => Written::Spend {
                id: spend.id,
                points: spend.points,
                spent: spend.spent.iter().map(|part| (part.payer.clone(), part.points)).collect(),
            },
        }
    }
}

/// Runs `points-server backup --data-dir DATA_DIR --to DESTINATION` as a child process.
async fn run_backup(data_dir: &Path, destination: &Path) -> std::process::Output {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_points-server"))
        .arg("backup")
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--to")
        .arg(destination)
        .env_remove("POINTS_DATA_DIR")
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(Duration::from_secs(120), output)
        .await
        .expect("the backup finishes within 2 minutes")
        .expect("run points-server backup")
}

/// A user's whole history, every page of it.
async fn history(client: &mut Client, user_id: &str) -> Vec<Entry> {
    let mut entries = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_transactions(ListTransactionsRequest {
                user_id: user_id.to_owned(),
                page_size: 1000,
                page_token,
            })
            .await
            .expect("history")
            .into_inner();
        entries.extend(page.entries.into_iter().filter_map(|entry| entry.entry));
        if page.next_page_token.is_empty() {
            return entries;
        }
        page_token = page.next_page_token;
    }
}

async fn user_balances(client: &mut Client, user_id: &str) -> HashMap<String, i64> {
    let request = GetBalancesRequest { user_id: user_id.to_owned() };
    client.get_balances(request).await.expect("balances").into_inner().balances
}

/// Checks that `entries` is a consistent history: transaction ids 1..n and
/// spend ids 1..m with no gap, and the `balances` are what it adds up to.
fn assert_consistent(entries: &[Entry], balances: &HashMap<String, i64>, context: &str) {
    let mut net: HashMap<String, i64> = HashMap::new();
    let (mut transactions, mut spends) = (0, 0);
    for entry in entries {
        match entry {
            Entry::Transaction(transaction) => {
                transactions += 1;
                assert_eq!(transaction.id, transactions, "{context}: transaction ids have a gap");
                *net.entry(transaction.payer.clone()).or_default() += transaction.points;
            }
            Entry::Spend(spend) => {
                spends += 1;
                assert_eq!(spend.id, spends, "{context}: spend ids have a gap");
                for part in &spend.spent {
                    *net.entry(part.payer.clone()).or_default() += part.points;
                }
            }
        }
    }
    assert_eq!(balances, &net, "{context}: balances disagree with the history");
}

/// Every file of `directory` with its bytes.
fn files_in(directory: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(directory)
        .expect("list the directory")
        .map(|entry| {
            let path = entry.expect("entry").path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&path).expect("read a file"))
        })
        .collect()
}

/// The paths in `directory` whose names end with `suffix`, sorted.
fn paths_ending(directory: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(directory)
        .expect("list the directory")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| path.to_string_lossy().ends_with(suffix))
        .collect();
    paths.sort();
    paths
}

/// Copies the files of `from` whose names end with `suffix` into `to`, as
/// someone copying a data directory by hand would.
fn copy_by_hand(from: &Path, to: &Path, suffix: &str) -> Vec<String> {
    let mut copied = Vec::new();
    for path in paths_ending(from, suffix) {
        let name = path.file_name().unwrap().to_owned();
        std::fs::copy(&path, to.join(&name)).expect("copy a file by hand");
        copied.push(name.to_string_lossy().into_owned());
    }
    copied
}

/// Adds transactions for the default user one at a time until the segment
/// being appended to passes the small snapshot threshold, then waits for the
/// snapshot that triggers. Nothing is written while the snapshot is taken,
/// so it holds exactly the writes so far. Returns how many were written.
async fn write_until_a_new_snapshot(client: &mut Client, data_dir: &Path, first_day: u32) -> u32 {
    let snapshots_before = paths_ending(data_dir, ".snap");
    let segment = paths_ending(data_dir, ".log").pop().expect("a journal segment");
    let mut written = 0;
    loop {
        let full = !segment.exists() || common::journal_records_bytes(&segment) >= 4096;
        if full || paths_ending(data_dir, ".snap") != snapshots_before {
            break;
        }
        assert!(written < 5_000, "no snapshot after {written} writes");
        let day = 1 + (first_day + written) % 28;
        add(client, "DANNON", 10, &format!("2024-03-{day:02}T00:00:00Z")).await;
        written += 1;
    }
    eventually("a new snapshot", Duration::from_secs(30), || async {
        (paths_ending(data_dir, ".snap").last() != snapshots_before.last()).then_some(())
    })
    .await;
    written
}

/// The sequence in a file name such as `journal-00000000000000000042.log`.
fn sequence_of(path: &Path) -> u64 {
    let name = path.file_name().unwrap().to_string_lossy();
    name.split(['-', '.']).nth(1).expect("a sequence in the name").parse().expect("digits")
}

/// Backups taken again and again while writers keep going and snapshots and
/// rotations happen every few dozen writes: each backup, restored, holds
/// every write acknowledged before it started, and is a consistent prefix of
/// what the source went on to hold (contiguous ids, balances that add up).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn backup_while_writes_go_on_restores_everything_acknowledged_before_it_started() {
    const USERS: [&str; 3] = ["alice", "bob", "carol"];
    const WRITERS: usize = 6;
    const BACKUPS: usize = 4;
    let data_dir = tempfile::tempdir().expect("temporary directory");
    let backups = tempfile::tempdir().expect("temporary directory");
    let server = ServerProcess::start_durable(data_dir.path(), &SMALL_SNAPSHOTS);
    let channel = Channel::from_shared(server.uri()).unwrap().connect().await.expect("connect");
    let acknowledged: Arc<Mutex<Vec<(&str, Written)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..WRITERS)
        .map(|writer| {
            let mut client = PointsServiceClient::new(channel.clone());
            let (acknowledged, stop) = (Arc::clone(&acknowledged), Arc::clone(&stop));
            let user = USERS[writer % USERS.len()];
            tokio::spawn(async move {
                // Bounded: the test stops the writers long before this runs out.
                for step in 0..1_000_000u64 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let written = if step % 5 == 4 {
                        let request = SpendRequest {
                            points: 2,
                            user_id: user.to_owned(),
                            ..Default::default()
                        };
                        match client.spend(request).await {
                            Ok(reply) => {
                                let reply = reply.into_inner();
                                Written::Spend {
                                    id: reply.spend_id,
                                    points: 2,
                                    spent: reply
                                        .spent
                                        .into_iter()
                                        .map(|part| (part.payer, part.points))
                                        .collect(),
                                }
                            }
                            Err(status) if status.code() == Code::FailedPrecondition => continue,
                            Err(status) => return Err(status),
                        }
                    } else {
                        let day = 1 + (step * 7 + writer as u64) % 28;
                        let request = AddTransactionRequest {
                            payer: format!("W{writer}"),
                            points: 1 + (step % 3) as i64,
                            timestamp: Some(common::timestamp(&format!(
                                "2024-04-{day:02}T{:02}:00:00Z",
                                writer
                            ))),
                            user_id: user.to_owned(),
                            ..Default::default()
                        };
                        let transaction = client
                            .add_transaction(request)
                            .await?
                            .into_inner()
                            .transaction
                            .expect("reply carries the transaction");
                        Written::Transaction {
                            id: transaction.id,
                            payer: transaction.payer,
                            points: transaction.points,
                            seconds: transaction.timestamp.map_or(0, |time| time.seconds),
                        }
                    };
                    acknowledged.lock().unwrap().push((user, written));
                }
                Ok::<(), tonic::Status>(())
            })
        })
        .collect();

    let mut taken: Vec<(PathBuf, Vec<(&str, Written)>)> = Vec::new();
    for round in 0..BACKUPS {
        // Let the load run on: new writes since the last backup, and
        // snapshots (with their rotations and removals) under way.
        let since = taken.last().map_or(0, |(_, before)| before.len());
        eventually("more writes and a snapshot", Duration::from_secs(60), || async {
            let enough = acknowledged.lock().unwrap().len() >= since + 150;
            (enough && !paths_ending(data_dir.path(), ".snap").is_empty()).then_some(())
        })
        .await;
        let before = acknowledged.lock().unwrap().clone();
        let destination = backups.path().join(format!("backup-{round}"));
        let output = run_backup(data_dir.path(), &destination).await;
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "backup {round} failed: {}{stdout}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert_eq!(stdout.lines().count(), 1, "one summary line: {stdout}");
        assert!(stdout.contains("verified"), "{stdout}");
        taken.push((destination, before));
    }
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.await.expect("writer task").expect("every write was accepted during the backups");
    }
    let last_backup_started_at = taken.last().unwrap().1.len();
    assert!(
        acknowledged.lock().unwrap().len() > last_backup_started_at,
        "writes went on while the backups ran"
    );

    // What the source went on to hold: every backup must be a prefix of it.
    let mut client = server.client().await;
    let mut live: HashMap<&str, Vec<Written>> = HashMap::new();
    for user in USERS {
        live.insert(user, history(&mut client, user).await.iter().map(Written::of).collect());
    }
    drop(server);

    for (round, (destination, before)) in taken.iter().enumerate() {
        let names = files_in(destination).into_keys().collect::<Vec<_>>();
        assert!(
            names.iter().all(|name| name.ends_with(".log") || name.ends_with(".snap")),
            "backup {round} holds only journal segments and snapshots: {names:?}"
        );
        let restored = ServerProcess::start_durable(destination, &[]);
        let mut client = restored.client().await;
        for user in USERS {
            let context = format!("backup {round}, user {user}");
            let entries = history(&mut client, user).await;
            assert_consistent(&entries, &user_balances(&mut client, user).await, &context);
            let written: Vec<Written> = entries.iter().map(Written::of).collect();
            assert!(
                live[user].starts_with(&written),
                "{context}: the restored history is not a prefix of the source's"
            );
            let held: HashSet<&Written> = written.iter().collect();
            for (_, write) in before.iter().filter(|(owner, _)| *owner == user) {
                assert!(held.contains(write), "{context}: acknowledged {write:?} is missing");
            }
        }
        // The restored server goes on from there: the next id is not reused.
        let held = history(&mut client, USERS[0]).await;
        let transactions =
            held.iter().filter(|entry| matches!(entry, Entry::Transaction(_))).count() as u64;
        let request = AddTransactionRequest {
            payer: "AFTER".to_owned(),
            points: 1,
            timestamp: Some(common::timestamp("2024-05-01T00:00:00Z")),
            user_id: USERS[0].to_owned(),
            ..Default::default()
        };
        let reply = client.add_transaction(request).await.expect("write after restoring");
        assert_eq!(reply.into_inner().transaction.unwrap().id, transactions + 1);
    }
}

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
    server.signal("TERM");
    assert_eq!(server.wait(Duration::from_secs(20)).code(), Some(0), "{}", server.log());

    let server = ServerProcess::start_durable(copy.path(), &[]);
    let mut client = server.client().await;
    let entries = history(&mut client, "").await;
    let kept = entries.iter().map(Written::of).any(|write| {
        write
            == Written::Transaction {
                id: new.id,
                payer: "KRAFT".to_owned(),
                points: 7,
                seconds: new.timestamp.unwrap().seconds,
            }
    });
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
    server.signal("TERM");
    assert_eq!(server.wait(Duration::from_secs(20)).code(), Some(0), "{}", server.log());

    // The snapshot a server writes when it rotates the journal at sequence
    // 12 while writes 13..=15 go on: its user holds everything up to 15.
    // Written with the server's own snapshot writer, so that this is certain
    // rather than a matter of timing.
    let mut ledger = Ledger::new();
    for (sequence, record) in read_journal(source.path()).expect("read the journal") {
        replay(&mut ledger, record).unwrap_or_else(|error| panic!("sequence {sequence}: {error}"));
    }
    {
        let data_dir = DataDir::lock(Arc::new(OsFileSystem), copy.path()).expect("lock the copy");
        let mut snapshot = SnapshotFile::create(&data_dir, 12).expect("create a snapshot");
        snapshot.encode_user("default", 15, &ledger);
        snapshot.finish().expect("finish the snapshot");
        snapshot.publish().expect("publish the snapshot");
    }
    let before = files_in(copy.path());

    let output = ServerProcess::command()
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(copy.path())
        .output()
        .expect("run points-server");
    assert!(!output.status.success(), "a server started on an inconsistent copy");
    let stderr = String::from_utf8_lossy(&output.stderr);
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
    server.signal("TERM");
    assert_eq!(server.wait(Duration::from_secs(20)).code(), Some(0), "{}", server.log());
    let later = paths_ending(first.path(), ".log").pop().expect("a journal segment");
    let later_first = sequence_of(&later);
    assert!(later_first > 1, "{}", later.display());

    // ...the second holds one long segment reaching past that segment's start.
    let mut server = ServerProcess::start_durable(second.path(), &[]);
    let mut client = server.client().await;
    for step in 0..later_first + 5 {
        add(&mut client, "KRAFT", 1, &format!("2024-01-{:02}T00:00:00Z", 1 + step % 28)).await;
    }
    server.signal("TERM");
    assert_eq!(server.wait(Duration::from_secs(20)).code(), Some(0), "{}", server.log());

    copy_by_hand(second.path(), mixed.path(), ".log");
    let later_name = later.file_name().unwrap().to_string_lossy().into_owned();
    std::fs::copy(&later, mixed.path().join(&later_name)).expect("copy a file by hand");
    let output = ServerProcess::command()
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(mixed.path())
        .output()
        .expect("run points-server");
    assert!(!output.status.success(), "a server started on overlapping segments");
    let stderr = String::from_utf8_lossy(&output.stderr);
    for expected in [later_name.as_str(), "journal-00000000000000000001.log", "different copies"] {
        assert!(stderr.contains(expected), "the refusal mentions {expected}: {stderr}");
    }
}

/// A destination that holds anything already is refused, and neither it nor
/// the data directory is changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_refuses_a_non_empty_destination() {
    let source = tempfile::tempdir().expect("temporary directory");
    let destination = tempfile::tempdir().expect("temporary directory");
    let mut server = ServerProcess::start_durable(source.path(), &[]);
    add(&mut server.client().await, "DANNON", 5, "2024-01-01T00:00:00Z").await;
    server.signal("TERM");
    assert_eq!(server.wait(Duration::from_secs(20)).code(), Some(0), "{}", server.log());
    std::fs::write(destination.path().join("notes.txt"), "keep me").unwrap();
    let (source_before, destination_before) =
        (files_in(source.path()), files_in(destination.path()));

    let output = run_backup(source.path(), destination.path()).await;
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.starts_with("points-server: backup failed: "), "{stderr}");
    assert!(stderr.contains("is not empty"), "{stderr}");
    assert!(output.stdout.is_empty());
    assert_eq!(files_in(destination.path()), destination_before);
    assert_eq!(files_in(source.path()), source_before);
}

/// A destination inside the data directory is refused before anything is
/// created there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_refuses_a_destination_inside_the_data_directory() {
    let source = tempfile::tempdir().expect("temporary directory");
    let mut server = ServerProcess::start_durable(source.path(), &[]);
    add(&mut server.client().await, "DANNON", 5, "2024-01-01T00:00:00Z").await;
    server.signal("TERM");
    assert_eq!(server.wait(Duration::from_secs(20)).code(), Some(0), "{}", server.log());
    let before = files_in(source.path());

    let output = run_backup(source.path(), &source.path().join("backup")).await;
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("is inside the data directory"), "{stderr}");
    assert_eq!(files_in(source.path()), before);
}

/// A directory that is not a data directory (empty, or missing) is refused
/// with a message saying so, and no destination is created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_of_a_directory_that_is_not_a_data_directory_fails_clearly() {
    let scratch = tempfile::tempdir().expect("temporary directory");
    let empty = scratch.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let destination = scratch.path().join("backup");
    for (source, expected) in [
        (empty.clone(), "is not a points-server data directory"),
        (scratch.path().join("missing"), "No such file or directory"),
    ] {
        let output = run_backup(&source, &destination).await;
        assert_eq!(output.status.code(), Some(1));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.starts_with("points-server: backup failed: "), "{stderr}");
        assert!(stderr.contains(expected), "{stderr}");
        assert!(!destination.exists(), "a failed backup created {}", destination.display());
    }
}

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
            let request = SpendRequest { points: 3, user_id: user_id.into(), ..Default::default() };
            client.spend(request).await.expect("spend accepted");
            continue;
        }
        let request = AddTransactionRequest {
            payer: format!("P{}", step % 3),
            points: 5,
            timestamp: Some(common::timestamp(&format!("2024-06-{:02}T00:00:00Z", 1 + step % 28))),
            user_id: user_id.into(),
            ..Default::default()
        };
        client.add_transaction(request).await.expect("transaction accepted");
    }
    let mut expected = HashMap::new();
    for user in ["alice", "bob"] {
        let written: Vec<Written> =
            history(&mut client, user).await.iter().map(Written::of).collect();
        expected.insert(user, (written, user_balances(&mut client, user).await));
    }
    server.signal("TERM");
    assert_eq!(server.wait(Duration::from_secs(20)).code(), Some(0), "{}", server.log());
    assert!(!paths_ending(source.path(), ".snap").is_empty(), "snapshots were taken");
    let before = files_in(source.path());
    let records_ends: HashMap<String, usize> = paths_ending(source.path(), ".log")
        .iter()
        .map(|path| {
            (
                path.file_name().unwrap().to_string_lossy().into_owned(),
                common::journal_records_bytes(path),
            )
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
        let written: Vec<Written> =
            history(&mut client, user).await.iter().map(Written::of).collect();
        assert_eq!((written, user_balances(&mut client, user).await), expected[user], "{user}");
    }
    let transactions = expected["alice"]
        .0
        .iter()
        .filter(|write| matches!(write, Written::Transaction { .. }))
        .count() as u64;
    let request = AddTransactionRequest {
        payer: "P0".to_owned(),
        points: 1,
        timestamp: Some(common::timestamp("2024-07-01T00:00:00Z")),
        user_id: "alice".to_owned(),
        ..Default::default()
    };
    let reply = client.add_transaction(request).await.expect("write after restoring");
    assert_eq!(reply.into_inner().transaction.unwrap().id, transactions + 1);
}

/// A batch still being written at the end of the newest segment (a frame
/// header and part of its payload) is left out of the copy, as start-up
/// would cut it, while the source keeps its bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_leaves_out_a_batch_still_being_written() {
    let source = tempfile::tempdir().expect("temporary directory");
    let backups = tempfile::tempdir().expect("temporary directory");
    let mut server = ServerProcess::start_durable(source.path(), &[]);
    let mut client = server.client().await;
    for day in 1..=3 {
        add(&mut client, "DANNON", 10, &format!("2024-01-{day:02}T00:00:00Z")).await;
    }
    server.signal("TERM");
    assert_eq!(server.wait(Duration::from_secs(20)).code(), Some(0), "{}", server.log());
    let segment = paths_ending(source.path(), ".log").pop().unwrap();
    let file = std::fs::read(&segment).unwrap();
    let whole = file[..common::journal_records_bytes(&segment)].to_vec();
    // The first 20 bytes of a frame (its 12-byte header and part of its
    // payload) written over the preallocated zeros after the records.
    let mut growing = file.clone();
    growing.splice(whole.len()..whole.len() + 20, whole[24..44].iter().copied());
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
    server.signal("TERM");
    assert_eq!(server.wait(Duration::from_secs(20)).code(), Some(0), "{}", server.log());
    std::fs::create_dir(&newer).unwrap();
    copy_by_hand(&older, &newer, ".log");
    copy_by_hand(&older, &newer, ".snap");
    let mut server = ServerProcess::start_durable(&newer, &SMALL_SNAPSHOTS);
    let mut client = server.client().await;
    write_until_a_new_snapshot(&mut client, &newer, 3).await;
    server.signal("TERM");
    assert_eq!(server.wait(Duration::from_secs(20)).code(), Some(0), "{}", server.log());
    let mut newer_files = files_in(&newer);
    newer_files.remove("LOCK");
    // A copy's segments end with their records, without preallocated zeros.
    for path in paths_ending(&newer, ".log") {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        newer_files.get_mut(&name).unwrap().truncate(common::journal_records_bytes(&path));
    }
    assert!(
        paths_ending(&older, ".log").iter().all(|path| !newer_files
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
    server.signal("TERM");
    assert_eq!(server.wait(Duration::from_secs(20)).code(), Some(0), "{}", server.log());
    let segment = paths_ending(&source, ".log").pop().unwrap();
    let records = common::journal_records(&segment);
    // The second batch frame (after the 36-byte segment header and the first
    // frame, each frame a 12-byte header and its payload), read as zeros.
    let frame_end = |offset: usize| {
        offset + 12 + u32::from_le_bytes(records[offset..offset + 4].try_into().unwrap()) as usize
    };
    let second = frame_end(36);
    let mut racy = std::fs::read(&segment).unwrap();
    racy[second..frame_end(second)].fill(0);

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
