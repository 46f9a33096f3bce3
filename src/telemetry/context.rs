//! The W3C trace context (`traceparent`, `tracestate`) of incoming calls.

use http::HeaderMap;
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;

/// A call's headers (its metadata), read by the propagator.
struct Headers<'a>(&'a HeaderMap);

/// The longest `tracestate` kept; a longer one is dropped (W3C lets a
/// receiver drop it), so that a caller cannot make every span of its trace
/// carry kilobytes.
const MAX_TRACESTATE_BYTES: usize = 512;

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        let value = self.0.get(key).and_then(|value| value.to_str().ok())?;
        match key {
            "tracestate" if value.len() > MAX_TRACESTATE_BYTES => None,
            _ => Some(value),
        }
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// The caller's trace context, if the call came with a valid
/// `traceparent`; a missing or malformed one starts no trace of the
/// caller's (the call is served the same).
pub fn incoming(headers: &HeaderMap) -> Option<opentelemetry::Context> {
    // Most calls carry none: no parsing for them. More than one, or one
    // that is not exactly version 00's form, is ignored, as W3C asks (the
    // propagator alone would take `00-1-1-01`).
    let mut traceparents = headers.get_all("traceparent").iter();
    let (Some(traceparent), None) = (traceparents.next(), traceparents.next()) else {
        return None;
    };
    if !is_version_00(traceparent.as_bytes()) {
        return None;
    }
    let context = TraceContextPropagator::new().extract(&Headers(headers));
    context.span().span_context().is_valid().then_some(context)
}

/// Whether `traceparent` is `00-` 32 hex digits `-` 16 hex digits `-` 2 hex
/// digits, lowercase (W3C trace context, version 00).
fn is_version_00(traceparent: &[u8]) -> bool {
    const LENGTH: usize = 55;
    const DASHES: [usize; 3] = [2, 35, 52];
    traceparent.len() == LENGTH
        && traceparent.starts_with(b"00-")
        && traceparent.iter().enumerate().all(|(index, &byte)| {
            if DASHES.contains(&index) {
                byte == b'-'
            } else {
                byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte)
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(traceparents: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for traceparent in traceparents {
            headers.append("traceparent", traceparent.parse().expect("ascii"));
        }
        headers
    }

    /// Only one well-formed version-00 `traceparent` names a parent.
    #[test]
    fn only_a_well_formed_traceparent_names_a_parent() {
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let parent = incoming(&headers(&[good])).expect("a parent");
        let trace_id = parent.span().span_context().trace_id();
        assert_eq!(trace_id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        for bad in [
            "00-1-1-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00+4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "",
        ] {
            assert!(incoming(&headers(&[bad])).is_none(), "{bad:?} names a parent");
        }
        assert!(incoming(&headers(&[good, good])).is_none(), "two traceparents");
        assert!(incoming(&HeaderMap::new()).is_none());
    }
}
