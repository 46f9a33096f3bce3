//! The trace of one call: its span, made with the OpenTelemetry SDK when
//! spans are exported, as a child of the caller's span when the call came
//! with a W3C trace context.
//!
//! A call's own span is made with the SDK directly, not through a tracing
//! span and tracing-opentelemetry: its attributes are known up front (and
//! mostly `'static`), so the SDK span costs about half as much per call, and
//! exporting is the one thing that makes it. The storage work inside the
//! call is traced with tracing spans ([`call_child_span!`](super::call_child_span)),
//! which tracing-opentelemetry exports as children of the call's span: the
//! call's OpenTelemetry context is current whenever its future is polled.

use std::future::Future;
use std::sync::OnceLock;

use opentelemetry::KeyValue;
use opentelemetry::context::FutureExt as _;
use opentelemetry::trace::{SpanKind, Status, TraceContextExt as _, TraceId, Tracer as _};
use opentelemetry_sdk::trace::SdkTracer;

/// The tracer of exported spans; set once, when exporting starts.
static TRACER: OnceLock<SdkTracer> = OnceLock::new();

/// Makes calls' spans with `tracer` from now on (the first one given stays).
pub(super) fn export_with(tracer: SdkTracer) {
    // Set once per process, by the one `init` that succeeds.
    let _ = TRACER.set(tracer);
}

/// The gRPC service every call's span names (`rpc.service`).
const RPC_SERVICE: &str = "points.v1.PointsService";

/// The attributes of a call's span: `rpc.system`, `rpc.service` and
/// `method` from the start, `client` and `user` once known, and `code`.
const CALL_ATTRIBUTES: usize = 6;

/// The trace of one call in progress: see the module documentation.
#[derive(Debug)]
pub struct CallTrace {
    /// The call's exported span, in its context; when spans are not
    /// exported, the caller's trace context, for log lines to name it;
    /// `None` when there is neither.
    context: Option<opentelemetry::Context>,
}

impl CallTrace {
    /// Starts the trace of a call to `method` with these `headers`: a child
    /// of the caller's span if they carry a valid `traceparent`.
    pub fn start(method: &'static str, headers: &http::HeaderMap) -> Self {
        let incoming = super::context::incoming(headers);
        let Some(tracer) = TRACER.get() else {
            return Self { context: incoming };
        };
        let parent = incoming.unwrap_or_default();
        // Room for those recorded later (`client`, `user`, `code`), so that
        // recording them does not reallocate.
        let mut attributes = Vec::with_capacity(CALL_ATTRIBUTES);
        attributes.extend([
            KeyValue::new("rpc.system", "grpc"),
            KeyValue::new("rpc.service", RPC_SERVICE),
            KeyValue::new("method", method),
        ]);
        let span = tracer
            .span_builder(method)
            .with_kind(SpanKind::Server)
            .with_attributes(attributes)
            .start_with_context(tracer, &parent);
        Self { context: Some(parent.with_span(span)) }
    }

    /// The id of the trace the call is part of (the caller's, or the one
    /// its exported span starts), if any: for its log lines.
    pub fn trace_id(&self) -> Option<TraceId> {
        self.context.as_ref().map(|context| context.span().span_context().trace_id())
    }

    /// Runs `call` with this trace current, so that the storage spans made
    /// inside it become children of the call's span, and its log lines
    /// name the trace.
    pub async fn run<F: Future>(&self, call: F) -> F::Output {
        match &self.context {
            Some(context) => call.with_context(context.clone()).await,
            None => call.await,
        }
    }

    /// Ends the call's span with its outcome: `code` (a gRPC code's name),
    /// and an error status when the server itself `failed`.
    pub fn finish(mut self, code: &'static str, failed: bool) {
        self.end(code, failed);
    }

    /// Ends the span, once: later calls find it gone.
    fn end(&mut self, code: &'static str, failed: bool) {
        let Some(context) = self.context.take() else {
            return;
        };
        let span = context.span();
        span.set_attribute(KeyValue::new("code", code));
        if failed {
            span.set_status(Status::error(code));
        }
        span.end();
    }
}

impl Drop for CallTrace {
    /// A call dropped before it finished was cancelled (its client went
    /// away, or its deadline passed): its span ends so, not without a code.
    fn drop(&mut self) {
        self.end("CANCELLED", false);
    }
}

/// Whether a call's trace is current and sampled: storage spans are made
/// only then (see [`call_child_span!`](super::call_child_span)).
pub fn in_sampled_call() -> bool {
    TRACER.get().is_some()
        && opentelemetry::Context::map_current(|context| {
            context.has_active_span() && context.span().span_context().is_sampled()
        })
}

/// Records `key` = `value` on the span of the call in progress, if it is
/// exported: the client's name and the user, learnt after the call began.
pub fn record_on_call(key: &'static str, value: &str) {
    if TRACER.get().is_none() {
        return;
    }
    opentelemetry::Context::map_current(|context| {
        let span = context.span();
        if span.is_recording() {
            span.set_attribute(KeyValue::new(key, value.to_owned()));
        }
    });
}
