//! Crash consistency of the real binary: no reply (a read, a refusal, a retry
//! answer) shows anything that kill -9 takes back; a newest journal segment
//! whose header never reached the disk is created again; a torn final batch
//! is cut off whatever part of it landed; an invalid batch with a valid one
//! after it refuses start without touching the files; and shutdown after a
//! journal failure stays within the grace period.
//!
//! Timing choices are random: each test prints its seed, and setting
//! `CRASH_CONSISTENCY_SEED` replays the same choices.

use crate::common;
use crate::common::refusal::assert_refusal;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command as ProcessCommand, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::client::{add, balances, spend};
use common::{ServerProcess, copy_dir, journal_files};
use points::durability::read_journal;
use points::proto::v1::history_entry::Entry;
use points::proto::v1::points_service_client::PointsServiceClient;
use points::proto::v1::{
    AddTransactionRequest, AddTransactionsRequest, GetBalancesRequest, ListTransactionsRequest,
    NewTransaction, SpendRequest, SpendResponse,
};
use tonic::Code;
use tonic::transport::Channel;
use tonic_types::StatusExt;

type Client = PointsServiceClient<Channel>;

/// Bytes of a file header and of a frame header (the documented format).
const FILE_HEADER_BYTES: usize = 24;
const FRAME_HEADER_BYTES: usize = 12;

// ---------------------------------------------------------------------------
// Shared helpers
// ---------------------------------------------------------------------------

/// The seed for random timing choices: `CRASH_CONSISTENCY_SEED`, or the clock.
/// Printed so that a failure can be replayed.
fn seed(test: &str) -> u64 {
    let seed = match std::env::var("CRASH_CONSISTENCY_SEED") {
        Ok(value) => value.parse().expect("CRASH_CONSISTENCY_SEED is a u64"),
        Err(_) => {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
            now.as_nanos() as u64 ^ u64::from(std::process::id())
        }
    };
    println!("{test}: seed {seed} (replay with CRASH_CONSISTENCY_SEED={seed})");
    seed
}

/// Awaits `future`, failing the test after `seconds`.
async fn within<T>(seconds: u64, what: &str, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(Duration::from_secs(seconds), future).await {
        Ok(value) => value,
        Err(_) => panic!("{what} did not finish within {seconds} s"),
    }
}

/// A channel to `server` whose every call is bounded.
async fn channel(server: &ServerProcess) -> Channel {
    let endpoint = Channel::from_shared(server.uri())
        .expect("valid URI")
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(20));
    within(10, "connecting", endpoint.connect()).await.expect("connect to points-server")
}

async fn connect(server: &ServerProcess) -> Client {
    PointsServiceClient::new(channel(server).await)
}

/// Stops the server with SIGTERM and checks that it exits cleanly.
fn stop(mut server: ServerProcess) {
    server.signal("TERM");
    let status = server.wait(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "clean stop; log:\n{}", server.log());
}

/// Every file of `data_dir` with its bytes.
fn directory_contents(data_dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(data_dir)
        .expect("list the data directory")
        .map(|entry| {
            let path = entry.expect("entry").path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&path).expect("read a data file"))
        })
        .collect()
}

/// The last journal sequence on disk.
fn last_sequence(data_dir: &Path) -> u64 {
    read_journal(data_dir).expect("read the journal").last().map_or(0, |(sequence, _)| *sequence)
}

