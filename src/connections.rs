//! The server's side of TCP and TLS. Connections are accepted here rather than
//! by tonic, so that each one has a bounded cost whatever the client does:
//!
//! - **A connection limit.** At most [`ConnectionLimits::max_connections`] are
//!   open at once (handshakes included). One more is closed as soon as it is
//!   accepted and counted in `points_connections_refused_total`, so that
//!   clients which connect and never speak cannot use up the process's file
//!   descriptors and lock everybody out. `points_connections_open` is the
//!   gauge of open connections.
//! - **A handshake deadline.** From accept, a client has
//!   [`ConnectionLimits::handshake_timeout`] to finish the TLS handshake (when
//!   serving TLS) and send the 24-byte HTTP/2 client preface; otherwise the
//!   connection is closed. TLS handshakes run concurrently, each in its own
//!   task, so a slow one never delays accepting others.
//! - **An idle timeout.** A connection with no call in progress for
//!   [`ConnectionLimits::idle_timeout`] is closed. Only calls count as
//!   activity: HTTP/2 keepalive pings (or any other frames) do not, so a
//!   client cannot hold a connection forever by answering pings. A call is in
//!   progress from the moment its request headers arrive until its response
//!   has been sent or abandoned ([`CallActivityLayer`] keeps the count).
//! - **`TCP_NODELAY`** on every accepted socket: tonic's
//!   `Server::tcp_nodelay` only applies to listeners tonic binds itself, and
//!   gRPC's small frames must not wait for Nagle's algorithm.
//!
//! Both timeouts are counted in `points_connections_timed_out_total`, labelled
//! `timeout="handshake"` or `timeout="idle"`.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{Instant, Sleep};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tonic::transport::server::Connected;

use crate::server::TlsFiles;

/// Every HTTP/2 connection starts with this many bytes from the client:
/// `PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`.
const HTTP2_CLIENT_PREFACE_BYTES: usize = 24;

/// How long to pause accepting after `accept` fails for lack of file
/// descriptors or memory, so that the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// The shortest interval between two warnings of the same kind in the log.
const WARNING_INTERVAL: Duration = Duration::from_secs(10);

/// Accepted connections waiting for tonic to pick them up.
const READY_QUEUE_LENGTH: usize = 256;

/// The limits every connection is held to.
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    /// Most connections open at once, counting those still in their handshake.
    pub max_connections: usize,
    /// From accept, how long a client has to finish the TLS handshake and send
    /// the HTTP/2 client preface.
    pub handshake_timeout: Duration,
    /// How long a connection may go without a call in progress before it is
    /// closed.
    pub idle_timeout: Duration,
}

impl ConnectionLimits {
    /// The default of `--max-connections`.
    pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
    /// The default of `--handshake-timeout-ms`.
    pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
    /// The default of `--idle-connection-timeout-ms`: five minutes, long enough
    /// for a client pool's quiet spells, short enough that abandoned
    /// connections do not pile up.
    pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            max_connections: Self::DEFAULT_MAX_CONNECTIONS,
            handshake_timeout: Self::DEFAULT_HANDSHAKE_TIMEOUT,
            idle_timeout: Self::DEFAULT_IDLE_TIMEOUT,
        }
    }
}

