//! History positions, balances as of a position or a time, and
//! WatchTransactions over real gRPC: the issue's example on both backends,
//! history then live entries, resuming after a reconnect and after kill -9
//! without gaps or repeats, many watchers while writes go on, the stream
//! limit, streams outliving the call-duration limit, and shutdown ending
//! streams with UNAVAILABLE.

use crate::common::ServerProcess;
use crate::common::client::{Client, add, add_request, spend, try_add};
use crate::common::refusal::assert_refusal;

use std::collections::HashMap;
use std::time::Duration;

use points::proto::v1::history_entry::Entry;
use points::proto::v1::{
    GetBalancesRequest, GetBalancesResponse, HistoryEntry, ListTransactionsRequest,
    WatchTransactionsRequest,
};
use tokio_stream::StreamExt;
use tonic::{Code, Streaming};

/// Example A's five transactions and a spend of 5000, for `user_id`.
async fn example_a_with_spend(client: &mut Client, user_id: &str) {
    for (payer, points, timestamp) in [
        ("DANNON", 300, "2022-10-31T10:00:00Z"),
        ("UNILEVER", 200, "2022-10-31T11:00:00Z"),
        ("DANNON", -200, "2022-10-31T15:00:00Z"),
        ("MILLER COORS", 10000, "2022-11-01T14:00:00Z"),
        ("DANNON", 1000, "2022-11-02T14:00:00Z"),
    ] {
        try_add(client, add_request(user_id, "", payer, points, timestamp)).await.expect("added");
    }
    let request = crate::common::client::spend_request(user_id, "", 5000);
    crate::common::client::try_spend(client, request).await.expect("spent");
}

async fn balances_as_of(
    client: &mut Client,
    request: GetBalancesRequest,
) -> Result<GetBalancesResponse, tonic::Status> {
    client.get_balances(request).await.map(tonic::Response::into_inner)
}

fn map(entries: &[(&str, i64)]) -> HashMap<String, i64> {
    entries.iter().map(|&(payer, points)| (payer.to_owned(), points)).collect()
}

/// The issue's example: positions 1–5 are the transactions, 6 the spend.
async fn balances_as_of_a_position_are_the_issues(mut client: Client) {
    example_a_with_spend(&mut client, "asof").await;
    let at = |position| GetBalancesRequest {
        user_id: "asof".to_owned(),
        as_of_position: position,
        ..Default::default()
    };
    let expected = [
        (2, map(&[("DANNON", 300), ("UNILEVER", 200)])),
        (3, map(&[("DANNON", 100), ("UNILEVER", 200)])),
        (5, map(&[("DANNON", 1100), ("UNILEVER", 200), ("MILLER COORS", 10000)])),
        (6, map(&[("DANNON", 1000), ("UNILEVER", 0), ("MILLER COORS", 5300)])),
    ];
    for (position, balances) in expected {
        let reply = balances_as_of(&mut client, at(position)).await.expect("as of");
        assert_eq!((reply.balances, reply.position), (balances, position), "as of {position}");
    }
    let now = balances_as_of(&mut client, at(0)).await.expect("now");
    assert_eq!(now.balances, map(&[("DANNON", 1000), ("UNILEVER", 0), ("MILLER COORS", 5300)]));
    assert_eq!(now.position, 6);
    let past_the_end = balances_as_of(&mut client, at(7)).await.expect_err("out of range");
    let info = assert_refusal(&past_the_end, Code::OutOfRange, "POSITION_OUT_OF_RANGE");
    assert_eq!(info.metadata["history_length"], "6");

    // As of a time: right after the last entry accepted at or before it.
    let listed = client
        .list_transactions(ListTransactionsRequest {
            user_id: "asof".to_owned(),
            ..Default::default()
        })
        .await
        .expect("history")
        .into_inner()
        .entries;
    let positions: Vec<u64> = listed.iter().map(|entry| entry.position).collect();
    assert_eq!(positions, [1, 2, 3, 4, 5, 6]);
    let third_time = listed[2].accept_time.expect("an accept time");
    let reply = balances_as_of(
        &mut client,
        GetBalancesRequest {
            user_id: "asof".to_owned(),
            as_of_time: Some(third_time),
            ..Default::default()
        },
    )
    .await
    .expect("as of a time");
    let key = |time: &prost_types::Timestamp| (time.seconds, time.nanos);
    let last_by_then = listed
        .iter()
        .filter(|entry| entry.accept_time.as_ref().map(key) <= Some(key(&third_time)))
        .count() as u64;
    assert!(last_by_then >= 3);
    assert_eq!(reply.position, last_by_then);
    let same = balances_as_of(&mut client, at(last_by_then)).await.expect("as of");
    assert_eq!(reply.balances, same.balances);
    let before_everything = prost_types::Timestamp { seconds: 0, nanos: 0 };
    let reply = balances_as_of(
        &mut client,
        GetBalancesRequest {
            user_id: "asof".to_owned(),
            as_of_time: Some(before_everything),
            ..Default::default()
        },
    )
    .await
    .expect("as of the epoch");
    assert_eq!((reply.balances, reply.position), (HashMap::new(), 0));
    let both = GetBalancesRequest { as_of_time: Some(before_everything), ..at(1) };
    let refused = balances_as_of(&mut client, both).await.expect_err("both");
    assert_refusal(&refused, Code::InvalidArgument, "AS_OF_CONFLICT");
    let year_10000 = prost_types::Timestamp { seconds: 253_402_300_800, nanos: 0 };
    let request = GetBalancesRequest { as_of_time: Some(year_10000), ..at(0) };
    let refused = balances_as_of(&mut client, request).await.expect_err("no such time");
    assert_refusal(&refused, Code::InvalidArgument, "TIMESTAMP_OUT_OF_RANGE");
}