/// One frame of the documented format: payload length (u32 LE), CRC32C of
/// the length bytes, CRC32C of the payload, then the payload.
fn frame(payload: &[u8]) -> Vec<u8> {
    let length = (payload.len() as u32).to_le_bytes();
    let mut out = Vec::with_capacity(FRAME_HEADER_BYTES + payload.len());
    out.extend_from_slice(&length);
    out.extend_from_slice(&crc32c::crc32c(&length).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// Where each batch frame of a journal segment starts. The segment's header
/// is the 24-byte file header, possibly followed by more fields (a format
/// may add some): the batches start at the first offset from which the
/// frames' lengths lead exactly to the end of the file.
fn frame_offsets(journal: &[u8]) -> Vec<usize> {
    let walk = |start: usize| {
        let mut offsets = Vec::new();
        let mut offset = start;
        while offset + FRAME_HEADER_BYTES <= journal.len() {
            offsets.push(offset);
            let length = u32::from_le_bytes(journal[offset..offset + 4].try_into().unwrap());
            offset += FRAME_HEADER_BYTES + length as usize;
        }
        (offset == journal.len() && !offsets.is_empty()).then_some(offsets)
    };
    (FILE_HEADER_BYTES..=FILE_HEADER_BYTES + 64)
        .find_map(walk)
        .expect("the journal is a header and whole frames")
}

/// Runs the binary on `data_dir` with `args`, expecting it to exit by itself
/// (a refused start) within 30 s; returns its status and stderr, or, if it
/// started listening instead (it is then stopped), its log.
fn run_to_exit(data_dir: &Path, args: &[&str]) -> Result<(ExitStatus, String), String> {
    let mut child = ServerProcess::command()
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .args(args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn points-server");
    let stderr = child.stderr.take().expect("piped stderr");
    let collected = Arc::new(Mutex::new(String::new()));
    let writer = Arc::clone(&collected);
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let mut log = writer.lock().unwrap();
            log.push_str(&line);
            log.push('\n');
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().expect("poll child") {
            break status;
        }
        if collected.lock().unwrap().contains("listening") {
            child.kill().expect("stop points-server");
            child.wait().expect("reap points-server");
            reader.join().expect("stderr reader");
            return Err(collected.lock().unwrap().clone());
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("points-server neither started nor exited; log:\n{}", collected.lock().unwrap());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    reader.join().expect("stderr reader");
    let log = collected.lock().unwrap().clone();
    Ok((status, log))
}

// ---------------------------------------------------------------------------
// 1. Readers are never shown what kill -9 takes back
// ---------------------------------------------------------------------------

/// A history entry without `remaining_points`, which later spends change.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum EntryKey {
    Transaction { id: u64, payer: String, points: i64 },
    Spend { id: u64, points: i64, spent: Vec<(String, i64)> },
}

fn entry_key(entry: Entry) -> EntryKey {
    match entry {
        Entry::Transaction(transaction) => EntryKey::Transaction {
            id: transaction.id,
            payer: transaction.payer,
            points: transaction.points,
        },
        Entry::Spend(spend) => EntryKey::Spend {
            id: spend.id,
            points: spend.points,
            spent: spend.spent.into_iter().map(|part| (part.payer, part.points)).collect(),
        },
    }
}

/// A user's whole history, page by page. On an error, what was read so far
/// (a prefix of the history, as shown) and the error.
async fn history(client: &mut Client, user_id: &str) -> (Vec<EntryKey>, Result<(), tonic::Status>) {
    let mut entries = Vec::new();
    let mut page_token = String::new();
    // Bounded: every page but the last holds 1000 entries.
    for _ in 0..100_000 {
        let request = ListTransactionsRequest {
            user_id: user_id.to_owned(),
            page_size: 1000,
            page_token: page_token.clone(),
        };
        let page = match client.list_transactions(request).await {
            Ok(page) => page.into_inner(),
            Err(status) => return (entries, Err(status)),
        };
        entries.extend(page.entries.into_iter().filter_map(|entry| entry.entry).map(entry_key));
        if page.next_page_token.is_empty() {
            return (entries, Ok(()));
        }
        page_token = page.next_page_token;
    }
    panic!("the history of {user_id} never ended");
}

/// Balances after each prefix of `history` (index k: after k entries), as
/// the server reports them: every payer ever credited, with what it has left.
fn prefix_states(history: &[EntryKey]) -> Vec<BTreeMap<String, i64>> {
    let mut state = BTreeMap::new();
    let mut states = vec![state.clone()];
    for entry in history {
        match entry {
            EntryKey::Transaction { payer, points, .. } => {
                *state.entry(payer.clone()).or_insert(0) += points;
            }
            EntryKey::Spend { spent, .. } => {
                for (payer, points) in spent {
                    *state.entry(payer.clone()).or_insert(0) += points;
                }
            }
        }
        states.push(state.clone());
    }
    states
}

/// An acknowledged spend: its id, its points, and what each payer gave.
type AcknowledgedSpend = (u64, i64, Vec<(String, i64)>);

/// What one task was shown before the server was killed.
#[derive(Default)]
struct Shown {
    /// Per user: transactions acknowledged to a writer (id, payer, points).
    transactions: BTreeMap<String, Vec<(u64, String, i64)>>,
    /// Per user: spends acknowledged (first replies and retry answers):
    /// (spend id, points, what each payer gave).
    spends: BTreeMap<String, Vec<AcknowledgedSpend>>,
    /// Per user: the `available` of each INSUFFICIENT_POINTS refusal.
    available: BTreeMap<String, BTreeSet<i64>>,
    /// Per user: every balances reply.
    balances: BTreeMap<String, BTreeSet<BTreeMap<String, i64>>>,
    /// Per user: the longest history a reader was shown. Every history shown
    /// is a prefix of it (checked as they come in).
    histories: BTreeMap<String, Vec<EntryKey>>,
    /// Replies that contradict each other (two histories, neither a prefix
    /// of the other).
    contradictions: Vec<String>,
    /// Calls answered, for the progress line.
    replies: u64,
}

impl Shown {
    fn merge(&mut self, other: Shown) {
        for (user, mut list) in other.transactions {
            self.transactions.entry(user).or_default().append(&mut list);
        }
        for (user, mut list) in other.spends {
            self.spends.entry(user).or_default().append(&mut list);
        }
        for (user, mut set) in other.available {
            self.available.entry(user).or_default().append(&mut set);
        }
        for (user, mut set) in other.balances {
            self.balances.entry(user).or_default().append(&mut set);
        }
        for (user, history) in other.histories {
            self.history(&user, history);
        }
        self.contradictions.extend(other.contradictions);
        self.replies += other.replies;
    }

    /// Records a history shown for `user`.
    fn history(&mut self, user: &str, shown: Vec<EntryKey>) {
        let longest = self.histories.entry(user.to_owned()).or_default();
        if shown.starts_with(longest) {
            *longest = shown;
        } else if !longest.starts_with(&shown) {
            self.contradictions.push(format!(
                "{user}: two histories shown, neither a prefix of the other: {shown:?} and \
                 {longest:?}"
            ));
        }
    }

    /// Records an accepted spend of `points`.
    fn spend(&mut self, user: &str, points: i64, reply: SpendResponse) {
        let spent = reply.spent.into_iter().map(|part| (part.payer, part.points)).collect();
        self.spends.entry(user.to_owned()).or_default().push((reply.spend_id, points, spent));
        self.replies += 1;
    }

    /// Records a Spend refusal; any other error stops the task (the server is gone).
    fn refusal(&mut self, user: &str, status: &tonic::Status) -> bool {
        if status.code() != Code::FailedPrecondition {
            return false;
        }
        let info = assert_refusal(status, Code::FailedPrecondition, "INSUFFICIENT_POINTS");
        let available = info.metadata["available"].parse().expect("available is a number");
        self.available.entry(user.to_owned()).or_default().insert(available);
        self.replies += 1;
        true
    }
}

/// Which reply a round's crash follows at once: one answered while a write
/// it may reflect still waits for the disk. A crash then loses that write if
/// it was not yet written, so the reply must not have shown it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Moment {
    /// A balances reply while a write of the same user is unacknowledged.
    Read,
    /// An INSUFFICIENT_POINTS refusal while a write of the same user is
    /// unacknowledged (its `available` counts that write).
    Refusal,
    /// A retry's answer while the call it repeats is unacknowledged.
    Retry,
    /// No reply: the test picks the moment alone.
    Any,
}

/// What the tasks of a round share with the test.
struct Round {
    /// The server's process id.
    pid: u32,
    /// Set when the server is frozen, just before it is killed.
    killing: AtomicBool,
    /// The kind of reply after which the server is frozen ...
    moment: Moment,
    /// ... once this time has passed.
    freeze_after: Instant,
}

impl Round {
    /// Freezes the server if `moment` is this round's and its time has come.
    fn freeze_at(&self, moment: Moment) {
        if moment == self.moment && Instant::now() >= self.freeze_after {
            self.freeze();
        }
    }

    /// Freezes the server (SIGSTOP) unless that is done already: it then
    /// writes and answers nothing more, and the replies it already sent reach
    /// their tasks before kill -9 resets the connections (a reset can drop
    /// data a client has not read yet, and those last replies are the ones
    /// that could show a change the crash takes back). On disk this is the
    /// same as kill -9 at the moment of the freeze. Sent with kill(2) itself,
    /// not a `kill` process, so that it lands at once.
    fn freeze(&self) {
        if self.killing.swap(true, Ordering::SeqCst) {
            return;
        }
        // SAFETY: kill(2) with the pid of a child process of this test.
        let sent = unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGSTOP) };
        assert_eq!(sent, 0, "SIGSTOP the server: {}", std::io::Error::last_os_error());
    }
}