/// A rustls server configuration for `files`, with the ring provider (the only
/// one linked) and ALPN `h2`. With a client CA, client certificates are
/// optional (a client may use a token instead) but one that does not chain to
/// the CA fails the handshake.
pub fn tls_server_config(files: &TlsFiles) -> Result<Arc<rustls::ServerConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certificates = CertificateDer::pem_slice_iter(&files.certificate_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| format!("the TLS certificate is not valid PEM: {error}"))?;
    if certificates.is_empty() {
        return Err("the TLS certificate file holds no certificate".to_owned());
    }
    let key = PrivateKeyDer::from_pem_slice(&files.key_pem)
        .map_err(|error| format!("the TLS key is not a valid PEM private key: {error}"))?;
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|error| format!("cannot configure TLS: {error}"))?;
    let builder = match &files.client_ca_pem {
        None => builder.with_no_client_auth(),
        Some(client_ca_pem) => {
            let mut roots = rustls::RootCertStore::empty();
            for certificate in CertificateDer::pem_slice_iter(client_ca_pem) {
                let certificate = certificate
                    .map_err(|error| format!("the TLS client CA is not valid PEM: {error}"))?;
                roots
                    .add(certificate)
                    .map_err(|error| format!("the TLS client CA is not usable: {error}"))?;
            }
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .allow_unauthenticated()
                    .build()
                    .map_err(|error| format!("the TLS client CA is not usable: {error}"))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(certificates, key)
        .map_err(|error| format!("the TLS certificate and key do not fit together: {error}"))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// The connections accepted on a listener, ready for HTTP/2, as tonic's
/// `serve_with_incoming*` wants them. Accepting goes on in a task of its own;
/// dropping this stream (tonic does when shutdown begins) stops it, closes
/// the listener and abandons handshakes in progress.
pub struct Incoming {
    ready: mpsc::Receiver<Connection>,
    accepting: JoinHandle<()>,
}

impl Incoming {
    /// Starts accepting on `listener` under `limits`, with TLS when `tls` is
    /// given. Must be called inside the tokio runtime.
    pub fn new(
        listener: TcpListener,
        limits: ConnectionLimits,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> Self {
        let (sender, ready) = mpsc::channel(READY_QUEUE_LENGTH);
        let accepting =
            tokio::spawn(accept_loop(listener, limits, tls.map(TlsAcceptor::from), sender));
        Self { ready, accepting }
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

impl tokio_stream::Stream for Incoming {
    type Item = Result<Connection, std::convert::Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.ready.poll_recv(cx).map(|connection| connection.map(Ok))
    }
}

/// Accepts connections until the stream is dropped: refuses those beyond the
/// limit, runs TLS handshakes concurrently under the handshake deadline, and
/// hands the others on.
async fn accept_loop(
    listener: TcpListener,
    limits: ConnectionLimits,
    tls: Option<TlsAcceptor>,
    ready: mpsc::Sender<Connection>,
) {
    let open = Arc::new(AtomicUsize::new(0));
    let mut handshakes = JoinSet::new();
    let mut limit_warning = Warning::default();
    let mut accept_warning = Warning::default();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            Some(_) = handshakes.join_next(), if !handshakes.is_empty() => continue,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) if is_peer_error(&error) => continue,
            Err(error) => {
                // Out of file descriptors (EMFILE, ENFILE) or memory: the
                // pending connection stays in the backlog; try again shortly.
                if accept_warning.due() {
                    tracing::warn!(%error, "cannot accept connections; retrying");
                }
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let Some(slot) = OpenSlot::claim(&open, limits.max_connections) else {
            metrics::counter!("points_connections_refused_total").increment(1);
            if limit_warning.due() {
                tracing::warn!(
                    max_connections = limits.max_connections,
                    "connection limit reached: closing new connections at once \
                     (counted in points_connections_refused_total)"
                );
            }
            drop(stream);
            continue;
        };
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, %peer, "cannot set TCP_NODELAY");
        }
        let deadline = Instant::now() + limits.handshake_timeout;
        let accepted = Accepted { slot, peer, deadline, idle_timeout: limits.idle_timeout };
        match &tls {
            None => {
                let connection = Connection::new(Transport::Plain(stream), accepted, None);
                if ready.send(connection).await.is_err() {
                    return;
                }
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                let ready = ready.clone();
                handshakes.spawn(async move {
                    match tokio::time::timeout_at(deadline, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            let certificates = stream
                                .get_ref()
                                .1
                                .peer_certificates()
                                .map(|certificates| Arc::new(certificates.to_vec()));
                            let transport = Transport::Tls(Box::new(stream));
                            // Nothing to do if the server is shutting down.
                            let _ = ready
                                .send(Connection::new(transport, accepted, certificates))
                                .await;
                        }
                        Ok(Err(error)) => {
                            tracing::debug!(%error, %peer, "TLS handshake failed");
                        }
                        Err(_) => {
                            metrics::counter!(
                                "points_connections_timed_out_total",
                                "timeout" => "handshake"
                            )
                            .increment(1);
                            tracing::debug!(%peer, "TLS handshake not finished in time: closed");
                        }
                    }
                });
            }
        }
    }
}

/// Whether an accept error concerns only the connection being accepted (the
/// client gave up), not the listener.
fn is_peer_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

/// A warning logged at most once per [`WARNING_INTERVAL`], so that a flood
/// cannot flood the log too.
#[derive(Default)]
struct Warning {
    last: Option<std::time::Instant>,
}

impl Warning {
    /// Whether to log now; if so, the next one waits.
    fn due(&mut self) -> bool {
        let now = std::time::Instant::now();
        if self.last.is_some_and(|last| now.duration_since(last) < WARNING_INTERVAL) {
            return false;
        }
        self.last = Some(now);
        true
    }
}

