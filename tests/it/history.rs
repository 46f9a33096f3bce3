//! History over real gRPC: paging through a user's history while writes go
//! on, bad page tokens and sizes, and pages bounded by bytes as well as by
//! entries.

use crate::common::ServerProcess;
use crate::common::client::{Client, add_request, spend_request, try_add, try_spend};
use crate::common::history::{pages, walk};

use std::time::Duration;

use points::proto::v1::{AddTransactionsRequest, ListTransactionsRequest, NewTransaction};
use tonic::Code;
use tonic_types::StatusExt;

/// Paging with small pages while writes go on: no gaps, no repeats, arrival order.
async fn paging_while_writes_go_on_has_no_gaps_or_repeats(mut client: Client) {
    for day in 1..=20 {
        let when = format!("2024-01-{day:02}T00:00:00Z");
        try_add(&mut client, add_request("alice", "", "DANNON", 10, &when)).await.unwrap();
    }
    let mut writer = client.clone();
    let (first_write_done, first_write_acknowledged) = tokio::sync::oneshot::channel();
    let mut first_write_done = Some(first_write_done);
    let writes = tokio::spawn(async move {
        for step in 0..300u32 {
            if step % 3 == 2 {
                try_spend(&mut writer, spend_request("alice", "", 4)).await.expect("enough points");
            } else {
                let when = format!("2024-02-{:02}T00:00:00Z", 1 + step % 28);
                try_add(&mut writer, add_request("alice", "", "UNILEVER", 5, &when)).await.unwrap();
            }
            if let Some(done) = first_write_done.take() {
                let _ = done.send(());
            }
            if step % 50 == 0 {
                // The writer's pace, so that the walk overlaps the writes;
                // not a wait for anything.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    });
    // Walk the whole history in pages of 3 while the writer runs, starting
    // once a write of the writer is acknowledged (so the walk must see it);
    // the walk ends at whatever the end is when it gets there.
    first_write_acknowledged.await.expect("the writer acknowledges its first write");
    let seen = walk(&mut client, "alice", 3).await;
    writes.await.expect("writer");
    let full = walk(&mut client, "alice", 1000).await;
    assert_eq!(full.len(), 20 + 300);
    assert!(seen.len() > 20, "the walk saw the writes that came during it");
    // No gaps, no repeats, arrival order: the walk is exactly a prefix of the final history.
    assert_eq!(seen, full[..seen.len()]);
    let ids_of = |kind: char| -> Vec<u64> {
        full.iter().filter(|(entry, _)| *entry == kind).map(|&(_, id)| id).collect()
    };
    assert_eq!(ids_of('t'), (1..=220).collect::<Vec<u64>>());
    assert_eq!(ids_of('s'), (1..=100).collect::<Vec<u64>>());
}

/// Bad paging input is INVALID_ARGUMENT; large page sizes are capped at 1000.
async fn bad_page_tokens_and_sizes_are_invalid_arguments(mut client: Client) {
    for step in 0..1005i64 {
        let when = format!("2024-01-01T00:{:02}:{:02}Z", step / 60 % 60, step % 60);
        try_add(&mut client, add_request("alice", "", "DANNON", 1, &when)).await.unwrap();
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

/// A ListTransactions page stops before 4 MiB, however many payers its
/// spends list: 100 spends that each take from 300 payers with 200-byte
/// names are 6.5 MB of history, more than a client accepts in one reply.
/// Pages still list every entry once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_pages_are_bounded_by_bytes_as_well_as_entries() {
    const PAYERS: usize = 300;
    const SPENDS: usize = 100;
    let server = ServerProcess::start(&[]);
    let mut client = server.client().await;
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
        let spent = try_spend(&mut client, spend_request("wide", "", PAYERS as i64)).await;
        assert_eq!(spent.expect("spend").spent.len(), PAYERS, "each spend takes from every payer");
    }
    let (pages, ended) = pages(&mut client, "wide", 1000).await;
    ended.expect("a page fits a reply");
    for page in &pages {
        assert!(prost::Message::encoded_len(page) <= 4 * 1024 * 1024);
    }
    let entries: usize = pages.iter().map(|page| page.entries.len()).sum();
    assert_eq!(entries, SPENDS * PAYERS + SPENDS, "every entry once");
    assert!(pages.len() >= 3, "the spends alone need two pages: {}", pages.len());
}

crate::on_every_backend!(
    paging_while_writes_go_on_has_no_gaps_or_repeats,
    bad_page_tokens_and_sizes_are_invalid_arguments,
);
