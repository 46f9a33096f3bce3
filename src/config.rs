//! The server's configuration, in one place: every option is a command-line
//! flag and an environment variable, with defaults that let
//! `cargo run --release` start a working server with no setup.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::connections::ConnectionLimits;
use crate::connections::ServerTls;
use crate::server::{ServerSettings, TlsFiles};
use crate::service::CallLimits;
use crate::store::embedded::file_system::OsFileSystem;
use crate::store::{DatabaseOptions, DurableOptions, FsyncPolicy, Storage, StoreOptions};
use crate::telemetry::LogFormat;

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

    /// Keep the ledger in this PostgreSQL database instead of --data-dir, so that any
    /// number of replicas can serve it (postgres://user:password@host:port/database).
    #[arg(long, env = "POINTS_DATABASE_URL", value_name = "URL", conflicts_with = "in_memory")]
    pub database_url: Option<DatabaseUrl>,

    /// Connections each replica's pool opens to the database (for loading and reading
    /// users; group commit has one more of its own).
    #[arg(
        long,
        env = "POINTS_DATABASE_POOL_SIZE",
        value_name = "CONNECTIONS",
        default_value_t = DatabaseOptions::DEFAULT_POOL_SIZE as u32,
        value_parser = clap::value_parser!(u32).range(1..=10_000)
    )]
    pub database_pool_size: u32,

    /// How long connecting to the database may take before a call fails with UNAVAILABLE.
    #[arg(
        long,
        env = "POINTS_DATABASE_CONNECT_TIMEOUT_MS",
        value_name = "MS",
        default_value_t = DatabaseOptions::DEFAULT_CONNECT_TIMEOUT_MS,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub database_connect_timeout_ms: u64,

    /// How long one database statement may run before it is cancelled and the call fails
    /// with UNAVAILABLE.
    #[arg(
        long,
        env = "POINTS_DATABASE_STATEMENT_TIMEOUT_MS",
        value_name = "MS",
        default_value_t = DatabaseOptions::DEFAULT_STATEMENT_TIMEOUT_MS,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub database_statement_timeout_ms: u64,

    /// Users each replica keeps in memory; beyond it, users with no call in progress are
    /// dropped from memory and loaded from the database again when next used.
    #[arg(
        long,
        env = "POINTS_DATABASE_CACHE_USERS",
        value_name = "USERS",
        default_value_t = DatabaseOptions::DEFAULT_CACHE_MAX_USERS as u64,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub database_cache_users: u64,

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

    /// Journal bytes waiting for the disk past which new writes are refused
    /// with UNAVAILABLE (JOURNAL_BACKLOG) until the disk catches up.
    #[arg(
        long,
        env = "POINTS_MAX_JOURNAL_BACKLOG_BYTES",
        value_name = "BYTES",
        default_value_t = StoreOptions::DEFAULT_MAX_JOURNAL_BACKLOG_BYTES,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub max_journal_backlog_bytes: u64,

    /// How long a request_id is remembered for safe retries (e.g. 24h, 90m, 3600s).
    #[arg(
        long,
        env = "POINTS_REQUEST_ID_RETENTION",
        value_name = "DURATION",
        default_value = "24h",
        value_parser = parse_retention
    )]
    pub request_id_retention: Duration,

    /// How long earned points stay valid after their transaction's timestamp
    /// (e.g. 365d); without it, points never expire.
    #[arg(
        long,
        env = "POINTS_POINTS_VALIDITY",
        value_name = "DURATION",
        value_parser = parse_points_validity
    )]
    pub points_validity: Option<Duration>,

    /// TOML file of clients allowed to call, with their token hashes and roles
    /// (see README). Without it, only loopback addresses may be served.
    #[arg(long, env = "POINTS_TOKENS_FILE", value_name = "PATH")]
    pub tokens_file: Option<PathBuf>,

    /// Serve a non-loopback address without any authentication. Anyone who can
    /// reach the port can then credit and spend points.
    #[arg(long, env = "POINTS_INSECURE_NO_AUTH")]
    pub insecure_no_auth: bool,

    /// Accept bearer tokens in plaintext on a non-loopback address: only on
    /// a private network or a service mesh that encrypts, since a token
    /// copied off the wire can be replayed.
    #[arg(long, env = "POINTS_INSECURE_PLAINTEXT")]
    pub insecure_plaintext: bool,

    /// PEM certificate chain to serve TLS with (needs --tls-key).
    #[arg(long, env = "POINTS_TLS_CERT", value_name = "PATH", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, env = "POINTS_TLS_KEY", value_name = "PATH", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// PEM CA certificate(s) that client certificates must chain to (mutual
    /// TLS). With --tokens-file, clients may present a certificate instead of
    /// a token; without one, every client must present a certificate.
    #[arg(long, env = "POINTS_TLS_CLIENT_CA", value_name = "PATH", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,

    /// Largest request message accepted, in bytes (the default fits a batch of
    /// 10,000 transactions with payer names of up to ~60 bytes).
    #[arg(long, env = "POINTS_MAX_REQUEST_BYTES", value_name = "BYTES", default_value_t = 1024 * 1024,
          value_parser = clap::value_parser!(u32).range(1024..))]
    pub max_request_bytes: u32,

    /// Most PointsService calls in progress at once, across all connections;
    /// calls beyond it are refused at once with RESOURCE_EXHAUSTED (SERVER_OVERLOADED).
    #[arg(long, env = "POINTS_MAX_CONCURRENT_CALLS", value_name = "CALLS", default_value_t = 1024,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_concurrent_calls: u32,

    /// Most PointsService calls in progress at once for one client (a tokens-file
    /// client, or a peer IP address when access is open); calls beyond it are
    /// refused at once with RESOURCE_EXHAUSTED (CLIENT_OVERLOADED).
    #[arg(long, env = "POINTS_MAX_CONCURRENT_CALLS_PER_CLIENT", value_name = "CALLS",
          default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_concurrent_calls_per_client: u32,

    /// Most WatchTransactions streams open at once; more are refused with
    /// RESOURCE_EXHAUSTED (TOO_MANY_WATCH_STREAMS). Each also holds one of its client's
    /// --max-concurrent-calls-per-client for as long as it is open.
    #[arg(long, env = "POINTS_MAX_WATCH_STREAMS", value_name = "STREAMS",
          default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_watch_streams: u32,

    /// Most TCP connections open at once, including those still in their handshake;
    /// connections beyond it are closed as soon as they are accepted.
    #[arg(long, env = "POINTS_MAX_CONNECTIONS", value_name = "CONNECTIONS",
          default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,

    /// How long a new connection has to finish the TLS handshake and send the HTTP/2
    /// client preface, in milliseconds; it is closed otherwise.
    #[arg(long, env = "POINTS_HANDSHAKE_TIMEOUT_MS", value_name = "MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub handshake_timeout_ms: u64,

    /// How long a connection may stay without a call in progress before it is closed,
    /// in milliseconds (keepalive pings do not count as activity).
    #[arg(long, env = "POINTS_IDLE_CONNECTION_TIMEOUT_MS", value_name = "MS",
          default_value_t = 300_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub idle_connection_timeout_ms: u64,

    /// Longest a call may run, in milliseconds; a client's shorter deadline wins.
    #[arg(long, env = "POINTS_MAX_CALL_DURATION_MS", value_name = "MS", default_value_t = 30_000)]
    pub max_call_duration_ms: u64,

    /// Most concurrent HTTP/2 streams (calls) per connection.
    #[arg(long, env = "POINTS_MAX_STREAMS_PER_CONNECTION", value_name = "STREAMS", default_value_t = 256,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_streams_per_connection: u32,

    /// Interval of HTTP/2 keepalive pings on idle connections, in milliseconds.
    #[arg(
        long,
        env = "POINTS_HTTP2_KEEPALIVE_INTERVAL_MS",
        value_name = "MS",
        default_value_t = 30_000
    )]
    pub http2_keepalive_interval_ms: u64,

    /// How long a keepalive ping may go unanswered before the connection is closed, in milliseconds.
    #[arg(
        long,
        env = "POINTS_HTTP2_KEEPALIVE_TIMEOUT_MS",
        value_name = "MS",
        default_value_t = 10_000
    )]
    pub http2_keepalive_timeout_ms: u64,

    /// Most users the server holds; a write for a new user beyond it is refused.
    #[arg(long, env = "POINTS_MAX_USERS", value_name = "USERS", default_value_t = StoreOptions::DEFAULT_MAX_USERS)]
    pub max_users: usize,

    /// Most payers per user; crediting a new payer beyond it is refused.
    #[arg(long, env = "POINTS_MAX_PAYERS_PER_USER", value_name = "PAYERS",
          default_value_t = StoreOptions::DEFAULT_MAX_PAYERS_PER_USER)]
    pub max_payers_per_user: usize,

    /// Most request ids one user may have remembered at once; a command with
    /// a new request_id beyond it is refused until older ones expire.
    #[arg(long, env = "POINTS_MAX_REQUEST_IDS_PER_USER", value_name = "IDS",
          default_value_t = StoreOptions::DEFAULT_MAX_REQUEST_IDS_PER_USER as u32,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_request_ids_per_user: u32,

    /// Serve Prometheus metrics over HTTP on this address (off unless set).
    #[arg(long, env = "POINTS_METRICS_LISTEN", value_name = "ADDR", value_parser = parse_listen_address)]
    pub metrics_listen: Option<SocketAddr>,

    /// Export the spans of calls (and of the storage work inside them) to
    /// this OTLP/gRPC collector, e.g. http://localhost:4317 (off unless set;
    /// the standard OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, OTEL_EXPORTER_OTLP_ENDPOINT
    /// and OTEL_SDK_DISABLED are read too).
    #[arg(long, env = "POINTS_OTLP_ENDPOINT", value_name = "URL")]
    pub otlp_endpoint: Option<String>,

    /// Log line format: text for people, json for log pipelines. RUST_LOG filters.
    #[arg(long, env = "POINTS_LOG_FORMAT", value_name = "FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// After SIGINT or SIGTERM, how long in-flight calls get to finish, in milliseconds.
    #[arg(long, env = "POINTS_SHUTDOWN_GRACE_MS", value_name = "MS", default_value_t = 10_000)]
    pub shutdown_grace_ms: u64,

    /// A command to run instead of serving; without one, the server starts
    /// with the flags above.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Where spans are exported, if anywhere: `flag` (`--otlp-endpoint` or
