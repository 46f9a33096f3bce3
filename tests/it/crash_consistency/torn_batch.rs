//! A torn final batch, written by group commit with many records, is cut
//! off whatever part of it landed, also when its payer names look like
//! frames.

use super::{channel, connect, frame_as_utf8, journal_of, start_or_refusal, stop, within};
use crate::common::client::{Client, add, balances, small_history, transaction};
use crate::common::files::{FRAME_HEADER_BYTES, frame_end, frame_offsets};
use crate::common::{ServerProcess, copy_dir, journal_files};

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Sector size assumed for the patterns in which a torn write lands.
const SECTOR_BYTES: usize = 512;

/// A data directory whose journal ends in a batch of many records, written by
/// the server itself under group commit (so the test does not depend on how
/// records are laid out inside a batch), after three earlier writes.
struct GroupCommitJournal {
    data_dir: tempfile::TempDir,
    /// The journal segment's file name.
    name: std::ffi::OsString,
    /// The journal, ending with the batch.
    journal: Vec<u8>,
    /// Where the batch starts.
    batch_start: usize,
    /// Records in the batch.
    records: u32,
}

impl GroupCommitJournal {
    /// Three sequential writes, then bursts of concurrent AddTransactions
    /// whose payers `payer` names, until one batch holds at least 3 records;
    /// the journal is cut right after that batch.
    async fn write(payer: impl Fn(usize) -> String) -> Self {
        let (data_dir, server) = ServerProcess::start_on_new_dir(&[]);
        let mut client = connect(&server).await;
        small_history(&mut client).await;
        let channel = channel(&server).await;
        let mut best = (0, 0);
        // Bounded: one burst nearly always makes such a batch.
        for burst in 0..10 {
            let calls: Vec<_> = (0..48)
                .map(|index| {
                    let mut client = Client::new(channel.clone());
                    let request = transaction(
                        &payer(index),
                        1 + index as i64,
                        &format!("2024-01-{:02}T00:00:00Z", 1 + burst),
                    );
                    tokio::spawn(async move { client.add_transaction(request).await })
                })
                .collect();
            for call in calls {
                within(30, "a burst write", call).await.expect("task").expect("accepted");
            }
            let journal = journal_of(&data_dir);
            best = frame_offsets(&journal)
                .into_iter()
                .map(|offset| (batch_record_count(&journal, offset), offset))
                .max()
                .unwrap();
            let (records, offset) = best;
            if records >= 3 && frame_end(&journal, offset) - offset >= 4 * SECTOR_BYTES {
                break;
            }
        }
        stop(server);
        let (records, batch_start) = best;
        assert!(
            records >= 3
                && frame_end(&journal_of(&data_dir), batch_start) - batch_start >= 4 * SECTOR_BYTES,
            "group commit never made a batch of 3 records and 4 sectors"
        );
        let path = journal_files(data_dir.path()).remove(0);
        let name = path.file_name().unwrap().to_owned();
        let mut journal = journal_of(&data_dir);
        journal.truncate(frame_end(&journal, batch_start));
        std::fs::write(&path, &journal).unwrap();
        Self { data_dir, name, journal, batch_start, records }
    }

    /// A copy of the data directory whose journal's last batch is replaced
    /// by `tail`, followed by preallocated zeros.
    fn with_tail(&self, tail: &[u8]) -> (tempfile::TempDir, PathBuf) {
        let copy = copy_dir(self.data_dir.path());
        let path = copy.path().join(&self.name);
        let journal = [&self.journal[..self.batch_start], tail, &PREALLOCATED].concat();
        std::fs::write(&path, journal).unwrap();
        (copy, path)
    }

    /// The batch as written.
    fn batch(&self) -> &[u8] {
        &self.journal[self.batch_start..]
    }

    /// The batch with every byte from file offset `from` on zeroed, as if
    /// only the sectors before it reached the disk.
    fn landed_before(&self, from: usize) -> Vec<u8> {
        let mut batch = self.batch().to_vec();
        batch[from - self.batch_start..].fill(0);
        batch
    }

    /// The torn versions of the batch: (description, bytes in its place).
    fn torn_tails(&self) -> Vec<(String, Vec<u8>)> {
        let batch = self.batch();
        let header = &batch[..FRAME_HEADER_BYTES];
        let end = self.journal.len();
        // The first sector boundary with a whole sector of the batch before it.
        let second_sector = (self.batch_start / SECTOR_BYTES + 2) * SECTOR_BYTES;
        let last_sector = (end - 1) / SECTOR_BYTES * SECTOR_BYTES;
        assert!(
            second_sector < last_sector,
            "the batch ({} bytes at {}) spans at least three sectors",
            batch.len(),
            self.batch_start
        );
        let mut flipped = batch.to_vec();
        flipped[FRAME_HEADER_BYTES + (batch.len() - FRAME_HEADER_BYTES) / 2] ^= 0x20;
        vec![
            ("its header, then zeros".to_owned(), [header, &vec![0; batch.len() - 12]].concat()),
            ("its payload with one byte flipped".to_owned(), flipped),
            (
                format!("its sectors before byte {second_sector}, then zeros"),
                self.landed_before(second_sector),
            ),
            (
                format!("all but its last sector (from byte {last_sector}), which is zeros"),
                self.landed_before(last_sector),
            ),
            ("all but its last byte".to_owned(), batch[..batch.len() - 1].to_vec()),
            ("its header only".to_owned(), header.to_vec()),
        ]
    }
}

