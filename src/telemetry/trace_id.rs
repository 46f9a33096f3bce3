//! The trace id in every log line written inside a traced call, so that
//! logs and traces join: the call's own lines name it in their fields; any
//! other line (a storage warning, say) gets it from the call's trace
//! context, current while the call runs.

use std::fmt;

use opentelemetry::trace::{TraceContextExt as _, TraceId};
use tracing_subscriber::fmt::FmtContext;
use tracing_subscriber::fmt::format::{FormatEvent, FormatFields, Writer};
use tracing_subscriber::registry::LookupSpan;

/// An event format that adds `trace_id` to lines written inside a traced
/// call that do not already name it; others are written as `inner` writes
/// them.
#[derive(Debug)]
pub(super) struct WithTraceId<F> {
    /// The format of the line itself.
    pub(super) inner: F,
    /// Whether `inner` writes a JSON object per line (the id becomes one of
    /// its fields) rather than text (the id ends the line).
    pub(super) json: bool,
}

/// The id of the trace of the call in progress on this thread, if any.
fn current_trace_id() -> Option<TraceId> {
    opentelemetry::Context::map_current(|context| {
        let span_context = context.span().span_context().clone();
        span_context.is_valid().then(|| span_context.trace_id())
    })
}

impl<S, N, F> FormatEvent<S, N> for WithTraceId<F>
where
    S: tracing::Subscriber + for<'lookup> LookupSpan<'lookup>,
    N: for<'writer> FormatFields<'writer> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        context: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> fmt::Result {
        // Outside a traced call, or on a line that names the trace already
        // (the call's own lines, in its log span or with the field), the
        // line is written as it is.
        let named = || {
            event.fields().any(|field| field.name() == "trace_id")
                || context.event_scope().is_some_and(|mut scope| {
                    scope.any(|span| span.fields().field("trace_id").is_some())
                })
        };
        let Some(trace_id) = current_trace_id().filter(|_| !named()) else {
            return self.inner.format_event(context, writer, event);
        };
        let mut line = String::new();
        self.inner.format_event(context, Writer::new(&mut line), event)?;
        let body = line.strip_suffix('\n').unwrap_or(&line);
        match body.strip_suffix('}') {
            Some(object) if self.json => writeln!(writer, "{object},\"trace_id\":\"{trace_id}\"}}"),
            _ => writeln!(writer, "{body} trace_id={trace_id}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::{Arc, Mutex};

    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState,
    };
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;

    use super::WithTraceId;

    /// What the log layer wrote.
    #[derive(Clone, Default)]
    struct Written(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Written {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0.lock().expect("the buffer").extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

    /// The lines logged by `log`, with a traced call's context current for
    /// the first of them only, in `json` or text.
    fn lines(json: bool) -> Vec<String> {
        let written = Written::default();
        let sink = written.clone();
        let layer = tracing_subscriber::fmt::layer().with_writer(move || sink.clone());
        let layer = if json {
            layer
                .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
                .event_format(WithTraceId {
                    inner: tracing_subscriber::fmt::format().json(),
                    json: true,
                })
                .boxed()
        } else {
            layer
                .event_format(WithTraceId {
                    inner: tracing_subscriber::fmt::format().with_ansi(false),
                    json: false,
                })
                .boxed()
        };
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            let span_context = SpanContext::new(
                TraceId::from_hex(TRACE_ID).expect("a trace id"),
                SpanId::from_hex("00f067aa0ba902b7").expect("a span id"),
                TraceFlags::SAMPLED,
                true,
                TraceState::default(),
            );
            let context = opentelemetry::Context::new().with_remote_span_context(span_context);
            {
                let _call = context.attach();
                tracing::warn!(user = "alice", "inside a call");
                tracing::warn!(trace_id = "given", "names its own");
            }
            tracing::warn!("outside any call");
        });
        let bytes = written.0.lock().expect("the buffer").clone();
        String::from_utf8(bytes).expect("utf-8").lines().map(str::to_owned).collect()
    }

    #[test]
    fn a_text_line_inside_a_call_ends_with_its_trace_id() {
        let lines = lines(false);
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert!(lines[0].contains("inside a call"), "{lines:?}");
        assert!(lines[0].ends_with(&format!(" trace_id={TRACE_ID}")), "{lines:?}");
        assert!(!lines[1].contains(TRACE_ID), "named once: {lines:?}");
        assert!(!lines[2].contains("trace_id="), "{lines:?}");
    }

    #[test]
    fn a_json_line_inside_a_call_has_its_trace_id_as_a_field() {
        let lines = lines(true);
        assert_eq!(lines.len(), 3, "{lines:?}");
        let parsed: Vec<serde_json::Value> = lines
            .iter()
            .map(|line| serde_json::from_str(line).expect("one JSON object per line"))
            .collect();
        assert_eq!(parsed[0]["trace_id"], TRACE_ID, "{lines:?}");
        assert_eq!(parsed[0]["fields"]["user"], "alice", "{lines:?}");
        assert_eq!(parsed[1]["fields"]["trace_id"], "given", "{lines:?}");
        assert!(parsed[1].get("trace_id").is_none(), "{lines:?}");
        assert!(parsed[2].get("trace_id").is_none(), "{lines:?}");
    }
}
