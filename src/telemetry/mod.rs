//! Log and trace set-up, in one function so the binary and tests configure it
//! the same way.

use std::io::IsTerminal;
use std::net::SocketAddr;

use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder};

use tracing_subscriber::EnvFilter;

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

/// Logs to stderr in `format`, filtered by RUST_LOG (default `info`). Colours
/// only for text on a terminal.
///
/// Lines are handed to a writer thread through a bounded queue, so that a
/// call never waits for stderr (a slow terminal or log collector would
/// otherwise set the server's pace: one line per call at INFO cost a third of
/// Spend's throughput at the ceiling). If the writer falls
/// `MAX_BUFFERED_LOG_LINES` behind, new lines are dropped rather than
/// queued without bound. Keep the returned guard until exit: dropping it
/// writes out what is queued.
pub fn init(format: LogFormat) -> tracing_appender::non_blocking::WorkerGuard {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .buffered_lines_limit(MAX_BUFFERED_LOG_LINES)
        .lossy(true)
        .thread_name("points-log")
        .finish(std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.json().with_current_span(true).with_span_list(false).init(),
    }
    guard
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
    describe_histogram!(
        "points_snapshot_duration_seconds",
        Unit::Seconds,
        "Time to write a snapshot."
    );
    Ok(())
}
