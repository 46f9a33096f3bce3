//! Sending finished spans to an OTLP collector without ever slowing a call
//! or growing memory without bound.
//!
//! A finished span is handed to a bounded queue with `try_send`: a call
//! never waits for the collector. One task on the runtime takes up to
//! [`MAX_SPANS_PER_EXPORT`] spans at a time from it and exports them, giving
//! up on an export after [`EXPORT_TIMEOUT`]. Spans that find the queue full
//! (a slow or absent collector), and those of an export that failed, are
//! dropped and counted in `points_trace_spans_dropped_total`.
//!
//! The SDK's own batch processor drops spans the same way but only says so
//! in a log line, once; this one counts every span it drops, which is what
//! an operator needs to see that traces are incomplete.

use std::time::Duration;

use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SpanData, SpanExporter, SpanProcessor};
use tokio::sync::mpsc;

/// Finished spans waiting to be exported, at most; more are dropped.
pub(crate) const MAX_QUEUED_SPANS: usize = 4_096;

/// Spans sent in one export, at most.
pub(crate) const MAX_SPANS_PER_EXPORT: usize = 512;

/// How long one export may take before its spans are given up.
pub(crate) const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the task waits for more spans after the first of a batch, so
/// that a trickle of calls is sent in batches rather than one by one.
const BATCH_DELAY: Duration = Duration::from_millis(200);

/// The span processor: see the module documentation. Dropping it (with its
/// tracer provider) ends the export task once the queue is empty.
#[derive(Debug)]
pub(crate) struct BoundedExport {
    queue: mpsc::Sender<SpanData>,
}

impl BoundedExport {
    /// Starts exporting through `exporter` on the current Tokio runtime.
    pub(crate) fn start<E: SpanExporter + 'static>(exporter: E) -> Self {
        let (sender, receiver) = mpsc::channel(MAX_QUEUED_SPANS);
        tokio::spawn(export_all(exporter, receiver));
        Self { queue: sender }
    }
}

/// Spans are counted as dropped in one place.
fn dropped(spans: usize) {
    metrics::counter!("points_trace_spans_dropped_total").increment(spans as u64);
}

/// Exports what arrives on `queue` until every sender is gone.
async fn export_all<E: SpanExporter>(exporter: E, mut queue: mpsc::Receiver<SpanData>) {
    let mut batch = Vec::with_capacity(MAX_SPANS_PER_EXPORT);
    loop {
        if queue.recv_many(&mut batch, MAX_SPANS_PER_EXPORT).await == 0 {
            break;
        }
        if batch.len() < MAX_SPANS_PER_EXPORT {
            tokio::time::sleep(BATCH_DELAY).await;
            // Bounded: at most a batch's worth.
            while batch.len() < MAX_SPANS_PER_EXPORT
                && let Ok(span) = queue.try_recv()
            {
                batch.push(span);
            }
        }
        debug_assert!(batch.len() <= MAX_SPANS_PER_EXPORT);
        let spans = batch.len();
        let sent = std::mem::replace(&mut batch, Vec::with_capacity(MAX_SPANS_PER_EXPORT));
        match tokio::time::timeout(EXPORT_TIMEOUT, exporter.export(sent)).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                dropped(spans);
                tracing::debug!(%error, spans, "cannot export spans");
            }
            Err(_) => {
                dropped(spans);
                tracing::debug!(spans, "exporting spans timed out");
            }
        }
    }
}

impl SpanProcessor for BoundedExport {
    fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &opentelemetry::Context) {}

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        if self.queue.try_send(span).is_err() {
            dropped(1);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        // The task sends what is queued and ends once the processor is
        // dropped with its provider; nothing to wait for here.
        Ok(())
    }
}