/// An error a task met while the server was not being killed: a test failure.
fn unexpected(round: &Round, what: &str, status: &tonic::Status) -> Result<(), String> {
    if round.killing.load(Ordering::SeqCst) {
        Ok(())
    } else {
        Err(format!("{what} failed while the server was up: {status:?}"))
    }
}

/// Adds, spends, and spends with a request id sent twice at once (the
/// second is a retry answered from the first), until the server is gone.
async fn writer(
    channel: Channel,
    users: Vec<String>,
    writer: usize,
    seed: u64,
    round: Arc<Round>,
) -> Result<Shown, String> {
    let mut client = PointsServiceClient::new(channel);
    let mut rng = fastrand::Rng::with_seed(seed);
    let user = users[writer % users.len()].clone();
    let mut shown = Shown::default();
    // Bounded: the server is killed long before this runs out.
    for step in 0..100_000u64 {
        match rng.u32(0..10) {
            0..=6 => {
                let payer = format!("P{}", rng.u32(0..4));
                let points = rng.i64(1..10);
                let when = format!(
                    "2024-0{}-{:02}T{:02}:00:00Z",
                    rng.u32(1..10),
                    rng.u32(1..29),
                    step % 24
                );
                let request = AddTransactionRequest {
                    user_id: user.clone(),
                    ..common::client::transaction(&payer, points, &when)
                };
                match client.add_transaction(request).await {
                    Ok(reply) => {
                        let transaction = reply.into_inner().transaction.expect("a transaction");
                        assert_eq!((&transaction.payer, transaction.points), (&payer, points));
                        shown.transactions.entry(user.clone()).or_default().push((
                            transaction.id,
                            payer,
                            points,
                        ));
                        shown.replies += 1;
                    }
                    Err(status) => {
                        return unexpected(&round, "AddTransaction", &status).map(|()| shown);
                    }
                }
            }
            7..=8 => {
                let points = rng.i64(1..40);
                let request = SpendRequest { points, user_id: user.clone(), ..Default::default() };
                match client.spend(request).await {
                    Ok(reply) => shown.spend(&user, points, reply.into_inner()),
                    Err(status) if shown.refusal(&user, &status) => {}
                    Err(status) => return unexpected(&round, "Spend", &status).map(|()| shown),
                }
            }
            _ => {
                let points = rng.i64(1..40);
                let request = SpendRequest {
                    points,
                    user_id: user.clone(),
                    request_id: format!("{user}-w{writer}-s{step}"),
                };
                // The retry follows a moment later, while the first call may
                // still wait for the disk: it is answered from the first.
                let mut first_client = client.clone();
                let first_request = request.clone();
                let first = tokio::spawn(async move { first_client.spend(first_request).await });
                tokio::time::sleep(Duration::from_millis(1)).await;
                let retry = client.spend(request).await;
                if !first.is_finished() {
                    round.freeze_at(Moment::Retry);
                }
                let first = within(60, "a spend and its retry", first).await.expect("spend task");
                let mut outcomes = Vec::new();
                for outcome in [first, retry] {
                    match outcome {
                        Ok(reply) => {
                            let reply = reply.into_inner();
                            outcomes.push(Ok(reply.spend_id));
                            shown.spend(&user, points, reply);
                        }
                        Err(status) if shown.refusal(&user, &status) => {
                            let info = status.get_error_details().error_info().cloned();
                            outcomes.push(Err(info.map(|info| (info.reason, info.metadata))));
                        }
                        Err(status) => {
                            return unexpected(&round, "Spend with a request id", &status)
                                .map(|()| shown);
                        }
                    }
                }
                if outcomes[0] != outcomes[1] {
                    return Err(format!(
                        "a retry of {user}'s spend of {points} got another answer: {outcomes:?}"
                    ));
                }
            }
        }
    }
    Ok(shown)
}

/// Writes batches of `entries` transactions for `user` until the server is
/// gone. Large journal records keep the journal writer busy writing and
/// syncing, so that other records wait in memory for it, where a crash loses
/// them: what a reply must not have shown yet.
async fn bulk_writer(
    channel: Channel,
    user: String,
    entries: usize,
    round: Arc<Round>,
) -> Result<Shown, String> {
    let mut client = PointsServiceClient::new(channel);
    let mut shown = Shown::default();
    for step in 0..100_000usize {
        let transactions = (0..entries)
            .map(|index| NewTransaction {
                payer: format!("BULK{}", index % 8),
                points: 1 + (index % 5) as i64,
                timestamp: Some(common::timestamp(&format!(
                    "2024-11-{:02}T00:00:00Z",
                    1 + step % 28
                ))),
            })
            .collect();
        let request = AddTransactionsRequest { user_id: user.clone(), transactions };
        match client.add_transactions(request).await {
            Ok(reply) => {
                for transaction in reply.into_inner().transactions {
                    shown.transactions.entry(user.clone()).or_default().push((
                        transaction.id,
                        transaction.payer,
                        transaction.points,
                    ));
                }
                shown.replies += 1;
            }
            Err(status) => return unexpected(&round, "AddTransactions", &status).map(|()| shown),
        }
    }
    Ok(shown)
}

/// Reads balances and histories of every user until the server is gone.
async fn reader(
    channel: Channel,
    users: Vec<String>,
    seed: u64,
    round: Arc<Round>,
) -> Result<Shown, String> {
    let mut client = PointsServiceClient::new(channel);
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut shown = Shown::default();
    for step in 0..100_000u64 {
        let user = users[rng.usize(0..users.len())].clone();
        // A write to the same user races with the read: sent a moment
        // earlier, it is applied first, and the read may show it before it
        // is durable unless the read waits.
        let payer = format!("P{}", rng.u32(0..4));
        let points = rng.i64(1..10);
        let request = AddTransactionRequest {
            user_id: user.clone(),
            ..common::client::transaction(
                &payer,
                points,
                &format!("2024-10-01T{:02}:00:00Z", step % 24),
            )
        };
        let mut probe_client = client.clone();
        let probe = tokio::spawn(async move { probe_client.add_transaction(request).await });
        tokio::time::sleep(Duration::from_millis(1)).await;
        // The read: balances, or a spend too large to accept, whose refusal
        // tells the total it was decided on.
        let moment = if rng.bool() {
            let request = GetBalancesRequest { user_id: user.clone() };
            match client.get_balances(request).await {
                Ok(reply) => {
                    let balances = reply.into_inner().balances.into_iter().collect();
                    shown.balances.entry(user.clone()).or_default().insert(balances);
                    shown.replies += 1;
                }
                Err(status) => return unexpected(&round, "GetBalances", &status).map(|()| shown),
            }
            Moment::Read
        } else {
            let request =
                SpendRequest { points: 1_000_000_000, user_id: user.clone(), ..Default::default() };
            match client.spend(request).await {
                Ok(reply) => shown.spend(&user, 1_000_000_000, reply.into_inner()),
                Err(status) if shown.refusal(&user, &status) => {}
                Err(status) => return unexpected(&round, "Spend", &status).map(|()| shown),
            }
            Moment::Refusal
        };
        if !probe.is_finished() {
            round.freeze_at(moment);
        }
        match within(60, "a write racing a read", probe).await.expect("probe task") {
            Ok(reply) => {
                let transaction = reply.into_inner().transaction.expect("a transaction");
                shown.transactions.entry(user.clone()).or_default().push((
                    transaction.id,
                    payer,
                    points,
                ));
                shown.replies += 1;
            }
            Err(status) => return unexpected(&round, "AddTransaction", &status).map(|()| shown),
        }
        // Balances are cheap and so read often; whole histories now and then.
        if rng.u32(0..4) > 0 {
            continue;
        }
        let (entries, ended) = history(&mut client, &user).await;
        if !entries.is_empty() {
            shown.history(&user, entries);
            shown.replies += 1;
        }
        if let Err(status) = ended {
            return unexpected(&round, "ListTransactions", &status).map(|()| shown);
        }
    }
    Ok(shown)
}

