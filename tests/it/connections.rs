//! Connections and calls cannot stall the real binary: thousands of idle
//! connections under a small open-files limit, the connection limit, the
//! handshake timeout (plaintext and TLS), the idle-connection timeout (which
//! keepalive pings do not reset, and calls in progress do), unauthenticated
//! calls refused before their body is read, and one greedy client against the
//! per-client share of the call slots.

use crate::common;
use crate::common::refusal::reason;
use crate::common::wait::eventually;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::ServerProcess;
use common::metrics::free_port;
use points::auth::token_sha256;
use points::proto::v1::GetBalancesRequest;
use points::proto::v1::points_service_client::PointsServiceClient;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

/// Raises this process's soft open-files limit to its hard limit: the test
/// holds the client end of every connection it opens.
fn raise_own_open_files_limit(needed: u64) {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit read or write one live rlimit.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0, "getrlimit");
        limit.rlim_cur = limit.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0, "setrlimit");
    }
    assert!(
        limit.rlim_cur >= needed,
        "this test needs {needed} open files; the hard limit is {}",
        limit.rlim_cur
    );
}

/// Writes a tokens file with two admin clients, "greedy" and "polite", whose
/// tokens are their names followed by "-token".
fn tokens_file(dir: &std::path::Path) -> String {
    let text = ["greedy", "polite"]
        .map(|name| {
            format!(
                "[[client]]\nname = \"{name}\"\ntoken_sha256 = \"{}\"\nroles = [\"admin\"]\n",
                token_sha256(&format!("{name}-token"))
            )
        })
        .join("\n");
    let path = dir.join("tokens.toml");
    std::fs::write(&path, text).expect("write the tokens file");
    path.to_str().expect("a UTF-8 path").to_owned()
}

fn with_token<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

async fn tonic_client(address: SocketAddr) -> PointsServiceClient<Channel> {
    let channel = Channel::from_shared(format!("http://{address}"))
        .expect("a valid URI")
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .expect("connect");
    PointsServiceClient::new(channel)
}