/// POINTS_OTLP_ENDPOINT) if given; else the standard
/// OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, else OTEL_EXPORTER_OTLP_ENDPOINT, both
/// ignored when OTEL_SDK_DISABLED is `true`. A standard endpoint is refused
/// when OTEL_EXPORTER_OTLP_TRACES_PROTOCOL (or OTEL_EXPORTER_OTLP_PROTOCOL)
/// asks for a protocol other than OTLP/gRPC, the only one spoken here:
/// sending gRPC to an OTLP/HTTP port would fail on every export. `variable`
/// reads the environment (a parameter, for tests).
fn otlp_endpoint_from(
    flag: Option<&str>,
    variable: impl Fn(&str) -> Option<String>,
) -> Result<Option<String>, ConfigError> {
    let variable = |name: &str| variable(name).filter(|value| !value.is_empty());
    if let Some(endpoint) = flag.filter(|endpoint| !endpoint.is_empty()) {
        return Ok(Some(endpoint.to_owned()));
    }
    if variable("OTEL_SDK_DISABLED").is_some_and(|value| value.eq_ignore_ascii_case("true")) {
        return Ok(None);
    }
    let endpoint = variable("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .or_else(|| variable("OTEL_EXPORTER_OTLP_ENDPOINT"));
    let protocol = variable("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        .or_else(|| variable("OTEL_EXPORTER_OTLP_PROTOCOL"));
    match protocol {
        Some(protocol) if endpoint.is_some() && protocol != "grpc" => {
            Err(ConfigError::OtlpProtocol { protocol })
        }
        _ => Ok(endpoint),
    }
}

/// A database connection URL, which may hold a password: shown redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl(pub String);

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("DatabaseUrl(<redacted>)")
    }
}

