//! Durability of the real binary on real files: restarts, kill -9 under
//! concurrent load, torn and damaged journals, the data-directory lock,
//! `--fsync never`, `--in-memory`, and fail-stop on a real write error.

use crate::common;
use crate::common::wait::eventually;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::client::{add, balances, spend, transaction as request};
use common::{ServerProcess, copy_dir, journal_files};
use points::durability::records::Command;
use points::durability::{read_journal, replay};
use points::ledger::Ledger;
use points::proto::v1::points_service_client::PointsServiceClient;
use points::proto::v1::{GetBalancesRequest, SpendRequest, Transaction};
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// Byte offsets where each frame of a journal segment starts, read with the
/// documented format (36-byte segment header; batch frames of 12-byte header + payload).
fn frame_offsets(journal: &[u8]) -> Vec<usize> {
    let mut offsets = Vec::new();
    let mut offset = 36;
    while offset + 12 <= journal.len() {
        offsets.push(offset);
        let length = u32::from_le_bytes(journal[offset..offset + 4].try_into().unwrap()) as usize;
        offset += 12 + length;
    }
    assert_eq!(offset, journal.len(), "the journal ends on a frame boundary");
    offsets
}

/// A ledger rebuilt in the test from the journal records alone.
fn reference_replay(data_dir: &Path) -> Ledger {
    let mut ledger = Ledger::new();
    for (sequence, record) in read_journal(data_dir).expect("read the journal") {
        replay(&mut ledger, record).unwrap_or_else(|error| panic!("sequence {sequence}: {error}"));
    }
    ledger.check_invariants().expect("the replayed ledger keeps its invariants");
    ledger
}

fn ledger_balances(ledger: &Ledger) -> HashMap<String, i64> {
    ledger.balances().map(|(payer, points)| (payer.to_owned(), points)).collect()
}

/// A SIGTERM restart keeps balances, ids and the lot order that future spends follow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_after_sigterm_keeps_balances_ids_and_lot_order() {
    let data_dir = tempfile::tempdir().expect("temporary directory");
    let mut server = ServerProcess::start_durable(data_dir.path(), &[]);
    let mut client = server.client().await;
    add(&mut client, "P", 100, "2024-01-03T00:00:00Z").await;
    add(&mut client, "Q", 100, "2024-01-02T00:00:00Z").await;
    assert_eq!(spend(&mut client, 150).await, [("Q".to_owned(), -100), ("P".to_owned(), -50)]);
    add(&mut client, "P", 30, "2024-01-01T00:00:00Z").await;
    add(&mut client, "R", 10, "2024-01-02T12:00:00Z").await;
    let before = balances(&mut client).await;
    server.signal("TERM");
    assert_eq!(server.wait(Duration::from_secs(20)).code(), Some(0), "{}", server.log());

    let server = ServerProcess::start_durable(data_dir.path(), &[]);
    let mut client = server.client().await;
    assert_eq!(balances(&mut client).await, before);
    assert_eq!(spend(&mut client, 20).await, [("R".to_owned(), -10), ("P".to_owned(), -10)]);
    assert_eq!(add(&mut client, "Q", 1, "2024-01-05T00:00:00Z").await.id, 5);
}

/// What one writer task saw acknowledged before the server was killed.
#[derive(Default)]
struct Acknowledged {
    transactions: Vec<Transaction>,
    spends: u64,
}

