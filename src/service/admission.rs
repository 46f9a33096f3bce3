//! Admission of PointsService calls from their request headers alone, before
//! a byte of the request body is read or decoded: the caller must be known
//! (UNAUTHENTICATED otherwise), must be within its share of the call slots
//! (RESOURCE_EXHAUSTED, `CLIENT_OVERLOADED`), and the server must have a slot
//! free (RESOURCE_EXHAUSTED, `SERVER_OVERLOADED`).
//!
//! [`AdmissionLayer`] does this in front of the generated service, so that a
//! refused call costs no body buffering: the refusal is sent as a
//! trailers-only response while the client may still be sending. An admitted
//! call carries its [`Caller`] to the handler in the request's extensions,
//! so it is not authenticated twice, and holds its slots until the handler
//! is done.
//!
//! A client is the authenticated client's name, or the peer's IP address when
//! access is open. The per-client bookkeeping holds an entry only for clients
//! with a call in progress, so it is bounded by the calls in progress.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Instant;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::Status;
use tonic::server::NamedService;

use super::auth::Principal;
use super::{Access, status};
use crate::connections::ConnectionInfo;

/// How many PointsService calls may be in progress at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallLimits {
    /// Across all clients and connections (`--max-concurrent-calls`).
    pub max_concurrent_calls: usize,
    /// For any one client (`--max-concurrent-calls-per-client`); at or above
    /// `max_concurrent_calls` it no longer limits anything. A
    /// WatchTransactions stream holds one of its client's for as long as it
    /// is open.
    pub max_concurrent_calls_per_client: usize,
    /// WatchTransactions streams open at once (`--max-watch-streams`); they
    /// hold these instead of the server's call slots once they stream.
    pub max_watch_streams: usize,
}

impl CallLimits {
    /// The default of `--max-concurrent-calls`.
    pub const DEFAULT_MAX_CONCURRENT_CALLS: usize = 1024;
    /// The default of `--max-concurrent-calls-per-client`: a quarter of the
    /// default server-wide limit, so that one client, however greedy, leaves
    /// three quarters to the others.
    pub const DEFAULT_MAX_CONCURRENT_CALLS_PER_CLIENT: usize = 256;
    /// The default of `--max-watch-streams`.
    pub const DEFAULT_MAX_WATCH_STREAMS: usize = 10_000;
}

impl Default for CallLimits {
    fn default() -> Self {
        Self {
            max_concurrent_calls: Self::DEFAULT_MAX_CONCURRENT_CALLS,
            max_concurrent_calls_per_client: Self::DEFAULT_MAX_CONCURRENT_CALLS_PER_CLIENT,
            max_watch_streams: Self::DEFAULT_MAX_WATCH_STREAMS,
        }
    }
}

/// Decides, from a call's headers and connection, whether it may proceed.
#[derive(Debug)]
pub struct Admission {
    access: Access,
    limits: CallLimits,
    /// One permit per call in progress, across all connections.
    calls: Arc<Semaphore>,
    clients: Arc<ClientCalls>,
}

/// The caller of an admitted call, as the handler finds it in the request's
/// extensions.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The authenticated client; `None` when access is open.
    pub principal: Option<Arc<Principal>>,
}

/// An admitted call: its caller, and its slots, held until it is dropped.
#[derive(Debug)]
pub struct Admitted {
    /// Who is calling.
    pub caller: Caller,
    client_slot: ClientSlot,
    _server_slot: OwnedSemaphorePermit,
}

impl Admitted {
    /// The call's share of its client's slots, giving back its server slot:
    /// what a stream keeps for as long as it stays open.
    pub fn into_client_slot(self) -> ClientSlot {
        self.client_slot
    }
}

/// The slots of a call the admission layer admitted, for a streaming
/// handler to take (see [`Admitted::into_client_slot`]); otherwise they are
/// freed once the handler returns.
#[derive(Debug, Clone)]
pub struct CallSlots(Arc<Mutex<Option<Admitted>>>);

impl CallSlots {
    /// The slots, unless taken already.
    pub fn take(&self) -> Option<Admitted> {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take()
    }
}

