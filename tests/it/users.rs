//! Many users over real gRPC: each has its own ledger, ids and history.

use crate::common::client::Client;
use crate::common::client::{add_request, balances_of, spend_request, try_add, try_spend};
use crate::common::history::walk;

use std::collections::HashMap;

use tonic::Code;

/// Users are independent: their own ids from 1, their own balances and history.
async fn users_have_independent_ledgers_ids_and_histories(mut client: Client) {
    let alice =
        try_add(&mut client, add_request("alice", "", "DANNON", 100, "2024-01-02T00:00:00Z"))
            .await
            .unwrap();
    let bob = try_add(&mut client, add_request("bob", "", "DANNON", 7, "2024-01-01T00:00:00Z"))
        .await
        .unwrap();
    assert_eq!((alice.id, bob.id), (1, 1));
    let spent = try_spend(&mut client, spend_request("alice", "", 30)).await.unwrap();
    assert_eq!(spent.spend_id, 1);
    let dannon = |points: i64| HashMap::from([("DANNON".to_owned(), points)]);
    assert_eq!(balances_of(&mut client, "alice").await, dannon(70));
    assert_eq!(balances_of(&mut client, "bob").await, dannon(7));
    assert!(balances_of(&mut client, "carol").await.is_empty());
    assert!(balances_of(&mut client, "").await.is_empty(), "the default user is a user of its own");
    let status = try_spend(&mut client, spend_request("bob", "", 8)).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "bob cannot spend alice's points");
    assert_eq!(walk(&mut client, "alice", 10).await, [('t', 1), ('s', 1)]);
    assert_eq!(walk(&mut client, "bob", 10).await, [('t', 1)]);
}

crate::on_every_backend!(users_have_independent_ledgers_ids_and_histories,);
