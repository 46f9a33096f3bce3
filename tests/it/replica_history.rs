//! Jepsen-style: several clients add, spend, retry and read a few users at
//! once through random replicas, while one replica is killed with -9 and
//! PostgreSQL itself crashes and restarts. Every call's invocation, completion
//! and reply is recorded; afterwards the history is checked against the one
//! order the database holds (each user's chunks by seq, records in order),
//! replayed on the naive reference ledger:
//! - every record replays as the server decided it (no overdraft, no refusal
//!   the rules would not give), and each request id is stored at most once;
//! - every acknowledged reply is what the reference replies at its record's
//!   place, and every acknowledged write is there;
//! - the order agrees with real time: a write that completed before another
//!   was invoked comes first;
//! - every read shows the balances after some prefix of the order that holds
//!   every write acknowledged before the read began and none invoked after it
//!   ended;
//! - the final balances on every replica are the reference's after all.
//!
//! The clients' choices come from a seed, printed; `POINTS_TEST_SEED=N`
//! replays them (the timing, as in any Jepsen run, is the machine's).

use crate::common::client::{Client, add_request};
use crate::common::operations::Operation;
use crate::common::postgres::{Cluster, TestDatabase, query};
use crate::common::reference::ReferenceLedger;
use crate::common::refusal::reason;
use crate::common::replicas::Replicas;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use points::proto::v1::{GetBalancesRequest, SpendRequest};
use points::testing::RecordChunk;
use points::testing::records::{Command, JournalRecord};
use prost::Message;
use tonic::Code;

const USERS: [&str; 3] = ["j-0", "j-1", "j-2"];
const PAYERS: [&str; 3] = ["DANNON", "UNILEVER", "MILLER COORS"];
/// Client tasks running at once.
const TASKS: u64 = 6;
/// How long the clients run; the faults happen within it.
const RUN: Duration = Duration::from_secs(8);

/// How long the clients go on at least after the database restarted.
const SERVED_AFTER_RESTART: Duration = Duration::from_secs(3);

/// The longest a run goes on, however slow the restart.
const MAX_RUN: Duration = Duration::from_secs(60);
/// When replica 2 is killed with -9, from the start.
const KILL_AT: Duration = Duration::from_secs(2);
/// When PostgreSQL crashes (pg_ctl stop -m immediate) and restarts.
const DATABASE_CRASH_AT: Duration = Duration::from_secs(4);

/// What a call got back.
#[derive(Debug, Clone, PartialEq)]
enum Reply {
    /// A transaction accepted, with its id.
    Added(u64),
    /// A spend accepted: what each payer gave.
    Spent(Vec<(String, i64)>),
    /// A refusal by the rules, with its ErrorInfo reason.
    Refused(String),
    /// No answer that says what happened (the replica died, the database
    /// was away, contention won): it may or may not be stored.
    Unknown(String),
}

/// One write call: what was sent and what came back, when.
#[derive(Debug, Clone)]
struct Call {
    user: usize,
    request_id: String,
    operation: Operation,
    invoked: Instant,
    completed: Instant,
    reply: Reply,
}

/// One GetBalances call that answered.
#[derive(Debug)]
struct Read {
    user: usize,
    invoked: Instant,
    completed: Instant,
    balances: HashMap<String, i64>,
}

/// A write's effect as the reference decides it at its place in the order.
#[derive(Debug, Clone, PartialEq)]
enum Decided {
    Added(u64),
    Spent(Vec<(String, i64)>),
    Refused(String),
}

fn epoch() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2024-01-01T00:00:00Z").expect("valid").with_timezone(&Utc)
}

/// Sends one write through `client`, bounded in time, and records it.
async fn send(client: &mut Client, user: usize, request_id: &str, operation: &Operation) -> Call {
    let invoked = Instant::now();
    let result = match operation {
        Operation::Add { payer, points, timestamp } => {
            let when = timestamp.to_rfc3339_opts(SecondsFormat::Secs, true);
            let mut request =
                tonic::Request::new(add_request(USERS[user], request_id, payer, *points, &when));
            request.set_timeout(Duration::from_secs(10));
            client
                .add_transaction(request)
                .await
                .map(|reply| Reply::Added(reply.into_inner().transaction.map_or(0, |t| t.id)))
        }
        Operation::Spend { points } => {
            let mut request = tonic::Request::new(SpendRequest {
                user_id: USERS[user].to_owned(),
                request_id: request_id.to_owned(),
                points: *points,
            });
            request.set_timeout(Duration::from_secs(10));
            client.spend(request).await.map(|reply| {
                let spent = reply.into_inner().spent;
                Reply::Spent(spent.into_iter().map(|entry| (entry.payer, entry.points)).collect())
            })
        }
    };
    let reply = match result {
        Ok(reply) => reply,
        Err(status) if matches!(status.code(), Code::FailedPrecondition | Code::OutOfRange) => {
            Reply::Refused(reason(&status))
        }
        Err(status) => Reply::Unknown(format!("{:?}: {}", status.code(), status.message())),
    };
    Call {
        user,
        request_id: request_id.to_owned(),
        operation: operation.clone(),
        invoked,
        completed: Instant::now(),
        reply,
    }
}

