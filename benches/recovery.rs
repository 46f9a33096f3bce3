//! Start-up time with 1,000,000 transactions of history (target: under 2 s in
//! a release build): replaying a journal of 1M records, and loading a
//! snapshot of the same ledger. Run with `cargo bench --bench recovery`.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use criterion::{Criterion, criterion_group, criterion_main};
use points::ledger::Ledger;
use points::testing::batch;
use points::testing::files::{self, JOURNAL_MAGIC};
use points::testing::records::{AddTransactionRecord, Command, JournalRecord, SpendRecord};
use points::{FsyncPolicy, Store, StoreOptions};

const TRANSACTIONS: u64 = 1_000_000;
const PAYERS: u64 = 100;

/// Writes a journal of `TRANSACTIONS` accepted transactions (plus a spend
/// every 10th), checking each against a ledger so the history is valid.
fn write_history(data_dir: &Path) {
    let epoch: DateTime<Utc> = DateTime::from_timestamp(1_700_000_000, 0).expect("valid");
    let mut ledger = Ledger::new();
    let file = File::create(data_dir.join("journal-00000000000000000001.log")).expect("create");
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let header = files::encode_header(JOURNAL_MAGIC, files::JOURNAL_FORMAT_VERSION, 1);
    out.write_all(&header).expect("write");
    let salt = 0x5eed_5a17;
    out.write_all(&files::encode_journal_salt(salt)).expect("write");
    let seed = files::frame_seed(salt);
    // Records are framed in batches of about a thousand, as group commit
    // under load would write them.
    let (mut records, mut record_count, mut next_sequence) = (Vec::new(), 0, 1);
    let mut batch = Vec::new();
    for step in 0..TRANSACTIONS {
        let payer = format!("PAYER {:03}", step % PAYERS);
        // Mostly in order, with some late arrivals.
        let minutes = if step % 7 == 0 { step as i64 / 2 } else { step as i64 };
        let timestamp = epoch + TimeDelta::minutes(minutes);
        let points = 1 + (step % 50) as i64;
        let transaction = ledger.add_transaction(&payer, points, timestamp).expect("valid");
        let mut commands = vec![Command::AddTransaction(AddTransactionRecord::new(
            &payer,
            points,
            timestamp,
            transaction.id,
        ))];
        if step % 10 == 9 {
            ledger.spend(40).expect("enough points");
            commands.push(Command::Spend(SpendRecord { points: 40, spend_id: (step + 1) / 10 }));
        }
        for command in commands {
            let record = JournalRecord {
                command: Some(command),
                // One user with all the history: the heaviest ledger to rebuild.
                user_id: "default".to_owned(),
                accepted_at_ms: 1_700_000_000_000,
                ..JournalRecord::default()
            };
            batch::encode_record(&record, &mut records);
            record_count += 1;
        }
        if record_count >= 1000 || step + 1 == TRANSACTIONS {
            batch.clear();
            batch::encode_batches(&records, record_count, next_sequence, seed, &mut batch);
            out.write_all(&batch).expect("write");
            next_sequence += record_count as u64;
            (records, record_count) = (Vec::new(), 0);
        }
    }
    out.flush().expect("flush");
}

fn options(data_dir: &Path, snapshot_threshold_bytes: u64) -> StoreOptions {
    StoreOptions::durable(data_dir, FsyncPolicy::Always, snapshot_threshold_bytes)
}

fn open_and_close(options: &StoreOptions) {
    let (store, _) = Store::open(options).expect("open");
    store.close();
}

fn recovery(criterion: &mut Criterion) {
    let journal_only = tempfile::tempdir().expect("temporary directory");
    write_history(journal_only.path());

    // The same history, folded into a snapshot: opening with a small
    // threshold asks for a snapshot at once.
    let with_snapshot = tempfile::tempdir().expect("temporary directory");
    write_history(with_snapshot.path());
    let (store, _) = Store::open(&options(with_snapshot.path(), 4096)).expect("open");
    let has_snapshot = || {
        std::fs::read_dir(with_snapshot.path())
            .expect("list")
            .any(|entry| entry.expect("entry").path().extension().is_some_and(|ext| ext == "snap"))
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while !has_snapshot() {
        assert!(std::time::Instant::now() < deadline, "no snapshot was written");
        std::thread::sleep(Duration::from_millis(50));
    }
    store.close();

    let mut group = criterion.benchmark_group("start_up_1m_transactions");
    group.sample_size(10).measurement_time(Duration::from_secs(20));
    group.bench_function("replay_journal", |bench| {
        bench.iter(|| open_and_close(&options(journal_only.path(), u64::MAX)))
    });
    group.bench_function("load_snapshot", |bench| {
        bench.iter(|| open_and_close(&options(with_snapshot.path(), u64::MAX)))
    });
    group.finish();
}

criterion_group!(benches, recovery);
criterion_main!(benches);
