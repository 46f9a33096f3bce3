//! The store against single-user ledgers: random commands for several users,
//! interleaved, some with request ids (often retried, sometimes reused),
//! through a durable store whose tiny snapshot threshold makes it snapshot
//! often and that is reopened along the way. Every reply must equal what the
//! user's own single-user ledger replies (isolation, retries, snapshot +
//! replay), and so must every user's whole state after each reopen, also
//! when start-up loads a snapshot and replays only what came after it.

use crate::common;
use crate::common::files::{journal_files, snapshot_files, wait_for_snapshot};

use std::collections::HashMap;

use common::operations::{Operation, comparable_state, operation_strategy};
use points::ledger::{Ledger, LedgerError, Request};
use points::{FsyncPolicy, Store, StoreError, StoreOptions};
use points::{PayerName, RequestId, UserId};
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
            let stored = store
                .add_transaction(
                    UserId::new(command.user),
                    request_id.map(RequestId::new),
                    PayerName::new(payer),
                    *points,
                    *timestamp,
                )
                .await;
            let expected =
                ledger.execute_add_transaction(request, payer, *points, *timestamp).into_result();
            prop_assert_eq!(stored.map_err(refusal), expected, "{:?}", command);
        }
        Operation::Spend { points } => {
            let stored = store
                .spend(UserId::new(command.user), request_id.map(RequestId::new), *points)
                .await;
            let expected = ledger.execute_spend(request, *points).into_result();
            prop_assert_eq!(stored.map_err(refusal), expected, "{:?}", command);
        }
    }
    if new_user && ledgers[command.user].history_len() == 0 {
        ledgers.remove(command.user);
    }
    Ok(())
}

async fn assert_same_states(
    store: &Store,
    ledgers: &HashMap<&'static str, Ledger>,
) -> Result<(), TestCaseError> {
    for user in USERS {
        let stored = store.read(UserId::new(user), comparable_state).await.expect("reads");
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
    wait_for_snapshot(data_dir.path()).await;
    store.close();
    drop(store);

    let (snapshots, segments) = (snapshot_files(data_dir.path()), journal_files(data_dir.path()));
    assert_eq!(snapshots.len(), 1, "{snapshots:?}");
    assert_eq!(segments.len(), 1, "{segments:?}");

    let (store, recovery) = common::open_store(&options).expect("reopen");
    assert!(recovery.snapshot_sequence.expect("start-up used the snapshot") > 0);
    assert!(recovery.records_replayed < 600, "replayed {} records", recovery.records_replayed);
    assert_same_states(&store, &ledgers).await.expect("same states");
    store.close();
}
