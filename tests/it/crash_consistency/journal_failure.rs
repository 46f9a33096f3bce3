//! After a journal failure (a real write error: the file size limit),
//! shutdown stays within the grace period, and a restart holds exactly what
//! was acknowledged and cuts the partial batch the failure left.

use super::{channel, connect, frame_as_utf8, seed, start_or_refusal, user_balances, within};
use crate::common::client::{Client, add, add_request, balances};
use crate::common::wait::eventually;
use crate::common::{ServerProcess, timestamp};

use std::time::{Duration, Instant};

use points::proto::v1::{AddTransactionsRequest, GetBalancesRequest, NewTransaction};
use tonic::Code;

/// `count` one-point transactions for `user_id` in one call, the payer of
/// the one at `index` named `payer(index)`.
fn batch_request(
    user_id: &str,
    count: usize,
    payer: impl Fn(usize) -> String,
) -> AddTransactionsRequest {
    let transactions = (0..count)
        .map(|index| NewTransaction {
            payer: payer(index),
            points: 1,
            timestamp: Some(timestamp("2024-04-01T00:00:00Z")),
        })
        .collect();
    AddTransactionsRequest { user_id: user_id.to_owned(), transactions }
}

/// A payer name of `length` bytes that starts with `index`.
fn padded(index: usize, length: usize) -> String {
    format!("{index:05}{}", "X".repeat(length - 5))
}

/// Whether the server's log shows a snapshot under way when the journal
/// failed: a segment started for a snapshot not yet written, or a snapshot
/// that ended (written or failed) after the failure.
fn snapshot_in_flight_at_failure(log: &str) -> bool {
    let Some(failure) = log.find("journal failed") else { return false };
    let (before, after) = log.split_at(failure);
    before.matches("started a new journal segment").count()
        > before.matches("snapshot written").count()
        || after.contains("snapshot written")
        || after.contains("snapshot failed")
}

/// One run: a 5 KB write crosses the 4 KiB snapshot threshold, and a
/// random 0-4 ms after it is sent, a 21 KB write, larger than the server's
/// 16 KiB file size limit, follows: it usually reaches the journal after the
/// first one was taken for writing and before the snapshot the first one
/// asks for has finished, and fails the journal. Clients stay connected.
/// SIGTERM must end the process within the grace period and a margin; a
/// restart holds exactly the acknowledged writes. Returns whether the log
/// shows a snapshot under way when the journal failed.
async fn journal_failure_then_sigterm(rng: &mut fastrand::Rng, grace_ms: u64) -> bool {
    let data_dir = tempfile::tempdir().expect("temporary directory");
    let grace_ms = grace_ms.to_string();
    let args = ["--snapshot-threshold-bytes", "4096", "--shutdown-grace-ms", &grace_ms];
    let command = ServerProcess::durable(data_dir.path(), &args);
    let mut server = ServerProcess::spawn(ServerProcess::under_ulimit("-f 16", &command));
    let channel = channel(&server).await;
    let mut client = Client::new(channel.clone());
    for day in 1..=9 {
        let when = format!("2024-01-0{day}T00:00:00Z");
        let request = add_request("early", "", "EARLY", day, &when);
        within(30, "an early write", client.add_transaction(request)).await.expect("accepted");
    }
    let trigger = batch_request("trigger", 100, |index| padded(index, 20));
    let doomed = batch_request("doomed", 80, |index| padded(index, 250));
    let mut trigger_client = client.clone();
    let trigger = tokio::spawn(async move { trigger_client.add_transactions(trigger).await });
    // The random delay between the two writes is what is tested.
    tokio::time::sleep(Duration::from_micros(rng.u64(0..4000))).await;
    let failed = within(60, "the failing write", client.add_transactions(doomed)).await;
    assert_eq!(failed.expect_err("the journal hit the file size limit").code(), Code::Unavailable);
    // The trigger is acknowledged unless the journal failed before it.
    let triggered = match within(60, "the trigger", trigger).await.expect("task") {
        Ok(_) => 100,
        Err(status) if status.code() == Code::Unavailable => 0,
        Err(status) => panic!("the trigger: {status:?}"),
    };
    eventually("the journal failure to be logged", Duration::from_secs(10), || async {
        server.log().contains("journal failed").then_some(())
    })
    .await;
    let later =
        within(30, "a later call", client.get_balances(GetBalancesRequest::default())).await;
    assert_eq!(later.unwrap_err().code(), Code::Unavailable);

    // The client's connection stays open through the shutdown.
    let terminated = Instant::now();
    server.signal("TERM");
    let status = server.wait(Duration::from_secs(10));
    let elapsed = terminated.elapsed();
    let log = server.log();
    let in_flight = snapshot_in_flight_at_failure(&log);
    println!(
        "exited ({status}) {elapsed:?} after SIGTERM (grace {grace_ms} ms); a snapshot was under \
         way when the journal failed: {in_flight}"
    );
    assert!(elapsed < Duration::from_secs(10), "{elapsed:?}; log:\n{log}");
    assert!(log.contains("SIGTERM received"), "{log}");
    drop((client, channel, server));

    // A restart holds exactly what was acknowledged, and nothing of the failed write.
    let server = ServerProcess::start_durable(data_dir.path(), &[]);
    let mut client = connect(&server).await;
    for (user, expected) in [("early", 45), ("trigger", triggered), ("doomed", 0)] {
        let total: i64 = user_balances(&mut client, user).await.values().sum();
        assert_eq!(total, expected, "{user}");
    }
    in_flight
}

