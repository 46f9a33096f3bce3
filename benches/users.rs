//! Per-user locking: 64 concurrent clients writing through the store, either
//! each to its own user or all to one user. With one lock per user, the
//! first case never makes clients wait on each other's locks; the second
//! serialises them on one. Run with `cargo bench --bench users`.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use points::{PayerName, Store, UserId};

const DANNON: PayerName<'static> = PayerName::new("DANNON");

const CLIENTS: usize = 64;
const CALLS_PER_CLIENT: usize = 64;

fn users(criterion: &mut Criterion) {
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let timestamp: DateTime<Utc> = DateTime::from_timestamp(1_700_000_000, 0).expect("valid");
    let mut group = criterion.benchmark_group("in_memory_writes_64_clients");
    group.throughput(Throughput::Elements((CLIENTS * CALLS_PER_CLIENT) as u64));
    group.sample_size(20).measurement_time(Duration::from_secs(5));
    for (name, distinct_users) in [("one_user_each", true), ("all_one_user", false)] {
        // A fresh store per scenario so both start from the same size.
        let store = Arc::new(Store::in_memory());
        group.bench_function(name, |bench| {
            bench.iter(|| {
                runtime.block_on(async {
                    let clients: Vec<_> = (0..CLIENTS)
                        .map(|client| {
                            let store = Arc::clone(&store);
                            tokio::spawn(async move {
                                let user = if distinct_users {
                                    format!("user-{client}")
                                } else {
                                    "shared".to_owned()
                                };
                                for call in 0..CALLS_PER_CLIENT {
                                    if call % 4 == 3 {
                                        store
                                            .spend(UserId::new(&user), None, 1)
                                            .await
                                            .expect("enough points");
                                    } else {
                                        store
                                            .add_transaction(
                                                UserId::new(&user),
                                                None,
                                                DANNON,
                                                2,
                                                timestamp,
                                            )
                                            .await
                                            .expect("accepted");
                                    }
                                }
                            })
                        })
                        .collect();
                    for client in clients {
                        client.await.expect("client");
                    }
                })
            })
        });
        store.close();
    }
    group.finish();
}

criterion_group!(benches, users);
criterion_main!(benches);