/// kill -9 in the middle of concurrent writes, at several moments: after each
/// restart every acknowledged write is there, nothing beyond the in-flight
/// calls was added, and the server's state equals a replay of its journal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_concurrent_load_loses_no_acknowledged_write() {
    let data_dir = tempfile::tempdir().expect("temporary directory");
    let mut acknowledged_transactions: Vec<Transaction> = Vec::new();
    let mut acknowledged_spends = 0u64;
    const WRITERS: usize = 12;
    for (round, kill_after_ms) in [40u64, 150, 400, 90].into_iter().enumerate() {
        let server = ServerProcess::start_durable(data_dir.path(), &[]);
        let channel = Channel::from_shared(server.uri()).unwrap().connect().await.expect("connect");
        let stop = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = (0..WRITERS)
            .map(|writer| {
                let mut client = PointsServiceClient::new(channel.clone());
                let stop = Arc::clone(&stop);
                tokio::spawn(async move {
                    let mut seen = Acknowledged::default();
                    // Bounded: the server is killed long before this runs out.
                    for step in 0..100_000u64 {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        if step % 4 == 3 {
                            match client
                                .spend(SpendRequest { points: 3, ..Default::default() })
                                .await
                            {
                                Ok(_) => seen.spends += 1,
                                Err(status) if status.code() == Code::FailedPrecondition => {}
                                Err(_) => break,
                            }
                        } else {
                            let payer = format!("W{writer}");
                            let day = 1 + (step * 7 + writer as u64) % 28;
                            let when = format!("2024-02-{day:02}T{:02}:00:00Z", round * 5);
                            match client
                                .add_transaction(request(&payer, 1 + step as i64 % 5, &when))
                                .await
                            {
                                Ok(reply) => {
                                    seen.transactions.push(reply.into_inner().transaction.unwrap())
                                }
                                Err(_) => break,
                            }
                        }
                    }
                    seen
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(kill_after_ms)).await;
        server.signal("KILL");
        stop.store(true, Ordering::Relaxed);
        let mut acknowledged_this_round = 0;
        for writer in writers {
            let seen = writer.await.expect("writer task");
            acknowledged_this_round += seen.transactions.len() + seen.spends as usize;
            acknowledged_transactions.extend(seen.transactions);
            acknowledged_spends += seen.spends;
        }
        drop(server);
        assert!(acknowledged_this_round > 0, "round {round}: nothing was acknowledged");

        // The journal holds every acknowledged write, and at most one
        // unacknowledged (in-flight) call per writer per round beyond them.
        let records = read_journal(data_dir.path()).expect("read the journal");
        let journal_transactions: HashMap<u64, _> = records
            .iter()
            .filter_map(|(_, record)| match &record.command {
                Some(Command::AddTransaction(add)) => Some((add.transaction_id, add.clone())),
                _ => None,
            })
            .collect();
        let journal_spends = records
            .iter()
            .filter(|(_, record)| matches!(record.command, Some(Command::Spend(_))))
            .count() as u64;
        for transaction in &acknowledged_transactions {
            let recorded = journal_transactions
                .get(&transaction.id)
                .unwrap_or_else(|| panic!("acknowledged transaction {} lost", transaction.id));
            assert_eq!(recorded.payer, transaction.payer);
            assert_eq!(recorded.points, transaction.points);
            assert_eq!(
                Some(recorded.timestamp_seconds),
                transaction.timestamp.map(|time| time.seconds)
            );
        }
        assert!(journal_spends >= acknowledged_spends, "acknowledged spends lost");
        let unacknowledged = journal_transactions.len() - acknowledged_transactions.len()
            + (journal_spends - acknowledged_spends) as usize;
        assert!(unacknowledged <= WRITERS * (round + 1), "{unacknowledged} unacknowledged writes");

        // The restarted server's state equals the reference replay.
        let reference = reference_replay(data_dir.path());
        let server = ServerProcess::start_durable(data_dir.path(), &[]);
        let mut client = server.client().await;
        assert_eq!(balances(&mut client).await, ledger_balances(&reference), "round {round}");
    }
}

/// Cutting the journal at every byte offset of its last record: the server
/// starts, cuts the torn tail, and everything before it is intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torn_last_record_is_cut_off_at_every_offset_and_nothing_earlier_is_lost() {
    let data_dir = tempfile::tempdir().expect("temporary directory");
    let mut server = ServerProcess::start_durable(data_dir.path(), &[]);
    let mut client = server.client().await;
    add(&mut client, "DANNON", 300, "2022-10-31T10:00:00Z").await;
    add(&mut client, "UNILEVER", 200, "2022-10-31T11:00:00Z").await;
    spend(&mut client, 100).await;
    let before_last = balances(&mut client).await;
    add(&mut client, "MILLER COORS", 10000, "2022-11-01T14:00:00Z").await;
    server.signal("TERM");
    assert_eq!(server.wait(Duration::from_secs(20)).code(), Some(0));

    let journals = journal_files(data_dir.path());
    assert_eq!(journals.len(), 1);
    let journal = common::journal_records(&journals[0]);
    let last_start = *frame_offsets(&journal).last().expect("records");
    let name = journals[0].file_name().unwrap().to_owned();
    for cut in last_start..journal.len() {
        let copy = copy_dir(data_dir.path());
        let path = copy.path().join(&name);
        std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(cut as u64).unwrap();
        let server = ServerProcess::start_durable(copy.path(), &[]);
        let mut client = server.client().await;
        assert_eq!(balances(&mut client).await, before_last, "cut at {cut}");
        assert_eq!(std::fs::metadata(&path).unwrap().len(), last_start as u64, "cut at {cut}");
        if cut > last_start {
            assert!(server.log().contains("torn batch"), "cut at {cut}: {}", server.log());
        }
        // The journal is usable again: a new write takes the torn one's id.
        assert_eq!(add(&mut client, "KRAFT", 1, "2024-01-01T00:00:00Z").await.id, 3);
    }
}

/// A flipped byte in an earlier record: the server refuses to start and names the file and offset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_byte_in_an_earlier_record_refuses_start_with_the_offset() {
    let data_dir = tempfile::tempdir().expect("temporary directory");
    let mut server = ServerProcess::start_durable(data_dir.path(), &[]);
    let mut client = server.client().await;
    for day in 1..=3 {
        add(&mut client, "DANNON", 10, &format!("2024-01-0{day}T00:00:00Z")).await;
    }
    server.signal("TERM");
    assert_eq!(server.wait(Duration::from_secs(20)).code(), Some(0));

    let path = journal_files(data_dir.path()).remove(0);
    let file = std::fs::read(&path).unwrap();
    let second = frame_offsets(&common::journal_records(&path))[1];
    for (offset, description) in [(second + 14, "payload"), (second + 1, "length")] {
        let mut damaged = file.clone();
        damaged[offset] ^= 0x10;
        std::fs::write(&path, &damaged).unwrap();
        let output = ServerProcess::command()
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir.path())
            .output()
            .expect("run points-server");
        assert!(!output.status.success(), "started with a damaged {description}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains(&format!("{} is damaged at byte offset {second}", path.display())),
            "{description}: {stderr}"
        );
        // Refusing changed nothing on disk.
        assert_eq!(std::fs::read(&path).unwrap(), damaged);
    }
    // With the original bytes back, the server starts and has everything.
    std::fs::write(&path, &file).unwrap();
    let server = ServerProcess::start_durable(data_dir.path(), &[]);
    assert_eq!(balances(&mut server.client().await).await["DANNON"], 30);
}

