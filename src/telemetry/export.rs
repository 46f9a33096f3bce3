//! Sending finished spans to an OTLP collector without ever slowing a call
//! or growing memory without bound.
//!
//! A finished span is handed to a bounded queue with `try_send`: a call
//! never waits for the collector. One thread of its own takes up to
//! [`MAX_SPANS_PER_EXPORT`] spans at a time from it and exports them, up to
//! [`MAX_EXPORTS_IN_FLIGHT`] batches at once, giving up on an export after
//! [`EXPORT_TIMEOUT`]. Spans that find the queue full (a slow or absent
//! collector), those of an export that failed, those the collector answers
//! it rejected, and those taken within [`RETRY_INTERVAL`] of a failure (not
//! even encoded) are dropped and counted in
//! `points_trace_spans_dropped_total`.
//!
//! The SDK's own batch processor drops spans the same way but only says so
//! in a log line, once; this one counts every span it drops, which is what
//! an operator needs to see that traces are incomplete.
//!
//! Spans are encoded straight from the SDK's span data ([`otlp`](super::otlp))
//! and sent with tonic, rather than through opentelemetry-otlp's exporter,
//! which deep-copies every batch before converting it (to be able to retry
//! it): that copy was a third of what exporting a span cost, and the
//! conversion to opentelemetry-proto's types another third. A batch that
//! fails is not retried here; it is dropped and counted.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::uri::PathAndQuery;
use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{SpanData, SpanProcessor};
use tokio::sync::mpsc;
use tonic::transport::Channel;

/// Finished spans waiting to be exported, at most; more are dropped.
pub(crate) const MAX_QUEUED_SPANS: usize = 4_096;

/// Spans sent in one export, at most.
pub(crate) const MAX_SPANS_PER_EXPORT: usize = 512;

/// How long one export may take before its spans are given up.
pub(crate) const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// The OTLP/gRPC method spans are exported with.
const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// Exports sent at once, at most, on the one connection: one at a time, a
/// collector 10 ms away could take no more than 51,200 spans a second,
/// about what a busy server makes.
const MAX_EXPORTS_IN_FLIGHT: usize = 4;

/// Where spans go: an OTLP/gRPC collector, and the resource (service name
/// and version) every batch is sent with.
#[derive(Debug)]
struct Collector {
    /// Connects on first use, and again after a failure; cloned for each
    /// export in flight (they share its connection).
    client: tonic::client::Grpc<Channel>,
    /// The resource, encoded once.
    resource: super::otlp::EncodedResource,
    /// The size of the last request, to size the next one's buffer.
    last_request_bytes: usize,
}

impl Collector {
    /// The export request of `spans`.
    fn request(&mut self, spans: &[SpanData]) -> Vec<u8> {
        let mut request = Vec::with_capacity(self.last_request_bytes);
        super::otlp::encode_request(spans, &self.resource, &mut request);
        self.last_request_bytes = request.len();
        request
    }

    /// Sends `request`, holding `spans` spans, giving up after
    /// [`EXPORT_TIMEOUT`]: how many of them were lost.
    fn send(&self, request: Vec<u8>, spans: usize) -> impl Future<Output = Exported> + use<> {
        let mut client = self.client.clone();
        let send = async move {
            client.ready().await.map_err(|error| format!("not connected: {error}"))?;
            let path = PathAndQuery::from_static(EXPORT_PATH);
            let response = client
                .unary(tonic::Request::new(request), path, super::otlp::ExportCodec)
                .await
                .map_err(|status| format!("{:?}: {}", status.code(), status.message()))?;
            // The collector says how many it refused, and why; it cannot
            // refuse more than were sent.
            Ok(response.into_inner().partial_success.map_or((0, String::new()), |partial| {
                let rejected = usize::try_from(partial.rejected_spans).unwrap_or(0).min(spans);
                (rejected, partial.error_message)
            }))
        };
        async move {
            let outcome = match tokio::time::timeout(EXPORT_TIMEOUT, send).await {
                Ok(outcome) => outcome,
                Err(_) => Err(format!("no answer within {EXPORT_TIMEOUT:?}")),
            };
            Exported { spans, outcome }
        }
    }
}

