//! The one way tests open a gRPC channel ([`connect`], plaintext or TLS,
//! bounded or not), the requests tests send most, and short calls: `try_`
//! calls return the outcome, the others fail the test unless the call is
//! accepted.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use points::proto::v1::points_service_client::PointsServiceClient;
use points::proto::v1::{
    AddTransactionRequest, GetBalancesRequest, SpendRequest, SpendResponse, Transaction,
};
use tonic::Status;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use super::timestamp;

/// The generated client over a channel.
pub type Client = PointsServiceClient<Channel>;

/// A channel to be opened: plaintext unless [`Connect::tls`] is given, and
/// unbounded unless a timeout is.
#[must_use = "a channel is opened only by channel(), try_channel() or client()"]
pub struct Connect {
    uri: String,
    tls: Option<ClientTlsConfig>,
    connect_timeout: Option<Duration>,
    call_timeout: Option<Duration>,
}

/// A channel to `uri` (`http://…`, or `https://…` with [`Connect::tls`]).
pub fn connect(uri: impl Into<String>) -> Connect {
    Connect { uri: uri.into(), tls: None, connect_timeout: None, call_timeout: None }
}

/// A plaintext channel to a server listening on `address`.
pub fn connect_to(address: SocketAddr) -> Connect {
    connect(format!("http://{address}"))
}

impl Connect {
    /// Over TLS, trusting the CA `ca_pem`, expecting the server to be
    /// `domain`, and presenting `identity` (certificate and key PEM) if given.
    pub fn tls(mut self, ca_pem: &str, domain: &str, identity: Option<&(String, String)>) -> Self {
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca_pem))
            .domain_name(domain);
        if let Some((certificate, key)) = identity {
            tls = tls.identity(Identity::from_pem(certificate, key));
        }
        self.tls = Some(tls);
        self
    }

    /// Gives up connecting after `timeout`.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = Some(timeout);
        self
    }

    /// Fails every call that takes longer than `timeout`.
    pub fn call_timeout(mut self, timeout: Duration) -> Self {
        self.call_timeout = Some(timeout);
        self
    }

    /// Opens the channel, or says why it could not.
    pub async fn try_channel(self) -> Result<Channel, tonic::transport::Error> {
        let mut endpoint = Endpoint::from_shared(self.uri).expect("a valid URI");
        if let Some(timeout) = self.connect_timeout {
            endpoint = endpoint.connect_timeout(timeout);
        }
        if let Some(timeout) = self.call_timeout {
            endpoint = endpoint.timeout(timeout);
        }
        if let Some(tls) = self.tls {
            endpoint = endpoint.tls_config(tls)?;
        }
        endpoint.connect().await
    }

    /// Opens the channel, failing the test if it cannot.
    pub async fn channel(self) -> Channel {
        let uri = self.uri.clone();
        self.try_channel().await.unwrap_or_else(|error| panic!("connect to {uri}: {error}"))
    }

    /// A generated points client over the channel, failing the test if it
    /// cannot be opened.
    pub async fn client(self) -> Client {
        Client::new(self.channel().await)
    }
}

/// An AddTransaction request of `user` (with `request_id`, or "" for none).
pub fn add_request(
    user: &str,
    request_id: &str,
    payer: &str,
    points: i64,
    rfc3339: &str,
) -> AddTransactionRequest {
    AddTransactionRequest {
        user_id: user.to_owned(),
        request_id: request_id.to_owned(),
        payer: payer.to_owned(),
        points,
        timestamp: Some(timestamp(rfc3339)),
    }
}

/// An AddTransaction request for the default user, without a request id.
pub fn transaction(payer: &str, points: i64, rfc3339: &str) -> AddTransactionRequest {
    add_request("", "", payer, points, rfc3339)
}

/// A Spend request of `user` (with `request_id`, or "" for none).
pub fn spend_request(user: &str, request_id: &str, points: i64) -> SpendRequest {
    SpendRequest { user_id: user.to_owned(), request_id: request_id.to_owned(), points }
}

/// Sends `request`; the transaction recorded, or the refusal.
pub async fn try_add(
    client: &mut Client,
    request: AddTransactionRequest,
) -> Result<Transaction, Status> {
    let reply = client.add_transaction(request).await?;
    Ok(reply.into_inner().transaction.expect("reply carries the transaction"))
}

/// Sends `request`; the reply, or the refusal.
pub async fn try_spend(
    client: &mut Client,
    request: SpendRequest,
) -> Result<SpendResponse, Status> {
    client.spend(request).await.map(tonic::Response::into_inner)
}

/// Records a transaction of the default user that must be accepted.
pub async fn add(client: &mut Client, payer: &str, points: i64, rfc3339: &str) -> Transaction {
    try_add(client, transaction(payer, points, rfc3339)).await.expect("transaction accepted")
}

/// Spends points of the default user that must be there; returns (payer,
/// points) per payer.
pub async fn spend(client: &mut Client, points: i64) -> Vec<(String, i64)> {
    let reply = try_spend(client, spend_request("", "", points)).await.expect("spend accepted");
    reply.spent.into_iter().map(|entry| (entry.payer, entry.points)).collect()
}

/// Records a small history for the default user: 300 DANNON points, 200
/// UNILEVER points an hour later, and a spend of 100 (taken from DANNON).
pub async fn small_history(client: &mut Client) {
    add(client, "DANNON", 300, "2022-10-31T10:00:00Z").await;
    add(client, "UNILEVER", 200, "2022-10-31T11:00:00Z").await;
    spend(client, 100).await;
}

/// The balances of `user`.
pub async fn balances_of(client: &mut Client, user: &str) -> HashMap<String, i64> {
    let request = GetBalancesRequest { user_id: user.to_owned(), ..Default::default() };
    client.get_balances(request).await.expect("balances").into_inner().balances
}

/// The default user's balances.
pub async fn balances(client: &mut Client) -> HashMap<String, i64> {
    balances_of(client, "").await
}
