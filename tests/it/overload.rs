//! The real binary under more calls than it admits: a flood beyond
//! --max-concurrent-calls is shed with RESOURCE_EXHAUSTED and changes
//! nothing, 10,000 concurrent streams leave it up with bounded memory, and
//! one greedy client cannot take the call slots of the others.

use crate::common::ServerProcess;
use crate::common::client::{Client, add, add_request, balances, connect_to};
use crate::common::raw::{H2Connection, status_of};
use crate::common::refusal::{assert_refusal, reason};
use crate::common::tokens::{balances_as, token_client, tokens_file};
use crate::common::wait::eventually;

use std::time::Duration;

use points::proto::v1::GetBalancesRequest;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tonic::{Code, Status};

/// Opens `count` channels to `server`, one after another, each warmed by one
/// finished call. The server's SETTINGS frame (its stream limit) precedes its
/// first response, so a warmed client knows the limit and queues streams past
/// it; a cold one may open more and have them refused with REFUSED_STREAM.
async fn channels(server: &ServerProcess, count: usize) -> Vec<Channel> {
    let mut channels = Vec::with_capacity(count);
    for _ in 0..count {
        let channel = server.channel().await;
        Client::new(channel.clone())
            .get_balances(GetBalancesRequest::default())
            .await
            .expect("a warm-up call");
        channels.push(channel);
    }
    channels
}

/// Calls beyond --max-concurrent-calls are shed with RESOURCE_EXHAUSTED and
/// change nothing; admitted calls succeed; the server serves on afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flood_beyond_the_concurrency_limit_is_shed_with_resource_exhausted() {
    let data_dir = tempfile::tempdir().expect("temporary directory");
    // Durable with fsync: each call holds its permit while waiting for the disk.
    let server = ServerProcess::start_durable(data_dir.path(), &["--max-concurrent-calls", "2"]);
    let channels = channels(&server, 4).await;
    let earn = add_request("default", "", "DANNON", 1, "2024-01-01T00:00:00Z");
    let tasks: Vec<_> = (0..400)
        .map(|call| {
            let mut client = Client::new(channels[call % channels.len()].clone());
            let earn = earn.clone();
            tokio::spawn(async move { client.add_transaction(earn).await })
        })
        .collect();
    let (mut accepted, mut shed) = (0i64, 0);
    for task in tasks {
        match task.await.expect("task") {
            Ok(_) => accepted += 1,
            Err(status) => {
                assert_refusal(&status, Code::ResourceExhausted, "SERVER_OVERLOADED");
                shed += 1;
            }
        }
    }
    assert!(accepted > 0 && shed > 0, "accepted {accepted}, shed {shed}");
    let mut client = server.client().await;
    assert_eq!(balances(&mut client).await["DANNON"], accepted, "shed calls changed nothing");
}

/// Whether the call failed because the server's HTTP/2 layer refused its
/// stream (RST_STREAM with REFUSED_STREAM), which means it was not processed.
fn refused_stream(status: &Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(error) = source {
        if let Some(h2_error) = error.downcast_ref::<h2::Error>() {
            return h2_error.reason() == Some(h2::Reason::REFUSED_STREAM);
        }
        source = error.source();
    }
    false
}

/// 10,000 calls at once over a few connections: every one is answered (OK or
/// shed), memory stays bounded, and the server serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_concurrent_streams_leave_the_server_up_with_bounded_memory() {
    let server = ServerProcess::start(&["--max-concurrent-calls", "256"]);
    let before_kib = server.resident_kib();
    let channels = channels(&server, 8).await;
    let tasks: Vec<_> = (0..10_000)
        .map(|call| {
            let mut client = Client::new(channels[call % channels.len()].clone());
            tokio::spawn(async move {
                // As gRPC clients do transparently: a stream the server's
                // HTTP/2 layer refused was never seen by the service (the
                // server may still count a just-finished stream), so it is
                // sent again, a bounded number of times.
                let mut attempts = 1;
                loop {
                    match client.get_balances(GetBalancesRequest::default()).await {
                        Err(status) if refused_stream(&status) && attempts < 10 => attempts += 1,
                        answer => break answer,
                    }
                }
            })
        })
        .collect();
    let mut answered = 0;
    for task in tasks {
        match task.await.expect("task") {
            Ok(_) => answered += 1,
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                answered += 1;
            }
        }
    }
    assert_eq!(answered, 10_000);
    let after_kib = server.resident_kib();
    assert!(
        after_kib < before_kib + 128 * 1024,
        "resident memory grew from {before_kib} KiB to {after_kib} KiB"
    );
    let mut client = server.client().await;
    add(&mut client, "DANNON", 1, "2024-01-01T00:00:00Z").await;
}

/// One client holding its whole share of the call slots is refused more with
/// CLIENT_OVERLOADED, while another client is still served; the share comes
/// back when its calls end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_greedy_client_cannot_take_all_call_slots() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let clients = ["greedy", "polite"].map(|name| token_client(name, &["admin"], &[]));
    let tokens = tokens_file(dir.path(), &clients);
    let server = ServerProcess::start(&[
        "--tokens-file",
        tokens.to_str().expect("a UTF-8 path"),
        "--max-concurrent-calls",
        "8",
        "--max-concurrent-calls-per-client",
        "3",
    ]);
    // The greedy client opens 10 calls that never finish sending.
    let greedy = H2Connection::open(server.address).await;
    let mut bodies = Vec::new();
    let mut answers: Vec<JoinHandle<Option<Status>>> = Vec::new();
    for _ in 0..10 {
        let (response, body) =
            greedy.start_unfinished_call("GetBalances", Some("greedy-token"), 2, 0).await;
        bodies.push(body);
        answers.push(tokio::spawn(async move {
            match response.await {
                Ok(response) => Some(status_of(response).await),
                Err(_) => None,
            }
        }));
    }
    // Seven are refused at once; three hold their slots, waiting for bodies.
    eventually("the calls past the share to be refused", Duration::from_secs(5), || async {
        (answers.iter().filter(|answer| answer.is_finished()).count() >= 7).then_some(())
    })
    .await;
    let mut waiting = Vec::new();
    for answer in answers {
        if answer.is_finished() {
            let status = answer.await.expect("the task").expect("a response");
            assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
            assert_eq!(reason(&status), "CLIENT_OVERLOADED");
            assert!(status.message().contains("\"greedy\""), "{status:?}");
        } else {
            waiting.push(answer);
        }
    }
    assert_eq!(waiting.len(), 3, "exactly the share is in progress");

    // Another client is served meanwhile.
    let mut polite =
        connect_to(server.address).connect_timeout(Duration::from_secs(5)).client().await;
    let served = balances_as(&mut polite, "polite-token", "").await;
    served.expect("another client is served while the greedy one is at its share");

    // The greedy client goes away; its share comes back.
    drop(bodies);
    greedy.driver.abort();
    drop(greedy.requests);
    let greedy = connect_to(server.address).connect_timeout(Duration::from_secs(5)).client().await;
    eventually("the greedy client's slots to come back", Duration::from_secs(5), || {
        let mut greedy = greedy.clone();
        async move {
            match balances_as(&mut greedy, "greedy-token", "").await {
                Ok(_) => Some(()),
                Err(status) => {
                    assert_eq!(reason(&status), "CLIENT_OVERLOADED", "{status:?}");
                    None
                }
            }
        }
    })
    .await;
    for answer in waiting {
        answer.abort();
    }
}
