//! The server's configuration, in one place: every option is a command-line
//! flag and an environment variable, with defaults that let
//! `cargo run --release` start a working server with no setup.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::durability::{FsyncPolicy, Storage, StoreOptions};
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

    /// Directory for the journal and snapshots; created if missing, locked while running.
    #[arg(long, env = "POINTS_DATA_DIR", value_name = "DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// Keep nothing on disk: everything is lost when the server stops (tests, demos).
    #[arg(long, env = "POINTS_IN_MEMORY")]
    pub in_memory: bool,

    /// When a change is acknowledged: after fsync (always), or after the write reaches
    /// the operating system (never: survives kill -9, not power loss).
    #[arg(long, env = "POINTS_FSYNC", value_name = "POLICY", value_enum, default_value_t = FsyncPolicy::Always)]
    pub fsync: FsyncPolicy,

    /// Journal size in bytes past which a snapshot is written and older segments removed.
    #[arg(
        long,
        env = "POINTS_SNAPSHOT_THRESHOLD_BYTES",
        value_name = "BYTES",
        default_value_t = 64 << 20,
        value_parser = clap::value_parser!(u64).range(4096..)
    )]
    pub snapshot_threshold_bytes: u64,

    /// How long a request_id is remembered for safe retries (e.g. 24h, 90m, 3600s).
    #[arg(
        long,
        env = "POINTS_REQUEST_ID_RETENTION",
        value_name = "DURATION",
        default_value = "24h",
        value_parser = parse_retention
    )]
    pub request_id_retention: Duration,

    /// After SIGINT or SIGTERM, how long in-flight calls get to finish, in milliseconds.
    #[arg(long, env = "POINTS_SHUTDOWN_GRACE_MS", value_name = "MS", default_value_t = 10_000)]
    pub shutdown_grace_ms: u64,
}

impl Config {
    /// Where and how the ledger is stored.
    pub fn store_options(&self) -> StoreOptions {
        let storage = if self.in_memory {
            Storage::InMemory
        } else {
            Storage::Durable {
                data_dir: self.data_dir.clone(),
                fsync: self.fsync,
                snapshot_threshold_bytes: self.snapshot_threshold_bytes,
            }
        };
        let request_id_retention_ms =
            i64::try_from(self.request_id_retention.as_millis()).unwrap_or(i64::MAX);
        StoreOptions { storage, request_id_retention_ms }
    }

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

fn parse_retention(value: &str) -> Result<Duration, String> {
    let retention = humantime::parse_duration(value).map_err(|error| error.to_string())?;
    if retention < Duration::from_secs(1) {
        return Err("must be at least 1s".to_owned());
    }
    Ok(retention)
}
