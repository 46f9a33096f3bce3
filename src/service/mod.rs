//! The gRPC face of the store: admits each call, runs it against the store,
//! and maps the outcome to protobuf replies or to statuses with error
//! details. Holds no business rules of its own.
//!
//! What every call passes before it touches the store, in this order:
//!
//! 1. the caller (UNAUTHENTICATED: `TOKEN_MISSING`, `TOKEN_UNKNOWN`),
//! 2. the caller's share of the call slots (RESOURCE_EXHAUSTED:
//!    `CLIENT_OVERLOADED`),
//! 3. the server's call limit (RESOURCE_EXHAUSTED: `SERVER_OVERLOADED`),
//! 4. the request message's size and encoding (OUT_OF_RANGE, INTERNAL, from
//!    tonic as it decodes the body),
//! 5. the request's fields (INVALID_ARGUMENT),
//! 6. the caller's right to the method's role for the request's user
//!    (PERMISSION_DENIED: `ROLE_MISSING`, `USER_NOT_ALLOWED`).
//!
//! Steps 1 to 3 need only the request headers: [`AdmissionLayer`] runs them
//! before the request body is read, so that a refused call costs no body
//! buffering, and hands the caller to the handler. A service called without
//! the layer (as in tests) runs them in the handler instead.

mod admission;
pub mod auth;
mod page_token;
mod status;
mod validation;
mod watch;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tonic::{Code, Request, Response, Status};
use tonic_types::StatusExt;
use tracing::Instrument;

pub use admission::{Admission, AdmissionLayer, Admitted, CallLimits, Caller};
pub use status::ERROR_DOMAIN;

use self::auth::{Credentials, Principal, Role};
use crate::connections::ConnectionInfo;
use crate::ledger::{self, HistoryEntry, PagedEntry};
use crate::proto::v1::points_service_server::PointsService as PointsServiceApi;
use crate::proto::v1::{
    self, AddTransactionRequest, AddTransactionResponse, AddTransactionsRequest,
    AddTransactionsResponse, GetBalancesRequest, GetBalancesResponse, ListTransactionsRequest,
    ListTransactionsResponse, PayerPoints, SpendRequest, SpendResponse, Transaction,
    TransactionEntry,
};
use crate::store::{Store, UserId};
use crate::telemetry::CallTrace;

/// The most bytes of history entries one ListTransactions reply carries:
/// 4 MiB (the default largest message of gRPC clients) less room for the
/// page token and framing. A page ends early rather than pass it.
pub const MAX_PAGE_BYTES: usize = 4 * 1024 * 1024 - 64 * 1024;

/// Who may call: everyone (loopback or explicitly insecure deployments), or
/// the clients of a tokens file.
#[derive(Debug, Clone)]
pub enum Access {
    /// No authentication.
    Open,
    /// Bearer tokens (or client certificates) with roles, from a tokens
    /// file that may be reloaded.
    Tokens(Credentials),
}

/// `points.v1.PointsService` over one store. Cloning shares the store and the
/// call limits.
#[derive(Debug, Clone)]
pub struct PointsService {
    store: Arc<Store>,
    admission: Arc<Admission>,
    /// One permit per open WatchTransactions stream.
    watch_streams: Arc<tokio::sync::Semaphore>,
    /// Turns true when the server shuts down, ending open streams.
    shutdown: Arc<tokio::sync::watch::Sender<bool>>,
}

impl PointsService {
    /// A service over `store`, open to every caller, with the default call limits.
    pub fn new(store: Arc<Store>) -> Self {
        Self::with_limits(store, Access::Open, CallLimits::default())
    }

    /// A service over `store` with the given access control and call limits.
    ///
    /// # Panics
    ///
    /// If a limit is 0.
    pub fn with_limits(store: Arc<Store>, access: Access, limits: CallLimits) -> Self {
        assert!(limits.max_watch_streams > 0, "at least one watch stream must be allowed");
        Self {
            store,
            admission: Arc::new(Admission::new(access, limits)),
            watch_streams: Arc::new(tokio::sync::Semaphore::new(limits.max_watch_streams)),
            shutdown: Arc::new(tokio::sync::watch::Sender::new(false)),
        }
    }