/// A second server on a locked data directory fails at once; the first keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_server_on_a_locked_data_directory_fails_with_a_clear_message() {
    let data_dir = tempfile::tempdir().expect("temporary directory");
    let first = ServerProcess::start_durable(data_dir.path(), &[]);
    let mut client = first.client().await;
    add(&mut client, "DANNON", 5, "2024-01-01T00:00:00Z").await;
    let output = ServerProcess::command()
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir.path())
        .output()
        .expect("run a second points-server");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("is in use by another points-server"), "stderr: {stderr}");
    add(&mut client, "DANNON", 5, "2024-01-02T00:00:00Z").await;
    assert_eq!(balances(&mut client).await["DANNON"], 10);
}

/// --fsync never still survives the process being killed (the OS has the writes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fsync_never_survives_kill_9_of_the_process() {
    let data_dir = tempfile::tempdir().expect("temporary directory");
    let server = ServerProcess::start_durable(data_dir.path(), &["--fsync", "never"]);
    let mut client = server.client().await;
    for day in 1..=9 {
        add(&mut client, "DANNON", day, &format!("2024-01-0{day}T00:00:00Z")).await;
    }
    spend(&mut client, 5).await;
    server.signal("KILL");
    drop(server);
    let server = ServerProcess::start_durable(data_dir.path(), &["--fsync", "never"]);
    assert_eq!(balances(&mut server.client().await).await["DANNON"], 40);
}

/// --in-memory writes no files and forgets everything on restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_memory_mode_writes_no_files_and_forgets_on_restart() {
    let data_dir = tempfile::tempdir().expect("temporary directory");
    let unused = data_dir.path().join("unused");
    let args = ["--in-memory", "--data-dir", unused.to_str().unwrap()];
    let mut command = ServerProcess::command();
    command.args(["--listen", "127.0.0.1:0"]).args(args);
    let server = ServerProcess::spawn(command);
    let mut client = server.client().await;
    add(&mut client, "DANNON", 5, "2024-01-01T00:00:00Z").await;
    drop(server);
    assert!(!unused.exists(), "--in-memory created {}", unused.display());
    let mut command = ServerProcess::command();
    command.args(["--listen", "127.0.0.1:0"]).args(args);
    let server = ServerProcess::spawn(command);
    assert!(balances(&mut server.client().await).await.is_empty());
}