/// Reads (and discards) until the server closes the connection, and returns
/// how long after `since` that was; fails the test after `limit`.
async fn closed_after(
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

/// A raw HTTP/2 client connection: requests go through the handle, and the
/// task drives the connection (answering the server's pings) until it closes.
struct H2Connection {
    requests: h2::client::SendRequest<Bytes>,
    driver: JoinHandle<Result<(), h2::Error>>,
    pings: h2::PingPong,
}

async fn h2_connect(address: SocketAddr) -> H2Connection {
    let tcp = TcpStream::connect(address).await.expect("connect");
    let (requests, mut connection) = h2::client::handshake(tcp).await.expect("HTTP/2 handshake");
    let pings = connection.ping_pong().expect("ping-pong is taken once");
    let driver = tokio::spawn(connection);
    H2Connection { requests, driver, pings }
}

/// The headers of a PointsService call.
fn grpc_request(method: &str, token: Option<&str>) -> http::Request<()> {
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
fn message_prefix(length: u32) -> Bytes {
    let mut prefix = vec![0u8];
    prefix.extend_from_slice(&length.to_be_bytes());
    Bytes::from(prefix)
}

/// Starts a call whose request body announces `announced` bytes and never
/// ends; returns the response future and the body's sender (keep it alive).
async fn start_unfinished_call(
    connection: &H2Connection,
    method: &str,
    token: Option<&str>,
    announced: u32,
    sent: usize,
) -> (h2::client::ResponseFuture, h2::SendStream<Bytes>) {
    let mut requests =
        connection.requests.clone().ready().await.expect("the connection takes a stream");
    let (response, mut body) =
        requests.send_request(grpc_request(method, token), false).expect("send the headers");
    body.send_data(message_prefix(announced), false).expect("send the message prefix");
    if sent > 0 {
        body.send_data(Bytes::from(vec![0x0a; sent]), false).expect("send part of the message");
    }
    (response, body)
}

/// The status of a response, from its headers (trailers-only) or its trailers.
async fn status_of(response: http::Response<h2::RecvStream>) -> Status {
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

/// 3,000 connections that never send a byte, against a server started with a
/// soft open-files limit of 1,024: the server raises its limit, accepts them
/// all, and a well-behaved client is still served within a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_thousand_idle_connections_do_not_lock_out_a_well_behaved_client() {
    const IDLE: usize = 3_000;
    raise_own_open_files_limit(IDLE as u64 + 256);
    let port = free_port();
    let mut command = std::process::Command::new("sh");
    command
        .args(["-c", r#"ulimit -Sn 1024 && exec "$0" "$@""#])
        .arg(env!("CARGO_BIN_EXE_points-server"))
        .args(["--listen", "127.0.0.1:0", "--in-memory"])
        // The idle connections must stay open throughout, and be counted.
        .args(["--handshake-timeout-ms", "60000", "--metrics-listen"])
        .arg(format!("127.0.0.1:{port}"));
    let server = ServerProcess::spawn(command);
    assert!(server.log().contains("raised the open-files limit"), "{}", server.log());
    let address = server.address;
    let idle = tokio::time::timeout(Duration::from_secs(10), async {
        let mut idle = Vec::with_capacity(IDLE);
        for _ in 0..IDLE {
            idle.push(TcpStream::connect(address).await.expect("connect an idle connection"));
        }
        idle
    })
    .await
    .expect("the server stopped accepting before 3,000 connections");
    // The server holds every one of them open.
    eventually("the server to hold every idle connection", Duration::from_secs(10), || async {
        (sample(&scrape(port).await, "points_connections_open") >= IDLE as f64).then_some(())
    })
    .await;

    let started = Instant::now();
    let served = tokio::time::timeout(Duration::from_secs(10), async {
        let mut client = tonic_client(address).await;
        client.get_balances(GetBalancesRequest::default()).await
    })
    .await
    .expect("the well-behaved client was not served within 10 s");
    let elapsed = started.elapsed();
    served.expect("the well-behaved client is served");
    assert!(elapsed < Duration::from_secs(1), "served in {elapsed:?}, not within a second");
    drop(idle);
}

/// GET /metrics, off the runtime's threads.
async fn scrape(port: u16) -> String {
    tokio::task::spawn_blocking(move || common::metrics::scrape(port)).await.expect("scrape")
}

/// The value of the sample whose line starts with `series`, or 0 when absent.
fn sample(metrics: &str, series: &str) -> f64 {
    common::metrics::sample(metrics, series).unwrap_or(0.0)
}

/// Beyond --max-connections a new connection is closed at once and counted;
/// when one closes, a new client is served again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_limit_are_closed_at_once_and_counted() {
    let port = free_port();
    let server = ServerProcess::start(&[
        "--max-connections",
        "4",
        "--metrics-listen",
        &format!("127.0.0.1:{port}"),
    ]);
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(TcpStream::connect(server.address).await.expect("connect"));
    }
    // The server accepts in order, so the fifth is the one past the limit.
    let mut refused = TcpStream::connect(server.address).await.expect("TCP connect");
    let elapsed = closed_after(&mut refused, Instant::now(), Duration::from_secs(5)).await;
    assert!(elapsed < Duration::from_secs(2), "closed after {elapsed:?}");
    let metrics = scrape(port).await;
    assert_eq!(sample(&metrics, "points_connections_refused_total"), 1.0, "{metrics}");
    assert_eq!(sample(&metrics, "points_connections_open"), 4.0, "{metrics}");

    // One connection goes away: its place is given to the next client.
    drop(held.pop());
    eventually(
        "a place to come free after a connection closed",
        Duration::from_secs(5),
        || async {
            let channel = Channel::from_shared(server.uri()).unwrap().connect().await.ok()?;
            PointsServiceClient::new(channel).get_balances(GetBalancesRequest::default()).await.ok()
        },
    )
    .await;
    drop(held);
}

/// A connection that sends nothing, or only part of the HTTP/2 preface, is
/// closed by --handshake-timeout-ms; one that sent its preface is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_without_an_http2_preface_are_closed_by_the_handshake_timeout() {
    let server = ServerProcess::start(&["--handshake-timeout-ms", "300"]);
    let connected = Instant::now();
    let mut silent = TcpStream::connect(server.address).await.expect("connect");
    let mut partial = TcpStream::connect(server.address).await.expect("connect");
    {
        use tokio::io::AsyncWriteExt;
        partial.write_all(b"PRI * HTTP/2.0\r\n").await.expect("write half a preface");
    }
    let mut speaking = h2_connect(server.address).await;
    for stream in [&mut silent, &mut partial] {
        let elapsed = closed_after(stream, connected, Duration::from_secs(5)).await;
        assert!(elapsed >= Duration::from_millis(250), "closed after only {elapsed:?}");
    }
    // Past the handshake timeout, the connection that sent its preface still serves.
    let (response, mut body) = speaking
        .requests
        .send_request(grpc_request("GetBalances", None), false)
        .expect("the connection is still open");
    body.send_data(message_prefix(0), true).expect("send an empty message");
    let response = response.await.expect("a response");
    let status = status_of(response).await;
    assert_eq!(status.code(), Code::Ok, "{status:?}");
    assert!(!speaking.driver.is_finished());
}

/// Under TLS, the handshake timeout bounds the TLS handshake and the HTTP/2
/// preface after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_handshakes_and_prefaces_are_bounded_by_the_handshake_timeout() {
    use tokio_rustls::rustls;
    let dir = tempfile::tempdir().expect("temporary directory");
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("a certificate");
    let certificate = dir.path().join("server.pem");
    let key = dir.path().join("server.key");
    std::fs::write(&certificate, certified.cert.pem()).expect("write");
    std::fs::write(&key, certified.signing_key.serialize_pem()).expect("write");
    let server = ServerProcess::start(&[
        "--tls-cert",
        certificate.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
        "--handshake-timeout-ms",
        "300",
    ]);

    // No ClientHello at all.
    let connected = Instant::now();
    let mut silent = TcpStream::connect(server.address).await.expect("connect");
    // A finished TLS handshake, then no HTTP/2 preface.
    let mut roots = rustls::RootCertStore::empty();
    roots.add(certified.cert.der().clone()).expect("a trusted root");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tls_connected = Instant::now();
    let tcp = TcpStream::connect(server.address).await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("a server name");
    let mut tls = connector.connect(name, tcp).await.expect("the TLS handshake succeeds");

    let elapsed = closed_after(&mut silent, connected, Duration::from_secs(5)).await;
    assert!(elapsed >= Duration::from_millis(250), "closed after only {elapsed:?}");
    let elapsed = closed_after(&mut tls, tls_connected, Duration::from_secs(5)).await;
    assert!(elapsed >= Duration::from_millis(200), "closed after only {elapsed:?}");
}

