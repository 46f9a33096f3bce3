//! The real binary under hostile or excessive load: oversized messages, a
//! flood beyond the concurrency limit, 10,000 concurrent streams, slow and
//! half-open connections, and the user and payer limits. The server must stay
//! up, refuse with clear codes, keep serving well-behaved clients, and keep
//! its memory bounded.

use crate::common;
use crate::common::refusal::assert_refusal;

use std::io::Write;
use std::net::TcpStream;

use common::client::{add, balances};
use common::{ServerProcess, call_raw, timestamp};
use points::proto::v1::points_service_client::PointsServiceClient;
use points::proto::v1::{AddTransactionRequest, GetBalancesRequest};
use tonic::Code;
use tonic::transport::Channel;

/// The resident memory of a process, in KiB.
fn resident_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc status")
}

async fn connect(server: &ServerProcess) -> Channel {
    Channel::from_shared(server.uri()).unwrap().connect().await.expect("connect")
}

fn earn(user: &str, payer: &str) -> AddTransactionRequest {
    AddTransactionRequest {
        user_id: user.to_owned(),
        payer: payer.to_owned(),
        points: 1,
        timestamp: Some(timestamp("2024-01-01T00:00:00Z")),
        ..Default::default()
    }
}

/// A request larger than --max-request-bytes is refused unread; the server goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_request_is_refused_and_the_server_keeps_serving() {
    let server = ServerProcess::start(&["--max-request-bytes", "4096"]);
    let channel = connect(&server).await;
    let status = call_raw(
        channel.clone(),
        "/points.v1.PointsService/AddTransaction",
        vec![0x0a; 100 * 1024],
    )
    .await
    .expect_err("too large");
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    // A payer just under the limit is still refused by validation, not by size.
    let mut client = PointsServiceClient::new(channel);
    let status = client
        .add_transaction(earn("default", &"X".repeat(3000)))
        .await
        .expect_err("payer too long");
    assert_eq!(status.code(), Code::InvalidArgument);
    add(&mut client, "DANNON", 5, "2024-01-01T00:00:00Z").await;
}

/// Calls beyond --max-concurrent-calls are shed with RESOURCE_EXHAUSTED and
/// change nothing; admitted calls succeed; the server serves on afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flood_beyond_the_concurrency_limit_is_shed_with_resource_exhausted() {
    let data_dir = tempfile::tempdir().expect("temporary directory");
    // Durable with fsync: each call holds its permit while waiting for the disk.
    let server = ServerProcess::start_durable(data_dir.path(), &["--max-concurrent-calls", "2"]);
    let channels: Vec<Channel> = connect_many(4, || connect(&server)).await;
    let tasks: Vec<_> = (0..400)
        .map(|call| {
            let mut client = PointsServiceClient::new(channels[call % channels.len()].clone());
            tokio::spawn(async move { client.add_transaction(earn("default", "DANNON")).await })
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
    let mut client = PointsServiceClient::new(connect(&server).await);
    assert_eq!(balances(&mut client).await["DANNON"], accepted, "shed calls changed nothing");
}

/// 10,000 calls at once over a few connections: every one is answered (OK or
/// shed), memory stays bounded, and the server serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_concurrent_streams_leave_the_server_up_with_bounded_memory() {
    let server = ServerProcess::start(&["--max-concurrent-calls", "256"]);
    let before_kib = resident_kib(server.pid());
    let channels: Vec<Channel> = connect_many(8, || connect(&server)).await;
    let tasks: Vec<_> = (0..10_000)
        .map(|call| {
            let mut client = PointsServiceClient::new(channels[call % channels.len()].clone());
            tokio::spawn(async move { client.get_balances(GetBalancesRequest::default()).await })
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
    let after_kib = resident_kib(server.pid());
    assert!(
        after_kib < before_kib + 128 * 1024,
        "resident memory grew from {before_kib} KiB to {after_kib} KiB"
    );
    let mut client = PointsServiceClient::new(connect(&server).await);
    add(&mut client, "DANNON", 1, "2024-01-01T00:00:00Z").await;
}

/// Connections that never finish the handshake, or stop mid-frame, do not
/// stop others from being served, and cost bounded memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_half_open_connections_do_not_block_other_clients() {
    let server = ServerProcess::start(&[]);
    let before_kib = resident_kib(server.pid());
    let address = server.address;
    let stalled = tokio::task::spawn_blocking(move || {
        (0..300)
            .map(|index| {
                let mut stream = TcpStream::connect(address).expect("connect");
                let partial: &[u8] = match index % 3 {
                    0 => b"",
                    1 => b"PRI * HTTP/2.0\r\n",
                    _ => b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04\x00\x00\x00\x00\x00",
                };
                stream.write_all(partial).expect("write");
                stream
            })
            .collect::<Vec<_>>()
    })
    .await
    .expect("open stalled connections");
    let mut client = PointsServiceClient::new(connect(&server).await);
    for day in 1..=50 {
        add(&mut client, "DANNON", 1, &format!("2024-01-{:02}T00:00:00Z", 1 + day % 28)).await;
    }
    assert_eq!(balances(&mut client).await["DANNON"], 50);
    let after_kib = resident_kib(server.pid());
    assert!(
        after_kib < before_kib + 64 * 1024,
        "resident memory grew from {before_kib} KiB to {after_kib} KiB"
    );
    drop(stalled);
}

/// Past --max-users a new user is refused, past --max-payers-per-user a new
/// payer is; existing users and payers keep working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_and_payer_limits_give_resource_exhausted() {
    let server = ServerProcess::start(&["--max-users", "2", "--max-payers-per-user", "2"]);
    let mut client = PointsServiceClient::new(connect(&server).await);
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
    let status = client.get_balances(GetBalancesRequest { user_id: "carol".into() }).await;
    assert!(
        status.expect("reading an unknown user creates nothing").into_inner().balances.is_empty()
    );
}

