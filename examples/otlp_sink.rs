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

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use tonic::{Request, Response, Status};

/// Counts the spans exported to it.
#[derive(Debug, Clone, Default)]
struct Sink {
    spans: Arc<AtomicU64>,
}

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let spans: usize = request
            .into_inner()
            .resource_spans
            .iter()
            .flat_map(|resource| &resource.scope_spans)
            .map(|scope| scope.spans.len())
            .sum();
        self.spans.fetch_add(spans as u64, Ordering::Relaxed);
        Ok(Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
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
    tonic::transport::Server::builder()
        .add_service(TraceServiceServer::new(sink))
        .serve(address.parse()?)
        .await?;
    Ok(())
}
