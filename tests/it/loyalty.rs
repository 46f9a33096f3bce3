//! Holds, refunds and expiry over real gRPC: the issue's examples and every
//! refusal on both backends, retries of every new write, roles, holds that
//! time out (also across kill -9 and for users nobody calls), and points
//! that expire on the real binary.

use crate::common::ServerProcess;
use crate::common::client::{Client, add, add_request, balances, spend};
use crate::common::history::entries;
use crate::common::postgres::{TestDatabase, query};
use crate::common::refusal::assert_refusal;
use crate::common::replicas::Replicas;
use crate::common::tokens::{token_client, tokens_file, with_token};
use crate::common::wait::eventually;

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use points::proto::v1::history_entry::Entry;
use points::proto::v1::{
    AddTransactionRequest, CaptureHoldRequest, GetBalancesRequest, GetExpiringPointsRequest,
    HoldPointsRequest, HoldPointsResponse, PayerPoints, RefundSpendRequest, RefundSpendResponse,
    ReleaseHoldRequest,
};
use points::testing::{read_journal, records::Command};
use tonic::Code;

fn pairs(entries: &[(&str, i64)]) -> Vec<(String, i64)> {
    entries.iter().map(|&(payer, points)| (payer.to_owned(), points)).collect()
}

fn of(entries: &[PayerPoints]) -> Vec<(String, i64)> {
    entries.iter().map(|entry| (entry.payer.clone(), entry.points)).collect()
}

fn map(entries: &[(&str, i64)]) -> HashMap<String, i64> {
    pairs(entries).into_iter().collect()
}

/// Example A's five transactions for the default user.
async fn example_a(client: &mut Client) {
    add(client, "DANNON", 300, "2022-10-31T10:00:00Z").await;
    add(client, "UNILEVER", 200, "2022-10-31T11:00:00Z").await;
    add(client, "DANNON", -200, "2022-10-31T15:00:00Z").await;
    add(client, "MILLER COORS", 10000, "2022-11-01T14:00:00Z").await;
    add(client, "DANNON", 1000, "2022-11-02T14:00:00Z").await;
}

fn hold_request(points: i64, request_id: &str) -> HoldPointsRequest {
    HoldPointsRequest { points, request_id: request_id.to_owned(), ..Default::default() }
}

fn capture_request(hold_id: u64, points: i64, request_id: &str) -> CaptureHoldRequest {
    CaptureHoldRequest { hold_id, points, request_id: request_id.to_owned(), ..Default::default() }
}

fn refund_request(spend_id: u64, points: i64, request_id: &str) -> RefundSpendRequest {
    RefundSpendRequest { spend_id, points, request_id: request_id.to_owned(), ..Default::default() }
}

fn release_request(hold_id: u64, request_id: &str) -> ReleaseHoldRequest {
    ReleaseHoldRequest { hold_id, request_id: request_id.to_owned(), ..Default::default() }
}

async fn held(client: &mut Client, user_id: &str) -> HashMap<String, i64> {
    let request = GetBalancesRequest { user_id: user_id.to_owned(), ..Default::default() };
    client.get_balances(request).await.expect("balances").into_inner().held
}

/// (hold id, timed out) of every release in the default user's history.
async fn hold_releases(client: &mut Client) -> Vec<(u64, bool)> {
    entries(client, "")
        .await
        .into_iter()
        .filter_map(|entry| match entry {
            Entry::HoldRelease(release) => Some((release.hold_id, release.timed_out)),
            _ => None,
        })
        .collect()
}