/// Checks a user's history as the restarted server has it against every
/// reply shown before the kill; returns what is wrong.
fn check_user(
    user: &str,
    restarted: &[EntryKey],
    balances: &BTreeMap<String, i64>,
    shown: &Shown,
) -> Vec<String> {
    let mut problems = Vec::new();
    let transactions: Vec<u64> = restarted
        .iter()
        .filter_map(|entry| match entry {
            EntryKey::Transaction { id, .. } => Some(*id),
            EntryKey::Spend { .. } => None,
        })
        .collect();
    let spends: Vec<u64> = restarted
        .iter()
        .filter_map(|entry| match entry {
            EntryKey::Spend { id, .. } => Some(*id),
            EntryKey::Transaction { .. } => None,
        })
        .collect();
    if transactions != (1..=transactions.len() as u64).collect::<Vec<_>>() {
        problems.push(format!("{user}: transaction ids are not 1..n in order: {transactions:?}"));
    }
    if spends != (1..=spends.len() as u64).collect::<Vec<_>>() {
        problems.push(format!("{user}: spend ids are not 1..n in order: {spends:?}"));
    }
    let states = prefix_states(restarted);
    if states.last() != Some(balances) {
        problems.push(format!(
            "{user}: balances {balances:?} disagree with the history's {:?}",
            states.last()
        ));
    }
    let by_transaction: HashMap<u64, &EntryKey> = restarted
        .iter()
        .filter_map(|entry| match entry {
            EntryKey::Transaction { id, .. } => Some((*id, entry)),
            EntryKey::Spend { .. } => None,
        })
        .collect();
    let by_spend: HashMap<u64, &EntryKey> = restarted
        .iter()
        .filter_map(|entry| match entry {
            EntryKey::Spend { id, .. } => Some((*id, entry)),
            EntryKey::Transaction { .. } => None,
        })
        .collect();
    for (id, payer, points) in shown.transactions.get(user).into_iter().flatten() {
        let expected = EntryKey::Transaction { id: *id, payer: payer.clone(), points: *points };
        if by_transaction.get(id) != Some(&&expected) {
            problems.push(format!(
                "{user}: acknowledged transaction {expected:?} is {:?} after the restart",
                by_transaction.get(id)
            ));
        }
    }
    for (id, points, spent) in shown.spends.get(user).into_iter().flatten() {
        let expected = EntryKey::Spend { id: *id, points: *points, spent: spent.clone() };
        if by_spend.get(id) != Some(&&expected) {
            problems.push(format!(
                "{user}: acknowledged spend {expected:?} is {:?} after the restart",
                by_spend.get(id)
            ));
        }
    }
    if let Some(seen) = shown.histories.get(user)
        && !restarted.starts_with(seen)
    {
        let common = seen.iter().zip(restarted).take_while(|(a, b)| a == b).count();
        problems.push(format!(
            "{user}: a reader was shown {} history entries, the restarted server has {} \
                 (they agree on the first {common}; shown next: {:?})",
            seen.len(),
            restarted.len(),
            seen.get(common)
        ));
    }
    let states_set: BTreeSet<&BTreeMap<String, i64>> = states.iter().collect();
    for seen in shown.balances.get(user).into_iter().flatten() {
        if !states_set.contains(seen) {
            problems.push(format!(
                "{user}: a reader was shown balances {seen:?}, which no prefix of the restarted \
                 history ({} entries) gives",
                restarted.len()
            ));
        }
    }
    let totals: BTreeSet<i64> = states.iter().map(|state| state.values().sum()).collect();
    for available in shown.available.get(user).into_iter().flatten() {
        if !totals.contains(available) {
            problems.push(format!(
                "{user}: a refusal reported {available} points available, which no prefix of \
                 the restarted history ({} entries, totals {totals:?}) gives",
                restarted.len()
            ));
        }
    }
    problems
}

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
        let mut seeder = PointsServiceClient::new(writer_channel.clone());
        for user in &users {
            let request = AddTransactionRequest {
                user_id: user.clone(),
                ..common::client::transaction("P0", 1, "2023-12-31T00:00:00Z")
            };
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
        tokio::time::sleep(kill_after).await;
        // Bounded: such replies come every few milliseconds; if none did, the
        // server is frozen anyway.
        for _ in 0..5000 {
            if moment == Moment::Any || shared.killing.load(Ordering::SeqCst) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        shared.freeze();
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

/// A user's balances, ordered.
async fn user_balances(client: &mut Client, user: &str) -> BTreeMap<String, i64> {
    let request = GetBalancesRequest { user_id: user.to_owned() };
    let reply = within(30, "GetBalances", client.get_balances(request)).await;
    reply.expect("balances").into_inner().balances.into_iter().collect()
}

// ---------------------------------------------------------------------------
// 2. A newest segment shorter than its header
// ---------------------------------------------------------------------------

/// A crash while a new segment was being created can leave it with only part
/// of its header, or a header of zeros. The server starts, keeps every
/// earlier write, creates the segment again, accepts new writes, and keeps
/// them across another restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newest_segment_shorter_than_its_header_is_recreated() {
    let data_dir = tempfile::tempdir().expect("temporary directory");
    let server = ServerProcess::start_durable(data_dir.path(), &[]);
    let mut client = connect(&server).await;
    add(&mut client, "DANNON", 300, "2024-01-01T00:00:00Z").await;
    add(&mut client, "UNILEVER", 200, "2024-01-02T00:00:00Z").await;
    spend(&mut client, 100).await;
    add(&mut client, "DANNON", 50, "2024-01-03T00:00:00Z").await;
    let before = balances(&mut client).await;
    stop(server);
    let last = last_sequence(data_dir.path());
    assert_eq!(last, 4);
    assert_eq!(journal_files(data_dir.path()).len(), 1);

    let mut partial_header = Vec::new();
    partial_header.extend_from_slice(b"PNTSJRNL");
    partial_header.extend_from_slice(&2u32.to_le_bytes()[..2]);
    for (bytes, description) in
        [(partial_header, "10 bytes of its header"), (vec![0u8; 24], "24 zero bytes")]
    {
        let copy = copy_dir(data_dir.path());
        let newest = copy.path().join(format!("journal-{:020}.log", last + 1));
        std::fs::write(&newest, &bytes).unwrap();

        let server = ServerProcess::start_durable(copy.path(), &[]);
        let mut client = connect(&server).await;
        assert_eq!(balances(&mut client).await, before, "{description}");
        assert!(
            server.log().contains("header never reached the disk"),
            "{description}: {}",
            server.log()
        );
        assert_eq!(
            add(&mut client, "KRAFT", 7, "2024-01-04T00:00:00Z").await.id,
            4,
            "{description}"
        );
        let mut after = before.clone();
        after.insert("KRAFT".to_owned(), 7);
        assert_eq!(balances(&mut client).await, after, "{description}");
        stop(server);

        // The segment was created again, properly, and holds the new write.
        let created = std::fs::read(&newest).unwrap();
        assert!(created.len() > FILE_HEADER_BYTES, "{description}: {} bytes", created.len());
        assert_eq!(&created[..8], b"PNTSJRNL", "{description}");
        assert_eq!(created[12..20], (last + 1).to_le_bytes(), "{description}");
        assert_eq!(last_sequence(copy.path()), last + 1, "{description}");

        let server = ServerProcess::start_durable(copy.path(), &[]);
        let mut client = connect(&server).await;
        assert_eq!(balances(&mut client).await, after, "{description}: after another restart");
        assert_eq!(
            add(&mut client, "KRAFT", 1, "2024-01-05T00:00:00Z").await.id,
            5,
            "{description}"
        );
        stop(server);
        let server = ServerProcess::start_durable(copy.path(), &[]);
        assert_eq!(balances(&mut connect(&server).await).await["KRAFT"], 8, "{description}");
    }
}

// ---------------------------------------------------------------------------
// 3. A torn final batch
// ---------------------------------------------------------------------------

/// Sector size assumed for the patterns in which a torn write lands.
const SECTOR_BYTES: usize = 512;

/// A data directory whose journal ends in a batch of many records, written by
/// the server itself under group commit (so the test does not depend on how
/// records are laid out inside a batch), after three earlier writes.
struct GroupCommitJournal {
    data_dir: tempfile::TempDir,
    /// The journal segment's file name.
    name: std::ffi::OsString,
    /// The journal, ending with the batch.
    journal: Vec<u8>,
    /// Where the batch starts.
    batch_start: usize,
    /// Records in the batch.
    records: u32,
}

impl GroupCommitJournal {
    /// Three sequential writes, then bursts of concurrent AddTransactions
    /// whose payers `payer` names, until one batch holds at least 3 records;
    /// the journal is cut right after that batch.
    async fn write(payer: impl Fn(usize) -> String) -> Self {
        let data_dir = tempfile::tempdir().expect("temporary directory");
        let server = ServerProcess::start_durable(data_dir.path(), &[]);
        let mut client = connect(&server).await;
        add(&mut client, "DANNON", 300, "2022-10-31T10:00:00Z").await;
        add(&mut client, "UNILEVER", 200, "2022-10-31T11:00:00Z").await;
        spend(&mut client, 100).await;
        let channel = channel(&server).await;
        let mut best = (0, 0);
        // Bounded: one burst nearly always makes such a batch.
        for burst in 0..10 {
            let calls: Vec<_> = (0..48)
                .map(|index| {
                    let mut client = PointsServiceClient::new(channel.clone());
                    let request = common::client::transaction(
                        &payer(index),
                        1 + index as i64,
                        &format!("2024-01-{:02}T00:00:00Z", 1 + burst),
                    );
                    tokio::spawn(async move { client.add_transaction(request).await })
                })
                .collect();
            for call in calls {
                within(30, "a burst write", call).await.expect("task").expect("accepted");
            }
            let journal = journal_of(&data_dir);
            best = frame_offsets(&journal)
                .into_iter()
                .map(|offset| (batch_record_count(&journal, offset), offset))
                .max()
                .unwrap();
            let (records, offset) = best;
            if records >= 3 && batch_end(&journal, offset) - offset >= 4 * SECTOR_BYTES {
                break;
            }
        }
        stop(server);
        let (records, batch_start) = best;
        assert!(
            records >= 3
                && batch_end(&journal_of(&data_dir), batch_start) - batch_start >= 4 * SECTOR_BYTES,
            "group commit never made a batch of 3 records and 4 sectors"
        );
        let path = journal_files(data_dir.path()).remove(0);
        let name = path.file_name().unwrap().to_owned();
        let mut journal = journal_of(&data_dir);
        journal.truncate(batch_end(&journal, batch_start));
        std::fs::write(&path, &journal).unwrap();
        Self { data_dir, name, journal, batch_start, records }
    }

    /// A copy of the data directory whose journal's last batch is replaced
    /// by `tail`, followed by preallocated zeros.
    fn with_tail(&self, tail: &[u8]) -> (tempfile::TempDir, PathBuf) {
        let copy = copy_dir(self.data_dir.path());
        let path = copy.path().join(&self.name);
        let journal = [&self.journal[..self.batch_start], tail, &PREALLOCATED].concat();
        std::fs::write(&path, journal).unwrap();
        (copy, path)
    }

    /// The batch as written.
    fn batch(&self) -> &[u8] {
        &self.journal[self.batch_start..]
    }

    /// The batch with every byte from file offset `from` on zeroed, as if
    /// only the sectors before it reached the disk.
    fn landed_before(&self, from: usize) -> Vec<u8> {
        let mut batch = self.batch().to_vec();
        batch[from - self.batch_start..].fill(0);
        batch
    }

    /// The torn versions of the batch: (description, bytes in its place).
    fn torn_tails(&self) -> Vec<(String, Vec<u8>)> {
        let batch = self.batch();
        let header = &batch[..FRAME_HEADER_BYTES];
        let end = self.journal.len();
        // The first sector boundary with a whole sector of the batch before it.
        let second_sector = (self.batch_start / SECTOR_BYTES + 2) * SECTOR_BYTES;
        let last_sector = (end - 1) / SECTOR_BYTES * SECTOR_BYTES;
        assert!(
            second_sector < last_sector,
            "the batch ({} bytes at {}) spans at least three sectors",
            batch.len(),
            self.batch_start
        );
        let mut flipped = batch.to_vec();
        flipped[FRAME_HEADER_BYTES + (batch.len() - FRAME_HEADER_BYTES) / 2] ^= 0x20;
        vec![
            ("its header, then zeros".to_owned(), [header, &vec![0; batch.len() - 12]].concat()),
            ("its payload with one byte flipped".to_owned(), flipped),
            (
                format!("its sectors before byte {second_sector}, then zeros"),
                self.landed_before(second_sector),
            ),
            (
                format!("all but its last sector (from byte {last_sector}), which is zeros"),
                self.landed_before(last_sector),
            ),
            ("all but its last byte".to_owned(), batch[..batch.len() - 1].to_vec()),
            ("its header only".to_owned(), header.to_vec()),
        ]
    }
}

/// The records of the first journal segment in `data_dir`, without the
/// zeros preallocated after them.
fn journal_of(data_dir: &tempfile::TempDir) -> Vec<u8> {
    common::journal_records(&journal_files(data_dir.path())[0])
}

/// Zeros after a journal's records, as a preallocated segment has them.
const PREALLOCATED: [u8; 4 * SECTOR_BYTES] = [0; 4 * SECTOR_BYTES];

/// The record count of the batch frame at `offset` (its payload starts with
/// the first sequence, u64 LE, then the count, u32 LE).
fn batch_record_count(journal: &[u8], offset: usize) -> u32 {
    let at = offset + FRAME_HEADER_BYTES + 8;
    u32::from_le_bytes(journal[at..at + 4].try_into().unwrap())
}

fn batch_end(journal: &[u8], offset: usize) -> usize {
    let length = u32::from_le_bytes(journal[offset..offset + 4].try_into().unwrap()) as usize;
    offset + FRAME_HEADER_BYTES + length
}

/// What a server started on `data_dir` holds, and the id its next write gets.
async fn state_and_next_id(data_dir: &Path) -> (HashMap<String, i64>, u64) {
    let server = ServerProcess::start_durable(data_dir, &[]);
    let mut client = connect(&server).await;
    let state = balances(&mut client).await;
    let id = add(&mut client, "KRAFT", 1, "2024-02-01T00:00:00Z").await.id;
    (state, id)
}

/// Starts the server on each torn version of `journal`'s last batch and
/// checks that it cuts the batch and nothing else; returns what went wrong.
async fn check_torn_tails(journal: &GroupCommitJournal) -> Vec<String> {
    // What the server must hold once the batch is cut: the journal without it.
    let (reference, _) = journal.with_tail(&[]);
    let (before, next_id) = state_and_next_id(reference.path()).await;
    let mut failures = Vec::new();
    for (description, tail) in journal.torn_tails() {
        let (copy, path) = journal.with_tail(&tail);
        // A refused start is a failure of this case, reported with the others.
        let server = match start_or_refusal(copy.path()) {
            Ok(server) => server,
            Err(refusal) => {
                failures.push(format!("{description}: refused to start: {refusal}"));
                continue;
            }
        };
        let mut client = connect(&server).await;
        let mut problems = Vec::new();
        if balances(&mut client).await != before {
            problems.push("balances differ from the journal without the batch".to_owned());
        }
        if !server.log().contains("torn batch") {
            problems.push("no log line about a torn batch".to_owned());
        }
        let length = std::fs::metadata(&path).unwrap().len();
        if length != journal.batch_start as u64 {
            problems.push(format!("the journal is {length} bytes, not {}", journal.batch_start));
        }
        let id = add(&mut client, "KRAFT", 1, "2024-02-01T00:00:00Z").await.id;
        if id != next_id {
            problems.push(format!("the next transaction got id {id}, not {next_id}"));
        }
        stop(server);
        let server = ServerProcess::start_durable(copy.path(), &[]);
        let mut expected = before.clone();
        *expected.entry("KRAFT".to_owned()).or_insert(0) += 1;
        if balances(&mut connect(&server).await).await != expected {
            problems.push("the new write did not survive a restart".to_owned());
        }
        if !problems.is_empty() {
            failures.push(format!("{description}: {}\n{}", problems.join("; "), server.log()));
        }
    }
    failures
}

/// Starts the server on `data_dir`, or returns why it refused to start.
fn start_or_refusal(data_dir: &Path) -> Result<ServerProcess, String> {
    // ServerProcess::start_durable panics, with the server's log, when the
    // server exits instead of listening.
    let started = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        ServerProcess::start_durable(data_dir, &[])
    }));
    started.map_err(|panic| {
        let message = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|text| (*text).to_owned()))
            .unwrap_or_default();
        // The line that says why.
        message
            .lines()
            .find(|line| line.starts_with("points-server:"))
            .unwrap_or(&message)
            .to_owned()
    })
}

