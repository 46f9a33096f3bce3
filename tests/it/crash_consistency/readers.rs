//! Readers are never shown what kill -9 takes back.

use super::shown::{EntryKey, Shown, check_user, history};
use super::tasks::{Moment, Round, bulk_writer, reader, writer};
use super::{channel, connect, seed, user_balances, within};
use crate::common::ServerProcess;
use crate::common::client::{Client, add_request};
use crate::common::wait::poll_until;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Many rounds of: writers (adds, spends, spends with a request id and a
/// retry of them), readers (balances, histories, and refused spends, each
/// racing a write of the same user) and bulk writers on a durable server
/// (`--fsync always`), then kill -9 at a random moment (after a freeze, see
/// [`Round::freeze`]), mostly right after a reply of the round's [`Moment`]
/// kind, then a restart on the same directory. After each restart every
/// reply any task was shown is still true: each history shown is a prefix of
/// the restarted history, each balances reply is the state after some prefix
/// of it, each refusal's `available` is the total after some prefix, each
/// acknowledged transaction and spend (first replies and retry answers) is
/// there, and the users of earlier rounds are unchanged.
///
/// kill -9 loses only what was not yet handed to `write`, so this catches a
/// reply that does not wait for the disk only when the crash lands while the
/// journal writer still holds what the reply showed: the bulk writers keep
/// it busy, and the crash follows a reply at once. (Removing the wait from
/// reads, from refusals or from retry answers made this test fail in about
/// a third to two thirds of its runs.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_are_never_shown_a_balance_the_restarted_server_lacks() {
    const ROUNDS: usize = 20;
    const WRITERS: usize = 24;
    const READERS: usize = 8;
    const USERS: usize = 2;
    const BULK_WRITERS: usize = 2;
    const BULK_ENTRIES: usize = 250;
    let started = Instant::now();
    let seed = seed("readers_are_never_shown_a_balance_the_restarted_server_lacks");
    let mut rng = fastrand::Rng::with_seed(seed);
    let data_dir = tempfile::tempdir().expect("temporary directory");
    // Snapshots now and then too: some starts use a small threshold.
    let thresholds = ["65536", "1048576", "67108864"];
    let start = |rng: &mut fastrand::Rng| {
        let threshold = thresholds[rng.usize(0..thresholds.len())];
        ServerProcess::start_durable(data_dir.path(), &["--snapshot-threshold-bytes", threshold])
    };
    // Users of earlier rounds, with their history as verified after their round.
    let mut settled: BTreeMap<String, (Vec<EntryKey>, BTreeMap<String, i64>)> = BTreeMap::new();
    let mut server = start(&mut rng);
    for round in 0..ROUNDS {
        let users: Vec<String> = (0..USERS).map(|user| format!("r{round:02}-u{user}")).collect();
        let kill_after = Duration::from_millis(rng.u64(30..=400));
        let moments = [Moment::Read, Moment::Refusal, Moment::Retry];
        let moment = if rng.u32(0..7) == 0 { Moment::Any } else { moments[rng.usize(0..3)] };
        let shared = Arc::new(Round {
            pid: server.pid(),
            killing: AtomicBool::new(false),
            moment,
            freeze_after: Instant::now() + kill_after,
        });
        let writer_channel = channel(&server).await;
        let reader_channel = channel(&server).await;
        // Each user exists before the round: a refusal for a user with no
        // ledger is not remembered (a refused call never creates a user), so
        // only for existing users must every retry get the same answer.
        let mut seeder = Client::new(writer_channel.clone());
        for user in &users {
            let request = add_request(user, "", "P0", 1, "2023-12-31T00:00:00Z");
            within(20, "seeding a user", seeder.add_transaction(request)).await.expect("seed");
        }
        let mut tasks = Vec::new();
        for index in 0..WRITERS {
            tasks.push(tokio::spawn(writer(
                writer_channel.clone(),
                users.clone(),
                index,
                rng.u64(..),
                Arc::clone(&shared),
            )));
        }
        let bulk_user = format!("r{round:02}-bulk");
        for _ in 0..BULK_WRITERS {
            tasks.push(tokio::spawn(bulk_writer(
                writer_channel.clone(),
                bulk_user.clone(),
                BULK_ENTRIES,
                Arc::clone(&shared),
            )));
        }
        for _ in 0..READERS {
            tasks.push(tokio::spawn(reader(
                reader_channel.clone(),
                users.clone(),
                rng.u64(..),
                Arc::clone(&shared),
            )));
        }
        // The random moment of the crash is what is tested, not a wait for anything.
        tokio::time::sleep(kill_after).await;
        // A task freezes the server right after a reply of the round's kind.
        // Such replies come every few milliseconds; if none did, the server
        // is frozen anyway.
        if moment != Moment::Any {
            poll_until(Duration::from_secs(5), || async {
                shared.killing.load(Ordering::SeqCst).then_some(())
            })
            .await;
        }
        shared.freeze();
        // Time for the replies the server sent before the freeze to reach
        // their tasks (see `Round::freeze`): nothing shows when they have.
        tokio::time::sleep(Duration::from_millis(200)).await;
        server.signal("KILL");
        let mut shown = Shown::default();
        for task in tasks {
            match within(30, "a task after the kill", task).await.expect("task") {
                Ok(task_shown) => shown.merge(task_shown),
                Err(problem) => panic!("round {round}: {problem}; log:\n{}", server.log()),
            }
        }
        drop(server);

        server = start(&mut rng);
        let mut client = connect(&server).await;
        let mut problems = std::mem::take(&mut shown.contradictions);
        let mut lengths = Vec::new();
        for user in users.iter().chain([&bulk_user]) {
            let (restarted, ended) =
                within(30, "reading a history", history(&mut client, user)).await;
            ended.expect("the restarted server serves the history");
            let balances = user_balances(&mut client, user).await;
            problems.extend(check_user(user, &restarted, &balances, &shown));
            let most_shown = shown.histories.get(user).map_or(0, Vec::len);
            lengths.push(format!("{user}: shown {most_shown} / restarted {}", restarted.len()));
            settled.insert(user.clone(), (restarted, balances));
        }
        // Earlier rounds' users are unchanged (their balances here; their
        // whole histories after the last round).
        for (user, (_, expected)) in &settled {
            if users.contains(user) || *user == bulk_user {
                continue;
            }
            let balances = user_balances(&mut client, user).await;
            if &balances != expected {
                problems.push(format!(
                    "{user} (an earlier round's user) changed across a restart: {expected:?}, \
                     then {balances:?}"
                ));
            }
        }
        println!(
            "round {round}: frozen and killed at a {moment:?} moment after {kill_after:?}, {} \
             replies; {}",
            shown.replies,
            lengths.join(", ")
        );
        assert!(
            problems.is_empty(),
            "round {round} (seed {seed}):\n{}\nlog of the restarted server:\n{}",
            problems.join("\n"),
            server.log()
        );
    }
    let mut client = connect(&server).await;
    for (user, (expected, _)) in &settled {
        let (restarted, ended) = within(30, "reading a history", history(&mut client, user)).await;
        ended.expect("the restarted server serves the history");
        assert!(
            &restarted == expected,
            "{user} changed across later restarts: {} entries, then {} (seed {seed})",
            expected.len(),
            restarted.len()
        );
    }
    println!("{ROUNDS} rounds in {:?}", started.elapsed());
}
