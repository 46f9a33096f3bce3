//! The refusals of the points API over real gRPC: every error code with its
//! ErrorInfo reason, the fields a BadRequest names, and the numbers in the
//! message; refusals change nothing, and bytes that are not protobuf are
//! refused without taking the server down.

use crate::common::client::{Client, add, balances, transaction};
use crate::common::refusal::assert_refusal;
use crate::common::{TestServer, call_raw};

use std::collections::HashMap;

use points::proto::v1::{AddTransactionRequest, GetBalancesRequest, SpendRequest};
use prost::Message;
use tonic::{Code, Status};
use tonic_types::StatusExt;

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

/// Every INVALID_ARGUMENT case of AddTransaction names its field and changes nothing.
async fn add_transaction_fails_with_invalid_argument_for_each_bad_field(mut client: Client) {
    add(&mut client, "DANNON", 10, "2024-01-01T00:00:00Z").await;
    let valid = transaction("DANNON", 5, "2024-01-01T00:00:00Z");
    let with = |change: fn(&mut AddTransactionRequest)| {
        let mut request = valid.clone();
        change(&mut request);
        request
    };
    let at = |seconds: i64, nanos: i32| AddTransactionRequest {
        timestamp: Some(prost_types::Timestamp { seconds, nanos }),
        ..valid.clone()
    };
    let (nanos, seconds) = ("timestamp.nanos", "timestamp.seconds");
    let (bad_nanos, bad_time) = ("TIMESTAMP_NANOS_OUT_OF_RANGE", "TIMESTAMP_OUT_OF_RANGE");
    let (user, bad_user, id, bad_id) =
        ("user_id", "USER_ID_INVALID", "request_id", "REQUEST_ID_INVALID");
    let cases: Vec<(&str, AddTransactionRequest, &str, &str)> = vec![
        ("empty payer", with(|r| r.payer = String::new()), "payer", "PAYER_BLANK"),
        ("whitespace payer", with(|r| r.payer = " \t ".into()), "payer", "PAYER_BLANK"),
        ("257-byte payer", with(|r| r.payer = "X".repeat(257)), "payer", "PAYER_TOO_LONG"),
        ("zero points", with(|r| r.points = 0), "points", "POINTS_ZERO"),
        ("missing timestamp", with(|r| r.timestamp = None), "timestamp", "TIMESTAMP_MISSING"),
        ("negative nanos", at(0, -1), nanos, bad_nanos),
        ("nanos of 10^9", at(0, 1_000_000_000), nanos, bad_nanos),
        ("before year 1", at(-62_135_596_801, 0), seconds, bad_time),
        ("after year 9999", at(253_402_300_800, 0), seconds, bad_time),
        ("i64::MIN seconds", at(i64::MIN, 0), seconds, bad_time),
        ("129-byte user_id", with(|r| r.user_id = "u".repeat(129)), user, bad_user),
        ("user_id with a newline", with(|r| r.user_id = "a\nb".into()), user, bad_user),
        ("129-byte request_id", with(|r| r.request_id = "r".repeat(129)), id, bad_id),
        ("request_id with a tab", with(|r| r.request_id = "r\t1".into()), id, bad_id),
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
async fn add_transaction_reports_every_bad_field_at_once(mut client: Client) {
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
async fn negative_transaction_fails_with_failed_precondition_when_payer_balance_is_short(
    mut client: Client,
) {
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
async fn spend_fails_with_failed_precondition_when_total_is_short(mut client: Client) {
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
async fn spend_fails_with_invalid_argument_when_points_are_not_positive(mut client: Client) {
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
        .get_balances(GetBalancesRequest { user_id: "b".repeat(129), ..Default::default() })
        .await
        .expect_err("too long a user id");
    assert_eq!(bad_fields(&status), ["user_id"]);
    assert_eq!(balances(&mut client).await, map(&[("DANNON", 10)]));
}

/// Balances past i64::MAX, per payer or in total, are OUT_OF_RANGE and change nothing.
async fn add_transaction_fails_with_out_of_range_when_a_balance_would_overflow(mut client: Client) {
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

crate::on_every_backend!(
    add_transaction_fails_with_invalid_argument_for_each_bad_field,
    add_transaction_reports_every_bad_field_at_once,
    negative_transaction_fails_with_failed_precondition_when_payer_balance_is_short,
    spend_fails_with_failed_precondition_when_total_is_short,
    spend_fails_with_invalid_argument_when_points_are_not_positive,
    add_transaction_fails_with_out_of_range_when_a_balance_would_overflow,
);