/// A watch from position 0 sends the history, then each new entry; a
/// client that reconnects with the last position it saw misses nothing and
/// sees nothing twice; a position past the end is OUT_OF_RANGE.
async fn a_watch_sends_history_then_live_entries_and_resumes(mut client: Client) {
    for day in 1..=3 {
        add(&mut client, "DANNON", day, &format!("2024-01-0{day}T00:00:00Z")).await;
    }
    let mut stream = watch(&mut client, "", 0).await;
    assert_eq!(next_positions(&mut stream, 3).await, [1, 2, 3]);
    let mut writer = client.clone();
    let writes = tokio::spawn(async move {
        add(&mut writer, "UNILEVER", 10, "2024-02-01T00:00:00Z").await;
        spend(&mut writer, 5).await;
    });
    let live = next_entries(&mut stream, 2).await;
    writes.await.expect("the writer");
    assert_eq!(live.iter().map(|entry| entry.position).collect::<Vec<_>>(), [4, 5]);
    assert!(matches!(live[1].entry, Some(Entry::Spend(_))), "{live:?}");
    drop(stream);
    add(&mut client, "DANNON", 7, "2024-03-01T00:00:00Z").await;
    let mut resumed = watch(&mut client, "", 5).await;
    assert_eq!(next_positions(&mut resumed, 1).await, [6]);
    let refused = client
        .watch_transactions(WatchTransactionsRequest { user_id: String::new(), after_position: 7 })
        .await
        .expect_err("past the end");
    assert_refusal(&refused, Code::OutOfRange, "POSITION_OUT_OF_RANGE");
}

/// Many watchers of one user while a writer goes on: each sees every entry
/// once, in order.
async fn many_watchers_see_every_entry_once_in_order(mut client: Client) {
    let mut watchers = Vec::new();
    for _ in 0..16 {
        let mut stream = watch(&mut client, "busy", 0).await;
        watchers.push(tokio::spawn(async move { next_positions(&mut stream, 100).await }));
    }
    for index in 0..100 {
        let request = add_request("busy", "", "DANNON", 1 + index, "2024-01-01T00:00:00Z");
        try_add(&mut client, request).await.expect("added");
    }
    for watcher in watchers {
        let positions = watcher.await.expect("a watcher");
        assert_eq!(positions, (1..=100).collect::<Vec<u64>>());
    }
}

crate::on_every_backend!(
    balances_as_of_a_position_are_the_issues,
    a_watch_sends_history_then_live_entries_and_resumes,
    many_watchers_see_every_entry_once_in_order,
);

