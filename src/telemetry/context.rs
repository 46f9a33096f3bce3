//! The W3C trace context (`traceparent`, `tracestate`) of incoming calls.

use http::HeaderMap;
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TraceId};
use opentelemetry_sdk::propagation::TraceContextPropagator;

/// A call's headers (its metadata), read by the propagator.
struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// The caller's trace context and its trace id, if the call came with a
/// valid `traceparent`; a missing or malformed one starts no trace of the
/// caller's (the call is served the same).
pub fn incoming(headers: &HeaderMap) -> Option<(opentelemetry::Context, TraceId)> {
    // Most calls carry none: no parsing for them.
    if !headers.contains_key("traceparent") {
        return None;
    }
    let context = TraceContextPropagator::new().extract(&Headers(headers));
    let span_context = context.span().span_context().clone();
    span_context.is_valid().then(|| (context, span_context.trace_id()))
}
