//! The real tonic server, in this process, on 127.0.0.1 with an ephemeral port.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use points::{PointsService, ServeError, ServerSettings, Store};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

use super::client::{self, Client};

/// The real tonic server, in this process, over an in-memory store.
pub struct TestServer {
    pub address: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), ServeError>>,
}

impl TestServer {
    /// Starts a server over an empty ledger.
    pub async fn start() -> Self {
        Self::start_with(ServerSettings::default()).await
    }

    /// Starts a server over an empty ledger, and a client of it.
    pub async fn start_with_client() -> (Self, Client) {
        let server = Self::start().await;
        let client = server.client().await;
        (server, client)
    }

    /// Starts a server with the given settings.
    pub async fn start_with(settings: ServerSettings) -> Self {
        let listener =
            tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind an ephemeral port");
        let address = listener.local_addr().expect("bound address");
        let (shutdown, shutdown_received) = oneshot::channel::<()>();
        let task = tokio::spawn(points::serve(
            listener,
            PointsService::new(Arc::new(Store::in_memory())),
            settings,
            async move {
                let _ = shutdown_received.await;
            },
        ));
        Self { address, shutdown: Some(shutdown), task }
    }

    /// A channel to the server.
    pub async fn channel(&self) -> Channel {
        client::connect_to(self.address).channel().await
    }

    /// A generated points client.
    pub async fn client(&self) -> Client {
        client::connect_to(self.address).client().await
    }

    /// Signals shutdown and waits for the server to stop.
    pub async fn stop(mut self) -> Result<(), ServeError> {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        tokio::time::timeout(Duration::from_secs(30), &mut self.task)
            .await
            .expect("server stops within 30 s")
            .expect("server task does not panic")
    }
}
