//! Durability of the real binary on real files: restarts after SIGTERM and
//! kill -9 (under concurrent load, and while snapshots and rotations happen
//! all the time), the data-directory lock, `--fsync never`, `--in-memory`,
//! and fail-stop on a real write error.

use crate::common::ServerProcess;
use crate::common::client::{Client, add, balances, spend, spend_request, transaction};
use crate::common::files::{replay_journal, snapshot_files};
use crate::common::history::entries;
use crate::common::wait::eventually;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use points::ledger::Ledger;
use points::proto::v1::history_entry::Entry;
use points::proto::v1::{AddTransactionRequest, GetBalancesRequest, Transaction};
use points::testing::read_journal;
use points::testing::records::Command;
use tokio::task::JoinHandle;
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

fn ledger_balances(ledger: &Ledger) -> HashMap<String, i64> {
    ledger.balances().map(|(payer, points)| (payer.to_owned(), points)).collect()
}

/// What one writer task saw acknowledged before the server was killed.
#[derive(Default)]
struct Acknowledged {
    transactions: Vec<Transaction>,
    spends: u64,
}

/// Writer tasks of the default user that go on until they are stopped or a
/// call fails (the server is gone).
struct Writers {
    stop: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<Acknowledged>>,
}

impl Writers {
    /// Starts `count` writers on `channel`. Writer `w`'s step `s` spends
    /// `spend_points` when `s % spend_every == spend_every - 1` (a refusal
    /// for lack of points is no failure), and otherwise sends
    /// `transaction(w, s)`.
    fn start(
        channel: &Channel,
        count: usize,
        (spend_every, spend_points): (u64, i64),
        transaction: impl Fn(usize, u64) -> AddTransactionRequest + Clone + Send + 'static,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..count)
            .map(|writer| {
                let mut client = Client::new(channel.clone());
                let (stop, transaction) = (Arc::clone(&stop), transaction.clone());
                tokio::spawn(async move {
                    let mut seen = Acknowledged::default();
                    // Bounded: the server is killed long before this runs out.
                    for step in 0..100_000u64 {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        if step % spend_every == spend_every - 1 {
                            match client.spend(spend_request("", "", spend_points)).await {
                                Ok(_) => seen.spends += 1,
                                Err(status) if status.code() == Code::FailedPrecondition => {}
                                Err(_) => break,
                            }
                            continue;
                        }
                        match client.add_transaction(transaction(writer, step)).await {
                            Ok(reply) => {
                                seen.transactions.push(reply.into_inner().transaction.unwrap())
                            }
                            Err(_) => break,
                        }
                    }
                    seen
                })
            })
            .collect();
        Self { stop, tasks }
    }

    /// Stops the writers and returns what each saw acknowledged.
    async fn stop(self) -> Vec<Acknowledged> {
        self.stop.store(true, Ordering::Relaxed);
        let mut seen = Vec::with_capacity(self.tasks.len());
        for task in self.tasks {
            seen.push(task.await.expect("writer task"));
        }
        seen
    }
}

/// A SIGTERM restart keeps balances, ids and the lot order that future spends follow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_after_sigterm_keeps_balances_ids_and_lot_order() {
    let (data_dir, mut server) = ServerProcess::start_on_new_dir(&[]);
    let mut client = server.client().await;
    add(&mut client, "P", 100, "2024-01-03T00:00:00Z").await;
    add(&mut client, "Q", 100, "2024-01-02T00:00:00Z").await;
    assert_eq!(spend(&mut client, 150).await, [("Q".to_owned(), -100), ("P".to_owned(), -50)]);
    add(&mut client, "P", 30, "2024-01-01T00:00:00Z").await;
    add(&mut client, "R", 10, "2024-01-02T12:00:00Z").await;
    let before = balances(&mut client).await;
    server.terminate();

    let server = ServerProcess::start_durable(data_dir.path(), &[]);
    let mut client = server.client().await;
    assert_eq!(balances(&mut client).await, before);
    assert_eq!(spend(&mut client, 20).await, [("R".to_owned(), -10), ("P".to_owned(), -10)]);
    assert_eq!(add(&mut client, "Q", 1, "2024-01-05T00:00:00Z").await.id, 5);
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
        let writers =
            Writers::start(&server.channel().await, WRITERS, (4, 3), move |writer, step| {
                let day = 1 + (step * 7 + writer as u64) % 28;
                let when = format!("2024-02-{day:02}T{:02}:00:00Z", round * 5);
                transaction(&format!("W{writer}"), 1 + step as i64 % 5, &when)
            });
        // The moment of the kill is what is tested, not a wait for anything.
        tokio::time::sleep(Duration::from_millis(kill_after_ms)).await;
        server.signal("KILL");
        let mut acknowledged_this_round = 0;
        for seen in writers.stop().await {
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
        let reference = replay_journal(data_dir.path());
        reference.check_invariants().expect("the replayed ledger keeps its invariants");
        let server = ServerProcess::start_durable(data_dir.path(), &[]);
        let mut client = server.client().await;
        assert_eq!(balances(&mut client).await, ledger_balances(&reference), "round {round}");
    }
}