impl std::str::FromStr for DatabaseUrl {
    type Err = std::convert::Infallible;

    fn from_str(url: &str) -> Result<Self, Self::Err> {
        Ok(Self(url.to_owned()))
    }
}

/// Commands that run instead of the server, then exit.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Copy a data directory consistently, even while a server runs on it.
    ///
    /// The backup takes no lock and changes nothing in the data directory;
    /// it copies the newest snapshot and the journal after it into DEST (new
    /// or empty), fsyncs it, verifies it by reading it back with the checks
    /// of start-up, and prints a one-line summary. Restore by starting a
    /// server with --data-dir DEST.
    Backup {
        /// The data directory to back up (the server's --data-dir).
        #[arg(long, env = "POINTS_DATA_DIR", value_name = "DIR")]
        data_dir: PathBuf,
        /// Where to write the backup: a new or empty directory.
        #[arg(long, value_name = "DEST")]
        to: PathBuf,
    },
    /// Check a tokens file and list its clients, without secrets.
    ///
    /// Prints one line per client (its line in the file, name, roles, number
    /// of token hashes, certificate identity, users, payers, not_after) and
    /// exits 0; or says what is wrong, naming the line, and exits 1. Run it
    /// before sending SIGHUP to a server.
    CheckTokens {
        /// The tokens file to check.
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Copy a data directory's ledger into an empty PostgreSQL database.
    ///
    /// Stop the server on the data directory first (its lock is taken). The
    /// schema is created, every user is copied in one transaction (all or
    /// nothing), then read back through the database and compared with the
    /// data directory: balances, history and remembered request ids. Prints
    /// a one-line summary; then start replicas with --database-url.
    Migrate {
        /// The data directory to copy (the server's --data-dir).
        #[arg(long, env = "POINTS_DATA_DIR", value_name = "DIR")]
        data_dir: PathBuf,
        /// The empty database to copy into.
        #[arg(long, env = "POINTS_DATABASE_URL", value_name = "URL")]
        database_url: DatabaseUrl,
    },
}

