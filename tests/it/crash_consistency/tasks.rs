//! The tasks of a crash round: writers, bulk writers and readers that run
//! until the server is frozen and killed, each recording what it was shown.

use super::shown::{Shown, history};
use super::within;
use crate::common::client::{Client, add_request, spend_request, try_add};
use crate::common::timestamp;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use points::proto::v1::{AddTransactionsRequest, GetBalancesRequest, NewTransaction};
use tonic::transport::Channel;
use tonic_types::StatusExt;

/// Which reply a round's crash follows at once: one answered while a write
/// it may reflect still waits for the disk. A crash then loses that write if
/// it was not yet written, so the reply must not have shown it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Moment {
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
pub(super) struct Round {
    /// The server's process id.
    pub(super) pid: u32,
    /// Set when the server is frozen, just before it is killed.
    pub(super) killing: AtomicBool,
    /// The kind of reply after which the server is frozen ...
    pub(super) moment: Moment,
    /// ... once this time has passed.
    pub(super) freeze_after: Instant,
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
    pub(super) fn freeze(&self) {
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
pub(super) async fn writer(
    channel: Channel,
    users: Vec<String>,
    writer: usize,
    seed: u64,
    round: Arc<Round>,
) -> Result<Shown, String> {
    let mut client = Client::new(channel);
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
                match try_add(&mut client, add_request(&user, "", &payer, points, &when)).await {
                    Ok(transaction) => {
                        assert_eq!((&transaction.payer, transaction.points), (&payer, points));
                        shown.transaction(&user, transaction.id, payer, points);
                        shown.replies += 1;
                    }
                    Err(status) => {
                        return unexpected(&round, "AddTransaction", &status).map(|()| shown);
                    }
                }
            }
            7..=8 => {
                let points = rng.i64(1..40);
                let request = spend_request(&user, "", points);
                match client.spend(request).await {
                    Ok(reply) => shown.spend(&user, points, reply.into_inner()),
                    Err(status) if shown.refusal(&user, &status) => {}
                    Err(status) => return unexpected(&round, "Spend", &status).map(|()| shown),
                }
            }
            _ => {
                let points = rng.i64(1..40);
                let request = spend_request(&user, &format!("{user}-w{writer}-s{step}"), points);
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
pub(super) async fn bulk_writer(
    channel: Channel,
    user: String,
    entries: usize,
    round: Arc<Round>,
) -> Result<Shown, String> {
    let mut client = Client::new(channel);
    let mut shown = Shown::default();
    for step in 0..100_000usize {
        let transactions = (0..entries)
            .map(|index| NewTransaction {
                payer: format!("BULK{}", index % 8),
                points: 1 + (index % 5) as i64,
                timestamp: Some(timestamp(&format!("2024-11-{:02}T00:00:00Z", 1 + step % 28))),
            })
            .collect();
        let request = AddTransactionsRequest { user_id: user.clone(), transactions };
        match client.add_transactions(request).await {
            Ok(reply) => {
                for transaction in reply.into_inner().transactions {
                    shown.transaction(&user, transaction.id, transaction.payer, transaction.points);
                }
                shown.replies += 1;
            }
            Err(status) => return unexpected(&round, "AddTransactions", &status).map(|()| shown),
        }
    }
    Ok(shown)
}

/// Reads balances and histories of every user until the server is gone.
pub(super) async fn reader(
    channel: Channel,
    users: Vec<String>,
    seed: u64,
    round: Arc<Round>,
) -> Result<Shown, String> {
    let mut client = Client::new(channel);
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut shown = Shown::default();
    for step in 0..100_000u64 {
        let user = users[rng.usize(0..users.len())].clone();
        // A write to the same user races with the read: sent a moment
        // earlier, it is applied first, and the read may show it before it
        // is durable unless the read waits.
        let payer = format!("P{}", rng.u32(0..4));
        let points = rng.i64(1..10);
        let when = format!("2024-10-01T{:02}:00:00Z", step % 24);
        let request = add_request(&user, "", &payer, points, &when);
        let mut probe_client = client.clone();
        let probe = tokio::spawn(async move { try_add(&mut probe_client, request).await });
        // The race itself is what is tested: the read follows a moment later.
        tokio::time::sleep(Duration::from_millis(1)).await;
        // The read: balances, or a spend too large to accept, whose refusal
        // tells the total it was decided on.
        let moment = if rng.bool() {
            let request = GetBalancesRequest { user_id: user.clone(), ..Default::default() };
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
            let request = spend_request(&user, "", 1_000_000_000);
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
            Ok(transaction) => {
                shown.transaction(&user, transaction.id, payer, points);
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
