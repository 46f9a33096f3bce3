//! Distributed traces over real gRPC: a call made with a W3C `traceparent`
//! reaches a test OTLP collector (the OTLP trace service, served by tonic in
//! the test) as a child of the caller's span, with its method, outcome,
//! user and client (never the token) and the storage work inside it as
//! child spans; its log lines carry the trace id. With the collector gone,
//! calls do not wait for it and the dropped spans are counted.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::Span;
use tonic::{Request, Response, Status};

use crate::common::ServerProcess;
use crate::common::client::add_request;
use crate::common::metrics::{free_port, scrape_async};
use crate::common::postgres::TestDatabase;
use crate::common::tokens::{token_client, tokens_file, with_token};

/// The trace and the caller's span every traced call here names.
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_SPAN_ID: &str = "00f067aa0ba902b7";

/// A span received, with its resource's attributes.
type Received = (Vec<KeyValue>, Span);

/// The test collector: keeps every span exported to it.
#[derive(Debug, Clone, Default)]
struct Collector {
    received: Arc<Mutex<Vec<Received>>>,
    /// How many spans of each request it answers that it rejected (OTLP's
    /// partial success), if any.
    rejects: Option<i64>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let mut received = self.received.lock().expect("the collector's spans");
        for resource_spans in request.into_inner().resource_spans {
            let resource = resource_spans.resource.map(|resource| resource.attributes);
            for scope_spans in resource_spans.scope_spans {
                for span in scope_spans.spans {
                    received.push((resource.clone().unwrap_or_default(), span));
                }
            }
        }
        let partial_success = self.rejects.map(|rejected_spans| ExportTracePartialSuccess {
            rejected_spans,
            error_message: "over this tenant's quota".to_owned(),
        });
        Ok(Response::new(ExportTraceServiceResponse { partial_success }))
    }
}

impl Collector {
    /// Serves the collector on a free port; returns its URL and what stops
    /// it (its connections closed, as a collector that went away).
    async fn start(&self) -> (String, Stop) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let service = TraceServiceServer::new(self.clone());
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stopped.await;
                })
                .await;
        });
        (url, Stop { stop, serving })
    }

    /// The spans of the trace [`TRACE_ID`] once one of each of `names`
    /// arrived (failing the test after 20 s). Spans are sent in batches,
    /// several at once, so a child may arrive after its parent.
    async fn wait_for(&self, names: &[&str]) -> Vec<Received> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let spans: Vec<Received> = self
                .received
                .lock()
                .expect("the collector's spans")
                .iter()
                .filter(|(_, span)| hex::encode(&span.trace_id) == TRACE_ID)
                .cloned()
                .collect();
            if names.iter().all(|name| spans.iter().any(|(_, span)| span.name == *name)) {
                return spans;
            }
            assert!(Instant::now() < deadline, "not all of {names:?} in the trace: {spans:#?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Stops a test collector.
struct Stop {
    stop: tokio::sync::oneshot::Sender<()>,
    serving: tokio::task::JoinHandle<()>,
}

impl Stop {
    /// Stops the collector and waits until it is gone.
    async fn stop(self) {
        let _ = self.stop.send(());
        self.serving.await.expect("the collector stops");
    }
}

/// The string value of attribute `key`.
fn attribute<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a str> {
    attributes.iter().find(|attribute| attribute.key == key).and_then(|attribute| match &attribute
        .value
    {
        Some(AnyValue { value: Some(any_value::Value::StringValue(value)) }) => {
            Some(value.as_str())
        }
        _ => None,
    })
}

/// `request` with a `traceparent` naming the caller's span
/// [`PARENT_SPAN_ID`] in trace `trace_id`, `sampled` or not.
fn with_traceparent<T>(mut request: Request<T>, trace_id: &str, sampled: bool) -> Request<T> {
    let flags = if sampled { "01" } else { "00" };
    let traceparent = format!("00-{trace_id}-{PARENT_SPAN_ID}-{flags}");
    request.metadata_mut().insert("traceparent", traceparent.parse().expect("ascii"));
    request
}

/// `request` carrying the trace context of the caller's span, and the
/// client's token.
fn traced<T>(message: T) -> Request<T> {
    let mut request = with_traceparent(with_token(message, "checkout-token"), TRACE_ID, true);
    request.metadata_mut().insert("tracestate", "vendor=abc".parse().expect("ascii"));
    request
}

/// A call made with a `traceparent` is exported as a child of the caller's
/// span, carrying the method, the outcome, the user and the client name,
/// with the journal wait inside it as a child span; the service's name and
/// version are resource attributes, and the call's log lines carry the
/// trace id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_traced_call_is_exported_as_a_child_of_the_callers_span() {
    let collector = Collector::default();
    let (url, _serving) = collector.start().await;
    let dir = tempfile::tempdir().expect("temporary directory");
    let tokens = tokens_file(dir.path(), &[token_client("checkout", &["earn"], &[])]);
    let tokens = tokens.to_str().expect("utf-8 path");
    let mut command = ServerProcess::durable(
        &dir.path().join("data"),
        &["--otlp-endpoint", &url, "--tokens-file", tokens],
    );
    command.env("RUST_LOG", "info,points=debug");
    let server = ServerProcess::spawn(command);
    let mut client = server.client().await;
    let earn = add_request("alice", "", "DANNON", 300, "2024-01-01T00:00:00Z");
    client.add_transaction(traced(earn)).await.expect("accepted");

    let spans = collector.wait_for(&["AddTransaction", "journal_wait"]).await;
    let (resource, call) =
        spans.iter().find(|(_, span)| span.name == "AddTransaction").expect("the call's span");
    assert_eq!(
        hex::encode(&call.parent_span_id),
        PARENT_SPAN_ID,
        "the caller's span is its parent"
    );
    assert_eq!(call.kind, 2, "a server span");
    for (key, value) in
        [("method", "AddTransaction"), ("code", "OK"), ("user", "alice"), ("client", "checkout")]
    {
        assert_eq!(attribute(&call.attributes, key), Some(value), "{key} in {call:#?}");
    }
    assert_eq!(attribute(resource, "service.name"), Some("points"));
    assert_eq!(attribute(resource, "service.version"), Some(env!("CARGO_PKG_VERSION")));
    let spans_debug = format!("{spans:?}");
    assert!(!spans_debug.contains("checkout-token"), "a token was exported: {spans_debug}");
    // The storage work inside the call: the wait for the journal.
    let (_, journal_wait) =
        spans.iter().find(|(_, span)| span.name == "journal_wait").expect("the journal wait");
    assert_eq!(journal_wait.parent_span_id, call.span_id, "a child of the call's span");
    assert!(journal_wait.end_time_unix_nano >= journal_wait.start_time_unix_nano);
    assert!(journal_wait.start_time_unix_nano >= call.start_time_unix_nano);
    assert!(journal_wait.end_time_unix_nano <= call.end_time_unix_nano);
    // The call's own log line names the trace.
    crate::common::wait::eventually("a log line with the trace id", Duration::from_secs(5), || {
        let log = server.log();
        let logged =
            log.lines().any(|line| line.contains("rpc completed") && line.contains(TRACE_ID));
        std::future::ready(logged.then_some(()))
    })
    .await;
}

