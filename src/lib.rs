//! points: a loyalty-points ledger served over gRPC.
//!
//! Layout, from the wire inwards:
//! - [`config`]: every option of the server, as flags and environment variables.
//! - [`telemetry`]: log and trace set-up.
//! - [`server`]: assembles the tonic server (the points service, health,
//!   reflection) on a given listener, with a bounded graceful shutdown.
//! - [`auth`]: who may call what: bearer tokens with roles and users.
//! - [`service`]: the gRPC face: validates requests, maps them to ledger
//!   commands under the ledger's lock, and maps outcomes to replies or to
//!   statuses with error details.
//! - [`durability`]: the journal (group commit), snapshots and crash
//!   recovery between the service and the ledger; in memory when asked.
//! - [`proto`]: code generated from `proto/points/v1/points.proto`.
//! - [`ledger`]: the pure core. Payers, lots and the exact spending rules;
//!   no I/O, no async, no transport types.

pub mod auth;
pub mod config;
pub mod durability;
pub mod ledger;
pub mod proto;
pub mod server;
pub mod service;
pub mod telemetry;
