//! Log and trace set-up, in one function so the binary and tests configure it
//! the same way: log lines to stderr; each call's trace (`call`), a child of
//! the caller's trace context (`context`); spans encoded (`otlp`) and sent
//! to an OTLP collector when one is given (`export`); and the Prometheus
//! metrics.

mod call;
mod context;
mod export;
mod otlp;
mod trace_id;

use std::io::IsTerminal;
use std::net::SocketAddr;

use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

pub(crate) use call::{CallTrace, in_sampled_call, record_on_call};

/// A DEBUG span for storage work inside the call in progress: a child of
/// its exported span (the only spans tracing-opentelemetry exports), and of
/// its log span. None outside a call, so that background work (clock
/// ticks, followers' look-ups, streams' reads) makes no traces of its own.
macro_rules! call_child_span {
    ($name:literal $(, $($field:tt)*)?) => {
        if tracing::Span::current().is_none() && !$crate::telemetry::in_sampled_call() {
            tracing::Span::none()
        } else {
            tracing::debug_span!(target: "points::trace", $name $(, $($field)*)?)
        }
    };
}
pub(crate) use call_child_span;

/// Awaits `work` with `span` (a [`call_child_span!`]) open around it, without
/// entering it: the storage work these spans time makes no spans or log
/// lines of its own, so entering the span at every poll would only cost (a
/// clock read and a lock each time). The span ends when `work` does, or is
/// dropped.
pub(crate) async fn spanning<F: std::future::Future>(span: tracing::Span, work: F) -> F::Output {
    let output = work.await;
    drop(span);
    output
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event.
    Text,
    /// One JSON object per line, with the span's fields, for log pipelines.
    Json,
}

/// Log lines waiting for the writer thread past which new ones are dropped.
const MAX_BUFFERED_LOG_LINES: usize = 65_536;

/// What [`init`] set up; keep it until exit. Dropping it writes out queued
/// log lines and lets the span exporter send what is queued.
#[derive(Debug)]
pub struct Telemetry {
    _log_writer: tracing_appender::non_blocking::WorkerGuard,
    tracer_provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.tracer_provider.take() {
            // Nothing to report at exit if the collector is gone.
            let _ = provider.shutdown();
        }
    }
}

/// Why telemetry could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The OTLP endpoint is not a URL the exporter can use.
    #[error(
        "cannot export traces to {endpoint:?}: {reason}; give --otlp-endpoint (or \
         POINTS_OTLP_ENDPOINT, OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, OTEL_EXPORTER_OTLP_ENDPOINT) \
         as http://host:port (OTLP over gRPC, usually port 4317)"
    )]
    OtlpEndpoint {
        /// The endpoint given.
        endpoint: String,
        /// Why it was refused.
        reason: String,
    },
    /// Telemetry was set up already in this process.
    #[error("logging and tracing are already set up in this process")]
    AlreadySet,
    /// The thread that exports spans could not be started.
    #[error("cannot start the thread that exports spans: {0}")]
    ExportThread(#[source] std::io::Error),
}

/// Logs to stderr in `format`, filtered by RUST_LOG (default `info`), and,
/// with `otlp_endpoint`, exports the spans of calls and of the storage work
/// inside them over OTLP/gRPC. Colours only for text on a terminal.
///
/// Log lines are handed to a writer thread through a bounded queue, so that
/// a call never waits for stderr (a slow terminal or log collector would
/// otherwise set the server's pace: one line per call at INFO cost a third
/// of Spend's throughput at the ceiling). If the writer falls
/// `MAX_BUFFERED_LOG_LINES` behind, new lines are dropped rather than
/// queued without bound. Spans go through the bounded queue of
/// [`export`](self::export) the same way. Log lines written inside a call
/// carry its `trace_id` whenever it has one ([`trace_id`](self::trace_id)).
pub fn init(format: LogFormat, otlp_endpoint: Option<&str>) -> Result<Telemetry, TelemetryError> {
    let tracer_provider = otlp_endpoint.map(tracer_provider).transpose()?;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .buffered_lines_limit(MAX_BUFFERED_LOG_LINES)
        .lossy(true)
        .thread_name("points-log")
        .finish(std::io::stderr());
    let fmt = tracing_subscriber::fmt::layer().with_writer(writer);
    let logs = match format {
        LogFormat::Text => {
            let ansi = std::io::stderr().is_terminal();
            let inner = tracing_subscriber::fmt::format().with_ansi(ansi);
            fmt.with_ansi(ansi).event_format(trace_id::WithTraceId { inner, json: false }).boxed()
        }
        LogFormat::Json => {
            let inner = tracing_subscriber::fmt::format()
                .json()
                .with_current_span(true)
                .with_span_list(false);
            fmt.fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
                .event_format(trace_id::WithTraceId { inner, json: true })
                .boxed()
        }
    };
    // Calls' own spans are made by `call`; the storage work inside them
    // (`call_child_span!`) is exported from its tracing spans, at any level;
    // events stay in the logs. Each span carries its own fields only:
    // source locations, threads, targets and busy/idle times would double
    // what every call costs to trace and export, and nothing else here
    // reads an OpenTelemetry context entered with a span.
    let spans = tracer_provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("points"))
            .with_location(false)
            .with_threads(false)
            .with_target(false)
            .with_level(false)
            .with_tracked_inactivity(false)
            .with_context_activation(false)
            .with_filter(tracing_subscriber::filter::filter_fn(|metadata| {
                metadata.is_span() && metadata.target() == "points::trace"
            }))
    });
    tracing_subscriber::registry()
        .with(logs.with_filter(filter))
        .with(spans)
        .try_init()
        .map_err(|_| TelemetryError::AlreadySet)?;
    if let Some(provider) = &tracer_provider {
        call::export_with(provider.tracer("points"));
    }
    if let Some(endpoint) = otlp_endpoint {
        tracing::info!(endpoint, "exporting spans over OTLP/gRPC");
    }
    Ok(Telemetry { _log_writer: guard, tracer_provider })
}