/// A test collector, and a replica over a database of its own exporting
/// to it (dropped in reverse order: the server before its database).
async fn traced_replica() -> (Collector, Stop, TestDatabase, ServerProcess) {
    let collector = Collector::default();
    let (url, serving) = collector.start().await;
    let database = TestDatabase::create();
    let server = ServerProcess::start_on_database(&database.url, &["--otlp-endpoint", &url]);
    (collector, serving, database, server)
}

/// On a replica over PostgreSQL, a call's span holds the statements it ran
/// (with the SQL) and its wait for the database's commit, as children.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replicas_call_has_its_statements_and_commit_as_child_spans() {
    let (collector, _serving, _database, server) = traced_replica().await;
    let mut client = server.client().await;
    let earn = add_request("alice", "", "DANNON", 300, "2024-01-01T00:00:00Z");
    let request = with_traceparent(Request::new(earn), TRACE_ID, true);
    client.add_transaction(request).await.expect("accepted");

    let spans = collector.wait_for(&["AddTransaction", "database_commit", "postgres_query"]).await;
    let (_, call) =
        spans.iter().find(|(_, span)| span.name == "AddTransaction").expect("the call's span");
    let children: Vec<&Span> = spans
        .iter()
        .map(|(_, span)| span)
        .filter(|span| span.parent_span_id == call.span_id)
        .collect();
    let commit = children.iter().find(|span| span.name == "database_commit");
    assert!(commit.is_some(), "no database_commit child in {spans:#?}");
    let query = children.iter().find(|span| span.name == "postgres_query");
    let query = query.unwrap_or_else(|| panic!("no postgres_query child in {spans:#?}"));
    assert_eq!(attribute(&query.attributes, "db.system"), Some("postgresql"));
    let statement = attribute(&query.attributes, "db.statement").unwrap_or_default();
    assert!(statement.contains("SELECT"), "the statement's SQL: {statement:?}");
    for child in &children {
        assert!(child.start_time_unix_nano >= call.start_time_unix_nano, "{child:#?}");
        assert!(child.end_time_unix_nano <= call.end_time_unix_nano, "{child:#?}");
    }
}

