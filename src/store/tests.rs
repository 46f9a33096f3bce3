//! The store's own promises: limits decided above the backends, and clean
//! shutdown by ownership.

use chrono::{DateTime, TimeZone, Utc};

use super::*;
use crate::ledger::{NewTransaction, RequestParams};

/// The user of every test here.
const ALICE: UserId<'static> = UserId::new("alice");

fn at(seconds: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(seconds, 0).single().expect("a valid time")
}

fn durable_options(directory: &std::path::Path) -> StoreOptions {
    StoreOptions::durable(directory, FsyncPolicy::Never, u64::MAX)
}

/// The payer limit is the server's, not the ledger's: a credit of one payer
/// too many is refused by the store, with the batch entry that passed it.
#[tokio::test]
async fn crediting_a_payer_past_the_limit_is_refused_with_the_batch_entry() {
    let options = StoreOptions { max_payers_per_user: 2, ..StoreOptions::in_memory() };
    let (store, _) = Store::open(&options).expect("in memory");
    for payer in ["A", "B"] {
        store
            .add_transaction(ALICE, None, PayerName::new(payer), 10, at(1))
            .await
            .expect("under the limit");
    }
    let refused = store.add_transaction(ALICE, None, PayerName::new("C"), 10, at(2)).await;
    assert!(
        matches!(refused, Err(StoreError::PayerLimitReached { limit: 2, batch_index: None })),
        "{refused:?}"
    );
    store
        .add_transaction(ALICE, None, PayerName::new("A"), -5, at(3))
        .await
        .expect("a known payer");
    let batch = [
        NewTransaction { payer: "B", points: 1, timestamp: at(4) },
        NewTransaction { payer: "D", points: 1, timestamp: at(5) },
    ];
    let refused = store.add_transactions(ALICE, &batch).await;
    let Err(error @ StoreError::PayerLimitReached { limit: 2, batch_index: Some(1) }) = refused
    else {
        panic!("expected the payer limit at entry 1, got {refused:?}");
    };
    assert!(error.to_string().starts_with("transaction 1 of the batch was refused"), "{error}");
    let balances = store.balances(ALICE).await.expect("read");
    assert_eq!(balances, vec![("A".to_owned(), 5), ("B".to_owned(), 10)], "nothing changed");
}

/// Dropping a store without closing it stops its threads and unlocks its
/// data directory, so it opens again at once, with everything it accepted.
#[tokio::test(flavor = "multi_thread")]
async fn a_dropped_store_unlocks_its_directory_and_keeps_what_it_accepted() {
    let directory = tempfile::tempdir().expect("a temporary directory");
    let options = durable_options(directory.path());
    let (store, _) = Store::open(&options).expect("open");
    store.add_transaction(ALICE, None, PayerName::new("A"), 7, at(1)).await.expect("accepted");
    drop(store);
    let (store, recovery) = Store::open(&options).expect("unlocked by the drop");
    assert_eq!(recovery.records_replayed, 1);
    assert_eq!(store.balances(ALICE).await.expect("read"), vec![("A".to_owned(), 7)]);
}

/// Closing twice, or closing and then dropping, is the same as closing once.
#[tokio::test(flavor = "multi_thread")]
async fn closing_a_store_again_does_nothing() {
    let directory = tempfile::tempdir().expect("a temporary directory");
    let (store, _) = Store::open(&durable_options(directory.path())).expect("open");
    store.add_transaction(ALICE, None, PayerName::new("A"), 7, at(1)).await.expect("accepted");
    assert!(store.close_within(Duration::from_secs(10)));
    assert!(store.close_within(Duration::ZERO), "already closed");
    store.close();
    let refused = store.add_transaction(ALICE, None, PayerName::new("A"), 1, at(2)).await;
    assert!(matches!(refused, Err(StoreError::Unavailable(_))), "{refused:?}");
    drop(store);
    let (store, _) = Store::open(&durable_options(directory.path())).expect("reopens");
    assert_eq!(store.balances(ALICE).await.expect("read"), vec![("A".to_owned(), 7)]);
}

/// The ledger's time moves only with a kept record: calls that keep nothing
/// (a refusal without a request id, a retry) leave it where the journal
/// puts it, and every kept record carries the time it was decided at, so
/// that recovery rebuilds exactly the ledger that served (holds' expire
/// times included).
#[tokio::test(flavor = "multi_thread")]
async fn the_ledgers_time_moves_only_with_kept_records_and_recovery_rebuilds_it() {
    let directory = tempfile::tempdir().expect("a temporary directory");
    let options = StoreOptions {
        points_validity_ms: Some(24 * 3600 * 1000),
        ..durable_options(directory.path())
    };
    let (store, _) = Store::open(&options).expect("open");
    let recent = Utc::now() - chrono::TimeDelta::hours(1);
    store.add_transaction(ALICE, None, PayerName::new("A"), 70, recent).await.expect("accepted");
    let clock_of = |store: &Store| {
        let user = store.users.get("alice").map(|user| std::sync::Arc::clone(user.value()));
        let user = user.expect("alice is kept");
        user.read().map(|user| user.ledger.clock()).expect("not poisoned")
    };
    let kept = clock_of(&store);
    std::thread::sleep(Duration::from_millis(5));
    let refused = store.spend(ALICE, None, 1_000).await;
    assert!(matches!(refused, Err(StoreError::Refused(_))), "{refused:?}");
    assert_eq!(clock_of(&store), kept, "a refusal kept nothing, time included");
    let hold = RequestParams::Hold { points: 20, timeout_ms: 60_000 };
    let held = store.execute(ALICE, None, hold).await.expect("held");
    let crate::ledger::Executed::Hold(hold) = held else { panic!("a hold: {held:?}") };
    let state = |store: &Store| {
        let user = store.users.get("alice").map(|user| std::sync::Arc::clone(user.value()));
        let user = user.expect("alice");
        user.read().map(|user| user.ledger.state()).expect("not poisoned")
    };
    let served = state(&store);
    assert_eq!(served.holds[0].expire_at_ms, hold.expire_at_ms);
    drop(store);
    let (store, recovery) = Store::open(&options).expect("reopens");
    assert_eq!(recovery.records_replayed, 2);
    assert_eq!(state(&store), served, "recovery rebuilds the ledger that served");
}

/// A follower is woken by a write whose caller went away before it was
/// durable (a cancelled call): the write still becomes durable, and the
/// follower must not wait for the user's next one to see it.
#[tokio::test(flavor = "multi_thread")]
async fn a_follower_wakes_for_a_write_whose_caller_went_away() {
    let directory = tempfile::tempdir().expect("a temporary directory");
    let options = StoreOptions::durable(directory.path(), FsyncPolicy::Always, u64::MAX);
    let (store, _) = Store::open(&options).expect("open");
    let mut follower = store.subscribe_changes(ALICE);
    follower.mark_seen();
    {
        let write = store.add_transaction(ALICE, None, PayerName::new("A"), 7, at(1));
        let mut write = std::pin::pin!(write);
        // One poll takes the record; the call is then dropped, as tonic
        // drops a handler whose client cancelled.
        let polled = std::future::poll_fn(|context| {
            std::task::Poll::Ready(write.as_mut().poll(context).is_ready())
        })
        .await;
        if polled {
            eprintln!("the write was durable at its first poll: nothing was cancelled");
        }
    }
    tokio::time::timeout(Duration::from_secs(5), follower.changed())
        .await
        .expect("the follower is woken");
    assert_eq!(store.balances(ALICE).await.expect("read"), vec![("A".to_owned(), 7)]);
}
