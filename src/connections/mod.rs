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

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

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
/// one linked) and ALPN `h2`. With a client CA, a certificate that does not
/// chain to the CA fails the handshake; presenting none fails it too unless
/// the files say a token may be presented instead.
fn tls_server_config(files: &TlsFiles) -> Result<Arc<rustls::ServerConfig>, String> {
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
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider);
            let verifier = if files.client_certificate_required {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            let verifier = verifier
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

/// The server's TLS configuration in force, replaced whole when its files
/// are reloaded: each new connection's handshake uses the one in force when
/// it is accepted; connections already open keep the session they have.
#[derive(Clone)]
pub struct ServerTls(Arc<std::sync::RwLock<Arc<rustls::ServerConfig>>>);

/// A TLS configuration read and checked, not yet in force.
pub struct PreparedTls(Arc<rustls::ServerConfig>);

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("ServerTls").finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Reads and checks `files` into a configuration to put in force.
    pub fn prepare(files: &TlsFiles) -> Result<PreparedTls, String> {
        tls_server_config(files).map(PreparedTls)
    }

    /// TLS with `prepared` in force.
    pub fn new(prepared: PreparedTls) -> Self {
        Self(Arc::new(std::sync::RwLock::new(prepared.0)))
    }

    /// Puts `prepared` in force for connections accepted from now on.
    pub fn install(&self, prepared: PreparedTls) {
        *self.0.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = prepared.0;
    }

    /// An acceptor with the configuration in force.
    fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(Arc::clone(
            &self.0.read().unwrap_or_else(|poisoned| poisoned.into_inner()),
        ))
    }
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
    pub fn new(listener: TcpListener, limits: ConnectionLimits, tls: Option<ServerTls>) -> Self {
        let (sender, ready) = mpsc::channel(READY_QUEUE_LENGTH);
        let accepting = tokio::spawn(accept_loop(listener, limits, tls, sender));
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
    tls: Option<ServerTls>,
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
            Some(tls) => {
                let acceptor = tls.acceptor();
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

mod calls;
mod connection;

pub use calls::CallActivityLayer;
use calls::CallTracker;
use connection::{Accepted, Transport};
pub use connection::{Connection, ConnectionInfo};
