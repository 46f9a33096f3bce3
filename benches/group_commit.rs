//! Group commit: durable (`--fsync always`) AddTransaction throughput through
//! the store with 1, 8 and 64 concurrent writers. With one fsync per batch,
//! throughput grows with the number of writers instead of staying at one
//! fsync per call. Run with `cargo bench --bench group_commit`.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use points::{FsyncPolicy, PayerName, Store, StoreOptions, UserId};

/// Transactions per measured iteration, split across the writers.
const TRANSACTIONS_PER_ITERATION: u64 = 512;

fn group_commit(criterion: &mut Criterion) {
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let data_dir = tempfile::tempdir().expect("temporary directory");
    let options = StoreOptions::durable(data_dir.path(), FsyncPolicy::Always, 64 << 20);
    let (store, _) = Store::open(&options).expect("open");
    let store = Arc::new(store);
    let timestamp: DateTime<Utc> = DateTime::from_timestamp(1_700_000_000, 0).expect("valid");

    let mut group = criterion.benchmark_group("durable_add_transaction");
    group.throughput(Throughput::Elements(TRANSACTIONS_PER_ITERATION));
    group.sample_size(10).measurement_time(Duration::from_secs(10));
    for writers in [1u64, 8, 64] {
        group.bench_function(format!("{writers}_writers"), |bench| {
            bench.iter(|| {
                runtime.block_on(async {
                    let tasks: Vec<_> = (0..writers)
                        .map(|writer| {
                            let store = Arc::clone(&store);
                            tokio::spawn(async move {
                                let payer = format!("PAYER {writer}");
                                for _ in 0..TRANSACTIONS_PER_ITERATION / writers {
                                    store
                                        .add_transaction(
                                            UserId::new("default"),
                                            None,
                                            PayerName::new(&payer),
                                            1,
                                            timestamp,
                                        )
                                        .await
                                        .expect("accepted");
                                }
                            })
                        })
                        .collect();
                    for task in tasks {
                        task.await.expect("writer");
                    }
                })
            })
        });
    }
    group.finish();
    store.close();
}

criterion_group!(benches, group_commit);
criterion_main!(benches);