/// On replicas over PostgreSQL, watches on one replica see the entries
/// written through every replica, each once and in position order, each
/// within about a second of its write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_on_one_replica_see_writes_through_every_replica() {
    const USERS: [&str; 3] = ["ann", "bob", "cy"];
    const WRITES_PER_USER: u64 = 6;
    let replicas = crate::common::replicas::Replicas::start(2, &[]);
    let mut watcher = replicas.client_of(0).await;
    let mut writers = [replicas.client_of(0).await, replicas.client_of(1).await];
    add_for(&mut writers[1], USERS[0], 1).await;
    let mut watchers = Vec::new();
    for user_id in USERS {
        for _ in 0..2 {
            let mut stream = watch(&mut watcher, user_id, 0).await;
            watchers.push(tokio::spawn(async move {
                next_positions(&mut stream, WRITES_PER_USER as usize).await
            }));
        }
    }
    // Writes alternate between the replicas; the watched one sees each of
    // another's soon after it is acknowledged.
    for round in 0..WRITES_PER_USER {
        for (index, user_id) in USERS.iter().enumerate() {
            if (user_id, round) == (&USERS[0], 0) {
                continue;
            }
            let writer = &mut writers[(round as usize + index) % 2];
            add_for(writer, user_id, round + 1).await;
        }
    }
    for watcher in watchers {
        let positions = tokio::time::timeout(Duration::from_secs(5), watcher)
            .await
            .expect("every entry within seconds")
            .expect("a watcher");
        assert_eq!(positions, (1..=WRITES_PER_USER).collect::<Vec<u64>>());
    }
    let mut stream = watch(&mut watcher, USERS[1], WRITES_PER_USER).await;
    let written = std::time::Instant::now();
    add_for(&mut writers[1], USERS[1], 99).await;
    assert_eq!(next_positions(&mut stream, 1).await, [WRITES_PER_USER + 1]);
    let seen_after = written.elapsed();
    assert!(seen_after < Duration::from_millis(1500), "seen {seen_after:?} after the write");
}

/// Adds `points` of DANNON to `user_id`.
async fn add_for(client: &mut Client, user_id: &str, points: u64) {
    let points = i64::try_from(points).expect("small");
    let request = add_request(user_id, "", "DANNON", points, "2024-01-01T00:00:00Z");
    try_add(client, request).await.expect("added");
}

/// A client resuming after the server was killed with -9 and restarted
/// misses nothing acknowledged and sees nothing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_resumes_after_kill_9_without_gaps_or_repeats() {
    let (dir, server) = ServerProcess::start_on_new_dir(&[]);
    let mut client = server.client().await;
    let mut stream = watch(&mut client, "", 0).await;
    for day in 1..=5 {
        add(&mut client, "DANNON", day, &format!("2024-01-0{day}T00:00:00Z")).await;
    }
    let seen = next_positions(&mut stream, 5).await;
    assert_eq!(seen, [1, 2, 3, 4, 5]);
    server.signal("KILL");
    drop(server);
    let server = ServerProcess::start_durable(dir.path(), &[]);
    let mut client = server.client().await;
    add(&mut client, "UNILEVER", 9, "2024-02-01T00:00:00Z").await;
    let mut resumed = watch(&mut client, "", 5).await;
    assert_eq!(next_positions(&mut resumed, 1).await, [6]);
}

/// Shutdown ends open streams with UNAVAILABLE, and the server exits
/// cleanly without waiting out its grace period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_watch_streams_with_unavailable() {
    let mut server = ServerProcess::start(&["--shutdown-grace-ms", "30000"]);
    let mut client = server.client().await;
    add(&mut client, "DANNON", 1, "2024-01-01T00:00:00Z").await;
    let mut stream = watch(&mut client, "", 0).await;
    assert_eq!(next_positions(&mut stream, 1).await, [1]);
    let started = std::time::Instant::now();
    server.signal("TERM");
    let ended = tokio::time::timeout(Duration::from_secs(10), stream.next()).await;
    let status = ended.expect("the stream ends").expect("a status").expect_err("UNAVAILABLE");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(server.wait(Duration::from_secs(10)).success());
    assert!(started.elapsed() < Duration::from_secs(20), "shutdown waited for the stream");
}

