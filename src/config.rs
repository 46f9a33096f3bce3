//! The server's configuration, in one place: every option is a command-line
//! flag and an environment variable, with defaults that let
//! `cargo run --release` start a working server with no setup.

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use clap::Parser;

use crate::server::ServerSettings;

/// points-server: a loyalty-points ledger served over gRPC.
#[derive(Debug, Clone, Parser)]
#[command(name = "points-server", version, about, long_about = None)]
pub struct Config {
    /// Address to serve gRPC on (host:port; a host name resolves to its first address).
    #[arg(
        long,
        env = "POINTS_LISTEN",
        value_name = "ADDR",
        default_value = "127.0.0.1:50051",
        value_parser = parse_listen_address
    )]
    pub listen: SocketAddr,

    /// After SIGINT or SIGTERM, how long in-flight calls get to finish, in milliseconds.
    #[arg(long, env = "POINTS_SHUTDOWN_GRACE_MS", value_name = "MS", default_value_t = 10_000)]
    pub shutdown_grace_ms: u64,
}

impl Config {
    /// The settings of the gRPC server.
    pub fn server_settings(&self) -> ServerSettings {
        ServerSettings { shutdown_grace: Duration::from_millis(self.shutdown_grace_ms) }
    }
}

fn parse_listen_address(value: &str) -> Result<SocketAddr, String> {
    value
        .to_socket_addrs()
        .map_err(|error| format!("not a host:port address ({error})"))?
        .next()
        .ok_or_else(|| format!("{value} resolves to no address"))
}
