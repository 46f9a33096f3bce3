//! The gRPC face of the store: admits each call (call limit, caller, fields,
//! role and user), runs it against the store, and maps the outcome to
//! protobuf replies or to statuses with error details. Holds no business rules
//! of its own.

mod page_token;
mod status;
mod validation;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use tonic::{Code, Request, Response, Status};
use tonic_types::StatusExt;
use tracing::Instrument;

pub use status::ERROR_DOMAIN;
pub use validation::{
    DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, MAX_TIMESTAMP_SECONDS, MAX_USER_ID_BYTES,
    MIN_TIMESTAMP_SECONDS,
};

use crate::auth::{Authenticator, Principal, Role};
use crate::durability::Store;
use crate::ledger::{self, HistoryEntry};
use crate::proto::v1::points_service_server::PointsService as PointsServiceApi;
use crate::proto::v1::{
    self, AddTransactionRequest, AddTransactionResponse, AddTransactionsRequest,
    AddTransactionsResponse, GetBalancesRequest, GetBalancesResponse, ListTransactionsRequest,
    ListTransactionsResponse, PayerPoints, SpendRequest, SpendResponse, Transaction,
    TransactionEntry,
};

/// Who may call: everyone (loopback or explicitly insecure deployments), or
/// the clients of a tokens file.
#[derive(Debug, Clone)]
pub enum Access {
    /// No authentication.
    Open,
    /// Bearer tokens with roles.
    Tokens(Arc<Authenticator>),
}

/// `points.v1.PointsService` over one store. Cloning shares the store and the
/// call limit.
#[derive(Debug, Clone)]
pub struct PointsService {
    store: Arc<Store>,
    access: Access,
    /// One permit per call in progress, across all connections.
    calls: Arc<tokio::sync::Semaphore>,
    max_concurrent_calls: usize,
}

impl PointsService {
    /// The default limit of concurrent calls.
    pub const DEFAULT_MAX_CONCURRENT_CALLS: usize = 1024;

    /// A service over `store`, open to every caller, with the default call limit.
    pub fn new(store: Arc<Store>) -> Self {
        Self::with_limits(store, Access::Open, Self::DEFAULT_MAX_CONCURRENT_CALLS)
    }

    /// A service over `store` with the given access control and call limit.
    pub fn with_limits(store: Arc<Store>, access: Access, max_concurrent_calls: usize) -> Self {
        assert!(max_concurrent_calls > 0, "at least one call must be allowed");
        let calls = Arc::new(tokio::sync::Semaphore::new(max_concurrent_calls));
        Self { store, access, calls, max_concurrent_calls }
    }

    /// The store behind the service.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Admits a call, or sheds it at once when the server is at its limit:
    /// a bounded amount of work in progress instead of a queue that grows.
    fn admit(&self) -> Result<tokio::sync::OwnedSemaphorePermit, Status> {
        Arc::clone(&self.calls).try_acquire_owned().map_err(|_| {
            status::resource_exhausted(
                "SERVER_OVERLOADED",
                format!(
                    "the server is already handling its maximum of {} calls; retry with backoff",
                    self.max_concurrent_calls
                ),
            )
        })
    }

    /// The caller, if the service checks callers; UNAUTHENTICATED otherwise.
    /// Records the client's name in the call's span.
    fn authenticate<T>(&self, request: &Request<T>) -> Result<Option<&Principal>, Status> {
        match &self.access {
            Access::Open => Ok(None),
            Access::Tokens(authenticator) => {
                // Under mutual TLS the certificate was verified in the handshake.
                let common_name = request.peer_certs().and_then(|certificates| {
                    certificates.first().and_then(|der| crate::auth::certificate_common_name(der))
                });
                let principal = authenticator
                    .authenticate(request.metadata(), common_name.as_deref())
                    .map_err(|error| status::access_refusal(&error))?;
                tracing::Span::current().record("client", principal.name.as_str());
                Ok(Some(principal))
            }
        }
    }
}

