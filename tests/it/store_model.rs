//! The store against single-user ledgers: random commands for several users,
//! interleaved, some with request ids (often retried, sometimes reused),
//! through a durable store whose tiny snapshot threshold makes it snapshot
//! often and that is reopened along the way. Every reply must equal what the
//! user's own single-user ledger replies (isolation, retries, snapshot +
//! replay), and so must every user's whole state after each reopen.

use crate::common;
use crate::common::wait::eventually;

use std::collections::HashMap;

use common::operations::{Operation, operation_strategy};
use points::durability::{FsyncPolicy, Store, StoreError, StoreOptions};
use points::ledger::{Ledger, LedgerError, LedgerState, Request};
use proptest::prelude::*;

const USERS: [&str; 3] = ["alice", "bob", "default"];

/// A command for one user, maybe with a request id.
#[derive(Debug, Clone)]
struct UserOperation {
    user: &'static str,
    request_id: Option<String>,
    operation: Operation,
}

fn user_operation_strategy() -> impl Strategy<Value = UserOperation> {
    (
        prop::sample::select(USERS.to_vec()),
        prop::option::weighted(0.3, (0u8..6).prop_map(|n| format!("request-{n}"))),
        operation_strategy(),
    )
        .prop_map(|(user, request_id, operation)| UserOperation {
            user,
            request_id,
            operation,
        })
}

fn refusal(error: StoreError) -> LedgerError {
    match error {
        StoreError::Refused(refusal) => refusal,
        other => panic!("the store did not serve: {other}"),
    }
}

/// Applies a command to the store and to the user's own ledger; replies must match.
async fn apply_both(
    store: &Store,
    ledgers: &mut HashMap<&'static str, Ledger>,
    command: &UserOperation,
) -> Result<(), TestCaseError> {
    // A refused command for a user with no ledger leaves none (the store
    // never creates a user for a refusal, nor remembers it).
    let new_user = !ledgers.contains_key(command.user);
    let ledger = ledgers.entry(command.user).or_default();
    // Nothing expires within a test run.
    let request = command.request_id.as_deref().map(|id| Request {
        id,
        now_ms: 0,
        retention_ms: i64::MAX / 2,
        max_remembered: StoreOptions::DEFAULT_MAX_REQUEST_IDS_PER_USER,
    });
    let request_id = command.request_id.as_deref();
    match &command.operation {
        Operation::Add { payer, points, timestamp } => {
            let stored =
                store.add_transaction(command.user, request_id, payer, *points, *timestamp).await;
            let expected =
                ledger.execute_add_transaction(request, payer, *points, *timestamp).into_result();
            prop_assert_eq!(stored.map_err(refusal), expected, "{:?}", command);
        }
        Operation::Spend { points } => {
            let stored = store.spend(command.user, request_id, *points).await;
            let expected = ledger.execute_spend(request, *points).into_result();
            prop_assert_eq!(stored.map_err(refusal), expected, "{:?}", command);
        }
    }
    if new_user && ledgers[command.user].history_len() == 0 {
        ledgers.remove(command.user);
    }
    Ok(())
}

/// A user's state without the acceptance times of its requests (the store
/// uses the wall clock, the single-user ledgers time 0).
fn comparable_state(ledger: &Ledger) -> LedgerState {
    let mut state = ledger.state();
    for request in &mut state.requests {
        request.accepted_at_ms = 0;
    }
    state
}

async fn assert_same_states(
    store: &Store,
    ledgers: &HashMap<&'static str, Ledger>,
) -> Result<(), TestCaseError> {
    for user in USERS {
        let stored = store.read(user, comparable_state).await.expect("reads");
        let expected = ledgers.get(user).map(comparable_state).unwrap_or_default();
        if stored != expected {
            let differs =
                |name: &str, same: bool| if same { String::new() } else { format!(" {name}") };
            return Err(TestCaseError::fail(format!(
                "user {user}: state differs in{}{}{}{}",
                differs("payers", stored.payers == expected.payers),
                differs("transactions", stored.transactions == expected.transactions),
                differs("spends", stored.spends == expected.spends),
                differs("requests", stored.requests == expected.requests),
            )));
        }
    }
    Ok(())
}

