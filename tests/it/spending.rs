//! Oldest-first spending over real gRPC, on the real tonic server with the
//! generated client: the issue's examples A, B and C, and concurrent spends
//! that conserve the total.

use crate::common::client::{Client, add, balances, spend};
use crate::common::timestamp;

use std::collections::HashMap;

use points::proto::v1::SpendRequest;
use tonic::Code;

fn pairs(entries: &[(&str, i64)]) -> Vec<(String, i64)> {
    entries.iter().map(|&(payer, points)| (payer.to_owned(), points)).collect()
}

fn map(entries: &[(&str, i64)]) -> HashMap<String, i64> {
    pairs(entries).into_iter().collect()
}

/// Spends 5000 and checks the reply and the balances after it against what
/// the issue shows for examples A and B.
async fn spend_5000_as_the_issue_shows(client: &mut Client) {
    assert_eq!(
        spend(client, 5000).await,
        pairs(&[("DANNON", -100), ("UNILEVER", -200), ("MILLER COORS", -4700)])
    );
    assert_eq!(
        balances(client).await,
        map(&[("DANNON", 1000), ("UNILEVER", 0), ("MILLER COORS", 5300)])
    );
}

/// Example A over gRPC: spend 5000 and the balances match the issue.
async fn example_a_spend_takes_oldest_points_first(mut client: Client) {
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
    spend_5000_as_the_issue_shows(&mut client).await;
}

/// Example B over gRPC: out-of-order arrival gives example A's reply and balances.
async fn example_b_out_of_order_arrival_matches_example_a(mut client: Client) {
    add(&mut client, "DANNON", 1000, "2020-11-02T14:00:00Z").await;
    add(&mut client, "UNILEVER", 200, "2020-10-31T11:00:00Z").await;
    add(&mut client, "DANNON", -200, "2020-10-31T15:00:00Z").await;
    add(&mut client, "MILLER COORS", 10000, "2020-11-01T14:00:00Z").await;
    add(&mut client, "DANNON", 300, "2020-10-31T10:00:00Z").await;
    spend_5000_as_the_issue_shows(&mut client).await;
}

/// Example C over gRPC: a late older lot re-settles only inside its payer.
async fn example_c_late_lot_resettles_within_its_payer(mut client: Client) {
    add(&mut client, "P", 100, "2024-01-03T00:00:00Z").await;
    add(&mut client, "Q", 100, "2024-01-02T00:00:00Z").await;
    assert_eq!(spend(&mut client, 150).await, pairs(&[("Q", -100), ("P", -50)]));
    add(&mut client, "P", 30, "2024-01-01T00:00:00Z").await;
    add(&mut client, "R", 10, "2024-01-02T12:00:00Z").await;
    assert_eq!(spend(&mut client, 20).await, pairs(&[("R", -10), ("P", -10)]));
    assert_eq!(balances(&mut client).await, map(&[("P", 70), ("Q", 0), ("R", 0)]));
}

/// Many tasks spending at once never take more than was there, and the total is conserved.
async fn concurrent_spends_conserve_the_total(mut client: Client) {
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

crate::on_every_backend!(
    example_a_spend_takes_oldest_points_first,
    example_b_out_of_order_arrival_matches_example_a,
    example_c_late_lot_resettles_within_its_payer,
    concurrent_spends_conserve_the_total,
);
