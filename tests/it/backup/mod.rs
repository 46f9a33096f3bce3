//! Backups of the real binary on real files: `points-server backup` while
//! writes, snapshots and rotations go on ([`live`]) and of a stopped
//! server's directory ([`stopped`]), restoring each copy; backups racing a
//! server that changes its files ([`races`]); hand-made copies whose files
//! come from different moments ([`hand_copies`]); and the backup's
//! refusals ([`refusals`]).

mod hand_copies;
mod live;
mod races;
mod refusals;
mod stopped;

use crate::common::client::{Client, add};
use crate::common::files::{journal_files, journal_records_bytes, paths_ending, snapshot_files};
use crate::common::wait::eventually;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::Path;
use std::time::Duration;

use points::proto::v1::Transaction;
use points::proto::v1::history_entry::Entry;
use prost_types::Timestamp;

/// A snapshot threshold small enough that snapshots and rotations happen
/// every few dozen writes.
const SMALL_SNAPSHOTS: [&str; 2] = ["--snapshot-threshold-bytes", "4096"];

/// One accepted write as a user's history shows it (without the remaining
/// points of a lot, which later spends change).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Written {
    Transaction { id: u64, payer: String, points: i64, seconds: i64 },
    Spend { id: u64, points: i64, spent: Vec<(String, i64)> },
}

impl Written {
    fn of(entry: &Entry) -> Self {
        match entry {
            Entry::Transaction(entry) => {
                Written::transaction_of(entry.id, &entry.payer, entry.points, entry.timestamp)
            }
            Entry::Spend(spend) => Written::Spend {
                id: spend.id,
                points: spend.points,
                spent: spend.spent.iter().map(|part| (part.payer.clone(), part.points)).collect(),
            },
            other => panic!("only transactions and spends were written, not {other:?}"),
        }
    }

    fn transaction(transaction: &Transaction) -> Self {
        let Transaction { id, payer, points, timestamp } = transaction;
        Written::transaction_of(*id, payer, *points, *timestamp)
    }

    fn transaction_of(id: u64, payer: &str, points: i64, timestamp: Option<Timestamp>) -> Self {
        let seconds = timestamp.map_or(0, |time| time.seconds);
        Written::Transaction { id, payer: payer.to_owned(), points, seconds }
    }

    /// Every write of `entries`.
    fn all(entries: &[Entry]) -> Vec<Written> {
        entries.iter().map(Written::of).collect()
    }
}

/// Runs `points-server backup --data-dir DATA_DIR --to DESTINATION` as a child process.
async fn run_backup(data_dir: &Path, destination: &Path) -> std::process::Output {
    let args: [&OsStr; 5] = [
        "backup".as_ref(),
        "--data-dir".as_ref(),
        data_dir.as_ref(),
        "--to".as_ref(),
        destination.as_ref(),
    ];
    crate::common::ServerProcess::run_command(&args).await
}

/// Checks that `entries` is a consistent history: transaction ids 1..n and
/// spend ids 1..m with no gap, and the `balances` are what it adds up to.
fn assert_consistent(entries: &[Entry], balances: &HashMap<String, i64>, context: &str) {
    let mut net: HashMap<String, i64> = HashMap::new();
    let (mut transactions, mut spends) = (0, 0);
    for entry in entries {
        match entry {
            Entry::Transaction(transaction) => {
                transactions += 1;
                assert_eq!(transaction.id, transactions, "{context}: transaction ids have a gap");
                *net.entry(transaction.payer.clone()).or_default() += transaction.points;
            }
            Entry::Spend(spend) => {
                spends += 1;
                assert_eq!(spend.id, spends, "{context}: spend ids have a gap");
                for part in &spend.spent {
                    *net.entry(part.payer.clone()).or_default() += part.points;
                }
            }
            other => panic!("only transactions and spends were written, not {other:?}"),
        }
    }
    assert_eq!(balances, &net, "{context}: balances disagree with the history");
}

/// Copies the files of `from` whose names end with `suffix` into `to`, as
/// someone copying a data directory by hand would.
fn copy_by_hand(from: &Path, to: &Path, suffix: &str) -> Vec<String> {
    let mut copied = Vec::new();
    for path in paths_ending(from, suffix) {
        let name = path.file_name().unwrap().to_owned();
        std::fs::copy(&path, to.join(&name)).expect("copy a file by hand");
        copied.push(name.to_string_lossy().into_owned());
    }
    copied
}

/// Adds transactions for the default user one at a time until the segment
/// being appended to passes the small snapshot threshold, then waits for the
/// snapshot that triggers. Nothing is written while the snapshot is taken,
/// so it holds exactly the writes so far. Returns how many were written.
async fn write_until_a_new_snapshot(client: &mut Client, data_dir: &Path, first_day: u32) -> u32 {
    let snapshots_before = snapshot_files(data_dir);
    let segment = journal_files(data_dir).pop().expect("a journal segment");
    let mut written = 0;
    loop {
        let full = !segment.exists() || journal_records_bytes(&segment) >= 4096;
        if full || snapshot_files(data_dir) != snapshots_before {
            break;
        }
        assert!(written < 5_000, "no snapshot after {written} writes");
        let day = 1 + (first_day + written) % 28;
        add(client, "DANNON", 10, &format!("2024-03-{day:02}T00:00:00Z")).await;
        written += 1;
    }
    eventually("a new snapshot", Duration::from_secs(30), || async {
        (snapshot_files(data_dir).last() != snapshots_before.last()).then_some(())
    })
    .await;
    written
}

/// The sequence in a file name such as `journal-00000000000000000042.log`.
fn sequence_of(path: &Path) -> u64 {
    let name = path.file_name().unwrap().to_string_lossy();
    name.split(['-', '.']).nth(1).expect("a sequence in the name").parse().expect("digits")
}