/// One client: random writes, retries of its own earlier writes, and reads,
/// each through a replica picked at random among those not killed.
async fn client_task(
    task: u64,
    seed: u64,
    clients: Vec<Client>,
    killed: Arc<AtomicBool>,
    started: Instant,
    database_back: Arc<std::sync::OnceLock<Instant>>,
) -> (Vec<Call>, Vec<Read>) {
    let mut random = fastrand::Rng::with_seed(seed.wrapping_add(task));
    let (mut calls, mut reads) = (Vec::new(), Vec::new());
    let mut sent: Vec<(usize, String, Operation)> = Vec::new();
    for number in 0.. {
        // The run lasts RUN, and at least SERVED_AFTER_RESTART past the
        // database's restart (which a loaded machine can make slow), but
        // never past MAX_RUN.
        let served_after_restart =
            database_back.get().is_some_and(|back| back.elapsed() >= SERVED_AFTER_RESTART);
        if (started.elapsed() >= RUN && served_after_restart) || started.elapsed() >= MAX_RUN {
            break;
        }
        let alive = if killed.load(Ordering::Acquire) { 2 } else { clients.len() };
        let mut client = clients[random.usize(..alive)].clone();
        let user = random.usize(..USERS.len());
        let request_id = format!("t{task}-{number}");
        let call = match random.u8(..10) {
            0..=4 => {
                let points =
                    if random.u8(..4) == 0 { -random.i64(1..40) } else { random.i64(1..60) };
                let payer = PAYERS[random.usize(..PAYERS.len())].to_owned();
                let timestamp = epoch() + TimeDelta::days(random.i64(0..20));
                let operation = Operation::Add { payer, points, timestamp };
                sent.push((user, request_id.clone(), operation.clone()));
                send(&mut client, user, &request_id, &operation).await
            }
            5..=6 => {
                let operation = Operation::Spend { points: random.i64(1..80) };
                sent.push((user, request_id.clone(), operation.clone()));
                send(&mut client, user, &request_id, &operation).await
            }
            7 if !sent.is_empty() => {
                let (user, request_id, operation) = sent[random.usize(..sent.len())].clone();
                send(&mut client, user, &request_id, &operation).await
            }
            _ => {
                let invoked = Instant::now();
                let mut request = tonic::Request::new(GetBalancesRequest {
                    user_id: USERS[user].to_owned(),
                    ..Default::default()
                });
                request.set_timeout(Duration::from_secs(10));
                if let Ok(reply) = client.get_balances(request).await {
                    let all = reply.into_inner().balances;
                    let balances = all.into_iter().filter(|(_, points)| *points != 0).collect();
                    reads.push(Read { user, invoked, completed: Instant::now(), balances });
                }
                continue;
            }
        };
        if matches!(call.reply, Reply::Unknown(_)) {
            // The replica or the database is away: do not spin.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        calls.push(call);
    }
    (calls, reads)
}

/// Every stored record of `user_id`, in the database's order.
fn stored_records(url: &str, user_id: &str) -> Vec<JournalRecord> {
    let rows = query(
        url,
        &format!(
            "SELECT seq, encode(records, 'hex') FROM points_user_records \
             WHERE user_id = '{user_id}' ORDER BY seq"
        ),
    );
    let mut records = Vec::new();
    for (index, row) in rows.iter().enumerate() {
        let seq: usize = row[0].as_deref().and_then(|seq| seq.parse().ok()).expect("a seq");
        assert_eq!(seq, index + 1, "{user_id}'s chunks are contiguous");
        let hex = row[1].as_deref().unwrap_or("");
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|at| u8::from_str_radix(&hex[at..at + 2], 16).expect("hex"))
            .collect();
        let chunk = RecordChunk::decode(bytes.as_slice()).expect("a chunk decodes");
        records.extend(chunk.records);
    }
    records
}

