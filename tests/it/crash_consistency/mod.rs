//! Crash consistency of the real binary: no reply (a read, a refusal, a retry
//! answer) shows anything that kill -9 takes back ([`readers`]); a newest
//! journal segment whose header never reached the disk is created again
//! ([`new_segment`]); a torn final batch is cut off whatever part of it
//! landed ([`torn_batch`]); an invalid batch with a valid one after it
//! refuses start without touching the files ([`invalid_batch`]); and after
//! a journal failure, shutdown stays within the grace period and a restart
//! cuts the partial batch ([`journal_failure`]).
//!
//! Timing choices are random: each test prints its seed, and setting
//! `CRASH_CONSISTENCY_SEED` replays the same choices.

mod invalid_batch;
mod journal_failure;
mod new_segment;
mod readers;
mod shown;
mod tasks;
mod torn_batch;

use crate::common::ServerProcess;
use crate::common::client::{Client, connect_to};
use crate::common::files::{frame, journal_files, journal_records};

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::time::Duration;

use points::proto::v1::GetBalancesRequest;
use points::testing::read_journal;
use tonic::transport::Channel;

/// The seed for random timing choices: `CRASH_CONSISTENCY_SEED`, or the clock.
/// Printed so that a failure can be replayed.
fn seed(test: &str) -> u64 {
    let seed = match std::env::var("CRASH_CONSISTENCY_SEED") {
        Ok(value) => value.parse().expect("CRASH_CONSISTENCY_SEED is a u64"),
        Err(_) => {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
            now.as_nanos() as u64 ^ u64::from(std::process::id())
        }
    };
    println!("{test}: seed {seed} (replay with CRASH_CONSISTENCY_SEED={seed})");
    seed
}

/// Awaits `future`, failing the test after `seconds`.
async fn within<T>(seconds: u64, what: &str, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(Duration::from_secs(seconds), future).await {
        Ok(value) => value,
        Err(_) => panic!("{what} did not finish within {seconds} s"),
    }
}

/// A channel to `server` whose every call is bounded.
async fn channel(server: &ServerProcess) -> Channel {
    let bounded = connect_to(server.address)
        .connect_timeout(Duration::from_secs(5))
        .call_timeout(Duration::from_secs(20))
        .try_channel();
    within(10, "connecting", bounded).await.expect("connect to points-server")
}

async fn connect(server: &ServerProcess) -> Client {
    Client::new(channel(server).await)
}

/// Stops the server with SIGTERM and checks that it exits cleanly.
fn stop(mut server: ServerProcess) {
    server.terminate();
}

/// The last journal sequence on disk.
fn last_sequence(data_dir: &Path) -> u64 {
    read_journal(data_dir).expect("read the journal").last().map_or(0, |(sequence, _)| *sequence)
}

/// The records of the first journal segment in `data_dir`, without the
/// zeros preallocated after them.
fn journal_of(data_dir: &tempfile::TempDir) -> Vec<u8> {
    journal_records(&journal_files(data_dir.path())[0])
}

/// The bytes of a complete, valid frame that are also valid UTF-8 (every
/// byte below 0x80), so that a client can put them in a payer name.
fn frame_as_utf8() -> String {
    for length in 1u32..0x80 {
        let length_bytes = length.to_le_bytes();
        if crc32c::crc32c(&length_bytes).to_le_bytes().iter().any(|&byte| byte >= 0x80) {
            continue;
        }
        // Bounded: one in sixteen payloads has an all-ASCII checksum.
        for salt in 0..100_000u32 {
            let payload = format!("{salt:0width$}", width = length as usize);
            if payload.len() != length as usize {
                continue;
            }
            let framed = frame(payload.as_bytes());
            if framed.iter().all(|&byte| byte < 0x80) {
                return String::from_utf8(framed).unwrap();
            }
        }
    }
    panic!("no frame is valid UTF-8");
}

/// Starts the server on `data_dir`, or returns why it refused to start.
fn start_or_refusal(data_dir: &Path) -> Result<ServerProcess, String> {
    ServerProcess::try_spawn(ServerProcess::durable(data_dir, &[])).map_err(|exited| {
        // The line that says why.
        let log = exited.log;
        log.lines().find(|line| line.starts_with("points-server:")).unwrap_or(&log).to_owned()
    })
}

/// A user's balances, ordered.
async fn user_balances(client: &mut Client, user: &str) -> BTreeMap<String, i64> {
    let request = GetBalancesRequest { user_id: user.to_owned(), ..Default::default() };
    let reply = within(30, "GetBalances", client.get_balances(request)).await;
    reply.expect("balances").into_inner().balances.into_iter().collect()
}
