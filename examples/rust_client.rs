//! A short Rust client for points.v1.PointsService, using the types this
//! crate generates from the .proto (a client crate of your own would run
//! tonic-prost-build on proto/ the same way).
//!
//! ```text
//! cargo run --release -- --in-memory &
//! cargo run --example rust_client -- http://127.0.0.1:50051
//! ```

use points::proto::v1::points_service_client::PointsServiceClient;
use points::proto::v1::{AddTransactionRequest, GetBalancesRequest, SpendRequest};
use tonic_types::StatusExt;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let address = std::env::args().nth(1).unwrap_or_else(|| "http://127.0.0.1:50051".to_owned());
    let mut client = PointsServiceClient::connect(address).await?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;

    // Earn points. A request_id (one per logical request) makes retries safe.
    let earned = client
        .add_transaction(AddTransactionRequest {
            user_id: "example-user".into(),
            payer: "DANNON".into(),
            points: 500,
            timestamp: Some(prost_types::Timestamp { seconds: now.as_secs() as i64, nanos: 0 }),
            request_id: format!("earn-{}", now.as_nanos()),
        })
        .await?
        .into_inner();
    println!("recorded transaction {:?}", earned.transaction.map(|transaction| transaction.id));

    // Spend some; the reply says which payers gave how much.
    let spend = SpendRequest {
        user_id: "example-user".into(),
        points: 200,
        request_id: format!("spend-{}", now.as_nanos()),
    };
    let reply = client.spend(spend).await?.into_inner();
    println!("spent {:?} as spend {}", reply.spent, reply.spend_id);

    // Refusals carry a google.rpc.ErrorInfo with a stable reason.
    let too_much =
        SpendRequest { user_id: "example-user".into(), points: 1_000_000, ..Default::default() };
    if let Err(status) = client.spend(too_much).await {
        let reason = status.get_error_details().error_info().map(|info| info.reason.clone());
        println!("refused: {:?} {reason:?}: {}", status.code(), status.message());
    }

    let balances = client
        .get_balances(GetBalancesRequest { user_id: "example-user".into(), ..Default::default() })
        .await?;
    println!("balances {:?}", balances.into_inner().balances);
    Ok(())
}
