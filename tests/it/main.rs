//! The integration tests, in one binary so that the dependency graph is
//! linked once: one module per concern, all sharing the harness in
//! [`common`] (the server in-process or as the real binary, clients, the
//! simulated disk, self-installing tools).
//!
//! Run one concern with `cargo test --test it <module>::`, e.g.
//! `cargo test --test it durability::`.

mod common;

mod abuse;
mod backup;
mod batch;
mod connections;
mod crash_consistency;
mod crypto_provider;
mod durability;
mod fuzz_requests;
mod grpc_api;
mod grpcurl_readme;
mod ledger_model;
mod load_generator_smoke;
mod metrics;
mod power_loss;
mod proto_lint;
mod python_interop;
mod readme_flags;
mod security;
mod server_lifecycle;
mod sim_disk;
mod store_model;
mod tls;
mod users_retries_history;