impl Admission {
    /// Admission under `access` and `limits`.
    ///
    /// # Panics
    ///
    /// If either limit is 0 (the configuration's ranges rule that out).
    pub fn new(access: Access, limits: CallLimits) -> Self {
        assert!(
            limits.max_concurrent_calls > 0 && limits.max_concurrent_calls_per_client > 0,
            "at least one call must be allowed"
        );
        Self {
            access,
            limits,
            calls: Arc::new(Semaphore::new(limits.max_concurrent_calls)),
            clients: Arc::new(ClientCalls {
                max_per_client: limits.max_concurrent_calls_per_client,
                in_progress: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Admits a call, in this order: the caller (UNAUTHENTICATED), the
    /// caller's share (RESOURCE_EXHAUSTED, `CLIENT_OVERLOADED`), the server's
    /// limit (RESOURCE_EXHAUSTED, `SERVER_OVERLOADED`). Records the client's
    /// name in the current span. Never waits: over a limit, the call is
    /// refused at once rather than queued.
    pub fn admit(
        &self,
        headers: &http::HeaderMap,
        connection: Option<&ConnectionInfo>,
    ) -> Result<Admitted, Status> {
        let principal = self.authenticate(headers, connection)?;
        let client = match &principal {
            Some(principal) => ClientKey::Named(principal.name.clone()),
            None => connection
                .and_then(ConnectionInfo::remote_addr)
                .map_or(ClientKey::UnknownPeer, |address| ClientKey::Address(address.ip())),
        };
        let client_slot = ClientCalls::claim(&self.clients, client)?;
        let server_slot = Arc::clone(&self.calls).try_acquire_owned().map_err(|_| {
            status::resource_exhausted(
                "SERVER_OVERLOADED",
                format!(
                    "the server is already handling its maximum of {} calls; retry with backoff",
                    self.limits.max_concurrent_calls
                ),
            )
        })?;
        Ok(Admitted { caller: Caller { principal }, client_slot, _server_slot: server_slot })
    }

    /// The caller, if the service checks callers; UNAUTHENTICATED otherwise.
    fn authenticate(
        &self,
        headers: &http::HeaderMap,
        connection: Option<&ConnectionInfo>,
    ) -> Result<Option<Arc<Principal>>, Status> {
        match &self.access {
            Access::Open => Ok(None),
            Access::Tokens(credentials) => {
                // Under mutual TLS the certificate was verified in the handshake.
                let identities = connection
                    .and_then(ConnectionInfo::peer_certificates)
                    .and_then(<[_]>::first)
                    .map(|der| super::auth::certificate_identities(der))
                    .unwrap_or_default();
                // The tokens file in force now; a reload during the call
                // does not change who its caller is.
                let authenticator = credentials.current();
                let principal = authenticator
                    .authenticate_headers(headers, &identities, chrono::Utc::now())
                    .map_err(|error| status::access_refusal(&error))?;
                Ok(Some(Arc::clone(principal)))
            }
        }
    }
}

/// Who a call is counted against.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum ClientKey {
    /// An authenticated client, by name.
    Named(String),
    /// With open access: the peer's IP address.
    Address(IpAddr),
    /// With open access and no peer address known (a service called without
    /// the server's connections, as in tests): all such calls share one share.
    UnknownPeer,
}

impl std::fmt::Display for ClientKey {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientKey::Named(name) => write!(formatter, "client {name:?}"),
            ClientKey::Address(address) => write!(formatter, "the address {address}"),
            ClientKey::UnknownPeer => write!(formatter, "this caller"),
        }
    }
}

/// The calls in progress of each client that has any.
#[derive(Debug)]
struct ClientCalls {
    max_per_client: usize,
    in_progress: Mutex<HashMap<ClientKey, usize>>,
}

impl ClientCalls {
    /// One of `client`'s slots, or RESOURCE_EXHAUSTED (`CLIENT_OVERLOADED`)
    /// when it has all of its share in progress.
    fn claim(calls: &Arc<Self>, client: ClientKey) -> Result<ClientSlot, Status> {
        let mut in_progress = calls.in_progress.lock().unwrap_or_else(PoisonError::into_inner);
        let count = in_progress.entry(client.clone()).or_insert(0);
        if *count >= calls.max_per_client {
            return Err(status::resource_exhausted(
                "CLIENT_OVERLOADED",
                format!(
                    "{client} already has its maximum of {} calls in progress \
                     (--max-concurrent-calls-per-client); wait for some to finish, \
                     or retry with backoff",
                    calls.max_per_client
                ),
            ));
        }
        *count += 1;
        Ok(ClientSlot { calls: Arc::clone(calls), client })
    }

    /// How many clients have calls in progress (for tests of the bookkeeping).
    #[cfg(test)]
    fn clients(&self) -> usize {
        self.in_progress.lock().unwrap_or_else(PoisonError::into_inner).len()
    }
}

/// One call in progress of one client; its entry goes when the last one does.
#[derive(Debug)]
pub struct ClientSlot {
    calls: Arc<ClientCalls>,
    client: ClientKey,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut in_progress = self.calls.in_progress.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = in_progress.get_mut(&self.client) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                in_progress.remove(&self.client);
            }
        }
    }
}

/// Wraps a service (the generated PointsService server) in [`Admission`];
/// health and reflection are left out of it, so probes stay open.
#[derive(Debug, Clone)]
pub struct AdmissionLayer {
    admission: Arc<Admission>,
}

impl AdmissionLayer {
    /// A layer admitting calls with `admission`.
    pub fn new(admission: Arc<Admission>) -> Self {
        Self { admission }
    }
}

impl<S> tower_layer::Layer<S> for AdmissionLayer {
    type Service = Admit<S>;

    fn layer(&self, inner: S) -> Admit<S> {
        Admit { inner, admission: Arc::clone(&self.admission) }
    }
}

/// See [`AdmissionLayer`].
#[derive(Debug, Clone)]
pub struct Admit<S> {
    inner: S,
    admission: Arc<Admission>,
}

