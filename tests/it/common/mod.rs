//! Helpers shared by the integration tests: the real server in-process on an
//! ephemeral port ([`TestServer`]) or as the real binary ([`ServerProcess`]),
//! the one way to open a channel to either ([`client::connect`]), calls below
//! the generated client ([`raw`]), the data directory's files ([`files`]),
//! the simulated disk, and self-installing external tools.

pub mod client;
pub mod files;
pub mod history;
pub mod metrics;
pub mod operations;
pub mod postgres;
pub mod process;
pub mod raw;
pub mod reference;
pub mod refusal;
pub mod replicas;
pub mod server;
pub mod sim_disk;
pub mod tokens;
pub mod tools;
pub mod wait;

use std::time::Duration;

use prost_types::Timestamp;

pub use files::{copy_dir, journal_files};
pub use process::ServerProcess;
pub use raw::call_raw;
pub use server::TestServer;

/// Parses an RFC 3339 time into a protobuf timestamp.
pub fn timestamp(rfc3339: &str) -> Timestamp {
    let time = chrono::DateTime::parse_from_rfc3339(rfc3339).expect("valid RFC 3339");
    Timestamp { seconds: time.timestamp(), nanos: time.timestamp_subsec_nanos() as i32 }
}

/// Opens the store of `options`, retrying for a few seconds while its data
/// directory reads as locked. A store closed just before may still look
/// locked for a moment: a child process that another test of this binary is
/// starting holds a copy of every descriptor of this process, the lock's
/// included, until it executes its program. The server never starts child
/// processes, so only tests that reopen a store in-process need this.
pub fn open_store(
    options: &points::StoreOptions,
) -> Result<(points::Store, points::Recovery), points::OpenError> {
    wait::eventually_blocking("the data directory's lock", Duration::from_secs(5), || {
        match points::Store::open(options) {
            Err(points::OpenError::Locked { .. }) => None,
            opened => Some(opened),
        }
    })
}

/// Runs each named test body (an `async fn(Client)`) twice: on the real
/// tonic server in this process over an in-memory store, and on two real
/// replicas over one fresh PostgreSQL database, with calls spread over both
/// (balanced per call). Each body gets a module of its own with the tests
/// `in_memory` and `on_two_replicas`.
#[macro_export]
macro_rules! on_every_backend {
    ($($test:ident),* $(,)?) => {$(
        mod $test {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn in_memory() {
                let (_server, client) = $crate::common::TestServer::start_with_client().await;
                super::$test(client).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn on_two_replicas() {
                let replicas = $crate::common::replicas::Replicas::start(2, &[]);
                super::$test(replicas.client().await).await;
            }
        }
    )*};
}