/// The records of the first journal segment in `data_dir`, without the
/// zeros preallocated after them.
/// Zeros after a journal's records, as a preallocated segment has them.
const PREALLOCATED: [u8; 4 * SECTOR_BYTES] = [0; 4 * SECTOR_BYTES];

/// The record count of the batch frame at `offset` (its payload starts with
/// the first sequence, u64 LE, then the count, u32 LE).
fn batch_record_count(journal: &[u8], offset: usize) -> u32 {
    let at = offset + FRAME_HEADER_BYTES + 8;
    u32::from_le_bytes(journal[at..at + 4].try_into().unwrap())
}

/// What a server started on `data_dir` holds, and the id its next write gets.
async fn state_and_next_id(data_dir: &Path) -> (HashMap<String, i64>, u64) {
    let server = ServerProcess::start_durable(data_dir, &[]);
    let mut client = connect(&server).await;
    let state = balances(&mut client).await;
    let id = add(&mut client, "KRAFT", 1, "2024-02-01T00:00:00Z").await.id;
    (state, id)
}

/// Starts the server on each torn version of `journal`'s last batch and
/// checks that it cuts the batch and nothing else; returns what went wrong.
async fn check_torn_tails(journal: &GroupCommitJournal) -> Vec<String> {
    // What the server must hold once the batch is cut: the journal without it.
    let (reference, _) = journal.with_tail(&[]);
    let (before, next_id) = state_and_next_id(reference.path()).await;
    let mut failures = Vec::new();
    for (description, tail) in journal.torn_tails() {
        let (copy, path) = journal.with_tail(&tail);
        // A refused start is a failure of this case, reported with the others.
        let server = match start_or_refusal(copy.path()) {
            Ok(server) => server,
            Err(refusal) => {
                failures.push(format!("{description}: refused to start: {refusal}"));
                continue;
            }
        };
        let mut client = connect(&server).await;
        let mut problems = Vec::new();
        if balances(&mut client).await != before {
            problems.push("balances differ from the journal without the batch".to_owned());
        }
        if !server.log().contains("torn batch") {
            problems.push("no log line about a torn batch".to_owned());
        }
        let length = std::fs::metadata(&path).unwrap().len();
        if length != journal.batch_start as u64 {
            problems.push(format!("the journal is {length} bytes, not {}", journal.batch_start));
        }
        let id = add(&mut client, "KRAFT", 1, "2024-02-01T00:00:00Z").await.id;
        if id != next_id {
            problems.push(format!("the next transaction got id {id}, not {next_id}"));
        }
        stop(server);
        let server = ServerProcess::start_durable(copy.path(), &[]);
        let mut expected = before.clone();
        *expected.entry("KRAFT".to_owned()).or_insert(0) += 1;
        if balances(&mut connect(&server).await).await != expected {
            problems.push("the new write did not survive a restart".to_owned());
        }
        if !problems.is_empty() {
            failures.push(format!("{description}: {}\n{}", problems.join("; "), server.log()));
        }
    }
    failures
}

/// torn in the ways a crash or power cut leaves it: its header landed but its
/// payload is zeros, its payload landed with one byte wrong, only its first
/// sectors landed, all but its last sector landed, it lacks its last byte,
/// or only its header landed. Each time the server starts, logs that it cut
/// a torn batch, holds exactly what the journal without the batch holds,
/// gives the next write the same id, and keeps that write across a restart.
/// The intact batch, as a control, is replayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torn_final_batch_whose_header_landed_but_not_its_payload_is_cut() {
    let journal =
        GroupCommitJournal::write(|index| format!("PAYER {index:02} {}", "#".repeat(200))).await;
    println!(
        "the last batch: {} records, {} bytes at byte offset {}",
        journal.records,
        journal.batch().len(),
        journal.batch_start
    );
    // Control: the whole batch landed, so the server has its records.
    let (control, _) = journal.with_tail(journal.batch());
    let (_, next_with) = state_and_next_id(control.path()).await;
    let (reference, _) = journal.with_tail(&[]);
    let (_, next_without) = state_and_next_id(reference.path()).await;
    assert_eq!(next_with, next_without + u64::from(journal.records), "the batch is replayed");

    let failures = check_torn_tails(&journal).await;
    assert!(failures.is_empty(), "torn final batch cases failed:\n{}", failures.join("\n"));
}

/// As above, but every payer in the torn batch holds bytes that form a
/// valid frame on their own: what a client chooses as a payer name must not
/// decide whether a torn batch is cut or the server refuses to start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torn_final_batch_is_cut_even_when_payer_names_look_like_frames() {
    let embedded = frame_as_utf8();
    assert!(embedded.len() < 100);
    let journal = GroupCommitJournal::write(|index| {
        format!("PAYER {index:02} {embedded} {}", "#".repeat(150))
    })
    .await;
    println!(
        "the last batch: {} records, {} bytes at byte offset {}",
        journal.records,
        journal.batch().len(),
        journal.batch_start
    );
    let failures = check_torn_tails(&journal).await;
    assert!(failures.is_empty(), "torn final batch cases failed:\n{}", failures.join("\n"));
}