/// One of the `max_connections` places, held by a connection from accept
/// until it is dropped.
struct OpenSlot {
    open: Arc<AtomicUsize>,
}

impl OpenSlot {
    /// A place, or `None` when `max` connections are open.
    fn claim(open: &Arc<AtomicUsize>, max: usize) -> Option<Self> {
        open.fetch_update(Ordering::AcqRel, Ordering::Acquire, |count| {
            (count < max).then_some(count + 1)
        })
        .ok()?;
        metrics::gauge!("points_connections_open").increment(1.0);
        Some(Self { open: Arc::clone(open) })
    }
}

impl Drop for OpenSlot {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
        metrics::gauge!("points_connections_open").decrement(1.0);
    }
}

/// What a connection carries over from accept.
struct Accepted {
    slot: OpenSlot,
    peer: SocketAddr,
    /// When the handshake deadline passes.
    deadline: Instant,
    idle_timeout: Duration,
}

/// The byte stream under HTTP/2.
enum Transport {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// One accepted connection: its byte stream, held to the handshake deadline
/// until the HTTP/2 client preface has arrived and to the idle timeout after,
/// and its place under the connection limit.
pub struct Connection {
    transport: Transport,
    info: ConnectionInfo,
    /// Until the client preface has been read.
    handshake_deadline: Option<Pin<Box<Sleep>>>,
    preface_bytes_left: usize,
    idle_timeout: Duration,
    /// When to look again whether the connection has been idle too long.
    idle_check: Pin<Box<Sleep>>,
    _slot: OpenSlot,
}

impl Connection {
    fn new(
        transport: Transport,
        accepted: Accepted,
        peer_certificates: Option<Arc<Vec<CertificateDer<'static>>>>,
    ) -> Self {
        let calls = Arc::new(CallTracker::new());
        let idle_check = Box::pin(tokio::time::sleep(accepted.idle_timeout));
        Self {
            transport,
            info: ConnectionInfo { remote_addr: Some(accepted.peer), peer_certificates, calls },
            handshake_deadline: Some(Box::pin(tokio::time::sleep_until(accepted.deadline))),
            preface_bytes_left: HTTP2_CLIENT_PREFACE_BYTES,
            idle_timeout: accepted.idle_timeout,
            idle_check,
            _slot: accepted.slot,
        }
    }