/// The tracer provider exporting to `endpoint`: service name and version as
/// resource attributes, spans through [`export::BoundedExport`]. The
/// connection is made on first export, so a collector that is not up yet
/// delays nothing.
fn tracer_provider(endpoint: &str) -> Result<SdkTracerProvider, TelemetryError> {
    let refused =
        |reason: String| TelemetryError::OtlpEndpoint { endpoint: endpoint.to_owned(), reason };
    let uri: http::Uri = endpoint.parse().map_err(|error| refused(format!("{error}")))?;
    if uri.scheme_str() == Some("https") {
        return Err(refused(
            "spans are exported in plaintext only; reach a TLS collector through a local \
             agent or sidecar"
                .to_owned(),
        ));
    }
    if uri.scheme_str() != Some("http") || uri.host().is_none() {
        return Err(refused("it is not an http:// URL".to_owned()));
    }
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name("points")
        .with_attribute(opentelemetry::KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build();
    let export =
        export::BoundedExport::start(tonic::transport::Endpoint::from(uri), (&resource).into())
            .map_err(TelemetryError::ExportThread)?;
    Ok(SdkTracerProvider::builder().with_span_processor(export).with_resource(resource).build())
}

/// Latency buckets in seconds: 50 µs to 10 s.
const LATENCY_BUCKETS_SECONDS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
];

/// Why the Prometheus exporter did not start.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The latency buckets were refused.
    #[error(transparent)]
    Buckets(#[from] BuildError),
    /// The listener could not be bound, or the recorder installed.
    #[error("cannot serve metrics on {address}: {source}")]
    Listen {
        /// The address asked for.
        address: SocketAddr,
        /// Why.
        #[source]
        source: BuildError,
    },
}

/// Serves Prometheus metrics at `http://address/metrics` (any path works) and
/// describes every metric the server records. Must run inside the runtime.
pub fn install_metrics(address: SocketAddr) -> Result<(), MetricsError> {
    PrometheusBuilder::new()
        .with_http_listener(address)
        .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), LATENCY_BUCKETS_SECONDS)?
        .install()
        .map_err(|source| MetricsError::Listen { address, source })?;
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "points_rpc_calls_total",
        "Finished PointsService calls, by method and gRPC code."
    );
    describe_histogram!(
        "points_rpc_duration_seconds",
        Unit::Seconds,
        "PointsService call latency, by method."
    );
    describe_gauge!("points_rpc_in_flight", "PointsService calls in progress.");
    describe_counter!(
        "points_rpc_refusals_total",
        "Refused calls, by method and ErrorInfo reason."
    );
    describe_gauge!("points_connections_open", "TCP connections open, handshakes included.");
    describe_counter!(
        "points_connections_refused_total",
        "Connections closed as soon as accepted because --max-connections were open."
    );
    describe_counter!(
        "points_connections_timed_out_total",
        "Connections closed by the handshake or the idle-connection timeout, by timeout."
    );
    describe_gauge!("points_users", "Users with a ledger.");
    describe_gauge!("points_payers", "Payers, summed over users.");
    describe_gauge!("points_lots", "Lots (positive transactions), summed over users.");
    describe_counter!("points_journal_bytes_total", Unit::Bytes, "Bytes written to the journal.");
    describe_gauge!(
        "points_journal_segment_bytes",
        Unit::Bytes,
        "Bytes of records in the current journal segment (without its preallocated zeros)."
    );
    describe_histogram!(
        "points_journal_fsync_seconds",
        Unit::Seconds,
        "Journal fdatasync latency."
    );
    describe_counter!(
        "points_trace_spans_dropped_total",
        "Finished spans not exported: the export queue was full, or the collector failed or rejected them."
    );
    describe_histogram!(
        "points_snapshot_duration_seconds",
        Unit::Seconds,
        "Time to write a snapshot."
    );
    Ok(())
}
