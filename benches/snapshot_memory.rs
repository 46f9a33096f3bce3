//! Peak memory of a snapshot, against the memory of the ledgers it writes
//! (target: well under 2×, i.e. a snapshot never holds a second copy of the
//! ledgers). Not a timing: counts bytes allocated through a counting global
//! allocator, so the numbers are exact and repeatable. Run with
//! `cargo bench --bench snapshot_memory`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use chrono::{DateTime, TimeDelta, Utc};
use points::ledger::NewTransaction;
use points::{FsyncPolicy, Store, StoreOptions, UserId};

/// The system allocator, counting the bytes in use and their peak.
struct Counting;

static IN_USE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let pointer = unsafe { System.alloc(layout) };
        if !pointer.is_null() {
            let now = IN_USE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        pointer
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(pointer, layout) };
        IN_USE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const TRANSACTIONS: usize = 1_000_000;

/// Loads `TRANSACTIONS` transactions spread over `users` users, then takes a
/// snapshot and reports how much memory it needed on top of the ledgers.
fn measure(users: usize) {
    let data_dir = tempfile::tempdir().expect("temporary directory");
    let options = StoreOptions::durable(data_dir.path(), FsyncPolicy::Never, u64::MAX);
    let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    let epoch: DateTime<Utc> = DateTime::from_timestamp(1_700_000_000, 0).expect("valid");
    let payers: Vec<String> = (0..100).map(|index| format!("PAYER {index:03}")).collect();
    let before_store = IN_USE.load(Ordering::Relaxed);
    let (store, _) = Store::open(&options).expect("open");
    runtime.block_on(async {
        let per_user = TRANSACTIONS / users;
        for user in 0..users {
            let user_id = format!("user-{user}");
            for start in (0..per_user).step_by(1000) {
                let batch: Vec<NewTransaction<'_>> = (start..(start + 1000).min(per_user))
                    .map(|index| NewTransaction {
                        payer: &payers[index % payers.len()],
                        points: 1 + (index % 50) as i64,
                        timestamp: epoch + TimeDelta::minutes(index as i64),
                    })
                    .collect();
                store.add_transactions(UserId::new(&user_id), &batch).await.expect("batch");
            }
        }
    });
    let ledgers = IN_USE.load(Ordering::Relaxed) - before_store;
    let baseline = IN_USE.load(Ordering::Relaxed);
    PEAK.store(baseline, Ordering::Relaxed);
    store.snapshot_now().expect("snapshot");
    let extra = PEAK.load(Ordering::Relaxed) - baseline;
    println!(
        "snapshot of {TRANSACTIONS} transactions over {users} users: ledgers {:.1} MiB, snapshot \
         peak {:.2} MiB on top ({:.3}× the ledgers; peak total {:.3}×)",
        ledgers as f64 / (1 << 20) as f64,
        extra as f64 / (1 << 20) as f64,
        extra as f64 / ledgers as f64,
        (ledgers + extra) as f64 / ledgers as f64,
    );
    store.close();
}

fn main() {
    // Criterion passes flags such as --bench; there is nothing to configure.
    for users in [1, 1_000] {
        measure(users);
    }
}