    /// Whether the connection has had no call in progress for the idle
    /// timeout. Registers the waker for the next check otherwise.
    fn idle_too_long(&mut self, cx: &mut Context<'_>) -> bool {
        while self.idle_check.as_mut().poll(cx).is_ready() {
            let now = Instant::now();
            let next_check = match self.info.calls.idle_since() {
                None => now + self.idle_timeout,
                Some(since) => {
                    let deadline = since + self.idle_timeout;
                    if deadline <= now {
                        return true;
                    }
                    deadline
                }
            };
            self.idle_check.as_mut().reset(next_check);
        }
        false
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // HTTP/2 keeps a read pending on its connection at all times, so the
        // timers registered here wake it when they expire.
        if let Some(deadline) = &mut this.handshake_deadline
            && deadline.as_mut().poll(cx).is_ready()
        {
            metrics::counter!("points_connections_timed_out_total", "timeout" => "handshake")
                .increment(1);
            tracing::debug!(peer = ?this.info.remote_addr, "no HTTP/2 preface in time: closed");
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client did not send the HTTP/2 preface within the handshake timeout",
            )));
        }
        if this.idle_too_long(cx) {
            metrics::counter!("points_connections_timed_out_total", "timeout" => "idle")
                .increment(1);
            tracing::debug!(peer = ?this.info.remote_addr, "idle connection closed");
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no call on this connection within the idle-connection timeout",
            )));
        }
        let filled_before = buf.filled().len();
        let polled = match &mut this.transport {
            Transport::Plain(stream) => Pin::new(stream).poll_read(cx, buf),
            Transport::Tls(stream) => Pin::new(stream.as_mut()).poll_read(cx, buf),
        };
        if this.handshake_deadline.is_some() && matches!(polled, Poll::Ready(Ok(()))) {
            let read = buf.filled().len() - filled_before;
            this.preface_bytes_left = this.preface_bytes_left.saturating_sub(read);
            if this.preface_bytes_left == 0 {
                this.handshake_deadline = None;
            }
        }
        polled
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().transport {
            Transport::Plain(stream) => Pin::new(stream).poll_write(cx, buf),
            Transport::Tls(stream) => Pin::new(stream.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().transport {
            Transport::Plain(stream) => Pin::new(stream).poll_write_vectored(cx, bufs),
            Transport::Tls(stream) => Pin::new(stream.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.transport {
            Transport::Plain(stream) => stream.is_write_vectored(),
            Transport::Tls(stream) => stream.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().transport {
            Transport::Plain(stream) => Pin::new(stream).poll_flush(cx),
            Transport::Tls(stream) => Pin::new(stream.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().transport {
            Transport::Plain(stream) => Pin::new(stream).poll_shutdown(cx),
            Transport::Tls(stream) => Pin::new(stream.as_mut()).poll_shutdown(cx),
        }
    }
}

impl Connected for Connection {
    type ConnectInfo = ConnectionInfo;

    fn connect_info(&self) -> ConnectionInfo {
        self.info.clone()
    }
}

/// What the server knows about the connection a call came on; tonic puts it
/// in each request's extensions.
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    remote_addr: Option<SocketAddr>,
    peer_certificates: Option<Arc<Vec<CertificateDer<'static>>>>,
    calls: Arc<CallTracker>,
}

impl ConnectionInfo {
    /// The client's address.
    pub fn remote_addr(&self) -> Option<SocketAddr> {
        self.remote_addr
    }

    /// The certificate chain the client presented in the TLS handshake,
    /// verified against the client CA, leaf first; `None` without TLS or
    /// without a client certificate.
    pub fn peer_certificates(&self) -> Option<&[CertificateDer<'static>]> {
        self.peer_certificates.as_deref().map(Vec::as_slice)
    }

    /// Counts a call in progress on this connection until the guard drops.
    fn call_started(&self) -> CallInProgress {
        let mut state = self.calls.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.in_progress += 1;
        CallInProgress { calls: Arc::clone(&self.calls) }
    }
}

/// The calls in progress on one connection, and since when it has had none.
#[derive(Debug)]
struct CallTracker {
    state: Mutex<CallState>,
}

#[derive(Debug)]
struct CallState {
    in_progress: usize,
    /// When the last call ended (or the connection was accepted).
    idle_since: Instant,
}

impl CallTracker {
    fn new() -> Self {
        Self { state: Mutex::new(CallState { in_progress: 0, idle_since: Instant::now() }) }
    }

    /// Since when no call has been in progress; `None` while one is.
    fn idle_since(&self) -> Option<Instant> {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        (state.in_progress == 0).then_some(state.idle_since)
    }
}

/// One call in progress on a connection.
struct CallInProgress {
    calls: Arc<CallTracker>,
}

impl Drop for CallInProgress {
    fn drop(&mut self) {
        let mut state = self.calls.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.in_progress = state.in_progress.saturating_sub(1);
        if state.in_progress == 0 {
            state.idle_since = Instant::now();
        }
    }
}

/// A tower layer over every service of the server that counts each call as
/// in progress on its connection, from its request headers until its
/// response is sent or abandoned, for the idle timeout.
#[derive(Debug, Clone, Copy, Default)]
pub struct CallActivityLayer;

impl<S> tower_layer::Layer<S> for CallActivityLayer {
    type Service = CallActivity<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CallActivity { inner }
    }
}

/// See [`CallActivityLayer`].
#[derive(Debug, Clone)]
pub struct CallActivity<S> {
    inner: S,
}

impl<S, RequestBody> tower_service::Service<http::Request<RequestBody>> for CallActivity<S>
where
    S: tower_service::Service<
            http::Request<RequestBody>,
            Response = http::Response<tonic::body::Body>,
        >,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<RequestBody>) -> Self::Future {
        let call = request.extensions().get::<ConnectionInfo>().map(ConnectionInfo::call_started);
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|body| tonic::body::Body::new(TrackedBody { body, call })))
        })
    }
}

/// A response body that ends its call's count when it has been sent (or is
/// dropped unsent).
struct TrackedBody {
    body: tonic::body::Body,
    call: Option<CallInProgress>,
}

impl http_body::Body for TrackedBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, tonic::Status>>> {
        let this = self.get_mut();
        let frame = Pin::new(&mut this.body).poll_frame(cx);
        if matches!(frame, Poll::Ready(None)) {
            this.call = None;
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}