/// `--max-watch-streams` bounds the open streams (TOO_MANY_WATCH_STREAMS),
/// a closed stream gives its place back, and the call-duration limit does
/// not end a stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_streams_are_bounded_and_outlive_the_call_duration_limit() {
    let server =
        ServerProcess::start(&["--max-watch-streams", "2", "--max-call-duration-ms", "300"]);
    let mut client = server.client().await;
    let mut first = watch(&mut client, "", 0).await;
    let second = watch(&mut client, "", 0).await;
    let refused = client
        .watch_transactions(WatchTransactionsRequest::default())
        .await
        .expect_err("a third stream");
    assert_refusal(&refused, Code::ResourceExhausted, "TOO_MANY_WATCH_STREAMS");
    drop(second);
    let third = crate::common::wait::eventually("a freed place", Duration::from_secs(5), || {
        let mut client = client.clone();
        async move { client.watch_transactions(WatchTransactionsRequest::default()).await.ok() }
    })
    .await;
    drop(third);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    add(&mut client, "DANNON", 1, "2024-01-01T00:00:00Z").await;
    assert_eq!(next_positions(&mut first, 1).await, [1], "the stream outlived 300 ms");
}

/// WatchTransactions needs the read role.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watching_needs_the_read_role() {
    use crate::common::tokens::{token_client, tokens_file, with_token};
    let dir = tempfile::tempdir().expect("temporary directory");
    let clients =
        [token_client("checkout", &["spend"], &[]), token_client("reporting", &["read"], &[])];
    let tokens = tokens_file(dir.path(), &clients);
    let server = ServerProcess::start(&["--tokens-file", tokens.to_str().expect("a path")]);
    let mut client = server.client().await;
    let request = || WatchTransactionsRequest::default();
    let refused = client
        .watch_transactions(with_token(request(), "checkout-token"))
        .await
        .expect_err("no read role");
    assert_refusal(&refused, Code::PermissionDenied, "ROLE_MISSING");
    client.watch_transactions(with_token(request(), "reporting-token")).await.expect("allowed");
}

/// A watcher that stops reading a long history does not make the server
/// hold that history in memory: it reads at the client's pace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_watchers_do_not_grow_server_memory() {
    let server = ServerProcess::start(&[]);
    let mut client = server.client().await;
    let payer = "P".repeat(200);
    for batch in 0..20 {
        let transactions = (0..1000)
            .map(|index| points::proto::v1::NewTransaction {
                payer: format!("{payer}{}", (batch * 1000 + index) % 50),
                points: 1,
                timestamp: Some(crate::common::timestamp("2024-01-01T00:00:00Z")),
            })
            .collect();
        client
            .add_transactions(points::proto::v1::AddTransactionsRequest {
                user_id: "long".to_owned(),
                transactions,
            })
            .await
            .expect("a batch");
    }
    let before_kib = server.resident_kib();
    // 20 watchers of a 20,000-entry history (about 5 MB encoded each), each
    // reading one entry and then nothing.
    let mut watchers = Vec::new();
    for _ in 0..20 {
        // A connection each: stalled streams of one connection would fill
        // its HTTP/2 window and stall the others on it too.
        let mut stream = watch(&mut server.client().await, "long", 0).await;
        next_positions(&mut stream, 1).await;
        watchers.push(stream);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let grown_kib = server.resident_kib().saturating_sub(before_kib);
    assert!(grown_kib < 40 * 1024, "the server grew by {grown_kib} KiB for 20 stalled watchers");
    // They are still served, from where they stopped.
    let mut first = watchers.swap_remove(0);
    assert_eq!(next_positions(&mut first, 2).await, [2, 3]);
}

async fn watch(
    client: &mut Client,
    user_id: &str,
    after_position: u64,
) -> Streaming<points::proto::v1::WatchTransactionsResponse> {
    let request = WatchTransactionsRequest { user_id: user_id.to_owned(), after_position };
    client.watch_transactions(request).await.expect("a watch").into_inner()
}

/// The next `count` entries of a stream (failing the test after 10 s).
async fn next_entries(
    stream: &mut Streaming<points::proto::v1::WatchTransactionsResponse>,
    count: usize,
) -> Vec<HistoryEntry> {
    let mut entries = Vec::with_capacity(count);
    while entries.len() < count {
        let next = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .unwrap_or_else(|_| panic!("no entry {} within 10 s", entries.len() + 1))
            .expect("the stream stays open")
            .expect("an entry");
        entries.push(next.entry.expect("an entry in the message"));
    }
    entries
}

/// The positions of the next `count` entries of a stream.
async fn next_positions(
    stream: &mut Streaming<points::proto::v1::WatchTransactionsResponse>,
    count: usize,
) -> Vec<u64> {
    next_entries(stream, count).await.iter().map(|entry| entry.position).collect()
}