impl PointsService {
    /// What every call passes before it touches the store, in this order:
    /// the call limit (RESOURCE_EXHAUSTED), the caller (UNAUTHENTICATED), the
    /// request's fields (INVALID_ARGUMENT), and the caller's right to `role`
    /// for the request's user (PERMISSION_DENIED). Returns the call's permit,
    /// to hold until it ends, with the validated request.
    fn admit_request<'request, Message, Valid>(
        &self,
        request: &'request Request<Message>,
        role: Role,
        validate: impl FnOnce(&'request Message) -> Result<Valid, Vec<status::FieldViolation>>,
        user_of: impl FnOnce(&Valid) -> &'request str,
    ) -> Result<(tokio::sync::OwnedSemaphorePermit, Valid), Status> {
        let call = self.admit()?;
        let principal = self.authenticate(request)?;
        let valid = validate(request.get_ref()).map_err(|bad| status::invalid_argument(&bad))?;
        let user_id = user_of(&valid);
        authorize(principal, role, user_id)?;
        tracing::Span::current().record("user", user_id);
        Ok((call, valid))
    }
}

/// PERMISSION_DENIED unless the caller may use `role` for `user_id`.
fn authorize(principal: Option<&Principal>, role: Role, user_id: &str) -> Result<(), Status> {
    match principal {
        None => Ok(()),
        Some(principal) => {
            principal.authorize(role, user_id).map_err(|error| status::access_refusal(&error))
        }
    }
}

#[tonic::async_trait]
impl PointsServiceApi for PointsService {
    async fn add_transaction(
        &self,
        request: Request<AddTransactionRequest>,
    ) -> Result<Response<AddTransactionResponse>, Status> {
        observed("AddTransaction", async {
            let (_call, transaction) =
                self.admit_request(&request, Role::Earn, validation::transaction, |transaction| {
                    transaction.user_id
                })?;
            let recorded = self
                .store
                .add_transaction(
                    transaction.user_id,
                    transaction.request_id,
                    transaction.payer,
                    transaction.points,
                    transaction.timestamp,
                )
                .await
                .map_err(|error| status::store_error(&error))?;
            Ok(Response::new(AddTransactionResponse {
                transaction: Some(transaction_message(recorded)),
            }))
        })
        .await
    }

    async fn add_transactions(
        &self,
        request: Request<AddTransactionsRequest>,
    ) -> Result<Response<AddTransactionsResponse>, Status> {
        observed("AddTransactions", async {
            let (_call, batch) =
                self.admit_request(&request, Role::Earn, validation::batch, |batch| batch.user_id)?;
            let recorded = self
                .store
                .add_transactions(batch.user_id, &batch.transactions)
                .await
                .map_err(|error| status::store_error(&error))?;
            Ok(Response::new(AddTransactionsResponse {
                transactions: recorded.into_iter().map(transaction_message).collect(),
            }))
        })
        .await
    }

    async fn spend(
        &self,
        request: Request<SpendRequest>,
    ) -> Result<Response<SpendResponse>, Status> {
        observed("Spend", async {
            let (_call, spend) =
                self.admit_request(&request, Role::Spend, validation::spend, |spend| {
                    spend.user_id
                })?;
            let spent = self
                .store
                .spend(spend.user_id, spend.request_id, spend.points)
                .await
                .map_err(|error| status::store_error(&error))?;
            Ok(Response::new(SpendResponse {
                spent: payer_points(spent.spent),
                spend_id: spent.id,
            }))
        })
        .await
    }

    async fn get_balances(
        &self,
        request: Request<GetBalancesRequest>,
    ) -> Result<Response<GetBalancesResponse>, Status> {
        observed("GetBalances", async {
            let (_call, user_id) =
                self.admit_request(&request, Role::Read, validation::balances, |user_id| user_id)?;
            let balances: HashMap<String, i64> = self
                .store
                .balances(user_id)
                .await
                .map_err(|error| status::store_error(&error))?
                .into_iter()
                .collect();
            Ok(Response::new(GetBalancesResponse { balances }))
        })
        .await
    }

