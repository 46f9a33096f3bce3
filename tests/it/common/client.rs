//! Short calls for tests that use the default user: the reply on success,
//! a test failure otherwise.

use std::collections::HashMap;

use points::proto::v1::points_service_client::PointsServiceClient;
use points::proto::v1::{AddTransactionRequest, GetBalancesRequest, SpendRequest, Transaction};
use tonic::transport::Channel;

use super::timestamp;

/// The generated client over a plain channel.
pub type Client = PointsServiceClient<Channel>;

/// An AddTransaction request for the default user.
pub fn transaction(payer: &str, points: i64, rfc3339: &str) -> AddTransactionRequest {
    AddTransactionRequest {
        payer: payer.to_owned(),
        points,
        timestamp: Some(timestamp(rfc3339)),
        ..Default::default()
    }
}

/// Records a transaction that must be accepted.
pub async fn add(client: &mut Client, payer: &str, points: i64, rfc3339: &str) -> Transaction {
    client
        .add_transaction(transaction(payer, points, rfc3339))
        .await
        .expect("transaction accepted")
        .into_inner()
        .transaction
        .expect("reply carries the transaction")
}

/// Spends points that must be there; returns (payer, points) per payer.
pub async fn spend(client: &mut Client, points: i64) -> Vec<(String, i64)> {
    client
        .spend(SpendRequest { points, ..Default::default() })
        .await
        .expect("spend accepted")
        .into_inner()
        .spent
        .into_iter()
        .map(|entry| (entry.payer, entry.points))
        .collect()
}

/// The default user's balances.
pub async fn balances(client: &mut Client) -> HashMap<String, i64> {
    client
        .get_balances(GetBalancesRequest::default())
        .await
        .expect("balances")
        .into_inner()
        .balances
}
