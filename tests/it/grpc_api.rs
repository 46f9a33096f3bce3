//! The points API over real gRPC: the real tonic server on an ephemeral port,
//! called with the generated client. Covers the examples, every error code with
//! its details, concurrency and malformed input.

use crate::common;
use crate::common::refusal::assert_refusal;

use std::collections::HashMap;

use common::client::{add, balances, spend, transaction};
use common::{TestServer, call_raw, timestamp};
use points::proto::v1::{AddTransactionRequest, GetBalancesRequest, SpendRequest};
use prost::Message;
use tonic::{Code, Status};
use tonic_types::StatusExt;

fn pairs(entries: &[(&str, i64)]) -> Vec<(String, i64)> {
    entries.iter().map(|&(payer, points)| (payer.to_owned(), points)).collect()
}

fn map(entries: &[(&str, i64)]) -> HashMap<String, i64> {
    entries.iter().map(|&(payer, points)| (payer.to_owned(), points)).collect()
}

/// The fields a BadRequest names, in order.
fn bad_fields(status: &Status) -> Vec<String> {
    status
        .get_error_details()
        .bad_request()
        .expect("INVALID_ARGUMENT carries a BadRequest")
        .field_violations
        .iter()
        .map(|violation| violation.field.clone())
        .collect()
}

/// Example A over gRPC: spend 5000 and the balances match the issue.
#[tokio::test]
async fn example_a_spend_takes_oldest_points_first() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let first = add(&mut client, "DANNON", 300, "2022-10-31T10:00:00Z").await;
    assert_eq!(first.id, 1);
    assert_eq!(first.payer, "DANNON");
    assert_eq!(first.points, 300);
    assert_eq!(first.timestamp, Some(timestamp("2022-10-31T10:00:00Z")));
    add(&mut client, "UNILEVER", 200, "2022-10-31T11:00:00Z").await;
    add(&mut client, "DANNON", -200, "2022-10-31T15:00:00Z").await;
    add(&mut client, "MILLER COORS", 10000, "2022-11-01T14:00:00Z").await;
    let last = add(&mut client, "DANNON", 1000, "2022-11-02T14:00:00Z").await;
    assert_eq!(last.id, 5);
    assert_eq!(
        spend(&mut client, 5000).await,
        pairs(&[("DANNON", -100), ("UNILEVER", -200), ("MILLER COORS", -4700)])
    );
    assert_eq!(
        balances(&mut client).await,
        map(&[("DANNON", 1000), ("UNILEVER", 0), ("MILLER COORS", 5300)])
    );
    server.stop().await.expect("clean stop");
}

/// Example B over gRPC: out-of-order arrival gives example A's reply and balances.
#[tokio::test]
async fn example_b_out_of_order_arrival_matches_example_a() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    add(&mut client, "DANNON", 1000, "2020-11-02T14:00:00Z").await;
    add(&mut client, "UNILEVER", 200, "2020-10-31T11:00:00Z").await;
    add(&mut client, "DANNON", -200, "2020-10-31T15:00:00Z").await;
    add(&mut client, "MILLER COORS", 10000, "2020-11-01T14:00:00Z").await;
    add(&mut client, "DANNON", 300, "2020-10-31T10:00:00Z").await;
    assert_eq!(
        spend(&mut client, 5000).await,
        pairs(&[("DANNON", -100), ("UNILEVER", -200), ("MILLER COORS", -4700)])
    );
    assert_eq!(
        balances(&mut client).await,
        map(&[("DANNON", 1000), ("UNILEVER", 0), ("MILLER COORS", 5300)])
    );
}

/// Example C over gRPC: a late older lot re-settles only inside its payer.
#[tokio::test]
async fn example_c_late_lot_resettles_within_its_payer() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    add(&mut client, "P", 100, "2024-01-03T00:00:00Z").await;
    add(&mut client, "Q", 100, "2024-01-02T00:00:00Z").await;
    assert_eq!(spend(&mut client, 150).await, pairs(&[("Q", -100), ("P", -50)]));
    add(&mut client, "P", 30, "2024-01-01T00:00:00Z").await;
    add(&mut client, "R", 10, "2024-01-02T12:00:00Z").await;
    assert_eq!(spend(&mut client, 20).await, pairs(&[("R", -10), ("P", -10)]));
    assert_eq!(balances(&mut client).await, map(&[("P", 70), ("Q", 0), ("R", 0)]));
}