/// The journal fails on a real write error (the file size limit) while a
/// snapshot is under way (4 KiB threshold): SIGTERM still ends the process
/// within the shutdown grace period plus a margin, and a restart has exactly
/// what was acknowledged. Runs until the log shows a snapshot under way at
/// the failure, at most 6 runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_completes_within_the_grace_period_after_a_journal_failure() {
    const GRACE_MS: u64 = 2000;
    let seed = seed("shutdown_completes_within_the_grace_period_after_a_journal_failure");
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut runs = 0;
    // Bounded: most runs have the snapshot under way.
    while runs < 6 {
        runs += 1;
        if journal_failure_then_sigterm(&mut rng, GRACE_MS).await {
            break;
        }
    }
    println!("{runs} run(s)");
}

/// A write error (the file size limit, as a full disk would) leaves part of
/// a batch in the journal (the segment could not be preallocated either, and
/// went on without it). When the payers of that batch hold bytes that form
/// valid frames, the restart must still cut the partial batch: a client's
/// choice of payer names must not turn a routine torn tail into a refused
/// start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_batch_left_by_a_write_error_is_cut_even_when_payer_names_look_like_frames() {
    let data_dir = tempfile::tempdir().expect("temporary directory");
    let command = ServerProcess::durable(data_dir.path(), &[]);
    let mut server = ServerProcess::spawn(ServerProcess::under_ulimit("-f 16", &command));
    let mut client = connect(&server).await;
    add(&mut client, "DANNON", 300, "2024-01-01T00:00:00Z").await;
    add(&mut client, "UNILEVER", 200, "2024-01-02T00:00:00Z").await;
    let before = balances(&mut client).await;
    let embedded = frame_as_utf8();
    // Some 20 KB in one record, past the 16 KiB file size limit.
    let request =
        batch_request("", 80, |index| format!("{index:03} {embedded} {}", "#".repeat(180)));
    let failed = within(30, "the failing write", client.add_transactions(request)).await;
    assert_eq!(failed.expect_err("the journal hit the file size limit").code(), Code::Unavailable);
    server.signal("TERM");
    server.wait(Duration::from_secs(10));
    // The segment's 4 MiB of zeros did not fit under the limit either; the
    // writes that did fit were taken all the same.
    let log = server.log();
    assert!(log.contains("writing it without preallocation"), "{log}");
    drop(server);

    let server = match start_or_refusal(data_dir.path()) {
        Ok(server) => server,
        Err(refusal) => panic!("the restart after a write error refused to start: {refusal}"),
    };
    let mut client = connect(&server).await;
    assert_eq!(balances(&mut client).await, before);
    assert!(server.log().contains("torn batch"), "{}", server.log());
    assert_eq!(add(&mut client, "KRAFT", 1, "2024-01-03T00:00:00Z").await.id, 3);
}