/// The issue's hold example: hold 5000, spend 1000, capture 3000.
async fn holds_are_captured_and_released_as_the_issue_shows(mut client: Client) {
    example_a(&mut client).await;
    let hold = client.hold_points(hold_request(5000, "")).await.expect("held").into_inner();
    assert_eq!(hold.hold_id, 1);
    assert_eq!(
        of(&hold.held),
        pairs(&[("DANNON", -100), ("UNILEVER", -200), ("MILLER COORS", -4700)])
    );
    let expire = hold.expire_time.expect("an expire time");
    let in_15_minutes = Utc::now() + TimeDelta::minutes(15);
    assert!((expire.seconds - in_15_minutes.timestamp()).abs() < 60, "{expire:?}");
    assert_eq!(
        balances(&mut client).await,
        map(&[("DANNON", 1000), ("UNILEVER", 0), ("MILLER COORS", 5300)])
    );
    assert_eq!(
        held(&mut client, "").await,
        map(&[("DANNON", 100), ("UNILEVER", 200), ("MILLER COORS", 4700)])
    );
    assert_eq!(spend(&mut client, 1000).await, pairs(&[("MILLER COORS", -1000)]));
    let too_much = client.capture_hold(capture_request(1, 5001, "")).await.expect_err("refused");
    let info = assert_refusal(&too_much, Code::FailedPrecondition, "CAPTURE_EXCEEDS_HOLD");
    assert_eq!(info.metadata.get("held").map(String::as_str), Some("5000"));
    let capture = client.capture_hold(capture_request(1, 3000, "")).await.expect("captured");
    let capture = capture.into_inner();
    assert_eq!(capture.spend_id, 2);
    assert_eq!(
        of(&capture.spent),
        pairs(&[("DANNON", -100), ("UNILEVER", -200), ("MILLER COORS", -2700)])
    );
    assert_eq!(of(&capture.released), pairs(&[("MILLER COORS", 2000)]));
    assert_eq!(
        balances(&mut client).await,
        map(&[("DANNON", 1000), ("UNILEVER", 0), ("MILLER COORS", 6300)])
    );
    assert!(held(&mut client, "").await.is_empty());
    for status in [
        client.release_hold(release_request(1, "")).await.expect_err("resolved once"),
        client.capture_hold(capture_request(1, 0, "")).await.expect_err("resolved once"),
    ] {
        let info = assert_refusal(&status, Code::FailedPrecondition, "HOLD_NOT_OPEN");
        assert_eq!(info.metadata.get("state").map(String::as_str), Some("captured"));
    }
    let unknown = client.release_hold(release_request(9, "")).await.expect_err("unknown");
    assert_refusal(&unknown, Code::NotFound, "HOLD_NOT_FOUND");
    let negative = client.capture_hold(capture_request(1, -1, "")).await.expect_err("negative");
    assert_refusal(&negative, Code::InvalidArgument, "POINTS_NEGATIVE");
    let no_timeout = HoldPointsRequest {
        timeout: Some(prost_types::Duration { seconds: 31 * 24 * 3600, nanos: 0 }),
        ..hold_request(1, "")
    };
    let refused = client.hold_points(no_timeout).await.expect_err("too long");
    assert_refusal(&refused, Code::InvalidArgument, "DURATION_OUT_OF_RANGE");
    let refused = client.hold_points(hold_request(100_000, "")).await.expect_err("too much");
    assert_refusal(&refused, Code::FailedPrecondition, "INSUFFICIENT_POINTS");
    // A second hold, released: everything comes back, the payer taken from
    // last first.
    let hold = client.hold_points(hold_request(1100, "")).await.expect("held").into_inner();
    assert_eq!(of(&hold.held), pairs(&[("MILLER COORS", -1100)]));
    let release = client.release_hold(release_request(hold.hold_id, "")).await.expect("released");
    assert_eq!(of(&release.into_inner().released), pairs(&[("MILLER COORS", 1100)]));
    let kinds: Vec<&str> = entries(&mut client, "")
        .await
        .iter()
        .map(|entry| match entry {
            Entry::Transaction(_) => "transaction",
            Entry::Spend(_) => "spend",
            Entry::Hold(_) => "hold",
            Entry::HoldCapture(_) => "capture",
            Entry::HoldRelease(release) if !release.timed_out => "release",
            other => panic!("unexpected entry {other:?}"),
        })
        .collect();
    let mut expected = vec!["transaction"; 5];
    expected.extend(["hold", "spend", "capture", "hold", "release"]);
    assert_eq!(kinds, expected);
}