/// The last batch of the journal, written by group commit with many records,
/// torn in the ways a crash or power cut leaves it: its header landed but its
/// payload is zeros, its payload landed with one byte wrong, only its first
/// sectors landed, all but its last sector landed, it lacks its last byte,
/// or only its header landed. Each time the server starts, logs that it cut
/// a torn batch, holds exactly what the journal without the batch holds,
/// gives the next write the same id, and keeps that write across a restart.
/// The intact batch, as a control, is replayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torn_final_batch_whose_header_landed_but_not_its_payload_is_cut() {
    let journal =
        GroupCommitJournal::write(|index| format!("PAYER {index:02} {}", "#".repeat(200))).await;
    println!(
        "the last batch: {} records, {} bytes at byte offset {}",
        journal.records,
        journal.batch().len(),
        journal.batch_start
    );
    // Control: the whole batch landed, so the server has its records.
    let (control, _) = journal.with_tail(journal.batch());
    let (_, next_with) = state_and_next_id(control.path()).await;
    let (reference, _) = journal.with_tail(&[]);
    let (_, next_without) = state_and_next_id(reference.path()).await;
    assert_eq!(next_with, next_without + u64::from(journal.records), "the batch is replayed");

    let failures = check_torn_tails(&journal).await;
    assert!(failures.is_empty(), "torn final batch cases failed:\n{}", failures.join("\n"));
}