/// Every INVALID_ARGUMENT case of AddTransaction names its field and changes nothing.
#[tokio::test]
async fn add_transaction_fails_with_invalid_argument_for_each_bad_field() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    add(&mut client, "DANNON", 10, "2024-01-01T00:00:00Z").await;
    let valid = transaction("DANNON", 5, "2024-01-01T00:00:00Z");
    let with_timestamp = |seconds: i64, nanos: i32| AddTransactionRequest {
        timestamp: Some(prost_types::Timestamp { seconds, nanos }),
        ..valid.clone()
    };
    let cases: Vec<(&str, AddTransactionRequest, &str, &str)> = vec![
        (
            "empty payer",
            AddTransactionRequest { payer: String::new(), ..valid.clone() },
            "payer",
            "PAYER_BLANK",
        ),
        (
            "whitespace payer",
            AddTransactionRequest { payer: " \t ".into(), ..valid.clone() },
            "payer",
            "PAYER_BLANK",
        ),
        (
            "257-byte payer",
            AddTransactionRequest { payer: "X".repeat(257), ..valid.clone() },
            "payer",
            "PAYER_TOO_LONG",
        ),
        (
            "zero points",
            AddTransactionRequest { points: 0, ..valid.clone() },
            "points",
            "POINTS_ZERO",
        ),
        (
            "missing timestamp",
            AddTransactionRequest { timestamp: None, ..valid.clone() },
            "timestamp",
            "TIMESTAMP_MISSING",
        ),
        (
            "negative nanos",
            with_timestamp(0, -1),
            "timestamp.nanos",
            "TIMESTAMP_NANOS_OUT_OF_RANGE",
        ),
        (
            "nanos of 10^9",
            with_timestamp(0, 1_000_000_000),
            "timestamp.nanos",
            "TIMESTAMP_NANOS_OUT_OF_RANGE",
        ),
        (
            "before year 1",
            with_timestamp(-62_135_596_801, 0),
            "timestamp.seconds",
            "TIMESTAMP_OUT_OF_RANGE",
        ),
        (
            "after year 9999",
            with_timestamp(253_402_300_800, 0),
            "timestamp.seconds",
            "TIMESTAMP_OUT_OF_RANGE",
        ),
        (
            "i64::MIN seconds",
            with_timestamp(i64::MIN, 0),
            "timestamp.seconds",
            "TIMESTAMP_OUT_OF_RANGE",
        ),
        (
            "129-byte user_id",
            AddTransactionRequest { user_id: "u".repeat(129), ..valid.clone() },
            "user_id",
            "USER_ID_INVALID",
        ),
        (
            "user_id with a newline",
            AddTransactionRequest { user_id: "a\nb".into(), ..valid.clone() },
            "user_id",
            "USER_ID_INVALID",
        ),
        (
            "129-byte request_id",
            AddTransactionRequest { request_id: "r".repeat(129), ..valid.clone() },
            "request_id",
            "REQUEST_ID_INVALID",
        ),
        (
            "request_id with a tab",
            AddTransactionRequest { request_id: "r\t1".into(), ..valid.clone() },
            "request_id",
            "REQUEST_ID_INVALID",
        ),
    ];
    for (case, request, field, reason) in cases {
        let status = client.add_transaction(request).await.expect_err(case);
        assert_refusal(&status, Code::InvalidArgument, reason);
        assert_eq!(bad_fields(&status), vec![field.to_owned()], "{case}");
    }
    // The edges of the timestamp range are accepted.
    add(&mut client, "DANNON", 1, "0001-01-01T00:00:00Z").await;
    let latest = add(&mut client, "DANNON", 1, "9999-12-31T23:59:59.999999999Z").await;
    assert_eq!(latest.id, 3, "refusals use up no ids");
    assert_eq!(balances(&mut client).await, map(&[("DANNON", 12)]));
}

/// A request with several bad fields names every one of them.
#[tokio::test]
async fn add_transaction_reports_every_bad_field_at_once() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let status = client
        .add_transaction(AddTransactionRequest {
            payer: String::new(),
            points: 0,
            ..Default::default()
        })
        .await
        .expect_err("everything is wrong");
    assert_refusal(&status, Code::InvalidArgument, "PAYER_BLANK");
    assert_eq!(bad_fields(&status), ["payer", "points", "timestamp"]);
    assert!(status.message().contains("payer") && status.message().contains("points"));
}

/// A negative transaction over the payer's balance is FAILED_PRECONDITION and changes nothing.
#[tokio::test]
async fn negative_transaction_fails_with_failed_precondition_when_payer_balance_is_short() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    add(&mut client, "DANNON", 100, "2024-01-01T00:00:00Z").await;
    add(&mut client, "UNILEVER", 500, "2024-01-01T00:00:00Z").await;
    let status = client
        .add_transaction(transaction("DANNON", -101, "2024-01-02T00:00:00Z"))
        .await
        .expect_err("DANNON holds only 100");
    assert_refusal(&status, Code::FailedPrecondition, "INSUFFICIENT_PAYER_POINTS");
    assert_eq!(
        status.message(),
        "insufficient points for payer \"DANNON\": requested 101, available 100"
    );
    let metadata = status.get_error_details().error_info().unwrap().metadata.clone();
    assert_eq!(metadata.get("available").map(String::as_str), Some("100"));
    let status = client
        .add_transaction(transaction("NOBODY", -1, "2024-01-02T00:00:00Z"))
        .await
        .expect_err("an unknown payer holds nothing");
    assert_refusal(&status, Code::FailedPrecondition, "INSUFFICIENT_PAYER_POINTS");
    assert_eq!(balances(&mut client).await, map(&[("DANNON", 100), ("UNILEVER", 500)]));
}