fn options(data_dir: &std::path::Path, snapshot_threshold_bytes: u64) -> StoreOptions {
    // The files are the same either way; skipping fsync keeps the test fast.
    StoreOptions::durable(data_dir, FsyncPolicy::Never, snapshot_threshold_bytes)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Users are isolated, retries repeat, and snapshot + replay equals a pure run.
    #[test]
    fn store_matches_independent_single_user_ledgers(
        commands in prop::collection::vec(user_operation_strategy(), 1..200),
        reopen_every in 10usize..70,
        snapshot_threshold_bytes in 150u64..1500,
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        let data_dir = tempfile::tempdir().expect("temporary directory");
        let options = options(data_dir.path(), snapshot_threshold_bytes);
        let mut ledgers = HashMap::new();
        runtime.block_on(async {
            let (mut store, _) = common::open_store(&options).expect("open");
            for (index, command) in commands.iter().enumerate() {
                apply_both(&store, &mut ledgers, command).await?;
                if index % reopen_every == reopen_every - 1 {
                    store.close();
                    drop(store);
                    store = common::open_store(&options).expect("reopen").0;
                    assert_same_states(&store, &ledgers).await?;
                }
            }
            store.close();
            drop(store);
            let (store, _) = common::open_store(&options).expect("final reopen");
            assert_same_states(&store, &ledgers).await?;
            store.close();
            Ok::<(), TestCaseError>(())
        })?;
    }
}

/// Crossing the threshold writes a snapshot and removes the segments it covers;
/// start-up then loads the snapshot and replays only what came after.
#[tokio::test]
async fn snapshot_replaces_covered_segments_and_start_up_uses_it() {
    let data_dir = tempfile::tempdir().expect("temporary directory");
    let options = options(data_dir.path(), 4096);
    let (store, _) = common::open_store(&options).expect("open");
    let mut ledgers = HashMap::new();
    let base = chrono::DateTime::parse_from_rfc3339("2024-01-01T00:00:00Z").unwrap().to_utc();
    for step in 0..600i64 {
        let operation = if step % 5 == 4 {
            Operation::Spend { points: 7 }
        } else {
            let payer = ["DANNON", "UNILEVER", "MILLER COORS"][step as usize % 3].to_owned();
            let timestamp = base + chrono::TimeDelta::minutes((step * 37) % 1000);
            Operation::Add { payer, points: 1 + step % 11, timestamp }
        };
        let user = USERS[step as usize % 2];
        let command = UserOperation { user, request_id: Some(format!("r{step}")), operation };
        apply_both(&store, &mut ledgers, &command).await.expect("same replies");
    }
    // Snapshots run in the background: wait for one (closing skips a pending one).
    let has_snapshot = || {
        std::fs::read_dir(data_dir.path()).unwrap().any(|entry| {
            entry.unwrap().path().extension().is_some_and(|extension| extension == "snap")
        })
    };
    eventually("a snapshot", std::time::Duration::from_secs(30), || async {
        has_snapshot().then_some(())
    })
    .await;
    store.close();
    drop(store);

    let names: Vec<String> = std::fs::read_dir(data_dir.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names.iter().filter(|name| name.ends_with(".snap")).count(), 1, "{names:?}");
    assert_eq!(names.iter().filter(|name| name.ends_with(".log")).count(), 1, "{names:?}");

    let (store, recovery) = common::open_store(&options).expect("reopen");
    assert!(recovery.snapshot_sequence.expect("start-up used the snapshot") > 0);
    assert!(recovery.records_replayed < 600, "replayed {} records", recovery.records_replayed);
    assert_same_states(&store, &ledgers).await.expect("same states");
    store.close();
}

/// Waits (at most 30 s) until a snapshot file exists: snapshots run in the
/// background, and closing the store skips one that has not started.
async fn wait_for_snapshot(data_dir: &std::path::Path) {
    let has_snapshot = || {
        std::fs::read_dir(data_dir).unwrap().any(|entry| {
            entry.unwrap().path().extension().is_some_and(|extension| extension == "snap")
        })
    };
    eventually("a snapshot", std::time::Duration::from_secs(30), || async {
        has_snapshot().then_some(())
    })
    .await;
}

/// A damaged snapshot is refused with its name and offset, never skipped.
#[tokio::test]
async fn damaged_snapshot_refuses_start() {
    let data_dir = tempfile::tempdir().expect("temporary directory");
    let options = options(data_dir.path(), 4096);
    let (store, _) = common::open_store(&options).expect("open");
    let base = chrono::DateTime::parse_from_rfc3339("2024-01-01T00:00:00Z").unwrap().to_utc();
    for step in 0..300 {
        let timestamp = base + chrono::TimeDelta::seconds(step);
        store.add_transaction("default", None, "DANNON", 1, timestamp).await.unwrap();
    }
    wait_for_snapshot(data_dir.path()).await;
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
    let error =
        common::open_store(&options).expect_err("a damaged snapshot is refused").to_string();
    assert!(error.contains(&snapshot.display().to_string()), "{error}");
    assert!(error.contains("is damaged at byte offset"), "{error}");
}