/// The bytes of a complete, valid frame that are also valid UTF-8 (every
/// byte below 0x80), so that a client can put them in a payer name.
fn frame_as_utf8() -> String {
    for length in 1u32..0x80 {
        let length_bytes = length.to_le_bytes();
        if crc32c::crc32c(&length_bytes).to_le_bytes().iter().any(|&byte| byte >= 0x80) {
            continue;
        }
        // Bounded: one in sixteen payloads has an all-ASCII checksum.
        for salt in 0..100_000u32 {
            let payload = format!("{salt:0width$}", width = length as usize);
            if payload.len() != length as usize {
                continue;
            }
            let framed = frame(payload.as_bytes());
            if framed.iter().all(|&byte| byte < 0x80) {
                return String::from_utf8(framed).unwrap();
            }
        }
    }
    panic!("no frame is valid UTF-8");
}

/// As above, but every payer in the torn batch holds bytes that form a
/// valid frame on their own: what a client chooses as a payer name must not
/// decide whether a torn batch is cut or the server refuses to start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torn_final_batch_is_cut_even_when_payer_names_look_like_frames() {
    let embedded = frame_as_utf8();
    assert!(embedded.len() < 100);
    let journal = GroupCommitJournal::write(|index| {
        format!("PAYER {index:02} {embedded} {}", "#".repeat(150))
    })
    .await;
    println!(
        "the last batch: {} records, {} bytes at byte offset {}",
        journal.records,
        journal.batch().len(),
        journal.batch_start
    );
    let failures = check_torn_tails(&journal).await;
    assert!(failures.is_empty(), "torn final batch cases failed:\n{}", failures.join("\n"));
}