/// The issue's refund example: spend 5000, refund 4800, 201, then the rest.
async fn refunds_give_back_as_the_issue_shows(mut client: Client) {
    example_a(&mut client).await;
    let first = spend(&mut client, 5000).await;
    let refund = |client: &mut Client, points| {
        let mut client = client.clone();
        async move { client.refund_spend(refund_request(1, points, "")).await }
    };
    let reply = refund(&mut client, 4800).await.expect("refunded").into_inner();
    assert_eq!(of(&reply.refunded), pairs(&[("MILLER COORS", 4700), ("UNILEVER", 100)]));
    assert_eq!(reply.refundable_points, 200);
    let too_much = refund(&mut client, 201).await.expect_err("more than is left");
    let info = assert_refusal(&too_much, Code::FailedPrecondition, "REFUND_EXCEEDS_SPEND");
    assert_eq!(info.metadata.get("refundable").map(String::as_str), Some("200"));
    let reply = refund(&mut client, 0).await.expect("refunded").into_inner();
    assert_eq!(of(&reply.refunded), pairs(&[("UNILEVER", 100), ("DANNON", 100)]));
    assert_eq!(reply.refundable_points, 0);
    assert_eq!(
        balances(&mut client).await,
        map(&[("DANNON", 1100), ("UNILEVER", 200), ("MILLER COORS", 10000)])
    );
    assert_eq!(spend(&mut client, 5000).await, first, "the same reply as the first time");
    let nothing = client.refund_spend(refund_request(1, 0, "")).await.expect_err("all refunded");
    assert_refusal(&nothing, Code::FailedPrecondition, "NOTHING_TO_REFUND");
    let unknown = client.refund_spend(refund_request(7, 0, "")).await.expect_err("unknown");
    assert_refusal(&unknown, Code::NotFound, "SPEND_NOT_FOUND");
}

/// Every new write with a request_id applies once: retries get the
/// original reply, a reuse with other parameters is ALREADY_EXISTS.
async fn retries_of_holds_captures_releases_and_refunds_apply_once(mut client: Client) {
    example_a(&mut client).await;
    let first = client.hold_points(hold_request(400, "h1")).await.expect("held").into_inner();
    let again = client.hold_points(hold_request(400, "h1")).await.expect("retried").into_inner();
    assert_eq!(first, again);
    let reused = client.hold_points(hold_request(401, "h1")).await.expect_err("reused");
    assert_refusal(&reused, Code::AlreadyExists, "REQUEST_ID_REUSED");
    let second = client.hold_points(hold_request(100, "h2")).await.expect("held").into_inner();
    assert_eq!(second.hold_id, 2, "a retry opened no hold");
    let capture = client.capture_hold(capture_request(1, 250, "c1")).await.expect("captured");
    let retried = client.capture_hold(capture_request(1, 250, "c1")).await.expect("retried");
    assert_eq!(capture.into_inner(), retried.into_inner());
    let release = client.release_hold(release_request(2, "r1")).await.expect("released");
    let retried = client.release_hold(release_request(2, "r1")).await.expect("retried");
    assert_eq!(release.into_inner(), retried.into_inner());
    let refund = client.refund_spend(refund_request(1, 50, "f1")).await.expect("refunded");
    let retried = client.refund_spend(refund_request(1, 50, "f1")).await.expect("retried");
    let refund: RefundSpendResponse = refund.into_inner();
    assert_eq!(refund, retried.into_inner());
    assert_eq!(refund.refundable_points, 200, "refunded once");
    // A remembered refusal is answered again, even after the state changed.
    let refused = client.refund_spend(refund_request(1, 500, "f2")).await.expect_err("too much");
    assert_refusal(&refused, Code::FailedPrecondition, "REFUND_EXCEEDS_SPEND");
    let history = entries(&mut client, "").await;
    let count = |kind: fn(&Entry) -> bool| history.iter().filter(|entry| kind(entry)).count();
    assert_eq!(count(|entry| matches!(entry, Entry::Hold(_))), 2);
    assert_eq!(count(|entry| matches!(entry, Entry::HoldCapture(_))), 1);
    assert_eq!(count(|entry| matches!(entry, Entry::HoldRelease(_))), 1);
    assert_eq!(count(|entry| matches!(entry, Entry::Refund(_))), 1);
}