/// Spending more than the total is FAILED_PRECONDITION with the numbers, and changes nothing.
#[tokio::test]
async fn spend_fails_with_failed_precondition_when_total_is_short() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    add(&mut client, "DANNON", 4300, "2024-01-01T00:00:00Z").await;
    let status = client
        .spend(SpendRequest { points: 5000, ..Default::default() })
        .await
        .expect_err("only 4300 available");
    assert_refusal(&status, Code::FailedPrecondition, "INSUFFICIENT_POINTS");
    assert_eq!(status.message(), "insufficient points: requested 5000, available 4300");
    assert_eq!(balances(&mut client).await, map(&[("DANNON", 4300)]));
}

/// Spending zero or negative points is INVALID_ARGUMENT on the points field.
#[tokio::test]
async fn spend_fails_with_invalid_argument_when_points_are_not_positive() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    add(&mut client, "DANNON", 10, "2024-01-01T00:00:00Z").await;
    for points in [0, -1, i64::MIN] {
        let status = client
            .spend(SpendRequest { points, ..Default::default() })
            .await
            .expect_err("not positive");
        assert_refusal(&status, Code::InvalidArgument, "POINTS_NOT_POSITIVE");
        assert_eq!(bad_fields(&status), ["points"]);
    }
    let status = client
        .spend(SpendRequest { points: 1, user_id: "\u{7}".into(), ..Default::default() })
        .await
        .expect_err("a control character is not a user id");
    assert_refusal(&status, Code::InvalidArgument, "USER_ID_INVALID");
    let status = client
        .get_balances(GetBalancesRequest { user_id: "b".repeat(129) })
        .await
        .expect_err("too long a user id");
    assert_eq!(bad_fields(&status), ["user_id"]);
    assert_eq!(balances(&mut client).await, map(&[("DANNON", 10)]));
}

/// Balances past i64::MAX, per payer or in total, are OUT_OF_RANGE and change nothing.
#[tokio::test]
async fn add_transaction_fails_with_out_of_range_when_a_balance_would_overflow() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    add(&mut client, "DANNON", i64::MAX - 10, "2024-01-01T00:00:00Z").await;
    let status = client
        .add_transaction(transaction("DANNON", 11, "2024-01-02T00:00:00Z"))
        .await
        .expect_err("payer overflow");
    assert_refusal(&status, Code::OutOfRange, "PAYER_BALANCE_OVERFLOW");
    let status = client
        .add_transaction(transaction("UNILEVER", 11, "2024-01-02T00:00:00Z"))
        .await
        .expect_err("total overflow");
    assert_refusal(&status, Code::OutOfRange, "TOTAL_OVERFLOW");
    assert_eq!(balances(&mut client).await, map(&[("DANNON", i64::MAX - 10)]));
}

/// Many tasks spending at once never take more than was there, and the total is conserved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_spends_conserve_the_total() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let payers = ["DANNON", "UNILEVER", "MILLER COORS", "KRAFT"];
    for (index, payer) in payers.iter().enumerate() {
        for day in 1..=25 {
            add(&mut client, payer, 40, &format!("2024-01-{day:02}T0{index}:00:00Z")).await;
        }
    }
    let total: i64 = balances(&mut client).await.values().sum();
    assert_eq!(total, 4000);

    let tasks: Vec<_> = (0..32)
        .map(|task| {
            let mut client = client.clone();
            tokio::spawn(async move {
                let mut spent = 0i64;
                for round in 0..20 {
                    let points = 1 + (task + round) % 13;
                    match client.spend(SpendRequest { points, ..Default::default() }).await {
                        Ok(reply) => {
                            let reply = reply.into_inner();
                            let taken: i64 = reply.spent.iter().map(|entry| -entry.points).sum();
                            assert_eq!(taken, points, "a reply adds up to the points spent");
                            spent += taken;
                        }
                        Err(status) => assert_eq!(status.code(), Code::FailedPrecondition),
                    }
                }
                spent
            })
        })
        .collect();
    let mut spent = 0;
    for task in tasks {
        spent += task.await.expect("spending task");
    }
    let left: i64 = balances(&mut client).await.values().sum();
    assert!(left >= 0 && spent <= 4000);
    assert_eq!(left + spent, 4000, "every point is either spent or still held");
}

/// Bytes that are not protobuf are refused without taking the server down.
#[tokio::test]
async fn malformed_protobuf_is_refused_and_the_server_keeps_serving() {
    let server = TestServer::start().await;
    let channel = server.channel().await;
    for body in [vec![0xff; 16], vec![0x0a, 0x80], vec![0x12, 0x05, 0x01]] {
        let status = call_raw(channel.clone(), "/points.v1.PointsService/AddTransaction", body)
            .await
            .expect_err("garbage is not a request");
        assert_ne!(status.code(), Code::Ok);
    }
    // A well-formed request through the same raw path still works.
    let body = SpendRequest { points: 1, ..Default::default() }.encode_to_vec();
    let status = call_raw(channel, "/points.v1.PointsService/Spend", body)
        .await
        .expect_err("nothing to spend yet");
    assert_eq!(status.code(), Code::FailedPrecondition);
    let mut client = server.client().await;
    add(&mut client, "DANNON", 1, "2024-01-01T00:00:00Z").await;
}