/// What became of one export.
#[derive(Debug)]
struct Exported {
    /// The spans it held.
    spans: usize,
    /// How many the collector rejected and why, or why the export failed.
    outcome: Result<(usize, String), String>,
}

/// Whether exports are failing: see [`export_all`].
#[derive(Debug)]
struct Exports {
    /// Whether the last export to finish failed: a failure is logged when
    /// exports start failing, and a recovery when they work again, not
    /// each time.
    failing: bool,
    /// Whether the last export to finish had spans rejected: logged, like
    /// failures, when it starts.
    rejecting: bool,
    /// While failing: when the next export is tried. Batches before then
    /// are dropped unencoded, so that an absent collector costs no CPU
    /// beyond making the spans.
    retry_at: tokio::time::Instant,
}

impl Exports {
    /// `exports`, locked. Every update leaves it whole, so a panic while it
    /// was held cannot have broken it.
    fn locked(exports: &Mutex<Exports>) -> std::sync::MutexGuard<'_, Exports> {
        exports.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether a batch is to be dropped rather than sent now.
    fn waiting_to_retry(&self) -> bool {
        self.failing && tokio::time::Instant::now() < self.retry_at
    }

    /// Counts what `export` lost, and logs when exports start or stop
    /// failing.
    fn finished(&mut self, export: Exported) {
        match export.outcome {
            Ok((rejected, reason)) => {
                dropped(rejected);
                if rejected > 0 && !self.rejecting {
                    tracing::warn!(
                        rejected,
                        spans = export.spans,
                        reason,
                        "the collector rejected spans (counted in \
                         points_trace_spans_dropped_total)"
                    );
                }
                self.rejecting = rejected > 0;
                if self.failing {
                    self.failing = false;
                    tracing::info!("exporting spans again");
                }
            }
            Err(error) => {
                dropped(export.spans);
                self.retry_at = tokio::time::Instant::now() + RETRY_INTERVAL;
                if !self.failing {
                    self.failing = true;
                    tracing::warn!(
                        %error,
                        spans = export.spans,
                        "cannot export spans; dropping them until the collector answers \
                         (counted in points_trace_spans_dropped_total)"
                    );
                }
            }
        }
    }
}

/// After an export failed, how long batches are dropped before the next
/// one is tried.
const RETRY_INTERVAL: Duration = Duration::from_secs(1);

/// How long the thread waits for more spans after the first of a batch, so
/// that a trickle of calls is sent in batches rather than one by one.
const BATCH_DELAY: Duration = Duration::from_millis(200);

/// How often the thread takes what has queued while it gathers a batch. It
/// sleeps in between rather than waiting on the queue, so that the calls
/// finishing spans do not each wake it; the queue fills in no less than
/// this only past [`MAX_QUEUED_SPANS`] spans per interval (400,000 a
/// second), far beyond what the server can serve.
const GATHER_INTERVAL: Duration = Duration::from_millis(10);

// A batch is gathered in a bounded number of intervals, and the queue holds
// several batches.
const _: () = assert!(BATCH_DELAY.as_millis() / GATHER_INTERVAL.as_millis() <= 100);
const _: () = assert!(MAX_QUEUED_SPANS >= 4 * MAX_SPANS_PER_EXPORT);

/// Fills `batch` (empty) with the next spans from `queue`: waits for the
/// first, then takes what arrives until the batch is full, [`BATCH_DELAY`]
/// has passed or the queue is closed. False once the queue is closed and
/// empty.
///
/// The queue is emptied at least every [`GATHER_INTERVAL`] while a batch
/// is gathered, so that a busy server does not fill it (one sleep of the
/// whole delay would let 200 ms of spans queue up, which dropped most of
/// them past 20,000 spans a second).
async fn next_batch<T>(queue: &mut mpsc::Receiver<T>, batch: &mut Vec<T>) -> bool {
    debug_assert!(batch.is_empty());
    if queue.recv_many(batch, MAX_SPANS_PER_EXPORT).await == 0 {
        return false;
    }
    let deadline = tokio::time::Instant::now() + BATCH_DELAY;
    // Bounded: by the deadline, at most BATCH_DELAY / GATHER_INTERVAL turns.
    while batch.len() < MAX_SPANS_PER_EXPORT
        && !queue.is_closed()
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep_until((tokio::time::Instant::now() + GATHER_INTERVAL).min(deadline))
            .await;
        // Bounded: at most a batch's worth.
        while batch.len() < MAX_SPANS_PER_EXPORT
            && let Ok(span) = queue.try_recv()
        {
            batch.push(span);
        }
    }
    debug_assert!(!batch.is_empty() && batch.len() <= MAX_SPANS_PER_EXPORT);
    true
}