/// Replays `records` on the reference: what each decided, and the
/// balances (zero balances left out) after each prefix (index k: after k
/// records).
fn replay(records: &[JournalRecord]) -> (Vec<Decided>, Vec<HashMap<String, i64>>) {
    let mut reference = ReferenceLedger::default();
    let balances = |reference: &ReferenceLedger| -> HashMap<String, i64> {
        reference.balances().into_iter().filter(|(_, points)| *points != 0).collect()
    };
    let mut decided = Vec::new();
    let mut after = vec![balances(&reference)];
    for (place, record) in records.iter().enumerate() {
        let outcome = match record.command.as_ref().expect("a command") {
            Command::AddTransaction(add) => {
                let when = DateTime::from_timestamp(add.timestamp_seconds, add.timestamp_nanos)
                    .expect("a time");
                match reference.add_transaction(&add.payer, add.points, when) {
                    Ok(transaction) => {
                        assert_eq!(transaction.id, add.transaction_id, "record {place}'s id");
                        Decided::Added(transaction.id)
                    }
                    Err(error) => Decided::Refused(error.reason().to_owned()),
                }
            }
            Command::Spend(spend) => match reference.spend(spend.points) {
                Ok(spent) => Decided::Spent(
                    spent.into_iter().map(|entry| (entry.payer, entry.points)).collect(),
                ),
                Err(error) => Decided::Refused(error.reason().to_owned()),
            },
            other => panic!("only adds and spends were sent, not {other:?}"),
        };
        assert_eq!(
            matches!(outcome, Decided::Refused(_)),
            record.refused,
            "record {place} ({record:?}) was decided as the rules decide: {outcome:?}"
        );
        decided.push(outcome);
        after.push(balances(&reference));
    }
    (decided, after)
}

/// Whether `record` holds the command `operation` sent.
fn sends(record: &JournalRecord, operation: &Operation) -> bool {
    match (record.command.as_ref(), operation) {
        (Some(Command::AddTransaction(add)), Operation::Add { payer, points, timestamp }) => {
            (&add.payer, add.points, add.timestamp_seconds)
                == (payer, *points, timestamp.timestamp())
        }
        (Some(Command::Spend(spend)), Operation::Spend { points }) => spend.points == *points,
        _ => false,
    }
}

/// Checks one user's calls and reads against the stored order.
fn check_user(user: usize, records: &[JournalRecord], calls: &[&Call], reads: &[&Read]) {
    let (decided, after) = replay(records);
    let mut place_of: HashMap<&str, usize> = HashMap::new();
    for (place, record) in records.iter().enumerate() {
        if record.request_id.is_empty() {
            continue;
        }
        let earlier = place_of.insert(&record.request_id, place);
        assert!(earlier.is_none(), "request id {:?} stored twice", record.request_id);
    }
    // Per request id: its first invocation, its first acknowledgement.
    let mut windows: HashMap<&str, (Instant, Option<Instant>)> = HashMap::new();
    for call in calls {
        let window = windows.entry(&call.request_id).or_insert((call.invoked, None));
        window.0 = window.0.min(call.invoked);
        let place = place_of.get(call.request_id.as_str()).copied();
        if let Some(place) = place {
            assert!(
                sends(&records[place], &call.operation),
                "user {user}: {call:?} is stored as {:?}",
                records[place]
            );
        }
        let expected = match &call.reply {
            Reply::Unknown(_) => continue,
            Reply::Added(id) => Decided::Added(*id),
            Reply::Spent(spent) => Decided::Spent(spent.clone()),
            Reply::Refused(reason) => Decided::Refused(reason.clone()),
        };
        window.1 = Some(window.1.map_or(call.completed, |at| at.min(call.completed)));
        let place =
            place.unwrap_or_else(|| panic!("user {user}: acknowledged {call:?} is not stored"));
        assert_eq!(decided[place], expected, "user {user}: {call:?} at place {place}");
    }
    // Real time: what was acknowledged before another was first sent comes
    // first in the order.
    let placed: Vec<(usize, Instant, Option<Instant>)> = windows
        .iter()
        .filter_map(|(id, &(invoked, acknowledged))| {
            place_of.get(id).map(|&place| (place, invoked, acknowledged))
        })
        .collect();
    for &(first, _, acknowledged) in &placed {
        let Some(acknowledged) = acknowledged else { continue };
        for &(second, invoked, _) in &placed {
            assert!(
                acknowledged >= invoked || first < second,
                "user {user}: place {first} was acknowledged before place {second} was sent, \
                 yet is ordered after it"
            );
        }
    }
    // Reads: some prefix holding every write acknowledged before the read
    // began and none first sent after it ended.
    for read in reads {
        let at_least = placed
            .iter()
            .filter(|&&(_, _, acknowledged)| acknowledged.is_some_and(|at| at < read.invoked))
            .map(|&(place, _, _)| place + 1)
            .max()
            .unwrap_or(0);
        let at_most = placed
            .iter()
            .filter(|&&(_, invoked, _)| invoked > read.completed)
            .map(|&(place, _, _)| place)
            .min()
            .unwrap_or(records.len());
        let explained = (at_least..=at_most.max(at_least))
            .any(|prefix| after.get(prefix) == Some(&read.balances));
        assert!(
            explained,
            "user {user}: a read saw {:?}, which no prefix between {at_least} and {at_most} \
             of the stored order shows",
            read.balances
        );
    }
}