/// Why the configuration cannot be served as given; each says what to do.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A file the flags name cannot be read.
    #[error("cannot read the {what} {}: {source}", path.display())]
    Unreadable {
        /// What the file is for.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// A non-loopback address without authentication (protected mode).
    #[error(
        "refusing to serve {listen} without authentication: anyone who can reach it could credit \
         and spend points. Pass --tokens-file PATH (POINTS_TOKENS_FILE) listing the clients \
         allowed to call (see the README's security section), or, only on a network you trust, \
         --insecure-no-auth"
    )]
    Unprotected {
        /// The address asked for.
        listen: SocketAddr,
    },
    /// The OTLP protocol asked for is not OTLP/gRPC.
    #[error(
        "cannot export spans over OTLP protocol {protocol:?}: only \"grpc\" is spoken. Give the \
         collector's OTLP/gRPC endpoint (usually port 4317, not OTLP/HTTP's 4318), with \
         --otlp-endpoint or with OTEL_EXPORTER_OTLP_PROTOCOL and \
         OTEL_EXPORTER_OTLP_TRACES_PROTOCOL unset or set to grpc"
    )]
    OtlpProtocol {
        /// The protocol asked for.
        protocol: String,
    },
    /// Bearer tokens on a non-loopback address without TLS.
    #[error(
        "refusing to accept bearer tokens in plaintext on {listen}: anyone on the network path \
         could copy a token and replay it. Serve TLS with --tls-cert PATH --tls-key PATH \
         (POINTS_TLS_CERT, POINTS_TLS_KEY), or, only where the network itself encrypts (a \
         private network, a service mesh), pass --insecure-plaintext"
    )]
    PlaintextTokens {
        /// The address asked for.
        listen: SocketAddr,
    },
}

/// `--fsync` offers the store's policies under their lower-case names (the
/// store itself knows nothing of command lines).
impl clap::ValueEnum for FsyncPolicy {
    fn value_variants<'a>() -> &'a [Self] {
        &[FsyncPolicy::Always, FsyncPolicy::Never]
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(match self {
            FsyncPolicy::Always => clap::builder::PossibleValue::new("always")
                .help("After `fdatasync`: survives power loss and kernel crashes"),
            FsyncPolicy::Never => clap::builder::PossibleValue::new("never").help(
                "After `write` to the operating system: survives the process dying (kill -9), \
                 but a power loss can lose the last moments of writes",
            ),
        })
    }
}