impl<S: NamedService> NamedService for Admit<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, RequestBody> tower_service::Service<http::Request<RequestBody>> for Admit<S>
where
    S: tower_service::Service<
            http::Request<RequestBody>,
            Response = http::Response<tonic::body::Body>,
            Error = Infallible,
        > + Clone,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<RequestBody>) -> Self::Future {
        let started = Instant::now();
        let method = super::method_label(request.uri().path());
        let admitted =
            self.admission.admit(request.headers(), request.extensions().get::<ConnectionInfo>());
        match admitted {
            Err(refusal) => {
                // Only a refused call has its span here: an admitted one
                // gets it from its handler, once.
                let (span, trace) = super::rpc_span(method, request.headers());
                // The body is never polled: hyper discards what the client
                // still sends and resets the stream after the reply.
                let elapsed = started.elapsed();
                super::record_outcome(method, (&span, trace), elapsed, Err(&refusal));
                Box::pin(std::future::ready(Ok(refusal.into_http())))
            }
            Ok(admitted) => {
                request.extensions_mut().insert(admitted.caller.clone());
                let slots = CallSlots(Arc::new(Mutex::new(Some(admitted))));
                request.extensions_mut().insert(slots.clone());
                // Call the instance that was polled ready; keep a fresh clone.
                let ready = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, ready);
                let response = inner.call(request);
                Box::pin(async move {
                    let response = response.await;
                    // The handler is done: free the slots even if the client
                    // is slow to read the response, unless a stream took them.
                    drop(slots.take());
                    response
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::auth::{Authenticator, Credentials, token_sha256};
    use super::*;

    /// Two clients, "a" and "b", with the tokens "a-token" and "b-token".
    fn admission(max_concurrent_calls: usize, max_concurrent_calls_per_client: usize) -> Admission {
        let text = ["a", "b"]
            .map(|name| {
                format!(
                    "[[client]]\nname = \"{name}\"\ntoken_sha256 = \"{}\"\nroles = [\"admin\"]\n",
                    token_sha256(&format!("{name}-token"))
                )
            })
            .join("\n");
        let authenticator = Authenticator::from_toml(&text).expect("valid tokens file");
        Admission::new(
            Access::Tokens(Credentials::new(authenticator)),
            CallLimits {
                max_concurrent_calls,
                max_concurrent_calls_per_client,
                max_watch_streams: CallLimits::DEFAULT_MAX_WATCH_STREAMS,
            },
        )
    }

    fn bearer(token: &str) -> http::HeaderMap {
        let mut headers = http::HeaderMap::new();
        let value = format!("Bearer {token}").parse().expect("a valid header value");
        headers.insert(http::header::AUTHORIZATION, value);
        headers
    }

    fn reason(status: &Status) -> String {
        use tonic_types::StatusExt;
        status.get_error_details().error_info().expect("an ErrorInfo").reason.clone()
    }

    /// A client past its share is refused with CLIENT_OVERLOADED while the
    /// server has room; slots come back when calls end, and a client without
    /// calls leaves no entry behind.
    #[test]
    fn a_client_past_its_share_is_refused_and_slots_come_back() {
        let admission = admission(3, 2);
        let a = bearer("a-token");
        let first = admission.admit(&a, None).expect("within the share");
        let second = admission.admit(&a, None).expect("within the share");
        let refused = admission.admit(&a, None).expect_err("past the share");
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert_eq!(reason(&refused), "CLIENT_OVERLOADED");
        assert!(refused.message().contains("client \"a\""), "{refused:?}");
        assert!(refused.message().contains("--max-concurrent-calls-per-client"), "{refused:?}");
        let other = admission.admit(&bearer("b-token"), None).expect("another client is served");
        assert_eq!(admission.clients.clients(), 2);
        drop(first);
        let third = admission.admit(&a, None).expect("a slot came back");
        drop((second, third, other));
        assert_eq!(admission.clients.clients(), 0, "no entry for a client without calls");
        assert_eq!(admission.calls.available_permits(), 3);
    }

    /// The server's own limit gives SERVER_OVERLOADED, and a refused call
    /// keeps none of its client's share.
    #[test]
    fn the_server_limit_is_server_overloaded_and_keeps_no_share() {
        let admission = admission(1, 1);
        let held = admission.admit(&bearer("a-token"), None).expect("the only slot");
        let refused = admission.admit(&bearer("b-token"), None).expect_err("the server is full");
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert_eq!(reason(&refused), "SERVER_OVERLOADED");
        assert_eq!(admission.clients.clients(), 1, "b's refused call holds no share");
        drop(held);
        admission.admit(&bearer("b-token"), None).expect("b is served once a slot is free");
    }

    /// Unknown callers are refused before any limit is looked at.
    #[test]
    fn unknown_callers_are_unauthenticated() {
        let admission = admission(1, 1);
        for headers in [http::HeaderMap::new(), bearer("nope")] {
            let refused = admission.admit(&headers, None).expect_err("unknown");
            assert_eq!(refused.code(), tonic::Code::Unauthenticated);
        }
        assert_eq!(admission.clients.clients(), 0);
        assert_eq!(admission.calls.available_permits(), 1);
    }
}