/// The span processor: see the module documentation. Shutting it down
/// (with its tracer provider) lets the export thread send what is queued and
/// waits for that, up to the timeout given.
#[derive(Debug)]
pub(crate) struct BoundedExport {
    /// `None` once shut down.
    queue: std::sync::Mutex<Option<mpsc::Sender<SpanData>>>,
    /// Told when the export thread has sent everything and ended.
    finished: std::sync::Mutex<std::sync::mpsc::Receiver<()>>,
}

impl BoundedExport {
    /// Starts exporting to the OTLP/gRPC collector at `endpoint`, each batch
    /// with `resource`, on a thread of its own: converting and encoding a
    /// batch takes a while, and on the runtime's workers it would hold up
    /// the calls queued behind it.
    pub(crate) fn start(
        endpoint: tonic::transport::Endpoint,
        resource: ResourceAttributesWithSchema,
    ) -> std::io::Result<Self> {
        let (sender, receiver) = mpsc::channel(MAX_QUEUED_SPANS);
        let (finish, finished) = std::sync::mpsc::sync_channel(1);
        // The runtime is built on the thread (one dropped on the caller's,
        // inside its runtime, would panic); whether it could be is sent back.
        let (started, start) = std::sync::mpsc::sync_channel(1);
        std::thread::Builder::new().name("points-spans".to_owned()).spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(runtime) => runtime,
                Err(error) => {
                    // The caller waits for this answer.
                    let _ = started.send(Err(error));
                    return;
                }
            };
            let _ = started.send(Ok(()));
            runtime.block_on(async move {
                // Connects on first export, and again after a failure.
                let channel = endpoint.connect_timeout(EXPORT_TIMEOUT).connect_lazy();
                let collector = Collector {
                    client: tonic::client::Grpc::new(channel),
                    resource: super::otlp::EncodedResource::new(&resource),
                    last_request_bytes: 0,
                };
                export_all(collector, receiver).await;
            });
            // Nobody waits if the processor is gone.
            let _ = finish.send(());
        })?;
        start.recv().unwrap_or_else(|_| {
            Err(std::io::Error::other("the thread ended before its runtime was built"))
        })?;
        Ok(Self {
            queue: std::sync::Mutex::new(Some(sender)),
            finished: std::sync::Mutex::new(finished),
        })
    }
}

/// Spans are counted as dropped in one place.
fn dropped(spans: usize) {
    metrics::counter!("points_trace_spans_dropped_total").increment(spans as u64);
}

/// Exports what arrives on `queue` until every sender is gone, up to
/// [`MAX_EXPORTS_IN_FLIGHT`] batches at once; then waits for those sent.
/// Each export counts what it lost as soon as it finishes.
async fn export_all(mut collector: Collector, mut queue: mpsc::Receiver<SpanData>) {
    let mut batch = Vec::with_capacity(MAX_SPANS_PER_EXPORT);
    let exports = Arc::new(Mutex::new(Exports {
        failing: false,
        rejecting: false,
        retry_at: tokio::time::Instant::now(),
    }));
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_EXPORTS_IN_FLIGHT));
    while next_batch(&mut queue, &mut batch).await {
        let spans = batch.len();
        // Waits while MAX_EXPORTS_IN_FLIGHT are in flight (the semaphore is
        // never closed); none is taken for a batch dropped after a failure.
        let slot = if Exports::locked(&exports).waiting_to_retry() {
            None
        } else {
            Arc::clone(&slots).acquire_owned().await.ok()
        };
        let Some(slot) = slot else {
            dropped(spans);
            batch.clear();
            continue;
        };
        let request = collector.request(&batch);
        let send = collector.send(request, spans);
        batch.clear();
        let exports = Arc::clone(&exports);
        tokio::spawn(async move {
            let export = send.await;
            Exports::locked(&exports).finished(export);
            drop(slot);
        });
    }
    // Those in flight give up after EXPORT_TIMEOUT at most.
    let _ = slots.acquire_many(MAX_EXPORTS_IN_FLIGHT as u32).await;
}

