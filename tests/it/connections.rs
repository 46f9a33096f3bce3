//! Connections cannot stall the real binary: bytes that are not HTTP/2,
//! slow and half-open connections, thousands of idle connections under a
//! small open-files limit, the connection limit, the handshake timeout, and
//! the idle-connection timeout (which keepalive pings do not reset, and
//! calls in progress do).

use crate::common::client::{Client, add, balances, connect_to};
use crate::common::metrics::{free_port, scrape_async};
use crate::common::raw::{H2Connection, closed_after, grpc_request, message_prefix, status_of};
use crate::common::wait::eventually;
use crate::common::{ServerProcess, TestServer};

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use bytes::Bytes;
use points::proto::v1::GetBalancesRequest;
use tokio::net::TcpStream;
use tonic::Code;

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

/// The value of the sample whose line starts with `series`, or 0 when absent.
fn sample(metrics: &str, series: &str) -> f64 {
    crate::common::metrics::sample(metrics, series).unwrap_or(0.0)
}

/// Bytes that are not HTTP/2 close that connection only; the server keeps serving.
#[tokio::test]
async fn garbage_on_the_socket_does_not_take_the_server_down() {
    let server = TestServer::start().await;
    let address = server.address;
    tokio::task::spawn_blocking(move || {
        let payloads: [&[u8]; 4] = [
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            &[0u8; 4096],
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\xff\xff\xff\xff\xff\xff\xff\xff\xff",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
        ];
        for payload in payloads {
            let mut stream = std::net::TcpStream::connect(address).expect("connect");
            stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
            // The server may close the connection while we write: that is fine.
            let _ = stream.write_all(payload);
            let mut sink = Vec::new();
            let _ = stream.read_to_end(&mut sink);
        }
    })
    .await
    .expect("garbage task");
    let mut client = server.client().await;
    let reply = client.get_balances(GetBalancesRequest::default()).await;
    assert!(reply.is_ok(), "server still serves: {reply:?}");
    server.stop().await.expect("clean stop");
}

/// Connections that never finish the handshake, or stop mid-frame, do not
/// stop others from being served, and cost bounded memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_half_open_connections_do_not_block_other_clients() {
    let server = ServerProcess::start(&[]);
    let before_kib = server.resident_kib();
    let address = server.address;
    let stalled = tokio::task::spawn_blocking(move || {
        (0..300)
            .map(|index| {
                let mut stream = std::net::TcpStream::connect(address).expect("connect");
                let partial: &[u8] = match index % 3 {
                    0 => b"",
                    1 => b"PRI * HTTP/2.0\r\n",
                    _ => b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04\x00\x00\x00\x00\x00",
                };
                stream.write_all(partial).expect("write");
                stream
            })
            .collect::<Vec<_>>()
    })
    .await
    .expect("open stalled connections");
    let mut client = server.client().await;
    for day in 1..=50 {
        add(&mut client, "DANNON", 1, &format!("2024-01-{:02}T00:00:00Z", 1 + day % 28)).await;
    }
    assert_eq!(balances(&mut client).await["DANNON"], 50);
    let after_kib = server.resident_kib();
    assert!(
        after_kib < before_kib + 64 * 1024,
        "resident memory grew from {before_kib} KiB to {after_kib} KiB"
    );
    drop(stalled);
}

/// 3,000 connections that never send a byte, against a server started with a
/// soft open-files limit of 1,024: the server raises its limit, accepts them
/// all, and a well-behaved client is still served within a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_thousand_idle_connections_do_not_lock_out_a_well_behaved_client() {
    const IDLE: usize = 3_000;
    raise_own_open_files_limit(IDLE as u64 + 256);
    let port = free_port();
    let metrics = format!("127.0.0.1:{port}");
    // The idle connections must stay open throughout, and be counted.
    let args = ["--handshake-timeout-ms", "60000", "--metrics-listen", &metrics];
    let server = ServerProcess::spawn(ServerProcess::under_ulimit(
        "-Sn 1024",
        &ServerProcess::in_memory(&args),
    ));
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
        (sample(&scrape_async(port).await, "points_connections_open") >= IDLE as f64).then_some(())
    })
    .await;

    let started = Instant::now();
    let served = tokio::time::timeout(Duration::from_secs(10), async {
        let mut client =
            connect_to(server.address).connect_timeout(Duration::from_secs(5)).client().await;
        client.get_balances(GetBalancesRequest::default()).await
    })
    .await
    .expect("the well-behaved client was not served within 10 s");
    let elapsed = started.elapsed();
    served.expect("the well-behaved client is served");
    assert!(elapsed < Duration::from_secs(1), "served in {elapsed:?}, not within a second");
    drop(idle);
}

/// Beyond --max-connections a new connection is closed at once and counted;
/// when one closes, a new client is served again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_limit_are_closed_at_once_and_counted() {
    let port = free_port();
    let metrics = format!("127.0.0.1:{port}");
    let server = ServerProcess::start(&["--max-connections", "4", "--metrics-listen", &metrics]);
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(TcpStream::connect(server.address).await.expect("connect"));
    }
    // The server accepts in order, so the fifth is the one past the limit.
    let mut refused = TcpStream::connect(server.address).await.expect("TCP connect");
    let elapsed = closed_after(&mut refused, Instant::now(), Duration::from_secs(5)).await;
    assert!(elapsed < Duration::from_secs(2), "closed after {elapsed:?}");
    let metrics = scrape_async(port).await;
    assert_eq!(sample(&metrics, "points_connections_refused_total"), 1.0, "{metrics}");
    assert_eq!(sample(&metrics, "points_connections_open"), 4.0, "{metrics}");

    // One connection goes away: its place is given to the next client.
    drop(held.pop());
    eventually(
        "a place to come free after a connection closed",
        Duration::from_secs(5),
        || async {
            let channel = connect_to(server.address).try_channel().await.ok()?;
            let mut client = Client::new(channel);
            let request = GetBalancesRequest::default();
            client.get_balances(request).await.ok()
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
    let mut speaking = H2Connection::open(server.address).await;
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
    let mut connection = H2Connection::open(server.address).await;

    // A call in progress for three times the idle timeout.
    let (response, mut body) = connection.start_unfinished_call("GetBalances", None, 2, 0).await;
    let pinging = async {
        loop {
            connection.pings.ping(h2::Ping::opaque()).await.expect("a pong");
            // The pace of the client's pings, not a wait for anything.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    // Staying busy past the idle timeout is what is tested.
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
            // The pace of the client's pings, not a wait for anything.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let closed = tokio::time::timeout(Duration::from_secs(5), &mut connection.driver).await;
    let elapsed = started.elapsed();
    assert!(closed.is_ok(), "an idle connection was not closed within 5 s");
    assert!(elapsed >= Duration::from_millis(400), "closed after only {elapsed:?}");
    pinging.abort();
}
