//! An OTLP/gRPC trace collector that only counts what it receives: for
//! measuring what exporting spans costs the server (`points-bench --spawn
//! --server-arg=--otlp-endpoint=http://127.0.0.1:4317`) without a real
//! collector's own cost on the same cores.
//!
//! ```text
//! cargo run --release --example otlp_sink -- 127.0.0.1:4317
//! ```
//!
//! Prints the spans received every 5 seconds.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use tonic::{Request, Response, Status};

/// An OTLP `ExportTraceServiceRequest` decoded only as far as its spans,
/// which stay undecoded bytes: counting them costs the sink little, so that
/// it takes as little as it can of the cores it shares with the server (a
/// real collector would run elsewhere). Other fields are skipped.
#[derive(Clone, PartialEq, prost::Message)]
struct ExportRequestSpans {
    #[prost(message, repeated, tag = "1")]
    resource_spans: Vec<ResourceSpans>,
}

/// `ResourceSpans`, its scopes only.
#[derive(Clone, PartialEq, prost::Message)]
struct ResourceSpans {
    #[prost(message, repeated, tag = "2")]
    scope_spans: Vec<ScopeSpans>,
}

/// `ScopeSpans`, its spans undecoded.
#[derive(Clone, PartialEq, prost::Message)]
struct ScopeSpans {
    #[prost(bytes = "bytes", repeated, tag = "2")]
    spans: Vec<bytes::Bytes>,
}

/// Counts the spans exported to it.
#[derive(Debug, Clone, Default)]
struct Sink {
    spans: Arc<AtomicU64>,
}

impl tonic::server::UnaryService<ExportRequestSpans> for Sink {
    type Response = ExportTraceServiceResponse;
    type Future = std::future::Ready<Result<Response<Self::Response>, Status>>;

    fn call(&mut self, request: Request<ExportRequestSpans>) -> Self::Future {
        let spans: usize = request
            .into_inner()
            .resource_spans
            .iter()
            .flat_map(|resource| &resource.scope_spans)
            .map(|scope| scope.spans.len())
            .sum();
        self.spans.fetch_add(spans as u64, Ordering::Relaxed);
        std::future::ready(Ok(Response::new(ExportTraceServiceResponse { partial_success: None })))
    }
}

impl tower_service::Service<http::Request<tonic::body::Body>> for Sink {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _context: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    /// Every method of the service is taken as `Export`, its only one.
    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let sink = self.clone();
        Box::pin(async move {
            let codec =
                tonic_prost::ProstCodec::<ExportTraceServiceResponse, ExportRequestSpans>::default(
                );
            Ok(tonic::server::Grpc::new(codec).unary(sink, request).await)
        })
    }
}

impl tonic::server::NamedService for Sink {
    const NAME: &'static str = "opentelemetry.proto.collector.trace.v1.TraceService";
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let address = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:4317".to_owned());
    let sink = Sink::default();
    let spans = Arc::clone(&sink.spans);
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(Duration::from_secs(5));
        loop {
            ticks.tick().await;
            println!("otlp_sink: {} spans received", spans.load(Ordering::Relaxed));
        }
    });
    println!("otlp_sink: listening on {address}");
    tonic::transport::Server::builder().add_service(sink).serve(address.parse()?).await?;
    Ok(())
}
