//! Assembles the gRPC server, points.v1.PointsService plus grpc.health.v1 and
//! server reflection, and runs it on a listener it is handed until a shutdown
//! future completes. Taking the listener and the shutdown signal as arguments
//! lets tests run the real server on port 0 and stop it at will.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tonic::transport::Server;
use tower_layer::Layer;

use crate::connections::{CallActivityLayer, ConnectionLimits, Incoming, ServerTls};
use crate::proto::v1::points_service_server::PointsServiceServer;
use crate::service::PointsService;

/// The PEM files of the server's TLS identity, and of the CA its clients'
/// certificates must chain to for mutual TLS.
#[derive(Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain.
    pub certificate_pem: Vec<u8>,
    /// Its private key.
    pub key_pem: Vec<u8>,
    /// The client CA; `None` for server-only TLS.
    pub client_ca_pem: Option<Vec<u8>>,
    /// With a client CA: whether every client must present a certificate
    /// (no tokens file), or may present a token instead.
    pub client_certificate_required: bool,
}

impl std::fmt::Debug for TlsFiles {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        formatter
            .debug_struct("TlsFiles")
            .field("mutual", &self.client_ca_pem.is_some())
            .finish_non_exhaustive()
    }
}

/// How the server behaves around its listener: the limits that keep one
/// client from exhausting it, and shutdown.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// After shutdown begins, how long in-flight calls get to finish before the
    /// remaining connections are dropped.
    pub shutdown_grace: Duration,
    /// Largest request message decoded; larger ones are refused unread.
    pub max_request_bytes: usize,
    /// Longest a call may run; a client's shorter grpc-timeout wins.
    pub max_call_duration: Duration,
    /// Most concurrent HTTP/2 streams per connection.
    pub max_streams_per_connection: u32,
    /// Interval of HTTP/2 keepalive pings.
    pub http2_keepalive_interval: Duration,
    /// How long a keepalive ping may go unanswered.
    pub http2_keepalive_timeout: Duration,
    /// The connection limit, and the handshake and idle-connection timeouts.
    pub connections: ConnectionLimits,
    /// TLS (with rustls and the ring provider, handshakes bounded by
    /// `connections.handshake_timeout`), or plaintext when `None`; the
    /// handle lets its files be reloaded while serving.
    pub tls: Option<ServerTls>,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            shutdown_grace: Duration::from_secs(10),
            max_request_bytes: 1024 * 1024,
            max_call_duration: Duration::from_secs(30),
            max_streams_per_connection: 256,
            http2_keepalive_interval: Duration::from_secs(30),
            http2_keepalive_timeout: Duration::from_secs(10),
            connections: ConnectionLimits::default(),
            tls: None,
        }
    }
}

/// Why the server could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The embedded descriptors could not be loaded for reflection (a build fault).
    #[error("cannot build the reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The transport failed.
    #[error("gRPC transport failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Users brought to now per tick at most; the rest wait for the next tick
/// (a second later), so that one tick never holds up shutdown for long.
const DUE_USERS_PER_TICK: usize = 10_000;

/// Every second, brings the users whose holds timed out or whose points
/// expired up to now, so that this happens within about a second even for
/// users nobody calls (and right after a restart).
async fn advance_due_users(store: Arc<crate::store::Store>) {
    let mut ticks = tokio::time::interval(std::time::Duration::from_secs(1));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        store.advance_due_users(DUE_USERS_PER_TICK).await;
    }
}

/// How often a replica over a shared database looks for changes other
/// replicas stored of the users its watch streams follow.
const FOLLOWED_POLL_INTERVAL: std::time::Duration = std::time::Duration::from_millis(250);

