//! Call activity: which connections have calls in progress, so that the
//! idle timeout counts only the time with none.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::time::Instant;

use super::*;

/// The calls in progress on one connection, and since when it has had none.
#[derive(Debug)]
pub(super) struct CallTracker {
    pub(super) state: Mutex<CallState>,
}

#[derive(Debug)]
pub(super) struct CallState {
    pub(super) in_progress: usize,
    /// When the last call ended (or the connection was accepted).
    pub(super) idle_since: Instant,
}

impl CallTracker {
    pub(super) fn new() -> Self {
        Self { state: Mutex::new(CallState { in_progress: 0, idle_since: Instant::now() }) }
    }

    /// Since when no call has been in progress; `None` while one is.
    pub(super) fn idle_since(&self) -> Option<Instant> {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        (state.in_progress == 0).then_some(state.idle_since)
    }
}

/// One call in progress on a connection.
pub(super) struct CallInProgress {
    pub(super) calls: Arc<CallTracker>,
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
pub(super) struct TrackedBody {
    pub(super) body: tonic::body::Body,
    pub(super) call: Option<CallInProgress>,
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