impl Config {
    /// Where spans are exported, if anywhere: see [`otlp_endpoint_from`],
    /// with the process's environment.
    pub fn otlp_endpoint(&self) -> Result<Option<String>, ConfigError> {
        otlp_endpoint_from(self.otlp_endpoint.as_deref(), |name| std::env::var(name).ok())
    }

    /// Where and how the ledger is stored.
    pub fn store_options(&self) -> StoreOptions {
        let storage = if let Some(url) = &self.database_url {
            Storage::Database(DatabaseOptions {
                url: url.0.clone(),
                pool_size: self.database_pool_size as usize,
                connect_timeout_ms: self.database_connect_timeout_ms,
                statement_timeout_ms: self.database_statement_timeout_ms,
                cache_max_users: usize::try_from(self.database_cache_users).unwrap_or(usize::MAX),
            })
        } else if self.in_memory {
            Storage::InMemory
        } else {
            Storage::Durable(DurableOptions {
                data_dir: self.data_dir.clone(),
                fsync: self.fsync,
                snapshot_threshold_bytes: self.snapshot_threshold_bytes,
                max_journal_backlog_bytes: self.max_journal_backlog_bytes,
                journal_preallocate_bytes: StoreOptions::default_journal_preallocate_bytes(
                    self.fsync,
                ),
                file_system: std::sync::Arc::new(OsFileSystem),
            })
        };
        let request_id_retention_ms =
            i64::try_from(self.request_id_retention.as_millis()).unwrap_or(i64::MAX);
        StoreOptions {
            storage,
            request_id_retention_ms,
            max_users: self.max_users,
            max_payers_per_user: self.max_payers_per_user,
            max_request_ids_per_user: self.max_request_ids_per_user as usize,
            points_validity_ms: self
                .points_validity
                .map(|validity| i64::try_from(validity.as_millis()).unwrap_or(i64::MAX)),
        }
    }

    /// The TLS files, read; `None` without --tls-cert.
    pub fn tls(&self) -> Result<Option<TlsFiles>, ConfigError> {
        let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) else { return Ok(None) };
        let read = |path: &PathBuf, what: &'static str| {
            std::fs::read(path).map_err(|source| ConfigError::Unreadable {
                what,
                path: path.clone(),
                source,
            })
        };
        Ok(Some(TlsFiles {
            certificate_pem: read(cert, "TLS certificate")?,
            key_pem: read(key, "TLS key")?,
            client_ca_pem: self
                .tls_client_ca
                .as_ref()
                .map(|ca| read(ca, "TLS client CA"))
                .transpose()?,
            client_certificate_required: self.tokens_file.is_none(),
        }))
    }

    /// Protected mode (after Redis's): without a tokens file or required
    /// client certificates the server only serves loopback addresses, unless
    /// told explicitly to run open; and off loopback it does not accept
    /// bearer tokens in plaintext unless told explicitly.
    pub fn check_protected_mode(&self) -> Result<(), ConfigError> {
        if self.listen.ip().is_loopback() {
            return Ok(());
        }
        // Required client certificates authenticate every connection.
        let authenticated = self.tokens_file.is_some() || self.tls_client_ca.is_some();
        if !authenticated && !self.insecure_no_auth {
            return Err(ConfigError::Unprotected { listen: self.listen });
        }
        if self.tokens_file.is_some() && self.tls_cert.is_none() && !self.insecure_plaintext {
            return Err(ConfigError::PlaintextTokens { listen: self.listen });
        }
        Ok(())
    }

    /// The settings of the gRPC server.
    pub fn server_settings(&self, tls: Option<ServerTls>) -> ServerSettings {
        ServerSettings {
            tls,
            shutdown_grace: Duration::from_millis(self.shutdown_grace_ms),
            max_request_bytes: self.max_request_bytes as usize,
            max_call_duration: Duration::from_millis(self.max_call_duration_ms),
            max_streams_per_connection: self.max_streams_per_connection,
            http2_keepalive_interval: Duration::from_millis(self.http2_keepalive_interval_ms),
            http2_keepalive_timeout: Duration::from_millis(self.http2_keepalive_timeout_ms),
            connections: ConnectionLimits {
                max_connections: self.max_connections as usize,
                handshake_timeout: Duration::from_millis(self.handshake_timeout_ms),
                idle_timeout: Duration::from_millis(self.idle_connection_timeout_ms),
            },
        }
    }

    /// The limits of PointsService calls in progress.
    pub fn call_limits(&self) -> CallLimits {
        CallLimits {
            max_concurrent_calls: self.max_concurrent_calls as usize,
            max_concurrent_calls_per_client: self.max_concurrent_calls_per_client as usize,
            max_watch_streams: self.max_watch_streams as usize,
        }
    }
}

