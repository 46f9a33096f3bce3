//! Fuzzing request decoding and validation, bounded so it runs in every CI:
//! arbitrary bytes decoded as each request message, and arbitrary field
//! values, go through the real service (validation, store, ledger). Whatever
//! comes in, the service never panics and answers with one of the codes the
//! API documents.

use std::sync::Arc;

use points::PointsService;
use points::Store;
use points::proto::v1::points_service_server::PointsService as _;
use points::proto::v1::{
    AddTransactionRequest, GetBalancesRequest, ListTransactionsRequest, SpendRequest,
};
use proptest::prelude::*;
use prost::Message;
use tonic::{Code, Request, Status};

fn allowed(result: Result<(), Status>) -> Result<(), TestCaseError> {
    if let Err(status) = result {
        let documented = [
            Code::InvalidArgument,
            Code::FailedPrecondition,
            Code::OutOfRange,
            Code::AlreadyExists,
            Code::ResourceExhausted,
        ];
        prop_assert!(documented.contains(&status.code()), "undocumented answer: {status:?}");
        prop_assert!(!status.message().is_empty());
    }
    Ok(())
}

/// Sends one decoded message of the kind `method` picks to the service.
async fn dispatch(service: &PointsService, method: u8, bytes: &[u8]) -> Result<(), TestCaseError> {
    match method % 4 {
        0 => {
            if let Ok(message) = AddTransactionRequest::decode(bytes) {
                allowed(service.add_transaction(Request::new(message)).await.map(drop))?;
            }
        }
        1 => {
            if let Ok(message) = SpendRequest::decode(bytes) {
                allowed(service.spend(Request::new(message)).await.map(drop))?;
            }
        }
        2 => {
            if let Ok(message) = GetBalancesRequest::decode(bytes) {
                allowed(service.get_balances(Request::new(message)).await.map(drop))?;
            }
        }
        _ => {
            if let Ok(message) = ListTransactionsRequest::decode(bytes) {
                allowed(service.list_transactions(Request::new(message)).await.map(drop))?;
            }
        }
    }
    Ok(())
}

fn service() -> PointsService {
    PointsService::new(Arc::new(Store::in_memory()))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    /// Arbitrary bytes as any request: decoded or not, never a panic or an undocumented code.
    #[test]
    fn arbitrary_bytes_never_break_the_service(calls in prop::collection::vec((any::<u8>(), prop::collection::vec(any::<u8>(), 0..96)), 1..8)) {
        let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        let service = service();
        runtime.block_on(async {
            for (method, bytes) in &calls {
                dispatch(&service, *method, bytes).await?;
            }
            Ok::<(), TestCaseError>(())
        })?;
    }

    /// Arbitrary field values (any strings, amounts, timestamps, tokens) through every RPC.
    #[test]
    fn arbitrary_fields_never_break_the_service(
        payer in ".{0,300}",
        user_id in prop_oneof![Just(String::new()), ".{0,140}"],
        request_id in prop_oneof![Just(String::new()), ".{0,140}"],
        points in any::<i64>(),
        seconds in prop_oneof![any::<i64>(), -62_135_596_900i64..253_402_300_900],
        nanos in any::<i32>(),
        page_size in any::<i32>(),
        page_token in ".{0,40}",
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        let service = service();
        runtime.block_on(async {
            let timestamp = Some(prost_types::Timestamp { seconds, nanos });
            let add = AddTransactionRequest { payer, points, timestamp, user_id: user_id.clone(), request_id: request_id.clone() };
            allowed(service.add_transaction(Request::new(add.clone())).await.map(drop))?;
            allowed(service.add_transaction(Request::new(add)).await.map(drop))?;
            let spend = SpendRequest { points, user_id: user_id.clone(), request_id };
            allowed(service.spend(Request::new(spend)).await.map(drop))?;
            allowed(service.get_balances(Request::new(GetBalancesRequest { user_id: user_id.clone(), ..Default::default() })).await.map(drop))?;
            let list = ListTransactionsRequest { user_id, page_size, page_token };
            allowed(service.list_transactions(Request::new(list)).await.map(drop))?;
            Ok::<(), TestCaseError>(())
        })?;
    }
}