/// For a store shared with other replicas: wakes the watch streams of users
/// another replica changed ([`Store::wake_followers`](crate::store::Store::wake_followers)),
/// every [`FOLLOWED_POLL_INTERVAL`].
async fn wake_followers(store: Arc<crate::store::Store>) {
    let mut ticks = tokio::time::interval(FOLLOWED_POLL_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seen = std::collections::HashMap::new();
    loop {
        ticks.tick().await;
        store.wake_followers(&mut seen).await;
    }
}

/// Serves `service` on `listener` until `shutdown` completes, then stops
/// accepting, reports NOT_SERVING on health, and gives in-flight calls
/// `settings.shutdown_grace` to finish.
///
/// Connections are accepted by `connections::Incoming` (the connection
/// limit, TLS, the handshake and idle timeouts, `TCP_NODELAY`); PointsService
/// calls are admitted from their headers by the service's admission layer
/// before their bodies are read, while health and reflection stay open.
pub async fn serve(
    listener: TcpListener,
    service: PointsService,
    settings: ServerSettings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<PointsServiceServer<PointsService>>().await;

    // Tasks that run while the server does; dropping the set when `serve`
    // returns (or fails) aborts them.
    let mut background = tokio::task::JoinSet::new();
    // A failed journal means fail-stop: tell load balancers and probes.
    let store = std::sync::Arc::clone(service.store());
    let reporter = health_reporter.clone();
    background.spawn(async move {
        let reason = store.failed().await;
        tracing::error!(%reason, "store failed: health is NOT_SERVING");
        report_not_serving(&reporter).await;
    });
    // A backend whose readiness comes and goes (a database): health follows
    // it, until shutdown, after which it stays NOT_SERVING.
    let shutting_down = Arc::new(std::sync::atomic::AtomicBool::new(false));
    if let Some(mut serving) = service.store().serving() {
        let reporter = health_reporter.clone();
        let shutting_down = Arc::clone(&shutting_down);
        background.spawn(async move {
            loop {
                let ready = *serving.borrow_and_update();
                if shutting_down.load(std::sync::atomic::Ordering::Acquire) {
                    break;
                }
                if ready {
                    reporter.set_serving::<PointsServiceServer<PointsService>>().await;
                    reporter.set_service_status("", tonic_health::ServingStatus::Serving).await;
                } else {
                    report_not_serving(&reporter).await;
                }
                if serving.changed().await.is_err() {
                    break;
                }
            }
        });
    }
    background.spawn(crate::service::log_call_summaries());
    background.spawn(advance_due_users(Arc::clone(service.store())));
    if service.store().is_shared() {
        background.spawn(wake_followers(Arc::clone(service.store())));
    }

    let reflection_v1 = reflection_builder().build_v1()?;
    let reflection_v1alpha = reflection_builder().build_v1alpha()?;

    let (shutdown_started_sender, shutdown_started) = tokio::sync::oneshot::channel::<()>();
    let reporter = health_reporter.clone();
    let streams = service.clone();
    let signal = async move {
        shutdown.await;
        shutting_down.store(true, std::sync::atomic::Ordering::Release);
        // Streams would keep their connections open: end them, so that
        // their clients reconnect elsewhere.
        streams.end_streams();
        tracing::info!("shutdown requested: no new connections, finishing in-flight calls");
        report_not_serving(&reporter).await;
        // The receiver lives as long as `serve` below; nothing to do if it is gone.
        let _ = shutdown_started_sender.send(());
    };

    // TLS files were read and checked by whoever built the settings; the
    // handshakes run in `connections`.
    let tls = settings.tls.clone();
    // Callers are admitted from the headers, before the body is read; health
    // and reflection stay open.
    let points = service.admission_layer().layer(
        PointsServiceServer::new(service).max_decoding_message_size(settings.max_request_bytes),
    );
    let router = Server::builder()
        .timeout(settings.max_call_duration)
        .max_concurrent_streams(settings.max_streams_per_connection)
        .http2_keepalive_interval(Some(settings.http2_keepalive_interval))
        .http2_keepalive_timeout(Some(settings.http2_keepalive_timeout))
        // Calls in progress keep a connection from counting as idle.
        .layer(CallActivityLayer)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(points);
    let incoming = Incoming::new(listener, settings.connections.clone(), tls);
    let serving = router.serve_with_incoming_shutdown(incoming, signal);

    // tonic waits for every connection to close, however long that takes;
    // bound it so a stuck client cannot hold shutdown hostage.
    let grace_expired = async {
        if shutdown_started.await.is_ok() {
            tokio::time::sleep(settings.shutdown_grace).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        result = serving => result?,
        () = grace_expired => tracing::warn!(
            grace_ms = settings.shutdown_grace.as_millis() as u64,
            "grace period over: dropping connections that are still open"
        ),
    }
    background.abort_all();
    tracing::info!("server stopped");
    Ok(())
}

/// Health NOT_SERVING for the points service and for the server as a whole,
/// as load balancers and probes ask either.
async fn report_not_serving(reporter: &tonic_health::server::HealthReporter) {
    reporter.set_not_serving::<PointsServiceServer<PointsService>>().await;
    reporter.set_service_status("", tonic_health::ServingStatus::NotServing).await;
}

/// Reflection over everything a client may meet: points.v1, grpc.health.v1,
/// and the google.rpc error details carried in error statuses.
fn reflection_builder() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
}