/// A connection without a call in progress is closed after
/// --idle-connection-timeout-ms, even while keepalive pings flow both ways;
/// a call in progress keeps it open however long it takes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_and_pings_do_not_keep_them_open() {
    let server = ServerProcess::start(&[
        "--idle-connection-timeout-ms",
        "500",
        "--http2-keepalive-interval-ms",
        "100",
    ]);
    let mut connection = h2_connect(server.address).await;

    // A call in progress for three times the idle timeout.
    let (response, mut body) = start_unfinished_call(&connection, "GetBalances", None, 2, 0).await;
    let pinging = async {
        loop {
            connection.pings.ping(h2::Ping::opaque()).await.expect("a pong");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let waited = tokio::time::timeout(Duration::from_millis(1500), pinging).await;
    assert!(waited.is_err(), "pinging stopped");
    assert!(!connection.driver.is_finished(), "closed while a call was in progress");
    body.send_data(Bytes::from_static(&[0x0a, 0x00]), true).expect("finish the message");
    let status = status_of(response.await.expect("a response")).await;
    assert_eq!(status.code(), Code::Ok, "{status:?}");

    // Now idle: closed after the timeout, though pings go on.
    let started = Instant::now();
    let mut pings = connection.pings;
    let pinging = tokio::spawn(async move {
        while pings.ping(h2::Ping::opaque()).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let closed = tokio::time::timeout(Duration::from_secs(5), &mut connection.driver).await;
    let elapsed = started.elapsed();
    assert!(closed.is_ok(), "an idle connection was not closed within 5 s");
    assert!(elapsed >= Duration::from_millis(400), "closed after only {elapsed:?}");
    pinging.abort();
}

/// A call without a valid token is refused with UNAUTHENTICATED from its
/// headers, while its 1 MB body is still unsent: the server does not wait
/// for (or buffer) the body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_calls_are_refused_before_their_body_is_read() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let tokens = tokens_file(dir.path());
    let server = ServerProcess::start(&["--tokens-file", &tokens]);
    let connection = h2_connect(server.address).await;
    for (token, expected) in [(None, "TOKEN_MISSING"), (Some("forged"), "TOKEN_UNKNOWN")] {
        let started = Instant::now();
        let (response, body) =
            start_unfinished_call(&connection, "AddTransactions", token, 1_000_000, 16 * 1024)
                .await;
        let response = tokio::time::timeout(Duration::from_secs(5), response)
            .await
            .expect("no answer while the body was unfinished: the server waited for it")
            .expect("a response");
        let status = status_of(response).await;
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
        assert_eq!(reason(&status), expected);
        assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
        drop(body);
    }
    // The server serves on, to callers with a token.
    let mut client = tonic_client(server.address).await;
    client
        .get_balances(with_token(GetBalancesRequest::default(), "polite-token"))
        .await
        .expect("an authenticated call");
}

/// One client holding its whole share of the call slots is refused more with
/// CLIENT_OVERLOADED, while another client is still served; the share comes
/// back when its calls end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_greedy_client_cannot_take_all_call_slots() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let tokens = tokens_file(dir.path());
    let server = ServerProcess::start(&[
        "--tokens-file",
        &tokens,
        "--max-concurrent-calls",
        "8",
        "--max-concurrent-calls-per-client",
        "3",
    ]);
    // The greedy client opens 10 calls that never finish sending.
    let greedy = h2_connect(server.address).await;
    let mut bodies = Vec::new();
    let mut answers: Vec<JoinHandle<Option<Status>>> = Vec::new();
    for _ in 0..10 {
        let (response, body) =
            start_unfinished_call(&greedy, "GetBalances", Some("greedy-token"), 2, 0).await;
        bodies.push(body);
        answers.push(tokio::spawn(async move {
            match response.await {
                Ok(response) => Some(status_of(response).await),
                Err(_) => None,
            }
        }));
    }
    // Seven are refused at once; three hold their slots, waiting for bodies.
    eventually("the calls past the share to be refused", Duration::from_secs(5), || async {
        (answers.iter().filter(|answer| answer.is_finished()).count() >= 7).then_some(())
    })
    .await;
    let mut waiting = Vec::new();
    for answer in answers {
        if answer.is_finished() {
            let status = answer.await.expect("the task").expect("a response");
            assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
            assert_eq!(reason(&status), "CLIENT_OVERLOADED");
            assert!(status.message().contains("\"greedy\""), "{status:?}");
        } else {
            waiting.push(answer);
        }
    }
    assert_eq!(waiting.len(), 3, "exactly the share is in progress");

    // Another client is served meanwhile.
    let mut polite = tonic_client(server.address).await;
    polite
        .get_balances(with_token(GetBalancesRequest::default(), "polite-token"))
        .await
        .expect("another client is served while the greedy one is at its share");

    // The greedy client goes away; its share comes back.
    drop(bodies);
    greedy.driver.abort();
    drop(greedy.requests);
    let greedy = tonic_client(server.address).await;
    eventually("the greedy client's slots to come back", Duration::from_secs(5), || {
        let mut greedy = greedy.clone();
        async move {
            let request = with_token(GetBalancesRequest::default(), "greedy-token");
            match greedy.get_balances(request).await {
                Ok(_) => Some(()),
                Err(status) => {
                    assert_eq!(reason(&status), "CLIENT_OVERLOADED", "{status:?}");
                    None
                }
            }
        }
    })
    .await;
    for answer in waiting {
        answer.abort();
    }
}