// ---------------------------------------------------------------------------
// 4. An invalid batch followed by a valid one
// ---------------------------------------------------------------------------

/// A batch that fails its checksum with a valid batch after it is damage,
/// not a torn write: the server refuses to start, names the file and the
/// batch's byte offset, and changes nothing in the data directory. Also for
/// a journal written under `--fsync never`: the clean stop synced all of it,
/// so a damaged batch in it is no power-cut hole either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_batch_followed_by_a_valid_one_refuses_start() {
    let mut failures = Vec::new();
    for policy in ["always", "never"] {
        let args = ["--fsync", policy];
        let data_dir = tempfile::tempdir().expect("temporary directory");
        let server = ServerProcess::start_durable(data_dir.path(), &args);
        let mut client = connect(&server).await;
        for day in 1..=4 {
            add(&mut client, "DANNON", 10, &format!("2024-01-0{day}T00:00:00Z")).await;
        }
        stop(server);

        let path = journal_files(data_dir.path()).remove(0);
        let file = std::fs::read(&path).unwrap();
        let journal = journal_of(&data_dir);
        let offsets = frame_offsets(&journal);
        // One batch per sequential write (and perhaps more, such as one
        // that records a final sync).
        assert!(offsets.len() >= 4, "{} batches for 4 sequential writes", offsets.len());
        let end = |index: usize| offsets.get(index + 1).copied().unwrap_or(journal.len());
        let cases = [
            (0, offsets[0] + FRAME_HEADER_BYTES, "the first byte of the first batch's payload"),
            (
                0,
                (offsets[0] + FRAME_HEADER_BYTES + end(0)) / 2,
                "the middle of the first batch's payload",
            ),
            (2, end(2) - 1, "the last byte of the third batch's payload"),
            (1, offsets[1] + 9, "the payload checksum of the second batch"),
            (1, offsets[1] + FRAME_HEADER_BYTES + 9, "the record count of the second batch"),
        ];
        for (batch, byte, description) in cases {
            let case = format!("--fsync {policy}, a flipped byte in {description}");
            let copy = copy_dir(data_dir.path());
            let path = copy.path().join(path.file_name().unwrap());
            let mut damaged = file.clone();
            damaged[byte] ^= 0x10;
            std::fs::write(&path, &damaged).unwrap();
            let before = directory_contents(copy.path());
            match run_to_exit(copy.path(), &args) {
                Ok((status, stderr)) => {
                    let offset = offsets[batch];
                    let expected = format!("{} is damaged at byte offset {offset}", path.display());
                    if status.success() || !stderr.contains(&expected) {
                        failures
                            .push(format!("{case}: {status}, expected {expected:?} in:\n{stderr}"));
                    }
                }
                Err(log) => failures.push(format!("{case}: the server started; log:\n{log}")),
            }
            let after = directory_contents(copy.path());
            if after != before {
                let changed: Vec<String> = after
                    .iter()
                    .filter(|(name, bytes)| before.get(*name) != Some(*bytes))
                    .map(|(name, bytes)| format!("{name} ({} bytes)", bytes.len()))
                    .collect();
                failures.push(format!(
                    "{case}: the data directory changed: {changed:?} (the journal was {} bytes)",
                    damaged.len()
                ));
            }
        }
        // The undamaged directory starts and has everything.
        let server = ServerProcess::start_durable(data_dir.path(), &args);
        assert_eq!(balances(&mut connect(&server).await).await["DANNON"], 40);
    }
    assert!(failures.is_empty(), "{} case(s) failed:\n{}", failures.len(), failures.join("\n"));
}

// ---------------------------------------------------------------------------
// 5. Shutdown after a journal failure
// ---------------------------------------------------------------------------

/// `count` transactions of `payer_length`-byte payers for `user_id`, in one call.
fn batch_request(user_id: &str, count: usize, payer_length: usize) -> AddTransactionsRequest {
    let transactions = (0..count)
        .map(|index| NewTransaction {
            payer: format!("{index:05}{}", "X".repeat(payer_length - 5)),
            points: 1,
            timestamp: Some(common::timestamp("2024-04-01T00:00:00Z")),
        })
        .collect();
    AddTransactionsRequest { user_id: user_id.to_owned(), transactions }
}

/// Whether the server's log shows a snapshot under way when the journal
/// failed: a segment started for a snapshot not yet written, or a snapshot
/// that ended (written or failed) after the failure.
fn snapshot_in_flight_at_failure(log: &str) -> bool {
    let Some(failure) = log.find("journal failed") else { return false };
    let (before, after) = log.split_at(failure);
    before.matches("started a new journal segment").count()
        > before.matches("snapshot written").count()
        || after.contains("snapshot written")
        || after.contains("snapshot failed")
}

