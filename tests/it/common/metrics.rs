//! The server's Prometheus exporter, read by tests: a port for it, a scrape
//! over plain HTTP, and one sample's value.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use super::wait::eventually_blocking;

/// A free loopback port (for a server that needs a fixed one: the
/// exporter, a private PostgreSQL cluster).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("address").port()
}

/// GET /metrics, retrying while the exporter starts (for at most 10 s).
pub fn scrape(port: u16) -> String {
    eventually_blocking(&format!("metrics on port {port}"), Duration::from_secs(10), || {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .expect("write");
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        response.starts_with("HTTP/1.1 200").then_some(response)
    })
}

/// [`scrape`] from an async test, off the runtime's threads.
pub async fn scrape_async(port: u16) -> String {
    tokio::task::spawn_blocking(move || scrape(port)).await.expect("scrape")
}

/// The value of the sample whose line starts with `series`, if there is one.
pub fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|line| line.starts_with(series))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}
