//! points: a loyalty-points ledger served over gRPC.
//!
//! Layout, from the wire inwards:
//! - [`config`]: every option of the server, as flags and environment variables.
//! - [`telemetry`]: log set-up (text or JSON) and the Prometheus exporter.
//! - [`server`]: assembles the tonic server (the points service, health,
//!   reflection; transport limits) on a given listener, with a bounded
//!   graceful shutdown.
//! - [`connections`]: accepting connections: TLS, the connection limit, the
//!   handshake and idle-connection timeouts.
//! - [`auth`]: who may call what: bearer tokens and client certificates,
//!   roles, users.
//! - [`service`]: the gRPC face: admits each call (caller and call limits
//!   from its headers, before its body is read; then fields, role), runs it
//!   against the store, and maps outcomes to replies or to statuses with
//!   error details.
//! - [`durability`]: the store between the service and the ledgers: one
//!   ledger per user behind its own lock, the journal (group commit),
//!   snapshots, recovery with its checks, online backup, all through one
//!   file-system seam (simulated in tests); in memory when asked.
//! - [`proto`]: code generated from `proto/points/v1/points.proto`.
//! - [`ledger`]: the pure core. One user's payers, lots, history and request
//!   ids, with the exact spending rules; no I/O, no async, no transport types.
//!
//! Binaries: `points-server` (`src/main.rs`) and the load generator
//! `points-bench` (`src/bin/points-bench.rs`).

pub mod auth;
pub mod config;
pub mod connections;
pub mod durability;
pub mod ledger;
pub mod proto;
pub mod server;
pub mod service;
pub mod telemetry;