impl SpanProcessor for BoundedExport {
    fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &opentelemetry::Context) {}

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        let queue = self.queue.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if queue.as_ref().is_none_or(|queue| queue.try_send(span).is_err()) {
            dropped(1);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        // Closing the queue lets the thread send what is in it, then end.
        let queue = self.queue.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take();
        if queue.is_none() {
            return Err(OTelSdkError::AlreadyShutdown);
        }
        drop(queue);
        let finished = self.finished.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        match finished.recv_timeout(timeout) {
            Ok(()) => Ok(()),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                Err(OTelSdkError::InternalFailure("the span export thread ended early".to_owned()))
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Err(OTelSdkError::Timeout(timeout)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Spans finished at 100,000 a second for two seconds (simulated time)
    /// all fit the queue, and leave it in full batches.
    #[tokio::test(start_paused = true)]
    async fn a_busy_server_fills_batches_without_filling_the_queue() {
        const MILLISECONDS: u32 = 2_000;
        const SPANS_PER_MILLISECOND: u32 = 100;
        let (sender, mut queue) = mpsc::channel(MAX_QUEUED_SPANS);
        let producer = tokio::spawn(async move {
            let mut refused = 0;
            for millisecond in 0..MILLISECONDS {
                for span in 0..SPANS_PER_MILLISECOND {
                    if sender.try_send(millisecond * SPANS_PER_MILLISECOND + span).is_err() {
                        refused += 1;
                    }
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            refused
        });
        let (mut batch, mut received, mut batches) = (Vec::new(), Vec::new(), 0);
        while next_batch(&mut queue, &mut batch).await {
            assert!(batch.len() <= MAX_SPANS_PER_EXPORT);
            batches += 1;
            received.append(&mut batch);
        }
        assert_eq!(
            producer.await.expect("the producer finishes"),
            0,
            "spans refused by a full queue"
        );
        let sent: Vec<u32> = (0..MILLISECONDS * SPANS_PER_MILLISECOND).collect();
        assert_eq!(received, sent, "every span, in order");
        // Full batches, but for the first (gathered from the first spans) and
        // the last.
        let full_batches = sent.len().div_ceil(MAX_SPANS_PER_EXPORT);
        assert!(batches <= full_batches + 2, "{batches} batches for {full_batches} full ones");
    }

    /// A lone span waits for company for the batch delay, no longer.
    #[tokio::test(start_paused = true)]
    async fn a_trickle_is_sent_after_the_batch_delay() {
        let (sender, mut queue) = mpsc::channel(MAX_QUEUED_SPANS);
        sender.try_send(1).expect("room in the queue");
        let started = tokio::time::Instant::now();
        let mut batch = Vec::new();
        assert!(next_batch(&mut queue, &mut batch).await);
        assert_eq!(batch, [1]);
        let waited = started.elapsed();
        assert_eq!(waited, BATCH_DELAY);
        drop(sender);
        batch.clear();
        assert!(!next_batch(&mut queue, &mut batch).await, "closed and empty");
    }

    /// When the queue closes (the server shuts down), what is in it is
    /// taken at once rather than after the batch delay.
    #[tokio::test(start_paused = true)]
    async fn a_closed_queue_is_emptied_without_waiting() {
        let (sender, mut queue) = mpsc::channel(MAX_QUEUED_SPANS);
        for span in 0..3 {
            sender.try_send(span).expect("room in the queue");
        }
        drop(sender);
        let started = tokio::time::Instant::now();
        let mut batch = Vec::new();
        assert!(next_batch(&mut queue, &mut batch).await);
        assert_eq!(batch, [0, 1, 2]);
        assert_eq!(started.elapsed(), Duration::ZERO);
        batch.clear();
        assert!(!next_batch(&mut queue, &mut batch).await);
    }
}