    /// Ends every open WatchTransactions stream with UNAVAILABLE (and any
    /// opened later): the server is shutting down.
    pub fn end_streams(&self) {
        self.shutdown.send_replace(true);
    }

    /// The store behind the service.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// The layer that admits this service's calls from their headers, before
    /// their bodies are read; it shares this service's limits.
    pub fn admission_layer(&self) -> AdmissionLayer {
        AdmissionLayer::new(Arc::clone(&self.admission))
    }
}

impl PointsService {
    /// Steps 1 to 3 and 5 to 6 of the module's list: the caller as admitted
    /// by [`AdmissionLayer`] (or, without the layer, admitted here), the
    /// request's fields, and the caller's right to `role` for the request's
    /// user. Returns the call's slots when they were taken here, to hold
    /// until the call ends, with the validated request.
    fn admit_request<'request, Message, Valid>(
        &self,
        request: &'request Request<Message>,
        role: Role,
        validate: impl FnOnce(&'request Message) -> Result<Valid, Vec<status::FieldViolation>>,
        user_of: impl FnOnce(&Valid) -> UserId<'request>,
        payers_of: impl FnOnce(&Valid) -> Vec<&str>,
    ) -> Result<(Option<Admitted>, Valid), Status> {
        let (admitted, principal) = match request.extensions().get::<Caller>() {
            Some(caller) => (None, caller.principal.clone()),
            None => {
                let admitted = self.admission.admit(
                    request.metadata().as_ref(),
                    request.extensions().get::<ConnectionInfo>(),
                )?;
                let principal = admitted.caller.principal.clone();
                (Some(admitted), principal)
            }
        };
        if let Some(principal) = &principal {
            record_on_call("client", principal.name.as_str());
        }
        let valid = validate(request.get_ref()).map_err(|bad| status::invalid_argument(&bad))?;
        let user_id = user_of(&valid).as_str();
        authorize(principal.as_deref(), role, user_id)?;
        record_on_call("user", user_id);
        if let Some(principal) = &principal {
            // A batch with one payer the client may not touch is refused whole.
            principal
                .authorize_payers(payers_of(&valid).into_iter())
                .map_err(|error| status::access_refusal(&error))?;
        }
        Ok((admitted, valid))
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
    type WatchTransactionsStream = std::pin::Pin<
        Box<
            dyn tokio_stream::Stream<Item = Result<v1::WatchTransactionsResponse, Status>>
                + Send
                + 'static,
        >,
    >;

    async fn watch_transactions(
        &self,
        request: Request<v1::WatchTransactionsRequest>,
    ) -> Result<Response<Self::WatchTransactionsStream>, Status> {
        observed("WatchTransactions", request.metadata().as_ref(), async {
            let (admitted, (user_id, after_position)) = self.admit_request(
                &request,
                Role::Read,
                validation::watch,
                |(user_id, _)| *user_id,
                |_| Vec::new(),
            )?;
            let watch = Arc::clone(&self.watch_streams).try_acquire_owned().map_err(|_| {
                status::resource_exhausted(
                    "TOO_MANY_WATCH_STREAMS",
                    "the server already follows its maximum of watch streams \
                     (--max-watch-streams); retry with backoff or on another replica"
                        .to_owned(),
                )
            })?;
            let cursor = self
                .store
                .cursor_after(user_id, after_position)
                .await
                .map_err(|error| status::store_error(&error))?
                .map_err(|refusal| {
                    status::as_of_refusal(&refusal, "after_position", after_position)
                })?;
            // The stream keeps its client's share of calls, taken from the
            // admission layer (or admitted here without it), for as long as
            // it is open; the server's call slot goes back now.
            let admitted = admitted.or_else(|| {
                request.extensions().get::<admission::CallSlots>().and_then(|slots| slots.take())
            });
            let slots = watch::StreamSlots {
                _client: admitted.map(Admitted::into_client_slot),
                _watch: watch,
            };
            let stream = watch::follow(
                Arc::clone(&self.store),
                user_id.as_str().to_owned(),
                cursor,
                self.shutdown.subscribe(),
                slots,
            );
            Ok(Response::new(Box::pin(stream) as Self::WatchTransactionsStream))
        })
        .await
    }

    async fn add_transaction(
        &self,
        request: Request<AddTransactionRequest>,
    ) -> Result<Response<AddTransactionResponse>, Status> {
        observed("AddTransaction", request.metadata().as_ref(), async {
            let (_call, transaction) = self.admit_request(
                &request,
                Role::Earn,
                validation::transaction,
                |transaction| transaction.user_id,
                |transaction| vec![transaction.payer.as_str()],
            )?;
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
        observed("AddTransactions", request.metadata().as_ref(), async {
            let (_call, batch) = self.admit_request(
                &request,
                Role::Earn,
                validation::batch,
                |batch| batch.user_id,
                |batch| batch.transactions.iter().map(|entry| entry.payer).collect(),
            )?;
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
        observed("Spend", request.metadata().as_ref(), async {
            let (_call, spend) = self.admit_request(
                &request,
                Role::Spend,
                validation::spend,
                |spend| spend.user_id,
                |_| Vec::new(),
            )?;
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
        observed("GetBalances", request.metadata().as_ref(), async {
            let (_call, (user_id, as_of)) = self.admit_request(
                &request,
                Role::Read,
                validation::balances,
                |(user_id, _)| *user_id,
                |_| Vec::new(),
            )?;
            let read = self
                .store
                .balances_as_of(user_id, as_of)
                .await
                .map_err(|error| status::store_error(&error))?
                .map_err(|refusal| {
                    let position = request.get_ref().as_of_position;
                    status::as_of_refusal(&refusal, "as_of_position", position)
                })?;
            Ok(Response::new(GetBalancesResponse {
                balances: read.balances.into_iter().collect(),
                held: read.held.into_iter().collect(),
                position: read.position,
            }))
        })
        .await
    }

    async fn list_transactions(
        &self,
        request: Request<ListTransactionsRequest>,
    ) -> Result<Response<ListTransactionsResponse>, Status> {
        observed("ListTransactions", request.metadata().as_ref(), async {
            let (_call, page) = self.admit_request(
                &request,
                Role::Read,
                validation::page,
                |page| page.user_id,
                |_| Vec::new(),
            )?;
            let history = self
                .store
                .history_page(
                    page.user_id,
                    page.cursor,
                    ledger::PageLimits { max_entries: page.page_size, max_bytes: MAX_PAGE_BYTES },
                )
                .await
                .map_err(|error| status::store_error(&error))?
                .ok_or_else(|| status::invalid_argument(&[validation::invalid_page_token()]))?;
            let entries = history.entries.into_iter().map(history_entry).collect();
            let next_page_token = history
                .next
                .map(|cursor| page_token::encode(page.user_id.as_str(), cursor))
                .unwrap_or_default();
            Ok(Response::new(ListTransactionsResponse { entries, next_page_token }))
        })
        .await
    }

    async fn hold_points(
        &self,
        request: Request<v1::HoldPointsRequest>,
    ) -> Result<Response<v1::HoldPointsResponse>, Status> {
        observed("HoldPoints", request.metadata().as_ref(), async {
            let (_call, command) = self.admit_request(
                &request,
                Role::Spend,
                validation::hold,
                |command| command.user_id,
                |_| Vec::new(),
            )?;
            let ledger::Executed::Hold(hold) = self.execute(command).await? else {
                return Err(Status::internal("a hold executed as another command"));
            };
            Ok(Response::new(v1::HoldPointsResponse {
                hold_id: hold.id,
                held: payer_points(hold.held),
                expire_time: Some(millis_timestamp(hold.expire_at_ms)),
            }))
        })
        .await
    }

    async fn capture_hold(
        &self,
        request: Request<v1::CaptureHoldRequest>,
    ) -> Result<Response<v1::CaptureHoldResponse>, Status> {
        observed("CaptureHold", request.metadata().as_ref(), async {
            let (_call, command) = self.admit_request(
                &request,
                Role::Spend,
                validation::capture,
                |command| command.user_id,
                |_| Vec::new(),
            )?;
            let ledger::Executed::Capture(capture) = self.execute(command).await? else {
                return Err(Status::internal("a capture executed as another command"));
            };
            Ok(Response::new(v1::CaptureHoldResponse {
                spend_id: capture.spend.id,
                spent: payer_points(capture.spend.spent),
                released: payer_points(capture.released),
            }))
        })
        .await
    }

    async fn release_hold(
        &self,
        request: Request<v1::ReleaseHoldRequest>,
    ) -> Result<Response<v1::ReleaseHoldResponse>, Status> {
        observed("ReleaseHold", request.metadata().as_ref(), async {
            let (_call, command) = self.admit_request(
                &request,
                Role::Spend,
                validation::release,
                |command| command.user_id,
                |_| Vec::new(),
            )?;
            let ledger::Executed::Release(release) = self.execute(command).await? else {
                return Err(Status::internal("a release executed as another command"));
            };
            Ok(Response::new(v1::ReleaseHoldResponse { released: payer_points(release.released) }))
        })
        .await
    }

    async fn refund_spend(
        &self,
        request: Request<v1::RefundSpendRequest>,
    ) -> Result<Response<v1::RefundSpendResponse>, Status> {
        observed("RefundSpend", request.metadata().as_ref(), async {
            let (_call, command) = self.admit_request(
                &request,
                Role::Refund,
                validation::refund,
                |command| command.user_id,
                |_| Vec::new(),
            )?;
            let ledger::Executed::Refund(refund) = self.execute(command).await? else {
                return Err(Status::internal("a refund executed as another command"));
            };
            Ok(Response::new(v1::RefundSpendResponse {
                refunded: payer_points(refund.refunded),
                refundable_points: refund.refundable_points,
            }))
        })
        .await
    }

    async fn get_expiring_points(
        &self,
        request: Request<v1::GetExpiringPointsRequest>,
    ) -> Result<Response<v1::GetExpiringPointsResponse>, Status> {
        observed("GetExpiringPoints", request.metadata().as_ref(), async {
            let (_call, (user_id, within_ms)) = self.admit_request(
                &request,
                Role::Read,
                validation::expiring,
                |(user_id, _)| *user_id,
                |_| Vec::new(),
            )?;
            let expiring = self
                .store
                .expiring_points(user_id, within_ms)
                .await
                .map_err(|error| status::store_error(&error))?
                .into_iter()
                .map(|expiring| v1::ExpiringPoints {
                    payer: expiring.payer,
                    points: expiring.points,
                    expire_time: Some(validation::to_proto_timestamp(expiring.expire_time)),
                })
                .collect();
            Ok(Response::new(v1::GetExpiringPointsResponse { expiring }))
        })
        .await
    }
}

impl PointsService {
    /// Runs a validated hold, capture, release or refund.
    async fn execute(
        &self,
        command: validation::ValidCommand<'_>,
    ) -> Result<ledger::Executed, Status> {
        self.store
            .execute(command.user_id, command.request_id, command.params)
            .await
            .map_err(|error| status::store_error(&error))
    }
}

/// A history entry in its protobuf form.
fn history_entry(paged: PagedEntry) -> v1::HistoryEntry {
    use v1::history_entry::Entry;
    let entry = match paged.entry {
        HistoryEntry::Transaction { transaction, remaining_points } => {
            Entry::Transaction(TransactionEntry {
                id: transaction.id,
                payer: transaction.payer,
                points: transaction.points,
                timestamp: Some(validation::to_proto_timestamp(transaction.timestamp)),
                remaining_points,
            })
        }
        HistoryEntry::Spend(spend) => Entry::Spend(v1::SpendEntry {
            id: spend.id,
            points: spend.points,
            spent: payer_points(spend.spent),
        }),
        HistoryEntry::Hold(hold) => Entry::Hold(v1::HoldEntry {
            hold_id: hold.id,
            points: hold.points,
            held: payer_points(hold.held),
            expire_time: Some(millis_timestamp(hold.expire_at_ms)),
        }),
        HistoryEntry::Capture(capture) => Entry::HoldCapture(v1::HoldCaptureEntry {
            hold_id: capture.hold_id,
            spend_id: capture.spend.id,
            points: capture.spend.points,
            spent: payer_points(capture.spend.spent),
            released: payer_points(capture.released),
        }),
        HistoryEntry::Release(release) => Entry::HoldRelease(v1::HoldReleaseEntry {
            hold_id: release.hold_id,
            released: payer_points(release.released),
            timed_out: release.timed_out,
        }),
        HistoryEntry::Refund(refund) => Entry::Refund(v1::RefundEntry {
            spend_id: refund.spend_id,
            refunded: payer_points(refund.refunded),
            refundable_points: refund.refundable_points,
        }),
        HistoryEntry::Expiration(expired) => {
            Entry::Expiration(v1::ExpirationEntry { expired: payer_points(expired) })
        }
    };
    v1::HistoryEntry {
        entry: Some(entry),
        position: paged.position,
        accept_time: (paged.accepted_at_ms != 0).then(|| millis_timestamp(paged.accepted_at_ms)),
    }
}

/// A time in milliseconds since 1970-01-01T00:00:00Z in its protobuf form.
fn millis_timestamp(millis: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: millis.div_euclid(1000),
        nanos: (millis.rem_euclid(1000) * 1_000_000) as i32,
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

/// Runs one RPC inside its own spans (its trace and its log span) and logs
/// one line with the method, the outcome code and the latency (see
/// [`record_outcome`]).
async fn observed<T>(
    method: &'static str,
    headers: &http::HeaderMap,
    call: impl Future<Output = Result<Response<T>, Status>>,
) -> Result<Response<T>, Status> {
    let (span, trace) = rpc_span(method, headers);
    let started = Instant::now();
    let in_flight = InFlight::enter();
    let result = trace.run(call.instrument(span.clone())).await;
    drop(in_flight);
    let outcome = result.as_ref().map(drop);
    record_outcome(method, (&span, trace), started.elapsed(), outcome);
    result
}

/// The log span of one PointsService call and its trace (exported when
/// spans are; a child of the caller's span when the call came with a W3C
/// `traceparent`). The span's fields are filled in as they become known. At
/// DEBUG, like the call's own line: at the default level the log lines cost
/// nothing per call (see [`log_call_summaries`]). The trace id goes in the
/// call's log lines whenever there is one, also when spans are not
/// exported.
fn rpc_span(method: &'static str, headers: &http::HeaderMap) -> (tracing::Span, CallTrace) {
    use tracing::field::Empty;
    let trace = CallTrace::start(method, headers);
    let span = tracing::debug_span!(
        "rpc",
        method,
        client = Empty,
        user = Empty,
        code = Empty,
        trace_id = trace.trace_id().map(tracing::field::display),
    );
    (span, trace)
}

/// Records the calling client's name (`key` "client") or the user the call
/// is about ("user") on the call's log span and exported span.
fn record_on_call(key: &'static str, value: &str) {
    tracing::Span::current().record(key, value);
    crate::telemetry::record_on_call(key, value);
}

/// Counts a finished call in the metrics and in the periodic INFO summary,
/// ends its trace, and logs its one line in `span` at DEBUG. Refusals are
/// the caller's business; only faults of the server itself are logged at
/// ERROR, each one, with the call's trace id if it has one.
fn record_outcome(
    method: &'static str,
    (span, trace): (&tracing::Span, CallTrace),
    elapsed: Duration,
    outcome: Result<(), &Status>,
) {
    let latency_us = elapsed.as_micros() as u64;
    let code = match outcome {
        Ok(()) => "OK",
        Err(status) => code_name(status.code()),
    };
    metrics::counter!("points_rpc_calls_total", "method" => method, "code" => code).increment(1);
    metrics::histogram!("points_rpc_duration_seconds", "method" => method)
        .record(elapsed.as_secs_f64());
    if let Err(status) = outcome
        && let Some(info) = status.get_error_details().error_info()
    {
        let reason = info.reason.clone();
        metrics::counter!("points_rpc_refusals_total", "method" => method, "reason" => reason)
            .increment(1);
    }
    let trace_id = trace.trace_id().map(tracing::field::display);
    trace.finish(code, outcome.is_err_and(|status| !is_refusal(status.code())));
    let _entered = span.enter();
    span.record("code", code);
    match outcome {
        Ok(()) => {
            CALL_TALLY.completed.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(latency_us, "rpc completed")
        }
        Err(status) if is_refusal(status.code()) => {
            CALL_TALLY.refused.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(latency_us, error = status.message(), "rpc refused")
        }
        Err(status) => {
            CALL_TALLY.failed.fetch_add(1, Ordering::Relaxed);
            // The log span is off at the default level: name the call here.
            tracing::error!(
                method,
                code,
                trace_id,
                latency_us,
                error = status.message(),
                "rpc failed"
            )
        }
    }
}

/// Whether `code` answers a call the caller got wrong (or gave up on),
/// rather than a fault of the server: refusals are the caller's business
/// and are not logged above DEBUG.
fn is_refusal(code: Code) -> bool {
    matches!(
        code,
        Code::InvalidArgument
            | Code::FailedPrecondition
            | Code::OutOfRange
            | Code::NotFound
            | Code::AlreadyExists
            | Code::PermissionDenied
            | Code::Unauthenticated
            | Code::ResourceExhausted
            | Code::Cancelled
            | Code::DeadlineExceeded
    )
}

/// Calls finished since the last summary line, by outcome.
struct CallTally {
    completed: AtomicU64,
    refused: AtomicU64,
    failed: AtomicU64,
}

static CALL_TALLY: CallTally = CallTally {
    completed: AtomicU64::new(0),
    refused: AtomicU64::new(0),
    failed: AtomicU64::new(0),
};

/// How often the INFO summary of calls is logged.
pub const CALL_SUMMARY_INTERVAL: Duration = Duration::from_secs(10);

/// Logs one INFO line every [`CALL_SUMMARY_INTERVAL`] with the calls that
/// finished meanwhile (completed, refused, failed), when there were any;
/// runs until dropped. One line per call at INFO, written synchronously, cost
/// a third of the throughput at the ceiling; per-call lines are at DEBUG
/// (`RUST_LOG=points=debug`), and the metrics count every call by method,
/// code and reason.
pub async fn log_call_summaries() {
    let mut ticks = tokio::time::interval(CALL_SUMMARY_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let completed = CALL_TALLY.completed.swap(0, Ordering::Relaxed);
        let refused = CALL_TALLY.refused.swap(0, Ordering::Relaxed);
        let failed = CALL_TALLY.failed.swap(0, Ordering::Relaxed);
        if completed + refused + failed > 0 {
            let interval_s = CALL_SUMMARY_INTERVAL.as_secs();
            tracing::info!(completed, refused, failed, interval_s, "calls finished");
        }
    }
}

/// The method of a PointsService request path, as a metric label: one of the
/// service's methods, or `unknown` (the path is the client's to choose, and
/// labels must stay few).
fn method_label(path: &str) -> &'static str {
    const METHODS: [&str; 11] = [
        "AddTransaction",
        "AddTransactions",
        "Spend",
        "GetBalances",
        "ListTransactions",
        "HoldPoints",
        "CaptureHold",
        "ReleaseHold",
        "RefundSpend",
        "GetExpiringPoints",
        "WatchTransactions",
    ];
    let method = path.strip_prefix("/points.v1.PointsService/").unwrap_or_default();
    METHODS.into_iter().find(|known| *known == method).unwrap_or("unknown")
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