fn parse_listen_address(value: &str) -> Result<SocketAddr, String> {
    value
        .to_socket_addrs()
        .map_err(|error| format!("not a host:port address ({error})"))?
        .next()
        .ok_or_else(|| format!("{value} resolves to no address"))
}

fn parse_points_validity(value: &str) -> Result<Duration, String> {
    let validity = humantime::parse_duration(value).map_err(|error| error.to_string())?;
    let max = Duration::from_millis(crate::ledger::MAX_POINTS_VALIDITY_MS as u64);
    if validity < Duration::from_secs(1) || validity > max {
        return Err("must be between 1s and 100 years (36600d)".to_owned());
    }
    Ok(validity)
}

fn parse_retention(value: &str) -> Result<Duration, String> {
    let retention = humantime::parse_duration(value).map_err(|error| error.to_string())?;
    if retention < Duration::from_secs(1) {
        return Err("must be at least 1s".to_owned());
    }
    Ok(retention)
}

#[cfg(test)]
mod tests {
    use super::{ConfigError, otlp_endpoint_from};

    /// The endpoint chosen from `flag` and the variables `set`.
    fn chosen(flag: Option<&str>, set: &[(&str, &str)]) -> Result<Option<String>, ConfigError> {
        otlp_endpoint_from(flag, |name| {
            set.iter().find(|(key, _)| *key == name).map(|(_, value)| (*value).to_owned())
        })
    }

    #[test]
    fn the_flag_wins_then_the_traces_endpoint_then_the_generic_one() {
        let both = [
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://traces:4317"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://generic:4317"),
        ];
        let flag = Some("http://flag:4317");
        assert_eq!(chosen(flag, &both).ok().flatten().as_deref(), Some("http://flag:4317"));
        assert_eq!(chosen(None, &both).ok().flatten().as_deref(), Some("http://traces:4317"));
        assert_eq!(chosen(None, &both[1..]).ok().flatten().as_deref(), Some("http://generic:4317"));
        assert_eq!(chosen(Some(""), &[]).ok().flatten(), None, "an empty flag is no flag");
        assert_eq!(chosen(None, &[]).ok().flatten(), None, "off by default");
    }

    #[test]
    fn sdk_disabled_turns_off_the_standard_endpoints_but_not_the_flag() {
        let disabled =
            [("OTEL_SDK_DISABLED", "TRUE"), ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://generic:4317")];
        assert_eq!(chosen(None, &disabled).ok().flatten(), None);
        let flag = Some("http://flag:4317");
        assert_eq!(chosen(flag, &disabled).ok().flatten().as_deref(), Some("http://flag:4317"));
        let not_disabled = [("OTEL_SDK_DISABLED", "false"), disabled[1]];
        assert!(chosen(None, &not_disabled).ok().flatten().is_some());
    }

    #[test]
    fn a_protocol_other_than_grpc_refuses_a_standard_endpoint_only() {
        let http = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://generic:4318"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf"),
        ];
        assert!(matches!(
            chosen(None, &http),
            Err(ConfigError::OtlpProtocol { protocol }) if protocol == "http/protobuf"
        ));
        assert!(chosen(None, &http[..2]).is_ok_and(|endpoint| endpoint.is_some()), "grpc is fine");
        assert!(chosen(Some("http://flag:4317"), &http).is_ok(), "the flag is OTLP/gRPC");
        assert!(chosen(None, &http[1..]).is_ok_and(|endpoint| endpoint.is_none()), "no endpoint");
    }
}