/// A hold past its timeout: no read after its expire time shows it open,
/// and it cannot be captured.
async fn no_read_after_a_holds_timeout_shows_it_open(mut client: Client) {
    example_a(&mut client).await;
    let before = balances(&mut client).await;
    let request = HoldPointsRequest {
        timeout: Some(prost_types::Duration { seconds: 1, nanos: 0 }),
        ..hold_request(700, "")
    };
    let hold: HoldPointsResponse = client.hold_points(request).await.expect("held").into_inner();
    let expire = hold.expire_time.expect("an expire time");
    let expire = DateTime::from_timestamp(expire.seconds, expire.nanos as u32).expect("a time");
    // Read until well past the expire time: open before it, never after.
    let mut reads_after = 0;
    while reads_after < 20 {
        let now = Utc::now();
        let held = held(&mut client, "").await;
        if now >= expire {
            assert!(held.is_empty(), "read at {now} after {expire} shows the hold open");
            reads_after += 1;
        } else if Utc::now() < expire {
            assert_eq!(held.values().sum::<i64>(), 700);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(balances(&mut client).await, before);
    let late = client.capture_hold(capture_request(hold.hold_id, 0, "")).await.expect_err("late");
    let info = assert_refusal(&late, Code::FailedPrecondition, "HOLD_NOT_OPEN");
    assert_eq!(info.metadata.get("state").map(String::as_str), Some("timed_out"));
    let timed_out = entries(&mut client, "").await.into_iter().any(|entry| {
        matches!(entry, Entry::HoldRelease(release) if release.timed_out && release.hold_id == 1)
    });
    assert!(timed_out, "the history shows the hold timed out");
}

crate::on_every_backend!(
    holds_are_captured_and_released_as_the_issue_shows,
    refunds_give_back_as_the_issue_shows,
    retries_of_holds_captures_releases_and_refunds_apply_once,
    no_read_after_a_holds_timeout_shows_it_open,
);

/// RFC 3339 of `now` minus `ago`.
fn ago(now: DateTime<Utc>, ago: TimeDelta) -> String {
    (now - ago).to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// The issue's expiry example with validity one day, on a server started
/// with `--points-validity 1d`.
async fn points_expire_as_the_issue_shows(mut client: Client) {
    let now = Utc::now();
    for (payer, points, before) in [
        ("A", 100, TimeDelta::days(2)),
        ("A", 50, TimeDelta::hours(1)),
        ("B", 70, TimeDelta::days(3)),
        ("B", 30, TimeDelta::minutes(10)),
    ] {
        add(&mut client, payer, points, &ago(now, before)).await;
    }
    assert_eq!(balances(&mut client).await, map(&[("A", 50), ("B", 30)]));
    assert_eq!(spend(&mut client, 60).await, pairs(&[("A", -50), ("B", -10)]));
    let within = Some(prost_types::Duration { seconds: 24 * 3600, nanos: 0 });
    let request = GetExpiringPointsRequest { within, ..Default::default() };
    let expiring = client.get_expiring_points(request).await.expect("listed").into_inner();
    let expected_time = now - TimeDelta::minutes(10) + TimeDelta::days(1);
    assert_eq!(expiring.expiring.len(), 1, "{expiring:?}");
    let entry = &expiring.expiring[0];
    assert_eq!((entry.payer.as_str(), entry.points), ("B", 20));
    let time = entry.expire_time.expect("a time");
    assert_eq!(time.seconds, expected_time.timestamp(), "{time:?}");
    add(&mut client, "A", 40, &ago(now, TimeDelta::days(5))).await;
    assert_eq!(balances(&mut client).await, map(&[("A", 0), ("B", 20)]));
    add(&mut client, "A", 40, &ago(now, TimeDelta::minutes(30))).await;
    assert_eq!(balances(&mut client).await, map(&[("A", 40), ("B", 20)]));
    let expired: Vec<Vec<(String, i64)>> = entries(&mut client, "")
        .await
        .into_iter()
        .filter_map(|entry| match entry {
            Entry::Expiration(expiration) => Some(of(&expiration.expired)),
            _ => None,
        })
        .collect();
    assert_eq!(expired, [pairs(&[("A", -100)]), pairs(&[("B", -70)]), pairs(&[("A", -40)])]);
    let negative = GetExpiringPointsRequest {
        within: Some(prost_types::Duration { seconds: -1, nanos: 0 }),
        ..Default::default()
    };
    let refused = client.get_expiring_points(negative).await.expect_err("negative window");
    assert_refusal(&refused, Code::InvalidArgument, "DURATION_OUT_OF_RANGE");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn points_expire_as_the_issue_shows_on_the_embedded_store() {
    let (_dir, server) = ServerProcess::start_on_new_dir(&["--points-validity", "1d"]);
    points_expire_as_the_issue_shows(server.client().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn points_expire_as_the_issue_shows_on_two_replicas() {
    let replicas = Replicas::start(2, &["--points-validity", "1d"]);
    points_expire_as_the_issue_shows(replicas.client().await).await;
}

/// A hold's timeout is kept across kill -9: after a restart past it, the
/// hold is released (once), and a hold whose time has not come stays open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hold_timeouts_survive_kill_9() {
    let (dir, server) = ServerProcess::start_on_new_dir(&[]);
    let mut client = server.client().await;
    example_a(&mut client).await;
    let short = HoldPointsRequest {
        timeout: Some(prost_types::Duration { seconds: 2, nanos: 0 }),
        ..hold_request(300, "")
    };
    client.hold_points(short).await.expect("held");
    client.hold_points(hold_request(1000, "")).await.expect("held for 15 minutes");
    server.signal("KILL");
    drop(server);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let server = ServerProcess::start_durable(dir.path(), &[]);
    let mut client = server.client().await;
    assert_eq!(held(&mut client, "").await, map(&[("MILLER COORS", 1000)]));
    let releases = hold_releases(&mut client).await;
    assert_eq!(releases, [(1, true)]);
}

/// A user nobody calls has their timed-out hold released by the server
/// within about a second: the journal holds the clock's record before any
/// call reads the user again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_releases_timed_out_holds_of_users_nobody_calls() {
    let (dir, server) = ServerProcess::start_on_new_dir(&[]);
    let mut client = server.client().await;
    example_a(&mut client).await;
    let short = HoldPointsRequest {
        timeout: Some(prost_types::Duration { seconds: 1, nanos: 0 }),
        ..hold_request(300, "")
    };
    client.hold_points(short).await.expect("held");
    let advanced = eventually("the server's clock record", Duration::from_secs(5), || async {
        let records = read_journal(dir.path()).expect("read the journal");
        records
            .iter()
            .any(|(_, record)| matches!(record.command, Some(Command::AdvanceClock(_))))
            .then_some(())
    })
    .await;
    let () = advanced;
    assert_eq!(held(&mut client, "").await, HashMap::new());
}

/// The chunks stored of the default user (stored as `default`), and when the database lists them
/// as next due (`None`: not listed).
fn stored_user(url: &str) -> (usize, Option<String>) {
    let chunks = query(url, "SELECT seq FROM points_user_records WHERE user_id = 'default'").len();
    let due = query(url, "SELECT due_at_ms FROM points_user_deadlines WHERE user_id = 'default'");
    (chunks, due.into_iter().next().and_then(|row| row.into_iter().next().flatten()))
}

/// On replicas over PostgreSQL, a hold of a user nobody calls times out
/// even when the replica that took it is gone: a new replica, which never
/// loaded the user, finds them due in the database and releases the hold
/// (one more stored chunk) before any call reads them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_replica_releases_timed_out_holds_of_users_nobody_calls() {
    let database = TestDatabase::create();
    let first = ServerProcess::start_on_database(&database.url, &[]);
    let mut client = first.client().await;
    example_a(&mut client).await;
    let short = HoldPointsRequest {
        timeout: Some(prost_types::Duration { seconds: 2, nanos: 0 }),
        ..hold_request(300, "")
    };
    let hold = client.hold_points(short).await.expect("held").into_inner();
    let expire_at_ms =
        hold.expire_time.map(|time| time.seconds * 1000 + i64::from(time.nanos) / 1_000_000);
    let (chunks, due) = stored_user(&database.url);
    assert_eq!(due, expire_at_ms.map(|ms| ms.to_string()), "the hold's timeout is listed");
    first.signal("KILL");
    drop(first);

    let second = ServerProcess::start_on_database(&database.url, &[]);
    let (released, due) =
        eventually("the new replica's release", Duration::from_secs(10), || async {
            let (now, due) = stored_user(&database.url);
            (now > chunks).then_some((now, due))
        })
        .await;
    assert_eq!((released, due), (chunks + 1, None), "one release, and nothing due any more");
    let mut client = second.client().await;
    assert_eq!(held(&mut client, "").await, HashMap::new());
    let releases = hold_releases(&mut client).await;
    assert_eq!(releases, [(hold.hold_id, true)]);
}

/// A user the database lists as due who, under a replica's settings, has
/// nothing due (the points validity was dropped) is brought forward once,
/// keeps nothing, and is no longer listed: not looked at every second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_stops_listing_a_user_that_is_not_due_under_its_settings() {
    let database = TestDatabase::create();
    let first = ServerProcess::start_on_database(&database.url, &["--points-validity", "1d"]);
    let mut client = first.client().await;
    let soon = Utc::now() - TimeDelta::days(1) + TimeDelta::seconds(2);
    add(&mut client, "DANNON", 100, &soon.to_rfc3339_opts(SecondsFormat::Millis, true)).await;
    let (chunks, due) = stored_user(&database.url);
    assert!(due.is_some(), "the lot's expiry is listed");
    first.signal("KILL");
    drop(first);

    let second = ServerProcess::start_on_database(&database.url, &[]);
    eventually("the listing dropped", Duration::from_secs(10), || async {
        stored_user(&database.url).1.is_none().then_some(())
    })
    .await;
    assert_eq!(stored_user(&database.url), (chunks, None), "nothing was kept");
    let mut client = second.client().await;
    assert_eq!(balances(&mut client).await, map(&[("DANNON", 100)]));
}

/// Forty users the database lists as due at once (as the migration that
/// listed every stored user as due leaves them), brought forward by a
/// replica that keeps one user in memory: each is listed again at its
/// points' expiry, none is dropped from the listing (its points would then
/// never expire), whichever users are evicted meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_evicted_while_brought_forward_stay_listed_at_their_next_deadline() {
    const USERS: usize = 40;
    let database = TestDatabase::create();
    let first = ServerProcess::start_on_database(&database.url, &["--points-validity", "30d"]);
    let mut client = first.client().await;
    let now = Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true);
    for user in 0..USERS {
        let earn = add_request(&format!("user-{user}"), "", "DANNON", 100, &now);
        client.add_transaction(earn).await.expect("added");
    }
    let listing = "SELECT user_id, due_at_ms FROM points_user_deadlines ORDER BY user_id";
    let listed = query(&database.url, listing);
    assert_eq!(listed.len(), USERS, "each user's expiry is listed");
    first.signal("KILL");
    drop(first);
    query(&database.url, "UPDATE points_user_deadlines SET due_at_ms = 0");

    let _second = ServerProcess::start_on_database(
        &database.url,
        &["--points-validity", "30d", "--database-cache-users", "1"],
    );
    eventually("every user brought forward", Duration::from_secs(20), || async {
        let due =
            query(&database.url, "SELECT user_id FROM points_user_deadlines WHERE due_at_ms = 0");
        due.is_empty().then_some(())
    })
    .await;
    assert_eq!(query(&database.url, listing), listed, "every user listed again at their expiry");
}

