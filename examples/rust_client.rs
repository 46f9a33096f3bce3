//! A short Rust client for points.v1.PointsService, using the types this
//! crate generates from the .proto (a client crate of your own would run
//! tonic-prost-build on proto/ the same way).
//!
//! ```text
//! cargo run --release -- --in-memory &
//! cargo run --example rust_client -- http://127.0.0.1:50051
//! ```

use points::proto::v1::points_service_client::PointsServiceClient;
use points::proto::v1::{
    AddTransactionRequest, GetBalancesRequest, SpendRequest, WatchTransactionsRequest,
};
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

    // Follow the user's history: every entry so far, then each new one as it
    // is stored. Keep the last position seen; reconnecting with it resumes
    // the stream with nothing missed and nothing twice (after UNAVAILABLE,
    // on another replica).
    let mut last_seen = 0;
    let watch = WatchTransactionsRequest { user_id: "example-user".into(), after_position: 0 };
    let mut stream = client.watch_transactions(watch).await?.into_inner();
    while let Some(response) = stream.message().await? {
        let Some(entry) = response.entry else { continue };
        last_seen = entry.position;
        println!("entry {last_seen}: {:?}", entry.entry);
        if last_seen == 2 {
            break; // the transaction and the spend above
        }
    }
    drop(stream);
    let resume =
        WatchTransactionsRequest { user_id: "example-user".into(), after_position: last_seen };
    let _resumed = client.watch_transactions(resume).await?.into_inner();
    println!("resumed after position {last_seen}");
    Ok(())
}
