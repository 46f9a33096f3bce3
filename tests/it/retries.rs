//! Safe retries over real gRPC: every write retried with its request_id gets
//! its original outcome (also across a kill -9 restart), reusing a
//! request_id for another request is refused, and duplicates sent at once
//! are applied exactly once.

use crate::common::ServerProcess;
use crate::common::client::{Client, add_request, balances_of, spend_request, try_add, try_spend};
use crate::common::history::walk;
use crate::common::refusal::reason;

use std::collections::HashMap;
use std::future::Future;

use points::proto::v1::{AddTransactionRequest, SpendRequest};
use tonic::{Code, Status};

/// (code, message, ErrorInfo reason) of a refusal, to compare two refusals.
fn refusal(status: &Status) -> (Code, String, String) {
    (status.code(), status.message().to_owned(), reason(status))
}

/// Sends `calls` calls made by `call` at once, each from its own task;
/// returns their replies, failing the test if one is refused.
async fn all_at_once<T, F, Fut>(calls: usize, call: F) -> Vec<T>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<T, Status>> + Send + 'static,
    T: Send + 'static,
{
    let tasks: Vec<_> = (0..calls).map(|_| tokio::spawn(call())).collect();
    let mut replies = Vec::with_capacity(calls);
    for task in tasks {
        replies.push(task.await.expect("task").expect("accepted"));
    }
    replies
}

/// Every write retried with its request_id gets the same outcome, before and
/// after a kill -9 restart; nothing is applied twice; reuse is ALREADY_EXISTS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_return_the_original_outcome_also_after_a_restart() {
    let (data_dir, server) = ServerProcess::start_on_new_dir(&[]);
    let mut client = server.client().await;
    let earn = add_request("alice", "earn-1", "DANNON", 100, "2024-01-01T00:00:00Z");
    let first_earn = try_add(&mut client, earn.clone()).await.unwrap();
    let checkout = spend_request("alice", "checkout-1", 40);
    let first_checkout = try_spend(&mut client, checkout.clone()).await.unwrap();
    // Refused for lack of points: remembered, even once the points are there.
    let too_big = spend_request("alice", "checkout-2", 500);
    let first_refusal = refusal(&try_spend(&mut client, too_big.clone()).await.unwrap_err());
    let take_back = add_request("alice", "chargeback-1", "DANNON", -1000, "2024-01-02T00:00:00Z");
    let first_take_back = refusal(&try_add(&mut client, take_back.clone()).await.unwrap_err());
    let more = add_request("alice", "earn-2", "UNILEVER", 1000, "2024-01-03T00:00:00Z");
    try_add(&mut client, more).await.unwrap();
    let balances_before = balances_of(&mut client, "alice").await;

    let retry_all = async |client: &mut Client| {
        assert_eq!(try_add(client, earn.clone()).await.unwrap(), first_earn);
        assert_eq!(try_spend(client, checkout.clone()).await.unwrap(), first_checkout);
        assert_eq!(refusal(&try_spend(client, too_big.clone()).await.unwrap_err()), first_refusal);
        assert_eq!(
            refusal(&try_add(client, take_back.clone()).await.unwrap_err()),
            first_take_back
        );
        let reused = AddTransactionRequest { points: 101, ..earn.clone() };
        let (code, _, reason) = refusal(&try_add(client, reused).await.unwrap_err());
        assert_eq!((code, reason.as_str()), (Code::AlreadyExists, "REQUEST_ID_REUSED"));
        let reused = SpendRequest { points: 41, ..checkout.clone() };
        assert_eq!(try_spend(client, reused).await.unwrap_err().code(), Code::AlreadyExists);
        // The same request id for another user is that user's own.
        let bob = AddTransactionRequest { user_id: "bob".into(), ..earn.clone() };
        assert_eq!(try_add(client, bob).await.expect("bob's own request").id, 1);
    };
    retry_all(&mut client).await;
    assert_eq!(balances_of(&mut client, "alice").await, balances_before);
    assert_eq!(first_refusal.0, Code::FailedPrecondition);

    server.signal("KILL");
    drop(server);
    let server = ServerProcess::start_durable(data_dir.path(), &[]);
    let mut client = server.client().await;
    assert_eq!(balances_of(&mut client, "alice").await, balances_before);
    retry_all(&mut client).await;
    assert_eq!(balances_of(&mut client, "alice").await, balances_before);
    assert_eq!(walk(&mut client, "alice", 2).await, [('t', 1), ('s', 1), ('t', 2)]);
}

/// The same request sent from many tasks at once is applied exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_duplicates_are_applied_exactly_once() {
    let (_data_dir, server) = ServerProcess::start_on_new_dir(&[]);
    let channel = server.channel().await;
    let earn = add_request("alice", "earn-once", "DANNON", 100, "2024-01-01T00:00:00Z");
    let replies = all_at_once(32, || {
        let (mut client, earn) = (Client::new(channel.clone()), earn.clone());
        async move { try_add(&mut client, earn).await }
    })
    .await;
    assert!(replies.iter().all(|reply| *reply == replies[0]), "{replies:?}");
    let checkout = spend_request("alice", "spend-once", 30);
    let spends = all_at_once(32, || {
        let (mut client, checkout) = (Client::new(channel.clone()), checkout.clone());
        async move { try_spend(&mut client, checkout).await }
    })
    .await;
    assert!(spends.iter().all(|reply| *reply == spends[0]), "{spends:?}");
    let mut client = Client::new(channel);
    let dannon = HashMap::from([("DANNON".to_owned(), 70)]);
    assert_eq!(balances_of(&mut client, "alice").await, dannon);
    assert_eq!(walk(&mut client, "alice", 100).await, [('t', 1), ('s', 1)]);
}
