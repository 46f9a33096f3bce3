//! Shutdown of the real binary: SIGTERM and SIGINT stop it cleanly with exit
//! code 0, and a connection that never finishes its handshake cannot hold
//! shutdown past the grace period.

use crate::common::ServerProcess;
use crate::common::client::{add_request, try_add};
use crate::common::metrics::{free_port, sample, scrape};
use crate::common::wait::eventually_blocking;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// SIGTERM stops the real binary with exit code 0, with a client still connected.
// Multi-threaded so the client's connection keeps answering while this thread waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_server_cleanly_with_exit_code_zero() {
    let mut server = ServerProcess::start(&[]);
    let mut client = server.client().await;
    let reply =
        try_add(&mut client, add_request("", "", "DANNON", 10, "2024-01-01T00:00:00Z")).await;
    assert!(reply.is_ok(), "{reply:?}");
    let started = Instant::now();
    server.signal("TERM");
    let status = server.wait(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "log:\n{}", server.log());
    // Well inside the 10 s grace period: an idle connection does not hold shutdown.
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    assert!(server.log().contains("server stopped"), "log:\n{}", server.log());
}

/// SIGINT (Ctrl-C) stops the real binary with exit code 0.
#[test]
fn sigint_stops_the_server_cleanly_with_exit_code_zero() {
    let mut server = ServerProcess::start(&[]);
    server.signal("INT");
    let status = server.wait(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "log:\n{}", server.log());
}

/// A connection that never finishes its handshake cannot hold shutdown past the grace period.
#[test]
fn shutdown_is_bounded_by_the_grace_period() {
    let port = free_port();
    let metrics = format!("127.0.0.1:{port}");
    let mut server =
        ServerProcess::start(&["--shutdown-grace-ms", "300", "--metrics-listen", &metrics]);
    // Half a preface: the server waits for the rest of it.
    let mut stalled = TcpStream::connect(server.address).expect("connect");
    stalled.write_all(b"PRI * HTTP/2.0\r\n").expect("write");
    eventually_blocking(
        "the server to hold the stalled connection",
        Duration::from_secs(10),
        || {
            let open = sample(&scrape(port), "points_connections_open").unwrap_or(0.0);
            (open >= 1.0).then_some(())
        },
    );
    let started = Instant::now();
    server.signal("TERM");
    let status = server.wait(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "log:\n{}", server.log());
    assert!(started.elapsed() < Duration::from_secs(15), "shutdown took {:?}", started.elapsed());
    drop(stalled);
}
