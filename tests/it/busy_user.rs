//! A user kept busy by a long snapshot does not hold the runtime's workers:
//! calls waiting for that user's lock wait off them, and other users are
//! served meanwhile.

use crate::common::files::paths_ending;
use crate::common::wait::eventually;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use points::ledger::NewTransaction;
use points::{FsyncPolicy, Store, StoreOptions};
use points::{PayerName, UserId};

/// A call that must wait for a busy user's lock (here, held by a snapshot
/// encoding a large ledger) waits off the runtime's workers: with both
/// workers' calls waiting on that user, another user's call is still served,
/// before either waiting call gets the lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_waiting_for_a_busy_user_leave_the_workers_to_other_users() {
    let data_dir = tempfile::tempdir().expect("temporary directory");
    let options = StoreOptions::durable(data_dir.path(), FsyncPolicy::Never, u64::MAX / 2);
    let (store, _) = Store::open(&options).expect("open");
    let store = Arc::new(store);
    let when = chrono::DateTime::from_timestamp(1_700_000_000, 0).expect("valid");
    let batch: Vec<NewTransaction<'_>> = (0..10_000)
        .map(|lot| NewTransaction { payer: ["A", "B"][lot % 2], points: 1, timestamp: when })
        .collect();
    for _ in 0..60 {
        store.add_transactions(UserId::new("big"), &batch).await.expect("batch");
    }
    // The snapshot encodes "big" (600,000 transactions) under its read lock.
    let snapshotting = {
        let store = Arc::clone(&store);
        tokio::task::spawn_blocking(move || store.snapshot_now())
    };
    // The snapshot creates its temporary file before it encodes.
    eventually("the snapshot's temporary file", Duration::from_secs(5), || async {
        (!paths_ending(data_dir.path(), ".snap.tmp").is_empty()).then_some(())
    })
    .await;
    let big_done = Arc::new(AtomicUsize::new(0));
    let waiting: Vec<_> = (0..2)
        .map(|_| {
            let (store, big_done) = (Arc::clone(&store), Arc::clone(&big_done));
            tokio::spawn(async move {
                store
                    .add_transaction(UserId::new("big"), None, PayerName::new("A"), 1, when)
                    .await
                    .expect("write");
                big_done.fetch_add(1, Ordering::SeqCst);
            })
        })
        .collect();
    // Lets both calls reach the busy user's lock: nothing outside the store
    // shows that they wait there. Were they not there yet, the assertions
    // below would still hold, the test only proving less.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let other = {
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            store.add_transaction(UserId::new("small"), None, PayerName::new("A"), 1, when).await
        })
    };
    other.await.expect("task").expect("another user's write");
    let finished_first = big_done.load(Ordering::SeqCst);
    assert!(
        !snapshotting.is_finished(),
        "the snapshot was too quick for this test to mean anything"
    );
    assert_eq!(finished_first, 0, "another user waited for the busy user's lock");
    for task in waiting {
        task.await.expect("waiting write");
    }
    snapshotting.await.expect("snapshot thread").expect("snapshot");
    store.close();
}
