//! Calls below the generated client: request bodies that are not valid
//! protobuf ([`call_raw`]), HTTP/2 connections driven by hand
//! ([`H2Connection`]) for calls that never finish sending, and waiting for
//! the server to close a connection ([`closed_after`]).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tonic::Status;
use tonic::transport::Channel;

/// A gRPC codec that sends and receives raw bytes, for requests that are not
/// valid protobuf.
#[derive(Debug, Clone, Default)]
pub struct RawBytesCodec;

impl tonic::codec::Codec for RawBytesCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawBytesCodec;
    type Decoder = RawBytesCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawBytesCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawBytesCodec
    }
}

impl tonic::codec::Encoder for RawBytesCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(
        &mut self,
        item: Vec<u8>,
        destination: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), Status> {
        use bytes::BufMut;
        destination.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawBytesCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(
        &mut self,
        source: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, Status> {
        use bytes::Buf;
        let mut bytes = vec![0; source.remaining()];
        source.copy_to_slice(&mut bytes);
        Ok(Some(bytes))
    }
}

/// Sends `body` as the raw request message of `method` (a full path such as
/// `/points.v1.PointsService/Spend`).
pub async fn call_raw(
    channel: Channel,
    method: &'static str,
    body: Vec<u8>,
) -> Result<Vec<u8>, Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.map_err(|error| Status::unavailable(error.to_string()))?;
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(method);
    grpc.unary(tonic::Request::new(body), path, RawBytesCodec)
        .await
        .map(tonic::Response::into_inner)
}

/// A raw HTTP/2 client connection: requests go through the handle, and the
/// task drives the connection (answering the server's pings) until it closes.
pub struct H2Connection {
    pub requests: h2::client::SendRequest<Bytes>,
    pub driver: JoinHandle<Result<(), h2::Error>>,
    pub pings: h2::PingPong,
}

impl H2Connection {
    /// Connects to `address` and finishes the HTTP/2 handshake.
    pub async fn open(address: SocketAddr) -> Self {
        let tcp = TcpStream::connect(address).await.expect("connect");
        let (requests, mut connection) =
            h2::client::handshake(tcp).await.expect("HTTP/2 handshake");
        let pings = connection.ping_pong().expect("ping-pong is taken once");
        let driver = tokio::spawn(connection);
        Self { requests, driver, pings }
    }

    /// Starts a call whose request body announces `announced` bytes, sends
    /// `sent` of them and never ends; returns the response future and the
    /// body's sender (keep it alive).
    pub async fn start_unfinished_call(
        &self,
        method: &str,
        token: Option<&str>,
        announced: u32,
        sent: usize,
    ) -> (h2::client::ResponseFuture, h2::SendStream<Bytes>) {
        let mut requests =
            self.requests.clone().ready().await.expect("the connection takes a stream");
        let (response, mut body) =
            requests.send_request(grpc_request(method, token), false).expect("send the headers");
        body.send_data(message_prefix(announced), false).expect("send the message prefix");
        if sent > 0 {
            body.send_data(Bytes::from(vec![0x0a; sent]), false).expect("send part of the message");
        }
        (response, body)
    }
}

/// The headers of a PointsService call.
pub fn grpc_request(method: &str, token: Option<&str>) -> http::Request<()> {
    let mut request = http::Request::builder()
        .method("POST")
        .uri(format!("http://localhost/points.v1.PointsService/{method}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    request.body(()).expect("a valid request")
}

/// The 5-byte gRPC message prefix announcing an uncompressed message of `length` bytes.
pub fn message_prefix(length: u32) -> Bytes {
    let mut prefix = vec![0u8];
    prefix.extend_from_slice(&length.to_be_bytes());
    Bytes::from(prefix)
}

/// The status of a response, from its headers (trailers-only) or its trailers.
pub async fn status_of(response: http::Response<h2::RecvStream>) -> Status {
    if let Some(status) = Status::from_header_map(response.headers()) {
        return status;
    }
    let mut body = response.into_body();
    while let Some(data) = body.data().await {
        let data = data.expect("response data");
        let _ = body.flow_control().release_capacity(data.len());
    }
    let trailers = body.trailers().await.expect("trailers").expect("trailers are sent");
    Status::from_header_map(&trailers).expect("grpc-status in the trailers")
}

/// Reads (and discards) until the server closes the connection, and returns
/// how long after `since` that was; fails the test after `limit`.
pub async fn closed_after(
    stream: &mut (impl tokio::io::AsyncRead + Unpin),
    since: Instant,
    limit: Duration,
) -> Duration {
    let mut buffer = [0u8; 4096];
    loop {
        match tokio::time::timeout_at((since + limit).into(), stream.read(&mut buffer)).await {
            Err(_) => panic!("the server did not close the connection within {limit:?}"),
            Ok(Ok(0) | Err(_)) => return since.elapsed(),
            Ok(Ok(_)) => continue, // the server's SETTINGS frame, or TLS records
        }
    }
}
