//! Recovery from what a crash or damage leaves in a data directory on real
//! files: a torn last batch is cut off whatever part of it landed, a long
//! zero-filled tail ends the records, and damage (a flipped byte, a zeroed
//! segment header, a segment numbered 0, a damaged snapshot) refuses start
//! with the file and offset, changing nothing. A payer name shaped like a
//! frame cannot turn a torn end into damage.

use crate::common::client::{add, balances, small_history};
use crate::common::files::{
    frame_offsets, journal_records, journal_records_bytes, snapshot_files, wait_for_snapshot,
};
use crate::common::{ServerProcess, copy_dir, journal_files, open_store};

use std::path::Path;

use chrono::{DateTime, Utc};
use points::{FsyncPolicy, StoreOptions};
use points::{PayerName, UserId};

fn epoch() -> DateTime<Utc> {
    DateTime::from_timestamp(1_700_000_000, 0).expect("valid")
}

/// A durable store on `data_dir` that never snapshots by itself.
fn options(data_dir: &Path) -> StoreOptions {
    StoreOptions::durable(data_dir, FsyncPolicy::Always, u64::MAX)
}

/// Writes `payers` (one transaction each) to a store in `data_dir` and closes it.
async fn write_and_close(data_dir: &Path, payers: &[&str]) {
    let (store, _) = open_store(&options(data_dir)).expect("open");
    for payer in payers {
        store
            .add_transaction(UserId::new("alice"), None, PayerName::new(payer), 5, epoch())
            .await
            .expect("write");
    }
    store.close();
}

/// Opens the store in `data_dir`: alice's total and what recovery did, or
/// why it refused to start.
async fn reopen(data_dir: &Path) -> Result<(i64, points::Recovery), String> {
    let (store, recovery) = open_store(&options(data_dir)).map_err(|error| error.to_string())?;
    let total = store
        .read(UserId::new("alice"), |ledger| ledger.total())
        .await
        .map_err(|error| error.to_string())?;
    store.close();
    Ok((total, recovery))
}

/// Cutting the journal at every byte offset of its last record: the server
/// starts, cuts the torn tail, and everything before it is intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torn_last_record_is_cut_off_at_every_offset_and_nothing_earlier_is_lost() {
    let (data_dir, mut server) = ServerProcess::start_on_new_dir(&[]);
    let mut client = server.client().await;
    small_history(&mut client).await;
    let before_last = balances(&mut client).await;
    add(&mut client, "MILLER COORS", 10000, "2022-11-01T14:00:00Z").await;
    server.terminate();

    let journals = journal_files(data_dir.path());
    assert_eq!(journals.len(), 1);
    let journal = journal_records(&journals[0]);
    let last_start = *frame_offsets(&journal).last().expect("records");
    let name = journals[0].file_name().unwrap().to_owned();
    for cut in last_start..journal.len() {
        let copy = copy_dir(data_dir.path());
        let path = copy.path().join(&name);
        std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(cut as u64).unwrap();
        let server = ServerProcess::start_durable(copy.path(), &[]);
        let mut client = server.client().await;
        assert_eq!(balances(&mut client).await, before_last, "cut at {cut}");
        assert_eq!(std::fs::metadata(&path).unwrap().len(), last_start as u64, "cut at {cut}");
        if cut > last_start {
            assert!(server.log().contains("torn batch"), "cut at {cut}: {}", server.log());
        }
        // The journal is usable again: a new write takes the torn one's id.
        assert_eq!(add(&mut client, "KRAFT", 1, "2024-01-01T00:00:00Z").await.id, 3);
    }
}

/// A flipped byte in an earlier record: the server refuses to start and names the file and offset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_byte_in_an_earlier_record_refuses_start_with_the_offset() {
    let data_dir = ServerProcess::data_dir_with_daily_writes(&[], 3, 10).await;

    let path = journal_files(data_dir.path()).remove(0);
    let file = std::fs::read(&path).unwrap();
    let second = frame_offsets(&journal_records(&path))[1];
    for (offset, description) in [(second + 14, "payload"), (second + 1, "length")] {
        let mut damaged = file.clone();
        damaged[offset] ^= 0x10;
        std::fs::write(&path, &damaged).unwrap();
        let exited = ServerProcess::run_to_exit(ServerProcess::durable(data_dir.path(), &[]));
        assert!(!exited.status.success(), "started with a damaged {description}");
        assert!(
            exited.log.contains(&format!("{} is damaged at byte offset {second}", path.display())),
            "{description}: {}",
            exited.log
        );
        // Refusing changed nothing on disk.
        assert_eq!(std::fs::read(&path).unwrap(), damaged);
    }
    // With the original bytes back, the server starts and has everything.
    std::fs::write(&path, &file).unwrap();
    let server = ServerProcess::start_durable(data_dir.path(), &[]);
    assert_eq!(balances(&mut server.client().await).await["DANNON"], 30);
}