/// RefundSpend needs the refund role; holds need spend; GetExpiringPoints
/// needs read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_need_spend_refunds_need_refund_and_expiring_points_need_read() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let clients = [
        token_client("ops", &["admin"], &[]),
        token_client("checkout", &["spend"], &[]),
        token_client("support", &["refund"], &[]),
        token_client("reporting", &["read"], &[]),
    ];
    let tokens = tokens_file(dir.path(), &clients);
    let server = ServerProcess::start(&["--tokens-file", tokens.to_str().expect("a path")]);
    let mut client = server.client().await;
    let earn = AddTransactionRequest {
        payer: "DANNON".to_owned(),
        points: 500,
        timestamp: Some(crate::common::timestamp("2024-01-01T00:00:00Z")),
        ..Default::default()
    };
    client.add_transaction(with_token(earn, "ops-token")).await.expect("earned");
    let hold = |token: &'static str| {
        let mut client = client.clone();
        async move { client.hold_points(with_token(hold_request(100, ""), token)).await }
    };
    assert_refusal(
        &hold("reporting-token").await.expect_err("no role"),
        Code::PermissionDenied,
        "ROLE_MISSING",
    );
    assert_refusal(
        &hold("support-token").await.expect_err("no role"),
        Code::PermissionDenied,
        "ROLE_MISSING",
    );
    let hold_id = hold("checkout-token").await.expect("held").into_inner().hold_id;
    let capture = with_token(capture_request(hold_id, 0, ""), "checkout-token");
    let spend_id = client.capture_hold(capture).await.expect("captured").into_inner().spend_id;
    for token in ["checkout-token", "reporting-token"] {
        let refund = with_token(refund_request(spend_id, 10, ""), token);
        let refused = client.refund_spend(refund).await.expect_err("no role");
        assert_refusal(&refused, Code::PermissionDenied, "ROLE_MISSING");
    }
    let refund = with_token(refund_request(spend_id, 10, ""), "support-token");
    client.refund_spend(refund).await.expect("refunded");
    let expiring = |token: &'static str| {
        let mut client = client.clone();
        async move {
            let request = GetExpiringPointsRequest::default();
            client.get_expiring_points(with_token(request, token)).await
        }
    };
    expiring("reporting-token").await.expect("read");
    assert_refusal(
        &expiring("checkout-token").await.expect_err("no role"),
        Code::PermissionDenied,
        "ROLE_MISSING",
    );
}
