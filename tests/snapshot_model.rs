//! Snapshots and replay rebuild exactly the ledger a pure in-memory run
//! builds: random commands go through a durable store whose tiny snapshot
//! threshold makes it snapshot often, while it is reopened along the way.

mod common;

use common::operations::{Operation, operation_strategy};
use points::durability::{FsyncPolicy, Store, StoreError, StoreOptions};
use points::ledger::{Ledger, LedgerError, PayerState};
use proptest::prelude::*;

/// The whole observable state: payers with lots and balances, ids, total.
fn state(ledger: &Ledger) -> (Vec<PayerState>, u64, i64) {
    (ledger.payer_states().collect(), ledger.next_transaction_id(), ledger.total())
}

fn store_state(store: &Store) -> (Vec<PayerState>, u64, i64) {
    store.with_ledger(state).expect("store serves reads")
}

fn refusal(error: StoreError) -> LedgerError {
    match error {
        StoreError::Refused(refusal) => refusal,
        StoreError::Unavailable(reason) => panic!("store unavailable: {reason}"),
    }
}

/// Applies `operation` to the store and to the pure ledger; replies must match.
async fn apply_both(
    store: &Store,
    pure: &mut Ledger,
    operation: &Operation,
) -> Result<(), TestCaseError> {
    match operation {
        Operation::Add { payer, points, timestamp } => {
            let durable = store.add_transaction(payer, *points, *timestamp).await.map_err(refusal);
            prop_assert_eq!(durable, pure.add_transaction(payer, *points, *timestamp));
        }
        Operation::Spend { points } => {
            let durable = store.spend(*points).await.map_err(refusal);
            prop_assert_eq!(durable, pure.spend(*points));
        }
    }
    Ok(())
}

fn options(data_dir: &std::path::Path, snapshot_threshold_bytes: u64) -> StoreOptions {
    StoreOptions::Durable {
        data_dir: data_dir.to_owned(),
        // The files are the same either way; skipping fsync keeps the test fast.
        fsync: FsyncPolicy::Never,
        snapshot_threshold_bytes,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Snapshot + replay after each reopen equals a pure replay of the same commands.
    #[test]
    fn snapshot_plus_replay_equals_pure_replay(
        operations in prop::collection::vec(operation_strategy(), 1..160),
        reopen_every in 10usize..60,
        snapshot_threshold_bytes in 150u64..1500,
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        let data_dir = tempfile::tempdir().expect("temporary directory");
        let options = options(data_dir.path(), snapshot_threshold_bytes);
        let mut pure = Ledger::new();
        runtime.block_on(async {
            let (mut store, _) = Store::open(&options).expect("open");
            for (index, operation) in operations.iter().enumerate() {
                apply_both(&store, &mut pure, operation).await?;
                if index % reopen_every == reopen_every - 1 {
                    store.close();
                    drop(store);
                    store = Store::open(&options).expect("reopen").0;
                    prop_assert_eq!(store_state(&store), state(&pure));
                }
            }
            store.close();
            drop(store);
            let (store, _) = Store::open(&options).expect("final reopen");
            prop_assert_eq!(store_state(&store), state(&pure));
            store.close();
            Ok(())
        })?;
    }
}

/// Crossing the threshold writes a snapshot and removes the segments it covers;
/// start-up then loads the snapshot and replays only what came after.
#[tokio::test]
async fn snapshot_replaces_covered_segments_and_start_up_uses_it() {
    let data_dir = tempfile::tempdir().expect("temporary directory");
    let options = options(data_dir.path(), 4096);
    let (store, _) = Store::open(&options).expect("open");
    let mut pure = Ledger::new();
    let base = chrono::DateTime::parse_from_rfc3339("2024-01-01T00:00:00Z").unwrap().to_utc();
    for step in 0..600i64 {
        let operation = if step % 5 == 4 {
            Operation::Spend { points: 7 }
        } else {
            let payer = ["DANNON", "UNILEVER", "MILLER COORS"][step as usize % 3].to_owned();
            let timestamp = base + chrono::TimeDelta::minutes((step * 37) % 1000);
            Operation::Add { payer, points: 1 + step % 11, timestamp }
        };
        apply_both(&store, &mut pure, &operation).await.expect("same replies");
    }
    store.close();
    drop(store);

    let names: Vec<String> = std::fs::read_dir(data_dir.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    let snapshots = names.iter().filter(|name| name.ends_with(".snap")).count();
    let journals = names.iter().filter(|name| name.ends_with(".log")).count();
    assert_eq!(snapshots, 1, "exactly the newest snapshot is kept: {names:?}");
    assert_eq!(journals, 1, "covered segments are removed: {names:?}");

    let (store, recovery) = Store::open(&options).expect("reopen");
    let snapshot_sequence = recovery.snapshot_sequence.expect("start-up used the snapshot");
    assert!(snapshot_sequence > 0);
    assert!(recovery.records_replayed < 600, "replayed {} records", recovery.records_replayed);
    assert_eq!(store_state(&store), state(&pure));
    store.close();
}

/// A damaged snapshot is refused with its name and offset, never skipped.
#[tokio::test]
async fn damaged_snapshot_refuses_start() {
    let data_dir = tempfile::tempdir().expect("temporary directory");
    let options = options(data_dir.path(), 4096);
    let (store, _) = Store::open(&options).expect("open");
    let base = chrono::DateTime::parse_from_rfc3339("2024-01-01T00:00:00Z").unwrap().to_utc();
    for step in 0..300 {
        store.add_transaction("DANNON", 1, base + chrono::TimeDelta::seconds(step)).await.unwrap();
    }
    store.close();
    drop(store);
    let snapshot = std::fs::read_dir(data_dir.path())
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .find(|path| path.extension().is_some_and(|extension| extension == "snap"))
        .expect("a snapshot was written");
    let mut bytes = std::fs::read(&snapshot).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&snapshot, &bytes).unwrap();
    let error = Store::open(&options).expect_err("a damaged snapshot is refused").to_string();
    assert!(error.contains(&snapshot.display().to_string()), "{error}");
    assert!(error.contains("is damaged at byte offset"), "{error}");
}