/// A payer name is stored verbatim inside a record; one shaped like a valid
/// frame (found by brute force against unsalted checksums) must not make a
/// torn end after it look like damage: frame checksums are seeded from each
/// segment's random salt.
#[tokio::test]
async fn a_payer_name_shaped_like_a_frame_cannot_turn_a_torn_end_into_damage() {
    let data_dir = tempfile::tempdir().expect("temporary directory");
    // Length 4, its CRC32C ("4zE3"), the CRC32C of "aoig", then "aoig".
    let forged = "x\u{4}\0\0\u{0}4zE32\u{2}\u{7}8aoig";
    // The premise: without a salt these bytes are a valid frame.
    let mut payloads = Vec::new();
    let ending = points::testing::frame::scan(&forged.as_bytes()[1..], 0, 0, |_, payload| {
        payloads.push(payload.to_vec());
        Ok(())
    });
    assert_eq!(
        (ending, payloads),
        (Ok(points::testing::frame::Ending::Clean), vec![b"aoig".to_vec()])
    );
    write_and_close(data_dir.path(), &["DANNON", forged]).await;
    let path = journal_files(data_dir.path()).pop().expect("a segment");
    let data = std::fs::read(&path).expect("read");
    let at =
        data.windows(forged.len()).rposition(|window| window == forged.as_bytes()).expect("found");
    // A power cut that kept the batch only up to the end of the payer name.
    std::fs::write(&path, &data[..at + forged.len()]).expect("cut");
    let (total, recovery) = reopen(data_dir.path()).await.expect("a torn end is cut, not damage");
    assert_eq!(total, 5);
    assert!(recovery.torn_bytes_cut > 0);
}

/// A segment whose header was zeroed after records were written is damage:
/// headers are synced before any record, so it cannot be a crash while the
/// segment was created.
#[tokio::test]
async fn a_zeroed_segment_header_with_records_after_it_refuses_start() {
    let data_dir = tempfile::tempdir().expect("temporary directory");
    write_and_close(data_dir.path(), &["DANNON", "UNILEVER"]).await;
    let path = journal_files(data_dir.path()).pop().expect("a segment");
    let mut data = std::fs::read(&path).expect("read");
    data[..24].fill(0);
    std::fs::write(&path, &data).expect("write");
    let error = reopen(data_dir.path()).await.expect_err("must refuse");
    assert!(error.contains("is damaged at byte offset 0"), "{error}");
    assert_eq!(std::fs::read(&path).expect("read"), data, "refusing changed nothing");
}

/// A long zero-filled tail (a preallocated segment, or a file extended but
/// never written, common after a power cut) ends the records: it is found
/// in one pass, not searched byte by byte, kept as room for later records
/// rather than cut, and the next record goes right after the last one.
#[tokio::test]
async fn a_long_zero_filled_tail_ends_the_records_and_is_written_over() {
    let data_dir = tempfile::tempdir().expect("temporary directory");
    write_and_close(data_dir.path(), &["DANNON"]).await;
    let path = journal_files(data_dir.path()).pop().expect("a segment");
    let valid = journal_records_bytes(&path);
    let mut data = std::fs::read(&path).expect("read");
    assert!(data[valid..].iter().all(|&byte| byte == 0), "zeros after the records");
    data.resize(data.len() + (4 << 20), 0);
    std::fs::write(&path, &data).expect("write");
    let (total, recovery) = reopen(data_dir.path()).await.expect("starts");
    assert_eq!((total, recovery.torn_bytes_cut), (5, 0));
    assert_eq!(std::fs::metadata(&path).expect("stat").len(), data.len() as u64);
    assert_eq!(journal_records_bytes(&path), valid);

    write_and_close(data_dir.path(), &["UNILEVER"]).await;
    assert_eq!(reopen(data_dir.path()).await.expect("starts").0, 10);
    assert!(journal_records_bytes(&path) > valid, "the new record follows the old ones");
    assert_eq!(std::fs::metadata(&path).expect("stat").len(), data.len() as u64);
    assert_eq!(journal_files(data_dir.path()), vec![path.clone()]);
}

/// A journal segment numbered 0 was not written by this server: refused
/// with a message, never a panic or a wrapped sequence.
#[tokio::test]
async fn a_segment_numbered_zero_is_refused() {
    let data_dir = tempfile::tempdir().expect("temporary directory");
    let mut data = points::testing::files::encode_header(
        points::testing::files::JOURNAL_MAGIC,
        points::testing::files::JOURNAL_FORMAT_VERSION,
        0,
    )
    .to_vec();
    data.extend_from_slice(&points::testing::files::encode_journal_salt(1));
    std::fs::write(data_dir.path().join(format!("journal-{:020}.log", 0)), &data).expect("write");
    let error = reopen(data_dir.path()).await.expect_err("must refuse");
    assert!(error.contains("journal sequences start at 1"), "{error}");
}

/// A damaged snapshot is refused with its name and offset, never skipped.
#[tokio::test]
async fn damaged_snapshot_refuses_start() {
    let data_dir = tempfile::tempdir().expect("temporary directory");
    // The files are the same either way; skipping fsync keeps the test fast.
    let options = StoreOptions::durable(data_dir.path(), FsyncPolicy::Never, 4096);
    let (store, _) = open_store(&options).expect("open");
    let base = chrono::DateTime::parse_from_rfc3339("2024-01-01T00:00:00Z").unwrap().to_utc();
    for step in 0..300 {
        let timestamp = base + chrono::TimeDelta::seconds(step);
        store
            .add_transaction(UserId::new("default"), None, PayerName::new("DANNON"), 1, timestamp)
            .await
            .unwrap();
    }
    wait_for_snapshot(data_dir.path()).await;
    store.close();
    drop(store);
    let snapshot = snapshot_files(data_dir.path()).pop().expect("a snapshot was written");
    let mut bytes = std::fs::read(&snapshot).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&snapshot, &bytes).unwrap();
    let error = open_store(&options).expect_err("a damaged snapshot is refused").to_string();
    assert!(error.contains(&snapshot.display().to_string()), "{error}");
    assert!(error.contains("is damaged at byte offset"), "{error}");
}