/// A call given up on before it finishes (here its deadline passes while
/// the database holds its write back) is exported all the same, with the
/// code CANCELLED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_given_up_on_is_exported_as_cancelled() {
    let (collector, _serving, database, server) = traced_replica().await;
    let mut client = server.client().await;
    let earn = add_request("alice", "", "DANNON", 300, "2024-01-01T00:00:00Z");
    client.add_transaction(earn.clone()).await.expect("accepted");
    // Another session locks the table every write goes to, until dropped.
    let (locker, connection) =
        tokio_postgres::connect(&database.url, tokio_postgres::NoTls).await.expect("connect");
    let connection = tokio::spawn(connection);
    locker
        .batch_execute("BEGIN; LOCK TABLE points_user_records IN ACCESS EXCLUSIVE MODE")
        .await
        .expect("lock the table");
    let mut request = with_traceparent(Request::new(earn), TRACE_ID, true);
    request.set_timeout(Duration::from_millis(500));
    let status = client.add_transaction(request).await.expect_err("the deadline passes");
    assert!(
        matches!(status.code(), tonic::Code::DeadlineExceeded | tonic::Code::Cancelled),
        "{status:?}"
    );
    // The lock is held until the call's span arrives: its write cannot end
    // meanwhile, so the call can only have been given up on (the client's
    // copy of the deadline may pass first; the server's is the one tested).
    let spans = collector.wait_for(&["AddTransaction"]).await;
    drop(locker);
    let _ = connection.await;
    let (_, call) =
        spans.iter().find(|(_, span)| span.name == "AddTransaction").expect("the call's span");
    assert_eq!(attribute(&call.attributes, "code"), Some("CANCELLED"), "{call:#?}");
    assert_eq!(hex::encode(&call.parent_span_id), PARENT_SPAN_ID);
}

/// A server in memory exporting its spans to `url`, with its metrics on
/// the port returned.
fn exporting_with_metrics(url: &str) -> (ServerProcess, u16) {
    let port = free_port();
    let metrics = format!("127.0.0.1:{port}");
    (ServerProcess::start(&["--otlp-endpoint", url, "--metrics-listen", &metrics]), port)
}

/// `points_trace_spans_dropped_total` of the server with its metrics on
/// `port`, once it has one.
async fn dropped_spans(port: u16) -> Option<f64> {
    let scraped = scrape_async(port).await;
    crate::common::metrics::sample(&scraped, "points_trace_spans_dropped_total")
}

/// With the collector gone, calls do not wait for it, and the spans that
/// cannot be exported are counted as dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_collector_slows_no_call_and_dropped_spans_are_counted() {
    let collector = Collector::default();
    let (url, serving) = collector.start().await;
    let (server, port) = exporting_with_metrics(&url);
    let mut client = server.client().await;
    let earn = add_request("alice", "", "DANNON", 1, "2024-01-01T00:00:00Z");
    client.add_transaction(traced(earn.clone())).await.expect("accepted");
    collector.wait_for(&["AddTransaction"]).await;
    serving.stop().await;

    let mut slowest = Duration::ZERO;
    for _ in 0..200 {
        let started = Instant::now();
        client.add_transaction(traced(earn.clone())).await.expect("accepted");
        slowest = slowest.max(started.elapsed());
    }
    // An export waits up to 5 s for the collector; no call does.
    assert!(slowest < Duration::from_secs(2), "a call took {slowest:?} with the collector gone");
    crate::common::wait::eventually(
        "a warning that spans are dropped",
        Duration::from_secs(20),
        || std::future::ready(server.log().contains("cannot export spans").then_some(())),
    )
    .await;
    crate::common::wait::eventually("dropped spans counted", Duration::from_secs(20), || async {
        dropped_spans(port).await.filter(|&dropped| dropped >= 1.0)
    })
    .await;
}

/// Spans the collector answers that it rejected are counted as dropped,
/// though their export succeeded; a collector cannot make the count
/// larger than what it was sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_the_collector_rejects_are_counted_as_dropped() {
    let collector = Collector { rejects: Some(i64::MAX), ..Collector::default() };
    let (url, _serving) = collector.start().await;
    let (server, port) = exporting_with_metrics(&url);
    let mut client = server.client().await;
    let earn = add_request("alice", "", "DANNON", 1, "2024-01-01T00:00:00Z");
    client.add_transaction(traced(earn)).await.expect("accepted");
    let sent = collector.wait_for(&["AddTransaction"]).await.len();
    let dropped = crate::common::wait::eventually(
        "every rejected span counted",
        Duration::from_secs(20),
        || async { dropped_spans(port).await.filter(|&dropped| dropped >= sent as f64) },
    )
    .await;
    assert_eq!(dropped, sent as f64, "every span sent was rejected, and no more");
    crate::common::wait::eventually(
        "a warning with the collector's reason",
        Duration::from_secs(20),
        || {
            let log = server.log();
            let warned = log.contains("the collector rejected spans")
                && log.contains("over this tenant's quota");
            std::future::ready(warned.then_some(()))
        },
    )
    .await;
}

