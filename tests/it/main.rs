//! The integration tests, in one binary so that the dependency graph is
//! linked once: one module per concern, all sharing the harness in
//! [`common`] (the server in-process or as the real binary, one way to open
//! a channel to it, the simulated disk, self-installing tools).
//!
//! Run one concern with `cargo test --test it <module>::`, e.g.
//! `cargo test --test it durability::`.

mod common;

mod backup;
mod batch;
mod busy_user;
mod connections;
mod crash_consistency;
mod credentials;
mod crypto_provider;
mod durability;
mod errors;
mod fuzz_requests;
mod grpcurl_readme;
mod health;
mod history;
mod ledger_model;
mod limits;
mod listen;
mod load_generator_smoke;
mod logs;
mod loyalty;
mod metrics;
mod migrate;
mod overload;
mod power_loss;
mod proto_lint;
mod python_interop;
mod readme_flags;
mod recovery;
mod reflection;
mod replica_history;
mod replicas;
mod retries;
mod security;
mod shutdown;
mod sim_disk;
mod spending;
mod store_model;
mod tls;
mod tracing;
mod typescript_interop;
mod users;
mod watch;
