//! One accepted connection: its byte stream under the handshake deadline
//! and the idle timeout, and what the server knows about it.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use tokio_rustls::rustls::pki_types::CertificateDer;
use tonic::transport::server::Connected;

use super::calls::CallInProgress;
use super::*;

/// What a connection carries over from accept.
pub(super) struct Accepted {
    pub(super) slot: OpenSlot,
    pub(super) peer: SocketAddr,
    /// When the handshake deadline passes.
    pub(super) deadline: Instant,
    pub(super) idle_timeout: Duration,
}

/// The byte stream under HTTP/2.
pub(super) enum Transport {
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
    pub(super) fn new(
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
    pub(super) fn idle_too_long(&mut self, cx: &mut Context<'_>) -> bool {
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
    pub(super) fn call_started(&self) -> CallInProgress {
        let mut state = self.calls.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.in_progress += 1;
        CallInProgress { calls: Arc::clone(&self.calls) }
    }
}