    async fn list_transactions(
        &self,
        request: Request<ListTransactionsRequest>,
    ) -> Result<Response<ListTransactionsResponse>, Status> {
        observed("ListTransactions", async {
            let (_call, page) =
                self.admit_request(&request, Role::Read, validation::page, |page| page.user_id)?;
            let history = self
                .store
                .history_page(page.user_id, page.cursor, page.page_size)
                .await
                .map_err(|error| status::store_error(&error))?
                .ok_or_else(|| status::invalid_argument(&[validation::invalid_page_token()]))?;
            let entries = history
                .entries
                .into_iter()
                .map(|entry| v1::HistoryEntry {
                    entry: Some(match entry {
                        HistoryEntry::Transaction { transaction, remaining_points } => {
                            v1::history_entry::Entry::Transaction(TransactionEntry {
                                id: transaction.id,
                                payer: transaction.payer,
                                points: transaction.points,
                                timestamp: Some(validation::to_proto_timestamp(
                                    transaction.timestamp,
                                )),
                                remaining_points,
                            })
                        }
                        HistoryEntry::Spend(spend) => {
                            v1::history_entry::Entry::Spend(v1::SpendEntry {
                                id: spend.id,
                                points: spend.points,
                                spent: payer_points(spend.spent),
                            })
                        }
                    }),
                })
                .collect();
            let next_page_token = history
                .next
                .map(|cursor| page_token::encode(page.user_id, cursor))
                .unwrap_or_default();
            Ok(Response::new(ListTransactionsResponse { entries, next_page_token }))
        })
        .await
    }
}

/// A recorded transaction in its protobuf form.
fn transaction_message(transaction: ledger::Transaction) -> Transaction {
    Transaction {
        id: transaction.id,
        payer: transaction.payer,
        points: transaction.points,
        timestamp: Some(validation::to_proto_timestamp(transaction.timestamp)),
    }
}

/// Spend amounts in their protobuf form.
fn payer_points(spent: Vec<ledger::PayerPoints>) -> Vec<PayerPoints> {
    spent
        .into_iter()
        .map(|entry| PayerPoints { payer: entry.payer, points: entry.points })
        .collect()
}

/// Counts a call in `points_rpc_in_flight` for as long as it lives: tonic
/// drops a call's future when the client cancels or its deadline passes, and
/// the count must come down then too.
struct InFlight;

impl InFlight {
    fn enter() -> Self {
        metrics::gauge!("points_rpc_in_flight").increment(1.0);
        InFlight
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        metrics::gauge!("points_rpc_in_flight").decrement(1.0);
    }
}

/// Runs one RPC inside its own span and logs one line with the method, the
/// outcome code and the latency. Refusals are the caller's business and are
/// logged at INFO; only faults of the server itself are logged at ERROR.
async fn observed<T>(
    method: &'static str,
    call: impl Future<Output = Result<Response<T>, Status>>,
) -> Result<Response<T>, Status> {
    let span = tracing::info_span!(
        "rpc",
        method,
        client = tracing::field::Empty,
        user = tracing::field::Empty,
        code = tracing::field::Empty
    );
    let started = Instant::now();
    let in_flight = InFlight::enter();
    let result = call.instrument(span.clone()).await;
    drop(in_flight);
    let elapsed = started.elapsed();
    let latency_us = elapsed.as_micros() as u64;
    let code = match &result {
        Ok(_) => "OK",
        Err(status) => code_name(status.code()),
    };
    metrics::counter!("points_rpc_calls_total", "method" => method, "code" => code).increment(1);
    metrics::histogram!("points_rpc_duration_seconds", "method" => method)
        .record(elapsed.as_secs_f64());
    if let Err(status) = &result
        && let Some(info) = status.get_error_details().error_info()
    {
        let reason = info.reason.clone();
        metrics::counter!("points_rpc_refusals_total", "method" => method, "reason" => reason)
            .increment(1);
    }
    let _entered = span.enter();
    span.record("code", code);
    match &result {
        Ok(_) => tracing::info!(latency_us, "rpc completed"),
        Err(status) => match status.code() {
            Code::InvalidArgument
            | Code::FailedPrecondition
            | Code::OutOfRange
            | Code::NotFound
            | Code::AlreadyExists
            | Code::PermissionDenied
            | Code::Unauthenticated
            | Code::ResourceExhausted
            | Code::Cancelled
            | Code::DeadlineExceeded => {
                tracing::info!(latency_us, error = status.message(), "rpc refused")
            }
            _ => tracing::error!(latency_us, error = status.message(), "rpc failed"),
        },
    }
    result
}

/// The canonical UPPER_SNAKE_CASE name of a gRPC code, as operators know it.
fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}
