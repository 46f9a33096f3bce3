//! AddTransactions over real gRPC: a 10,000-entry batch in one call, all or
//! nothing with the bad entry's index in the error, one journal record (so
//! one fsync) per batch, and durability across a kill -9.

use crate::common;
use crate::common::refusal::assert_refusal;

use common::client::{Client, balances};
use common::{ServerProcess, timestamp};
use points::proto::v1::{AddTransactionsRequest, NewTransaction};
use points::testing::read_journal;
use tonic::Code;
use tonic_types::StatusExt;

fn entry(payer: &str, points: i64, second: usize) -> NewTransaction {
    let when =
        format!("2024-01-01T{:02}:{:02}:{:02}Z", second / 3600 % 24, second / 60 % 60, second % 60);
    NewTransaction { payer: payer.to_owned(), points, timestamp: Some(timestamp(&when)) }
}

fn batch(transactions: Vec<NewTransaction>) -> AddTransactionsRequest {
    AddTransactionsRequest { user_id: String::new(), transactions }
}

/// 10,000 transactions in one call get ids in order and land together.
async fn ten_thousand_transactions_in_one_call(mut client: Client) {
    let payers = ["DANNON", "UNILEVER", "MILLER COORS", "KRAFT"];
    let transactions: Vec<_> =
        (0..10_000).map(|index| entry(payers[index % 4], 1 + (index % 7) as i64, index)).collect();
    let expected_total: i64 = transactions.iter().map(|transaction| transaction.points).sum();
    let reply = client.add_transactions(batch(transactions)).await.expect("accepted").into_inner();
    let ids: Vec<u64> = reply.transactions.iter().map(|transaction| transaction.id).collect();
    assert_eq!(ids, (1..=10_000).collect::<Vec<u64>>());
    assert_eq!(balances(&mut client).await.values().sum::<i64>(), expected_total);
}

/// A bad entry refuses the whole batch with its index; nothing changes.
async fn one_bad_entry_refuses_the_whole_batch_with_its_index(mut client: Client) {
    client.add_transactions(batch(vec![entry("DANNON", 10, 0)])).await.expect("accepted");
    let cases = [
        (
            vec![entry("DANNON", 1, 1), entry("UNILEVER", 1, 2), entry("", 1, 3)],
            Code::InvalidArgument,
            "PAYER_BLANK",
            2,
        ),
        (
            vec![entry("DANNON", -5, 1), entry("DANNON", -6, 2)],
            Code::FailedPrecondition,
            "INSUFFICIENT_PAYER_POINTS",
            1,
        ),
        (vec![entry("DANNON", i64::MAX, 1)], Code::OutOfRange, "PAYER_BALANCE_OVERFLOW", 0),
    ];
    for (transactions, code, reason, index) in cases {
        let status = client.add_transactions(batch(transactions)).await.expect_err("refused");
        let info = assert_refusal(&status, code, reason);
        let details = status.get_error_details();
        if code == Code::InvalidArgument {
            let violations = &details.bad_request().expect("BadRequest").field_violations;
            assert_eq!(violations[0].field, format!("transactions[{index}].payer"));
        } else {
            assert_eq!(info.metadata.get("index"), Some(&index.to_string()), "{info:?}");
        }
        assert!(
            status.message().contains(&format!("transaction {index}"))
                || code == Code::InvalidArgument,
            "{}",
            status.message()
        );
    }
    for size in [0, 10_001] {
        let transactions = (0..size).map(|index| entry("DANNON", 1, index)).collect();
        let status = client.add_transactions(batch(transactions)).await.expect_err("bad size");
        assert_eq!(status.code(), Code::InvalidArgument);
    }
    assert_eq!(balances(&mut client).await["DANNON"], 10, "refused batches changed nothing");
}

/// A batch is one journal record, and it survives kill -9.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_one_journal_record_and_survives_kill_9() {
    let (data_dir, server) = ServerProcess::start_on_new_dir(&[]);
    let mut client = server.client().await;
    let transactions = (0..2_000).map(|index| entry("DANNON", 2, index)).collect();
    client.add_transactions(batch(transactions)).await.expect("accepted");
    server.signal("KILL");
    drop(server);
    assert_eq!(read_journal(data_dir.path()).expect("journal").len(), 1);
    let server = ServerProcess::start_durable(data_dir.path(), &[]);
    assert_eq!(balances(&mut server.client().await).await["DANNON"], 4_000);
}

crate::on_every_backend!(
    ten_thousand_transactions_in_one_call,
    one_bad_entry_refuses_the_whole_batch_with_its_index,
);
