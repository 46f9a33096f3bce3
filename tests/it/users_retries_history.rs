//! Many users, safe retries and history over real gRPC: user isolation,
//! request_id retries (also across a kill -9 restart), reuse refusals,
//! concurrent duplicates, and paging through history while writes go on.

use crate::common;
use crate::common::refusal::reason;

use std::collections::HashMap;
use std::time::Duration;

use common::{ServerProcess, TestServer, timestamp};
use points::proto::v1::history_entry::Entry;
use points::proto::v1::points_service_client::PointsServiceClient;
use points::proto::v1::{
    AddTransactionRequest, GetBalancesRequest, ListTransactionsRequest, SpendRequest,
    SpendResponse, Transaction,
};
use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_types::StatusExt;

type Client = PointsServiceClient<Channel>;

fn add_request(
    user: &str,
    request_id: &str,
    payer: &str,
    points: i64,
    rfc3339: &str,
) -> AddTransactionRequest {
    AddTransactionRequest {
        user_id: user.to_owned(),
        request_id: request_id.to_owned(),
        payer: payer.to_owned(),
        points,
        timestamp: Some(timestamp(rfc3339)),
    }
}

fn spend_request(user: &str, request_id: &str, points: i64) -> SpendRequest {
    SpendRequest { user_id: user.to_owned(), request_id: request_id.to_owned(), points }
}

async fn add(client: &mut Client, request: AddTransactionRequest) -> Result<Transaction, Status> {
    client
        .add_transaction(request)
        .await
        .map(|reply| reply.into_inner().transaction.expect("transaction"))
}

async fn spend(client: &mut Client, request: SpendRequest) -> Result<SpendResponse, Status> {
    client.spend(request).await.map(tonic::Response::into_inner)
}

async fn balances(client: &mut Client, user: &str) -> HashMap<String, i64> {
    client
        .get_balances(GetBalancesRequest { user_id: user.to_owned() })
        .await
        .expect("balances")
        .into_inner()
        .balances
}

/// (code, message, ErrorInfo reason) of a refusal, to compare two refusals.
fn refusal(status: &Status) -> (Code, String, String) {
    (status.code(), status.message().to_owned(), reason(status))
}

/// Walks a user's whole history with pages of `page_size`, returning
/// ("t" or "s", id) per entry.
async fn walk_history(client: &mut Client, user: &str, page_size: i32) -> Vec<(char, u64)> {
    let mut entries = Vec::new();
    let mut page_token = String::new();
    for _ in 0..100_000 {
        let page = client
            .list_transactions(ListTransactionsRequest {
                user_id: user.to_owned(),
                page_size,
                page_token,
            })
            .await
            .expect("a page")
            .into_inner();
        assert!(page.entries.len() <= page_size.max(1) as usize);
        entries.extend(page.entries.into_iter().map(
            |entry| match entry.entry.expect("an entry") {
                Entry::Transaction(transaction) => ('t', transaction.id),
                Entry::Spend(spend) => ('s', spend.id),
            },
        ));
        if page.next_page_token.is_empty() {
            return entries;
        }
        page_token = page.next_page_token;
    }
    panic!("history did not end");
}

/// Users are independent: their own ids from 1, their own balances and history.
#[tokio::test]
async fn users_have_independent_ledgers_ids_and_histories() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let alice = add(&mut client, add_request("alice", "", "DANNON", 100, "2024-01-02T00:00:00Z"))
        .await
        .unwrap();
    let bob = add(&mut client, add_request("bob", "", "DANNON", 7, "2024-01-01T00:00:00Z"))
        .await
        .unwrap();
    assert_eq!((alice.id, bob.id), (1, 1));
    let spent = spend(&mut client, spend_request("alice", "", 30)).await.unwrap();
    assert_eq!(spent.spend_id, 1);
    assert_eq!(balances(&mut client, "alice").await, HashMap::from([("DANNON".to_owned(), 70)]));
    assert_eq!(balances(&mut client, "bob").await, HashMap::from([("DANNON".to_owned(), 7)]));
    assert!(balances(&mut client, "carol").await.is_empty());
    assert!(balances(&mut client, "").await.is_empty(), "the default user is a user of its own");
    let status = spend(&mut client, spend_request("bob", "", 8)).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "bob cannot spend alice's points");
    assert_eq!(walk_history(&mut client, "alice", 10).await, [('t', 1), ('s', 1)]);
    assert_eq!(walk_history(&mut client, "bob", 10).await, [('t', 1)]);
}