/// A real write error (the file size limit is reached): that call fails with
/// UNAVAILABLE, health turns NOT_SERVING, every later call is refused, and a
/// restart holds exactly the acknowledged writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_error_fails_stop_with_unavailable_and_not_serving() {
    let data_dir = tempfile::tempdir().expect("temporary directory");
    let mut command = std::process::Command::new("bash");
    command
        .arg("-c")
        .arg(r#"ulimit -f 8 && exec "$0" "$@""#)
        .arg(env!("CARGO_BIN_EXE_points-server"))
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir.path());
    let server = ServerProcess::spawn(command);
    let mut client = server.client().await;
    let mut acknowledged = 0i64;
    let mut failure = None;
    // 8 KiB of journal holds fewer than 400 records.
    for step in 0..2_000 {
        match client.add_transaction(request("DANNON", 1, "2024-01-01T00:00:00Z")).await {
            Ok(_) => acknowledged += 1,
            Err(status) => {
                failure = Some((step, status));
                break;
            }
        }
    }
    let (_, status) = failure.expect("the journal hit the file size limit");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(acknowledged > 10);

    let health =
        HealthClient::new(Channel::from_shared(server.uri()).unwrap().connect().await.unwrap());
    for service in ["", "points.v1.PointsService"] {
        // The health update follows the failure asynchronously; give it a moment.
        eventually(&format!("{service:?} to be NOT_SERVING"), Duration::from_secs(2), || {
            let mut health = health.clone();
            async move {
                let reply = health.check(HealthCheckRequest { service: service.into() }).await;
                (reply.unwrap().into_inner().status() == ServingStatus::NotServing).then_some(())
            }
        })
        .await;
    }
    let later = client.add_transaction(request("DANNON", 1, "2024-01-02T00:00:00Z")).await;
    assert_eq!(later.unwrap_err().code(), Code::Unavailable);
    let read = client.get_balances(GetBalancesRequest::default()).await;
    assert_eq!(read.unwrap_err().code(), Code::Unavailable);
    assert!(server.log().contains("journal failed"), "{}", server.log());
    drop(server);

    let server = ServerProcess::start_durable(data_dir.path(), &[]);
    assert_eq!(balances(&mut server.client().await).await["DANNON"], acknowledged);
}