/// The whole run: clients, faults, then the checks of the module docs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_clients_through_replicas_that_crash_see_one_order_per_user() {
    let seed = std::env::var("POINTS_TEST_SEED")
        .map(|seed| seed.parse().expect("POINTS_TEST_SEED is a number"))
        .unwrap_or_else(|_| fastrand::u64(..));
    eprintln!("replica history seed {seed}: replay with POINTS_TEST_SEED={seed}");
    let cluster = Arc::new(Cluster::start());
    let database = TestDatabase::create_on(&cluster.admin_url());
    let url = database.url.clone();
    let replicas = Replicas::start_on(database, 3, &["--database-connect-timeout-ms", "500"]);
    let mut clients = Vec::new();
    for server in &replicas.servers {
        clients.push(Client::new(server.channel().await));
    }
    // Every user exists before the run, so that every refusal that depends
    // on the state is remembered (and stored) with its request id.
    for (user, user_id) in USERS.iter().enumerate() {
        let seed_request =
            add_request(user_id, &format!("seed-{user}"), "DANNON", 100, "2024-01-01T00:00:00Z");
        clients[0].add_transaction(seed_request).await.expect("the seed write");
    }

    let started = Instant::now();
    let killed = Arc::new(AtomicBool::new(false));
    let database_back = Arc::new(std::sync::OnceLock::new());
    let tasks: Vec<_> = (0..TASKS)
        .map(|task| {
            let (clients, killed) = (clients.clone(), Arc::clone(&killed));
            let database_back = Arc::clone(&database_back);
            tokio::spawn(client_task(task, seed, clients, killed, started, database_back))
        })
        .collect();
    tokio::time::sleep_until((started + KILL_AT).into()).await;
    killed.store(true, Ordering::Release);
    replicas.servers[2].signal("KILL");
    tokio::time::sleep_until((started + DATABASE_CRASH_AT).into()).await;
    let crashing = Arc::clone(&cluster);
    tokio::task::spawn_blocking(move || {
        crashing.stop();
        std::thread::sleep(Duration::from_millis(300));
        crashing.restart();
    })
    .await
    .expect("the database restarted");
    let database_back = *database_back.get_or_init(Instant::now);

    let (mut calls, mut reads) = (Vec::new(), Vec::new());
    for task in tasks {
        let (task_calls, task_reads) = task.await.expect("a client task");
        calls.extend(task_calls);
        reads.extend(task_reads);
    }
    let acknowledged = calls.iter().filter(|call| !matches!(call.reply, Reply::Unknown(_)));
    let after_crash = acknowledged.clone().filter(|call| call.invoked > database_back).count();
    let unknown = calls.len() - acknowledged.count();
    eprintln!(
        "{} writes ({unknown} without a definite answer), {} reads; {after_crash} writes \
         acknowledged after the database came back",
        calls.len(),
        reads.len()
    );
    assert!(after_crash > 0, "the replicas served again after the database crash");

    let mut final_balances = Vec::new();
    for client in &mut clients[..2] {
        let mut balances = Vec::new();
        for user_id in USERS {
            let request = GetBalancesRequest { user_id: user_id.to_owned(), ..Default::default() };
            let reply = client.get_balances(request).await.expect("a surviving replica reads");
            let all = reply.into_inner().balances;
            balances.push(
                all.into_iter().filter(|(_, points)| *points != 0).collect::<HashMap<_, _>>(),
            );
        }
        final_balances.push(balances);
    }
    for (user, user_id) in USERS.iter().enumerate() {
        let records = stored_records(&url, user_id);
        let user_calls: Vec<&Call> = calls.iter().filter(|call| call.user == user).collect();
        let user_reads: Vec<&Read> = reads.iter().filter(|read| read.user == user).collect();
        check_user(user, &records, &user_calls, &user_reads);
        let (_, after) = replay(&records);
        for (replica, balances) in final_balances.iter().enumerate() {
            assert_eq!(after.last(), Some(&balances[user]), "replica {replica}, user {user_id}");
        }
    }
}