/// Refused calls never create a user, with or without a request_id: refused
/// spends and take-backs for made-up user ids leave every slot of
/// --max-users to real customers, and a user created later starts empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_for_made_up_users_take_no_room_under_max_users() {
    let server = ServerProcess::start(&["--max-users", "3"]);
    let mut client = PointsServiceClient::new(connect(&server).await);
    for index in 0..10 {
        let user_id = format!("made-up-{index}");
        let spend = points::proto::v1::SpendRequest {
            user_id: user_id.clone(),
            points: 5,
            request_id: format!("spend-{index}"),
        };
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
    let balances = client
        .get_balances(GetBalancesRequest { user_id: "made-up-1".into() })
        .await
        .expect("reading a made-up user")
        .into_inner()
        .balances;
    assert!(balances.is_empty(), "{balances:?}");
}

/// Past --max-request-ids-per-user a new request_id is refused with
/// RESOURCE_EXHAUSTED, changing nothing; retries of remembered ones and
/// calls without a request_id still work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_per_user_are_capped() {
    let server = ServerProcess::start(&["--max-request-ids-per-user", "2"]);
    let mut client = PointsServiceClient::new(connect(&server).await);
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
    let alice = client
        .get_balances(GetBalancesRequest { user_id: "alice".into() })
        .await
        .expect("alice's balances")
        .into_inner()
        .balances;
    assert_eq!(alice["DANNON"], 3, "refusals changed nothing");
}

/// A ListTransactions page stops before 4 MiB, however many payers its
/// spends list: 100 spends that each take from 300 payers with 200-byte
/// names are 6.5 MB of history, more than a client accepts in one reply.
/// Pages still list every entry once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_pages_are_bounded_by_bytes_as_well_as_entries() {
    use points::proto::v1::{AddTransactionsRequest, ListTransactionsRequest, NewTransaction};
    const PAYERS: usize = 300;
    const SPENDS: usize = 100;
    let server = ServerProcess::start(&[]);
    let mut client = PointsServiceClient::new(connect(&server).await);
    let payer = |index: usize| format!("{index:03}{}", "x".repeat(197));
    // Round r gives every payer one point, older than round r + 1's.
    let lots: Vec<NewTransaction> = (0..SPENDS * PAYERS)
        .map(|lot| NewTransaction {
            payer: payer(lot % PAYERS),
            points: 1,
            timestamp: Some(prost_types::Timestamp {
                seconds: 1_700_000_000 + lot as i64,
                nanos: 0,
            }),
        })
        .collect();
    for batch in lots.chunks(3_000) {
        let request =
            AddTransactionsRequest { user_id: "wide".into(), transactions: batch.to_vec() };
        client.add_transactions(request).await.expect("batch");
    }
    for _ in 0..SPENDS {
        let spend = points::proto::v1::SpendRequest {
            user_id: "wide".into(),
            points: PAYERS as i64,
            ..Default::default()
        };
        let spent = client.spend(spend).await.expect("spend").into_inner().spent;
        assert_eq!(spent.len(), PAYERS, "each spend takes from every payer");
    }
    let (mut token, mut entries, mut pages) = (String::new(), 0usize, 0usize);
    loop {
        let request = ListTransactionsRequest {
            user_id: "wide".into(),
            page_size: 1000,
            page_token: token.clone(),
        };
        let page = client.list_transactions(request).await.expect("a page fits a reply");
        let page = page.into_inner();
        assert!(prost::Message::encoded_len(&page) <= 4 * 1024 * 1024);
        entries += page.entries.len();
        pages += 1;
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(entries, SPENDS * PAYERS + SPENDS, "every entry once");
    assert!(pages >= 3, "the spends alone need two pages: {pages}");
}

/// Opens `count` connections, one after another.
async fn connect_many<F, Fut>(count: usize, connect: F) -> Vec<Channel>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Channel>,
{
    let mut channels = Vec::with_capacity(count);
    for _ in 0..count {
        channels.push(connect().await);
    }
    channels
}

/// Refused writes create no users, so they cannot fill --max-users and lock
/// real users out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_writes_do_not_use_up_the_user_limit() {
    let server = ServerProcess::start(&["--max-users", "1"]);
    let mut client = PointsServiceClient::new(connect(&server).await);
    for ghost in 0..20 {
        let spend = points::proto::v1::SpendRequest {
            user_id: format!("ghost-{ghost}"),
            points: 1,
            ..Default::default()
        };
        let status = client.spend(spend).await.expect_err("nothing to spend");
        assert_eq!(status.code(), Code::FailedPrecondition);
    }
    client.add_transaction(earn("alice", "DANNON")).await.expect("the first real user fits");
    let status = client.add_transaction(earn("bob", "DANNON")).await.expect_err("the limit holds");
    assert_eq!(status.code(), Code::ResourceExhausted);
}
