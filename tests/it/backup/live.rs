//! `points-server backup` while writers keep going and snapshots and
//! rotations happen every few dozen writes.

use super::{SMALL_SNAPSHOTS, Written, assert_consistent, run_backup};
use crate::common::ServerProcess;
use crate::common::client::{Client, add_request, balances_of, spend_request, try_add, try_spend};
use crate::common::files::{files_in, snapshot_files};
use crate::common::history::entries;
use crate::common::wait::eventually;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use points::proto::v1::history_entry::Entry;
use tonic::Code;

/// Backups taken again and again while writers keep going and snapshots and
/// rotations happen every few dozen writes: each backup, restored, holds
/// every write acknowledged before it started, and is a consistent prefix of
/// what the source went on to hold (contiguous ids, balances that add up).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn backup_while_writes_go_on_restores_everything_acknowledged_before_it_started() {
    const USERS: [&str; 3] = ["alice", "bob", "carol"];
    const WRITERS: usize = 6;
    const BACKUPS: usize = 4;
    let data_dir = tempfile::tempdir().expect("temporary directory");
    let backups = tempfile::tempdir().expect("temporary directory");
    let server = ServerProcess::start_durable(data_dir.path(), &SMALL_SNAPSHOTS);
    let channel = server.channel().await;
    let acknowledged: Arc<Mutex<Vec<(&str, Written)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..WRITERS)
        .map(|writer| {
            let mut client = Client::new(channel.clone());
            let (acknowledged, stop) = (Arc::clone(&acknowledged), Arc::clone(&stop));
            let user = USERS[writer % USERS.len()];
            tokio::spawn(async move {
                // Bounded: the test stops the writers long before this runs out.
                for step in 0..1_000_000u64 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let written = if step % 5 == 4 {
                        match try_spend(&mut client, spend_request(user, "", 2)).await {
                            Ok(reply) => Written::Spend {
                                id: reply.spend_id,
                                points: 2,
                                spent: reply
                                    .spent
                                    .into_iter()
                                    .map(|part| (part.payer, part.points))
                                    .collect(),
                            },
                            Err(status) if status.code() == Code::FailedPrecondition => continue,
                            Err(status) => return Err(status),
                        }
                    } else {
                        let day = 1 + (step * 7 + writer as u64) % 28;
                        let when = format!("2024-04-{day:02}T{writer:02}:00:00Z");
                        let points = 1 + (step % 3) as i64;
                        let request = add_request(user, "", &format!("W{writer}"), points, &when);
                        Written::transaction(&try_add(&mut client, request).await?)
                    };
                    acknowledged.lock().unwrap().push((user, written));
                }
                Ok::<(), tonic::Status>(())
            })
        })
        .collect();

    let mut taken: Vec<(PathBuf, Vec<(&str, Written)>)> = Vec::new();
    for round in 0..BACKUPS {
        // Let the load run on: new writes since the last backup, and
        // snapshots (with their rotations and removals) under way.
        let since = taken.last().map_or(0, |(_, before)| before.len());
        eventually("more writes and a snapshot", Duration::from_secs(60), || async {
            let enough = acknowledged.lock().unwrap().len() >= since + 150;
            (enough && !snapshot_files(data_dir.path()).is_empty()).then_some(())
        })
        .await;
        let before = acknowledged.lock().unwrap().clone();
        let destination = backups.path().join(format!("backup-{round}"));
        let output = run_backup(data_dir.path(), &destination).await;
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "backup {round} failed: {}{stdout}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert_eq!(stdout.lines().count(), 1, "one summary line: {stdout}");
        assert!(stdout.contains("verified"), "{stdout}");
        taken.push((destination, before));
    }
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.await.expect("writer task").expect("every write was accepted during the backups");
    }
    let last_backup_started_at = taken.last().unwrap().1.len();
    assert!(
        acknowledged.lock().unwrap().len() > last_backup_started_at,
        "writes went on while the backups ran"
    );

    // What the source went on to hold: every backup must be a prefix of it.
    let mut client = server.client().await;
    let mut live: HashMap<&str, Vec<Written>> = HashMap::new();
    for user in USERS {
        live.insert(user, Written::all(&entries(&mut client, user).await));
    }
    drop(server);

    for (round, (destination, before)) in taken.iter().enumerate() {
        let names = files_in(destination).into_keys().collect::<Vec<_>>();
        assert!(
            names.iter().all(|name| name.ends_with(".log") || name.ends_with(".snap")),
            "backup {round} holds only journal segments and snapshots: {names:?}"
        );
        let restored = ServerProcess::start_durable(destination, &[]);
        let mut client = restored.client().await;
        for user in USERS {
            let context = format!("backup {round}, user {user}");
            let entries = entries(&mut client, user).await;
            assert_consistent(&entries, &balances_of(&mut client, user).await, &context);
            let written = Written::all(&entries);
            assert!(
                live[user].starts_with(&written),
                "{context}: the restored history is not a prefix of the source's"
            );
            let held: HashSet<&Written> = written.iter().collect();
            for (_, write) in before.iter().filter(|(owner, _)| *owner == user) {
                assert!(held.contains(write), "{context}: acknowledged {write:?} is missing");
            }
        }
        // The restored server goes on from there: the next id is not reused.
        let held = entries(&mut client, USERS[0]).await;
        let transactions =
            held.iter().filter(|entry| matches!(entry, Entry::Transaction(_))).count() as u64;
        let after = add_request(USERS[0], "", "AFTER", 1, "2024-05-01T00:00:00Z");
        let written = try_add(&mut client, after).await.expect("write after restoring");
        assert_eq!(written.id, transactions + 1);
    }
}
