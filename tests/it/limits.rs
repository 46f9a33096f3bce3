//! The real binary's limits: --max-request-bytes, --max-users,
//! --max-payers-per-user and --max-request-ids-per-user refuse with clear
//! codes, change nothing, and leave every slot to real customers (refused
//! calls never create a user).

use crate::common::client::{Client, add, add_request, balances_of, spend_request};
use crate::common::refusal::assert_refusal;
use crate::common::{ServerProcess, call_raw};

use points::proto::v1::AddTransactionRequest;
use tonic::Code;

/// One point from `payer` for `user`.
fn earn(user: &str, payer: &str) -> AddTransactionRequest {
    add_request(user, "", payer, 1, "2024-01-01T00:00:00Z")
}

/// A request larger than --max-request-bytes is refused unread; the server goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_request_is_refused_and_the_server_keeps_serving() {
    let server = ServerProcess::start(&["--max-request-bytes", "4096"]);
    let channel = server.channel().await;
    let status = call_raw(
        channel.clone(),
        "/points.v1.PointsService/AddTransaction",
        vec![0x0a; 100 * 1024],
    )
    .await
    .expect_err("too large");
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    // A payer just under the limit is still refused by validation, not by size.
    let mut client = Client::new(channel);
    let status = client
        .add_transaction(earn("default", &"X".repeat(3000)))
        .await
        .expect_err("payer too long");
    assert_eq!(status.code(), Code::InvalidArgument);
    add(&mut client, "DANNON", 5, "2024-01-01T00:00:00Z").await;
}

/// Past --max-users a new user is refused, past --max-payers-per-user a new
/// payer is; existing users and payers keep working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_and_payer_limits_give_resource_exhausted() {
    let server = ServerProcess::start(&["--max-users", "2", "--max-payers-per-user", "2"]);
    let mut client = server.client().await;
    for request in [earn("alice", "A"), earn("alice", "B"), earn("bob", "A")] {
        client.add_transaction(request).await.expect("within the limits");
    }
    for (request, reason) in
        [(earn("carol", "A"), "USER_LIMIT_REACHED"), (earn("alice", "C"), "PAYER_LIMIT_REACHED")]
    {
        let status = client.add_transaction(request).await.expect_err("past a limit");
        assert_refusal(&status, Code::ResourceExhausted, reason);
    }
    client.add_transaction(earn("alice", "A")).await.expect("existing payer");
    assert!(
        balances_of(&mut client, "carol").await.is_empty(),
        "reading an unknown user creates nothing"
    );
}

/// Refused calls never create a user, with or without a request_id: refused
/// spends and take-backs for made-up user ids leave every slot of
/// --max-users to real customers, and a user created later starts empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_for_made_up_users_take_no_room_under_max_users() {
    let server = ServerProcess::start(&["--max-users", "3"]);
    let mut client = server.client().await;
    for index in 0..10 {
        let user_id = format!("made-up-{index}");
        let spend = spend_request(&user_id, &format!("spend-{index}"), 5);
        let status = client.spend(spend).await.expect_err("nothing to spend");
        assert_eq!(status.code(), Code::FailedPrecondition);
        let take_back = AddTransactionRequest {
            points: -5,
            request_id: format!("take-back-{index}"),
            ..earn(&user_id, "DANNON")
        };
        let status = client.add_transaction(take_back).await.expect_err("nothing to take back");
        assert_eq!(status.code(), Code::FailedPrecondition);
    }
    for user in ["alice", "bob", "carol"] {
        client.add_transaction(earn(user, "DANNON")).await.expect("a real customer fits");
    }
    let status = client.add_transaction(earn("dave", "DANNON")).await.expect_err("limit");
    assert_refusal(&status, Code::ResourceExhausted, "USER_LIMIT_REACHED");
    // A retry of a refusal for a user who had no ledger is decided afresh.
    client.add_transaction(earn("made-up-0", "DANNON")).await.expect_err("still full");
    let balances = balances_of(&mut client, "made-up-1").await;
    assert!(balances.is_empty(), "{balances:?}");
}

/// Past --max-request-ids-per-user a new request_id is refused with
/// RESOURCE_EXHAUSTED, changing nothing; retries of remembered ones and
/// calls without a request_id still work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_per_user_are_capped() {
    let server = ServerProcess::start(&["--max-request-ids-per-user", "2"]);
    let mut client = server.client().await;
    let with_id = |request_id: &str| AddTransactionRequest {
        request_id: request_id.to_owned(),
        ..earn("alice", "DANNON")
    };
    for request_id in ["first", "second"] {
        client.add_transaction(with_id(request_id)).await.expect("within the cap");
    }
    let status = client.add_transaction(with_id("third")).await.expect_err("past the cap");
    let info = assert_refusal(&status, Code::ResourceExhausted, "REQUEST_ID_LIMIT_REACHED");
    assert_eq!(info.metadata.get("limit").map(String::as_str), Some("2"));
    let retried = client.add_transaction(with_id("first")).await.expect("a retry still works");
    assert_eq!(retried.into_inner().transaction.expect("transaction").id, 1);
    client.add_transaction(earn("alice", "DANNON")).await.expect("no request_id");
    client.add_transaction(with_id("fourth")).await.expect_err("alice is still full");
    let bob = AddTransactionRequest { request_id: "first".into(), ..earn("bob", "DANNON") };
    client.add_transaction(bob).await.expect("the cap is per user");
    let alice = balances_of(&mut client, "alice").await;
    assert_eq!(alice["DANNON"], 3, "refusals changed nothing");
}

/// Refused writes create no users, so they cannot fill --max-users and lock
/// real users out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_writes_do_not_use_up_the_user_limit() {
    let server = ServerProcess::start(&["--max-users", "1"]);
    let mut client = server.client().await;
    for ghost in 0..20 {
        let spend = spend_request(&format!("ghost-{ghost}"), "", 1);
        let status = client.spend(spend).await.expect_err("nothing to spend");
        assert_eq!(status.code(), Code::FailedPrecondition);
    }
    client.add_transaction(earn("alice", "DANNON")).await.expect("the first real user fits");
    let status = client.add_transaction(earn("bob", "DANNON")).await.expect_err("the limit holds");
    assert_eq!(status.code(), Code::ResourceExhausted);
}