/// kill -9 while snapshots and segment rotations happen all the time (4 KiB
/// threshold): after each restart the history holds every acknowledged
/// transaction with its id, ids stay contiguous, and the balances equal what
/// the history adds up to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_snapshots_loses_no_acknowledged_write() {
    let data_dir = tempfile::tempdir().expect("temporary directory");
    let args = ["--snapshot-threshold-bytes", "4096"];
    let mut acknowledged: HashMap<u64, Transaction> = HashMap::new();
    const WRITERS: usize = 8;
    for (round, kill_after_ms) in [200u64, 400, 150, 300].into_iter().enumerate() {
        let server = ServerProcess::start_durable(data_dir.path(), &args);
        let writers =
            Writers::start(&server.channel().await, WRITERS, (5, 2), move |writer, step| {
                let when = format!("2024-03-{:02}T{:02}:00:00Z", 1 + (step % 28), round * 5);
                transaction(&format!("W{writer}"), 1 + (step % 3) as i64, &when)
            });
        // The moment of the kill is what is tested, not a wait for anything.
        tokio::time::sleep(Duration::from_millis(kill_after_ms)).await;
        if round == 3 {
            // Make sure at least one kill lands after snapshots have started.
            eventually("a snapshot before the last kill", Duration::from_secs(30), || async {
                (!snapshot_files(data_dir.path()).is_empty()).then_some(())
            })
            .await;
        }
        server.signal("KILL");
        for seen in writers.stop().await {
            for transaction in seen.transactions {
                acknowledged.insert(transaction.id, transaction);
            }
        }
        drop(server);

        let server = ServerProcess::start_durable(data_dir.path(), &args);
        let mut client = server.client().await;
        let history = entries(&mut client, "").await;
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
                other => panic!("only transactions and spends were written, not {other:?}"),
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
    let snapshots = snapshot_files(data_dir.path()).len();
    assert!(snapshots >= 1, "snapshots were taken while the server was being killed");
}

/// A second server on a locked data directory fails at once; the first keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_server_on_a_locked_data_directory_fails_with_a_clear_message() {
    let data_dir = tempfile::tempdir().expect("temporary directory");
    let first = ServerProcess::start_durable(data_dir.path(), &[]);
    let mut client = first.client().await;
    add(&mut client, "DANNON", 5, "2024-01-01T00:00:00Z").await;
    let second = ServerProcess::run_to_exit(ServerProcess::durable(data_dir.path(), &[]));
    assert_eq!(second.status.code(), Some(1));
    assert!(second.log.contains("is in use by another points-server"), "stderr: {}", second.log);
    add(&mut client, "DANNON", 5, "2024-01-02T00:00:00Z").await;
    assert_eq!(balances(&mut client).await["DANNON"], 10);
}

/// --fsync never still survives the process being killed (the OS has the writes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fsync_never_survives_kill_9_of_the_process() {
    let (data_dir, server) = ServerProcess::start_on_new_dir(&["--fsync", "never"]);
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
    let args = ["--data-dir", unused.to_str().unwrap()];
    let server = ServerProcess::start(&args);
    let mut client = server.client().await;
    add(&mut client, "DANNON", 5, "2024-01-01T00:00:00Z").await;
    drop(server);
    assert!(!unused.exists(), "--in-memory created {}", unused.display());
    let server = ServerProcess::start(&args);
    assert!(balances(&mut server.client().await).await.is_empty());
}

/// A real write error (the file size limit is reached): that call fails with
/// UNAVAILABLE, health turns NOT_SERVING, every later call is refused, SIGTERM
/// then stops it with a failure exit code (not the 0 of a clean stop), and a
/// restart holds exactly the acknowledged writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_error_fails_stop_with_unavailable_and_not_serving() {
    let data_dir = tempfile::tempdir().expect("temporary directory");
    let command = ServerProcess::durable(data_dir.path(), &[]);
    let mut server = ServerProcess::spawn(ServerProcess::under_ulimit("-f 8", &command));
    let mut client = server.client().await;
    let mut acknowledged = 0i64;
    let mut failure = None;
    // 8 KiB of journal holds fewer than 400 records.
    for step in 0..2_000 {
        match client.add_transaction(transaction("DANNON", 1, "2024-01-01T00:00:00Z")).await {
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

    let health = HealthClient::new(server.channel().await);
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
    let later = client.add_transaction(transaction("DANNON", 1, "2024-01-02T00:00:00Z")).await;
    assert_eq!(later.unwrap_err().code(), Code::Unavailable);
    let read = client.get_balances(GetBalancesRequest::default()).await;
    assert_eq!(read.unwrap_err().code(), Code::Unavailable);
    assert!(server.log().contains("journal failed"), "{}", server.log());
    server.signal("TERM");
    let status = server.wait(Duration::from_secs(20));
    assert_eq!(status.code(), Some(1), "log:\n{}", server.log());
    assert!(server.log().contains("stopped after the store failed"), "{}", server.log());
    drop(server);

    let server = ServerProcess::start_durable(data_dir.path(), &[]);
    assert_eq!(balances(&mut server.client().await).await["DANNON"], acknowledged);
}