/// kill -9 while snapshots and segment rotations happen all the time (4 KiB
/// threshold): after each restart the history holds every acknowledged
/// transaction with its id, ids stay contiguous, and the balances equal what
/// the history adds up to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_snapshots_loses_no_acknowledged_write() {
    use points::proto::v1::ListTransactionsRequest;
    use points::proto::v1::history_entry::Entry;

    let data_dir = tempfile::tempdir().expect("temporary directory");
    let mut acknowledged: HashMap<u64, Transaction> = HashMap::new();
    const WRITERS: usize = 8;
    for (round, kill_after_ms) in [200u64, 400, 150, 300].into_iter().enumerate() {
        let server =
            ServerProcess::start_durable(data_dir.path(), &["--snapshot-threshold-bytes", "4096"]);
        let channel = Channel::from_shared(server.uri()).unwrap().connect().await.expect("connect");
        let stop = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = (0..WRITERS)
            .map(|writer| {
                let mut client = PointsServiceClient::new(channel.clone());
                let stop = Arc::clone(&stop);
                tokio::spawn(async move {
                    let mut seen = Vec::new();
                    for step in 0..100_000u64 {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        if step % 5 == 4 {
                            let spend = SpendRequest { points: 2, ..Default::default() };
                            if client.spend(spend).await.is_err() {
                                break;
                            }
                            continue;
                        }
                        let when =
                            format!("2024-03-{:02}T{:02}:00:00Z", 1 + (step % 28), round * 5);
                        let request = request(&format!("W{writer}"), 1 + (step % 3) as i64, &when);
                        match client.add_transaction(request).await {
                            Ok(reply) => seen.push(reply.into_inner().transaction.unwrap()),
                            Err(_) => break,
                        }
                    }
                    seen
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(kill_after_ms)).await;
        if round == 3 {
            // Make sure at least one kill lands after snapshots have started.
            for _ in 0..300 {
                if snapshot_count(data_dir.path()) > 0 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        server.signal("KILL");
        stop.store(true, Ordering::Relaxed);
        for writer in writers {
            for transaction in writer.await.expect("writer") {
                acknowledged.insert(transaction.id, transaction);
            }
        }
        drop(server);

        let server =
            ServerProcess::start_durable(data_dir.path(), &["--snapshot-threshold-bytes", "4096"]);
        let mut client = server.client().await;
        let mut history: Vec<Entry> = Vec::new();
        let mut page_token = String::new();
        loop {
            let page = client
                .list_transactions(ListTransactionsRequest {
                    page_size: 1000,
                    page_token,
                    ..Default::default()
                })
                .await
                .expect("history")
                .into_inner();
            history.extend(page.entries.into_iter().filter_map(|entry| entry.entry));
            if page.next_page_token.is_empty() {
                break;
            }
            page_token = page.next_page_token;
        }
        let mut net: HashMap<String, i64> = HashMap::new();
        let mut transaction_ids = Vec::new();
        for entry in &history {
            match entry {
                Entry::Transaction(transaction) => {
                    transaction_ids.push(transaction.id);
                    *net.entry(transaction.payer.clone()).or_default() += transaction.points;
                    if let Some(acked) = acknowledged.get(&transaction.id) {
                        assert_eq!(
                            (&acked.payer, acked.points),
                            (&transaction.payer, transaction.points)
                        );
                    }
                }
                Entry::Spend(spend) => {
                    for part in &spend.spent {
                        *net.entry(part.payer.clone()).or_default() += part.points;
                    }
                }
            }
        }
        assert_eq!(
            transaction_ids,
            (1..=transaction_ids.len() as u64).collect::<Vec<_>>(),
            "round {round}"
        );
        let highest = transaction_ids.len() as u64;
        assert!(
            acknowledged.keys().all(|id| *id <= highest),
            "round {round}: an acknowledged transaction is missing"
        );
        assert_eq!(
            balances(&mut client).await,
            net,
            "round {round}: balances disagree with the history"
        );
    }
    let snapshots = snapshot_count(data_dir.path());
    assert!(snapshots >= 1, "snapshots were taken while the server was being killed");
}

fn snapshot_count(data_dir: &Path) -> usize {
    std::fs::read_dir(data_dir)
        .expect("list the data directory")
        .filter(|entry| {
            entry.as_ref().is_ok_and(|entry| {
                entry.path().extension().is_some_and(|extension| extension == "snap")
            })
        })
        .count()
}

/// A call that must wait for a busy user's lock (here, held by a snapshot
/// encoding a large ledger) waits off the runtime's workers: with both
/// workers' calls waiting on that user, another user's call is still served,
/// before either waiting call gets the lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_waiting_for_a_busy_user_leave_the_workers_to_other_users() {
    use points::durability::{FsyncPolicy, Store, StoreOptions};
    use points::ledger::NewTransaction;
    let data_dir = tempfile::tempdir().expect("temporary directory");
    let options = StoreOptions::durable(data_dir.path(), FsyncPolicy::Never, u64::MAX / 2);
    let (store, _) = Store::open(&options).expect("open");
    let store = Arc::new(store);
    let when = chrono::DateTime::from_timestamp(1_700_000_000, 0).expect("valid");
    let batch: Vec<NewTransaction<'_>> = (0..10_000)
        .map(|lot| NewTransaction { payer: ["A", "B"][lot % 2], points: 1, timestamp: when })
        .collect();
    for _ in 0..60 {
        store.add_transactions("big", &batch).await.expect("batch");
    }
    // The snapshot encodes "big" (600,000 transactions) under its read lock.
    let snapshotting = {
        let store = Arc::clone(&store);
        tokio::task::spawn_blocking(move || store.snapshot_now())
    };
    // Bounded: the snapshot creates its temporary file before it encodes.
    for _ in 0..5_000 {
        let names = std::fs::read_dir(data_dir.path()).expect("list the data directory");
        if names.flatten().any(|entry| entry.file_name().to_string_lossy().ends_with(".snap.tmp")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let big_done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let waiting: Vec<_> = (0..2)
        .map(|_| {
            let (store, big_done) = (Arc::clone(&store), Arc::clone(&big_done));
            tokio::spawn(async move {
                store.add_transaction("big", None, "A", 1, when).await.expect("write");
                big_done.fetch_add(1, Ordering::SeqCst);
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let other = {
        let store = Arc::clone(&store);
        tokio::spawn(async move { store.add_transaction("small", None, "A", 1, when).await })
    };
    other.await.expect("task").expect("another user's write");
    let finished_first = big_done.load(Ordering::SeqCst);
    assert!(
        !snapshotting.is_finished(),
        "the snapshot was too quick for this test to mean anything"
    );
    assert_eq!(finished_first, 0, "another user waited for the busy user's lock");
    for task in waiting {
        task.await.expect("waiting write");
    }
    snapshotting.await.expect("snapshot thread").expect("snapshot");
    store.close();
}