/// Every write retried with its request_id gets the same outcome, before and
/// after a kill -9 restart; nothing is applied twice; reuse is ALREADY_EXISTS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_return_the_original_outcome_also_after_a_restart() {
    let data_dir = tempfile::tempdir().expect("temporary directory");
    let server = ServerProcess::start_durable(data_dir.path(), &[]);
    let mut client = server.client().await;
    let earn = add_request("alice", "earn-1", "DANNON", 100, "2024-01-01T00:00:00Z");
    let first_earn = add(&mut client, earn.clone()).await.unwrap();
    let checkout = spend_request("alice", "checkout-1", 40);
    let first_checkout = spend(&mut client, checkout.clone()).await.unwrap();
    // Refused for lack of points: remembered, even once the points are there.
    let too_big = spend_request("alice", "checkout-2", 500);
    let first_refusal = refusal(&spend(&mut client, too_big.clone()).await.unwrap_err());
    let take_back = add_request("alice", "chargeback-1", "DANNON", -1000, "2024-01-02T00:00:00Z");
    let first_take_back = refusal(&add(&mut client, take_back.clone()).await.unwrap_err());
    add(&mut client, add_request("alice", "earn-2", "UNILEVER", 1000, "2024-01-03T00:00:00Z"))
        .await
        .unwrap();
    let balances_before = balances(&mut client, "alice").await;

    let retry_all = async |client: &mut Client| {
        assert_eq!(add(client, earn.clone()).await.unwrap(), first_earn);
        assert_eq!(spend(client, checkout.clone()).await.unwrap(), first_checkout);
        assert_eq!(refusal(&spend(client, too_big.clone()).await.unwrap_err()), first_refusal);
        assert_eq!(refusal(&add(client, take_back.clone()).await.unwrap_err()), first_take_back);
        let reused = AddTransactionRequest { points: 101, ..earn.clone() };
        let (code, _, reason) = refusal(&add(client, reused).await.unwrap_err());
        assert_eq!((code, reason.as_str()), (Code::AlreadyExists, "REQUEST_ID_REUSED"));
        let reused = SpendRequest { points: 41, ..checkout.clone() };
        assert_eq!(spend(client, reused).await.unwrap_err().code(), Code::AlreadyExists);
        // The same request id for another user is that user's own.
        let bob = AddTransactionRequest { user_id: "bob".into(), ..earn.clone() };
        assert_eq!(add(client, bob).await.expect("bob's own request").id, 1);
    };
    retry_all(&mut client).await;
    assert_eq!(balances(&mut client, "alice").await, balances_before);
    assert_eq!(first_refusal.0, Code::FailedPrecondition);

    server.signal("KILL");
    drop(server);
    let server = ServerProcess::start_durable(data_dir.path(), &[]);
    let mut client = server.client().await;
    assert_eq!(balances(&mut client, "alice").await, balances_before);
    retry_all(&mut client).await;
    assert_eq!(balances(&mut client, "alice").await, balances_before);
    assert_eq!(walk_history(&mut client, "alice", 2).await, [('t', 1), ('s', 1), ('t', 2)]);
}

/// The same request sent from many tasks at once is applied exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_duplicates_are_applied_exactly_once() {
    let data_dir = tempfile::tempdir().expect("temporary directory");
    let server = ServerProcess::start_durable(data_dir.path(), &[]);
    let channel = Channel::from_shared(server.uri()).unwrap().connect().await.unwrap();
    let earn = add_request("alice", "earn-once", "DANNON", 100, "2024-01-01T00:00:00Z");
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let mut client = PointsServiceClient::new(channel.clone());
            let earn = earn.clone();
            tokio::spawn(async move { add(&mut client, earn).await })
        })
        .collect();
    let mut replies = Vec::new();
    for task in tasks {
        replies.push(task.await.expect("task").expect("accepted"));
    }
    assert!(replies.iter().all(|reply| *reply == replies[0]), "{replies:?}");
    let checkout = spend_request("alice", "spend-once", 30);
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let mut client = PointsServiceClient::new(channel.clone());
            let checkout = checkout.clone();
            tokio::spawn(async move { spend(&mut client, checkout).await })
        })
        .collect();
    let mut spends = Vec::new();
    for task in tasks {
        spends.push(task.await.expect("task").expect("accepted"));
    }
    assert!(spends.iter().all(|reply| *reply == spends[0]), "{spends:?}");
    let mut client = PointsServiceClient::new(channel);
    assert_eq!(balances(&mut client, "alice").await, HashMap::from([("DANNON".to_owned(), 70)]));
    assert_eq!(walk_history(&mut client, "alice", 100).await, [('t', 1), ('s', 1)]);
}