/// The standard OpenTelemetry variables work without the flag, at the
/// default log level: the traces endpoint exports; a call whose caller did
/// not sample its trace (flags 00) is not exported, nor is its storage work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standard_traces_endpoint_exports_sampled_calls_only() {
    const UNSAMPLED_TRACE_ID: &str = "0af7651916cd43dd8448eb211c80319c";
    let collector = Collector::default();
    let (url, _serving) = collector.start().await;
    let dir = tempfile::tempdir().expect("temporary directory");
    let port = free_port();
    let metrics = format!("127.0.0.1:{port}");
    let mut command =
        ServerProcess::durable(&dir.path().join("data"), &["--metrics-listen", &metrics]);
    command.env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", &url).env("RUST_LOG", "info");
    let mut server = ServerProcess::spawn(command);
    let mut client = server.client().await;
    let earn = add_request("alice", "", "DANNON", 1, "2024-01-01T00:00:00Z");
    let unsampled = with_traceparent(Request::new(earn.clone()), UNSAMPLED_TRACE_ID, false);
    client.add_transaction(unsampled).await.expect("accepted");
    let sampled = with_traceparent(Request::new(earn), TRACE_ID, true);
    client.add_transaction(sampled).await.expect("accepted");
    let spans = collector.wait_for(&["AddTransaction", "journal_wait"]).await;
    let scraped = scrape_async(port).await;
    let dropped = crate::common::metrics::sample(&scraped, "points_trace_spans_dropped_total");
    assert_eq!(dropped.unwrap_or(0.0), 0.0, "spans were dropped");
    // Shutting down sends whatever is left: after it, nothing else was
    // exported (not the unsampled call as a trace of its own either), and
    // nothing was dropped that could have hidden it.
    server.terminate();
    assert!(server.wait(Duration::from_secs(20)).success(), "a clean shutdown");
    let others: Vec<Received> = collector
        .received
        .lock()
        .expect("the collector's spans")
        .iter()
        .filter(|(_, span)| hex::encode(&span.trace_id) != TRACE_ID)
        .cloned()
        .collect();
    assert!(others.is_empty(), "an unsampled call was exported: {others:#?}");
    let calls = spans.iter().filter(|(_, span)| span.name == "AddTransaction").count();
    assert_eq!(calls, 1, "{spans:#?}");
}

/// An OTLP protocol other than gRPC (an OTLP/HTTP collector's) stops
/// start-up with what to do, rather than failing every export.
#[test]
fn an_otlp_protocol_other_than_grpc_stops_start_up() {
    let mut command = ServerProcess::in_memory(&[]);
    command
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf");
    let exited = ServerProcess::run_to_exit(command);
    assert!(!exited.status.success());
    assert!(exited.log.contains("only \"grpc\" is spoken"), "{}", exited.log);
    assert!(exited.log.contains("port 4317"), "{}", exited.log);
}

/// A malformed OTLP endpoint stops start-up with what to give instead.
#[test]
fn a_bad_otlp_endpoint_stops_start_up_with_what_to_give() {
    let exited = ServerProcess::run_to_exit(ServerProcess::in_memory(&[
        "--otlp-endpoint",
        "collector:4317",
    ]));
    assert!(!exited.status.success());
    assert!(exited.log.contains("give --otlp-endpoint"), "{}", exited.log);
    assert!(exited.log.contains("as http://host:port"), "{}", exited.log);
}

/// A server stopped with SIGTERM sends the spans it still has queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_queued_at_shutdown_are_sent() {
    let collector = Collector::default();
    let (url, _serving) = collector.start().await;
    let mut server = ServerProcess::start(&["--otlp-endpoint", &url]);
    let mut client = server.client().await;
    let earn = add_request("alice", "", "DANNON", 1, "2024-01-01T00:00:00Z");
    let request = with_traceparent(Request::new(earn), TRACE_ID, true);
    client.add_transaction(request).await.expect("accepted");
    // At once: the span is still in the queue, waiting for its batch.
    server.terminate();
    let spans = collector.wait_for(&["AddTransaction"]).await;
    assert!(spans.iter().any(|(_, span)| hex::encode(&span.parent_span_id) == PARENT_SPAN_ID));
}
