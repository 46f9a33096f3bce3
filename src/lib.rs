//! points: a loyalty-points ledger served over gRPC.
//!
//! Layout, from the wire inwards (every module is private; what other
//! crates use is re-exported below):
//! - `config`: every option of the server, as flags and environment
//!   variables ([`Config`]); the only module that knows clap.
//! - `telemetry`: log set-up (text or JSON), calls' traces (the caller's W3C
//!   trace context, each call's span, its export over OTLP), and the
//!   Prometheus exporter.
//! - `server`: assembles the tonic server (the points service, health,
//!   reflection; transport limits) on a given listener, with a bounded
//!   graceful shutdown ([`serve`]).
//! - `connections`: accepting connections: TLS, the connection limit, the
//!   handshake and idle-connection timeouts.
//! - `service`: the gRPC face ([`PointsService`]): admits each call (caller
//!   and call limits from its headers, before its body is read; then fields,
//!   role), runs it against the store, and maps outcomes to replies or to
//!   statuses with error details. `service::auth` decides who may call
//!   what: bearer tokens and client certificates, roles, users.
//! - `store`: the [`Store`] between the service and the ledgers: one ledger
//!   per user behind its own lock, with the write and read paths, request-id
//!   replay and limits shared by every backend, and the seam to a backend
//!   (`store::backend`): in memory, or `store::embedded`, the journal
//!   (`store::embedded::wal`: generic log mechanics), snapshots, recovery
//!   with its checks and online [`backup`], all through one file-system seam
//!   ([`FileSystem`], simulated in tests).
//! - [`proto`]: code generated from `proto/points/v1/points.proto`.
//! - [`ledger`]: the pure core. One user's payers, lots, history and request
//!   ids, with the exact spending rules; holds, refunds and expiry, with time
//!   an input ([`ledger::Clock`]); no I/O, no async, no clock, no transport
//!   types.
//!
//! Binaries: `points-server` (`src/main.rs`) and the load generator
//! `points-bench` (`src/bin/points-bench.rs`, behind the default
//! `load-generator` feature). The `testing` feature exposes internals to the
//! integration tests and benchmarks (`points::testing`); it is not a stable API.

mod config;
mod connections;
pub mod ledger;
pub mod proto;
mod server;
mod service;
mod store;
mod telemetry;

pub use config::{Command, Config, ConfigError};
pub use connections::{PreparedTls, ServerTls};
pub use server::{ServeError, ServerSettings, TlsFiles, serve};
pub use service::auth::{
    Authenticator, ClientSummary, Credentials, certificate_identities, token_sha256,
};
pub use service::{Access, CallLimits, ERROR_DOMAIN, PointsService};
pub use store::embedded::backup::{BackupError, BackupSummary, backup};
pub use store::embedded::file_system::{FileSystem, LockGuard, OsFileSystem, WritableFile};
pub use store::{
    Balances, DEFAULT_USER, DatabaseOptions, DurableOptions, FsyncPolicy, MigrateError,
    MigrateSummary, OpenError, PayerName, Recovery, RequestId, SnapshotFailed, Storage, Store,
    StoreError, StoreOptions, UserId, migrate,
};
pub use telemetry::{
    LogFormat, MetricsError, Telemetry, TelemetryError, init as init_telemetry, install_metrics,
};

/// Internals for the integration tests and benchmarks: reading and writing
/// the embedded store's files directly. Not a stable API.
#[cfg(feature = "testing")]
pub mod testing {
    pub use crate::store::RecordChunk;
    pub use crate::store::embedded::backup::{MAX_ATTEMPTS, backup_with};
    pub use crate::store::embedded::files::{self, DataDir};
    pub use crate::store::embedded::records;
    pub use crate::store::embedded::replay::replay;
    pub use crate::store::embedded::snapshot::SnapshotFile;
    pub use crate::store::embedded::wal::{batch, frame};
    pub use crate::store::{journal_records_bytes, read_journal};
}