/// Paging with small pages while writes go on: no gaps, no repeats, arrival order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paging_while_writes_go_on_has_no_gaps_or_repeats() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    for day in 1..=20 {
        add(
            &mut client,
            add_request("alice", "", "DANNON", 10, &format!("2024-01-{day:02}T00:00:00Z")),
        )
        .await
        .unwrap();
    }
    let mut writer = client.clone();
    let writes = tokio::spawn(async move {
        for step in 0..300u32 {
            if step % 3 == 2 {
                spend(&mut writer, spend_request("alice", "", 4)).await.expect("enough points");
            } else {
                let when = format!("2024-02-{:02}T00:00:00Z", 1 + step % 28);
                add(&mut writer, add_request("alice", "", "UNILEVER", 5, &when)).await.unwrap();
            }
            if step % 50 == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    });
    // Walk the whole history in pages of 3 while the writer runs; the walk
    // ends at whatever the end is when it gets there.
    let seen = walk_history(&mut client, "alice", 3).await;
    let writes_done_during_walk = writes.is_finished();
    writes.await.expect("writer");
    let full = walk_history(&mut client, "alice", 1000).await;
    assert_eq!(full.len(), 20 + 300);
    assert!(seen.len() > 20, "the walk saw the writes that came during it");
    assert!(!writes_done_during_walk || seen.len() == full.len());
    // No gaps, no repeats, arrival order: the walk is exactly a prefix of the final history.
    assert_eq!(seen, full[..seen.len()]);
    let transactions: Vec<u64> =
        full.iter().filter(|(kind, _)| *kind == 't').map(|&(_, id)| id).collect();
    let spends: Vec<u64> =
        full.iter().filter(|(kind, _)| *kind == 's').map(|&(_, id)| id).collect();
    assert_eq!(transactions, (1..=220).collect::<Vec<u64>>());
    assert_eq!(spends, (1..=100).collect::<Vec<u64>>());
}

/// Bad paging input is INVALID_ARGUMENT; large page sizes are capped at 1000.
#[tokio::test]
async fn bad_page_tokens_and_sizes_are_invalid_arguments() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    for step in 0..1005i64 {
        let when = format!("2024-01-01T00:{:02}:{:02}Z", step / 60 % 60, step % 60);
        add(&mut client, add_request("alice", "", "DANNON", 1, &when)).await.unwrap();
    }
    let list = |user: &str, page_size: i32, page_token: &str| ListTransactionsRequest {
        user_id: user.to_owned(),
        page_size,
        page_token: page_token.to_owned(),
    };
    let first = client.list_transactions(list("alice", 5000, "")).await.unwrap().into_inner();
    assert_eq!(first.entries.len(), 1000);
    let default_page = client.list_transactions(list("alice", 0, "")).await.unwrap().into_inner();
    assert_eq!(default_page.entries.len(), 100);
    let rest = client
        .list_transactions(list("alice", 0, &first.next_page_token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rest.entries.len(), 5);
    assert!(rest.next_page_token.is_empty());
    for (request, field) in [
        (list("alice", -1, ""), "page_size"),
        (list("alice", 10, "garbage"), "page_token"),
        (list("bob", 10, &first.next_page_token), "page_token"),
    ] {
        let status = client.list_transactions(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        let violations =
            status.get_error_details().bad_request().expect("BadRequest").field_violations.clone();
        assert_eq!(violations[0].field, field);
    }
}