/// One run: a 5 KB write crosses the 4 KiB snapshot threshold, and a
/// random 0-4 ms after it is sent, a 21 KB write, larger than the server's
/// 16 KiB file size limit, follows: it usually reaches the journal after the
/// first one was taken for writing and before the snapshot the first one
/// asks for has finished, and fails the journal. Clients stay connected.
/// SIGTERM must end the process within the grace period and a margin; a
/// restart holds exactly the acknowledged writes. Returns whether the log
/// shows a snapshot under way when the journal failed.
async fn journal_failure_then_sigterm(rng: &mut fastrand::Rng, grace_ms: u64) -> bool {
    let data_dir = tempfile::tempdir().expect("temporary directory");
    let mut command = ProcessCommand::new("bash");
    command
        .arg("-c")
        .arg(r#"ulimit -f 16 && exec "$0" "$@""#)
        .arg(env!("CARGO_BIN_EXE_points-server"))
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir.path())
        .args(["--snapshot-threshold-bytes", "4096"])
        .args(["--shutdown-grace-ms", &grace_ms.to_string()]);
    let mut server = ServerProcess::spawn(command);
    let channel = channel(&server).await;
    let mut client = PointsServiceClient::new(channel.clone());
    for day in 1..=9 {
        let request = AddTransactionRequest {
            user_id: "early".to_owned(),
            ..common::client::transaction("EARLY", day, &format!("2024-01-0{day}T00:00:00Z"))
        };
        within(30, "an early write", client.add_transaction(request)).await.expect("accepted");
    }
    let (trigger, doomed) = (batch_request("trigger", 100, 20), batch_request("doomed", 80, 250));
    let mut trigger_client = client.clone();
    let trigger = tokio::spawn(async move { trigger_client.add_transactions(trigger).await });
    tokio::time::sleep(Duration::from_micros(rng.u64(0..4000))).await;
    let failed = within(60, "the failing write", client.add_transactions(doomed)).await;
    assert_eq!(failed.expect_err("the journal hit the file size limit").code(), Code::Unavailable);
    // The trigger is acknowledged unless the journal failed before it.
    let triggered = match within(60, "the trigger", trigger).await.expect("task") {
        Ok(_) => 100,
        Err(status) if status.code() == Code::Unavailable => 0,
        Err(status) => panic!("the trigger: {status:?}"),
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !server.log().contains("journal failed") {
        assert!(Instant::now() < deadline, "no journal failure logged:\n{}", server.log());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let later =
        within(30, "a later call", client.get_balances(GetBalancesRequest::default())).await;
    assert_eq!(later.unwrap_err().code(), Code::Unavailable);

    // The client's connection stays open through the shutdown.
    let terminated = Instant::now();
    server.signal("TERM");
    let status = server.wait(Duration::from_secs(10));
    let elapsed = terminated.elapsed();
    let log = server.log();
    let in_flight = snapshot_in_flight_at_failure(&log);
    println!(
        "exited ({status}) {elapsed:?} after SIGTERM (grace {grace_ms} ms); a snapshot was under \
         way when the journal failed: {in_flight}"
    );
    assert!(elapsed < Duration::from_secs(10), "{elapsed:?}; log:\n{log}");
    assert!(log.contains("SIGTERM received"), "{log}");
    drop((client, channel, server));

    // A restart holds exactly what was acknowledged, and nothing of the failed write.
    let server = ServerProcess::start_durable(data_dir.path(), &[]);
    let mut client = connect(&server).await;
    for (user, expected) in [("early", 45), ("trigger", triggered), ("doomed", 0)] {
        let total: i64 = user_balances(&mut client, user).await.values().sum();
        assert_eq!(total, expected, "{user}");
    }
    in_flight
}

/// The journal fails on a real write error (the file size limit) while a
/// snapshot is under way (4 KiB threshold): SIGTERM still ends the process
/// within the shutdown grace period plus a margin, and a restart has exactly
/// what was acknowledged. Runs until the log shows a snapshot under way at
/// the failure, at most 6 runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_completes_within_the_grace_period_after_a_journal_failure() {
    const GRACE_MS: u64 = 2000;
    let seed = seed("shutdown_completes_within_the_grace_period_after_a_journal_failure");
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut runs = 0;
    // Bounded: most runs have the snapshot under way.
    while runs < 6 {
        runs += 1;
        if journal_failure_then_sigterm(&mut rng, GRACE_MS).await {
            break;
        }
    }
    println!("{runs} run(s)");
}

/// A write error (the file size limit, as a full disk would) leaves part of
/// a batch in the journal (the segment could not be preallocated either, and
/// went on without it). When the payers of that batch hold bytes that form
/// valid frames, the restart must still cut the partial batch: a client's
/// choice of payer names must not turn a routine torn tail into a refused
/// start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_batch_left_by_a_write_error_is_cut_even_when_payer_names_look_like_frames() {
    let data_dir = tempfile::tempdir().expect("temporary directory");
    let mut command = ProcessCommand::new("bash");
    command
        .arg("-c")
        .arg(r#"ulimit -f 16 && exec "$0" "$@""#)
        .arg(env!("CARGO_BIN_EXE_points-server"))
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir.path());
    let mut server = ServerProcess::spawn(command);
    let mut client = connect(&server).await;
    add(&mut client, "DANNON", 300, "2024-01-01T00:00:00Z").await;
    add(&mut client, "UNILEVER", 200, "2024-01-02T00:00:00Z").await;
    let before = balances(&mut client).await;
    let embedded = frame_as_utf8();
    let transactions = (0..80)
        .map(|index| NewTransaction {
            payer: format!("{index:03} {embedded} {}", "#".repeat(180)),
            points: 1,
            timestamp: Some(common::timestamp("2024-04-01T00:00:00Z")),
        })
        .collect();
    // Some 20 KB in one record, past the 16 KiB file size limit.
    let request = AddTransactionsRequest { user_id: String::new(), transactions };
    let failed = within(30, "the failing write", client.add_transactions(request)).await;
    assert_eq!(failed.expect_err("the journal hit the file size limit").code(), Code::Unavailable);
    server.signal("TERM");
    server.wait(Duration::from_secs(10));
    // The segment's 4 MiB of zeros did not fit under the limit either; the
    // writes that did fit were taken all the same.
    let log = server.log();
    assert!(log.contains("writing it without preallocation"), "{log}");
    drop(server);

    let server = match start_or_refusal(data_dir.path()) {
        Ok(server) => server,
        Err(refusal) => panic!("the restart after a write error refused to start: {refusal}"),
    };
    let mut client = connect(&server).await;
    assert_eq!(balances(&mut client).await, before);
    assert!(server.log().contains("torn batch"), "{}", server.log());
    assert_eq!(add(&mut client, "KRAFT", 1, "2024-01-03T00:00:00Z").await.id, 3);
}
