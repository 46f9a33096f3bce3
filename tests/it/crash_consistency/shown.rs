//! What the tasks of a crash round were shown ([`Shown`]), and the check of
//! it against the history of the restarted server ([`check_user`]).

use crate::common::client::Client;
use crate::common::history::{entries_of, pages};
use crate::common::refusal::assert_refusal;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use points::proto::v1::SpendResponse;
use points::proto::v1::history_entry::Entry;
use tonic::Code;

/// A history entry without `remaining_points`, which later spends change.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) enum EntryKey {
    Transaction { id: u64, payer: String, points: i64 },
    Spend { id: u64, points: i64, spent: Vec<(String, i64)> },
}

impl EntryKey {
    /// Which kind of entry it is ("transaction" or "spend"), and its id.
    fn kind_and_id(&self) -> (&'static str, u64) {
        match *self {
            EntryKey::Transaction { id, .. } => ("transaction", id),
            EntryKey::Spend { id, .. } => ("spend", id),
        }
    }
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
        other => panic!("only transactions and spends were written, not {other:?}"),
    }
}

/// A user's whole history, page by page. On an error, what was read so far
/// (a prefix of the history, as shown) and the error.
pub(super) async fn history(
    client: &mut Client,
    user_id: &str,
) -> (Vec<EntryKey>, Result<(), tonic::Status>) {
    let (pages, ended) = pages(client, user_id, 1000).await;
    (entries_of(pages).into_iter().map(entry_key).collect(), ended)
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
pub(super) struct Shown {
    /// Per user: transactions acknowledged to a writer (id, payer, points).
    pub(super) transactions: BTreeMap<String, Vec<(u64, String, i64)>>,
    /// Per user: spends acknowledged (first replies and retry answers):
    /// (spend id, points, what each payer gave).
    pub(super) spends: BTreeMap<String, Vec<AcknowledgedSpend>>,
    /// Per user: the `available` of each INSUFFICIENT_POINTS refusal.
    pub(super) available: BTreeMap<String, BTreeSet<i64>>,
    /// Per user: every balances reply.
    pub(super) balances: BTreeMap<String, BTreeSet<BTreeMap<String, i64>>>,
    /// Per user: the longest history a reader was shown. Every history shown
    /// is a prefix of it (checked as they come in).
    pub(super) histories: BTreeMap<String, Vec<EntryKey>>,
    /// Replies that contradict each other (two histories, neither a prefix
    /// of the other).
    pub(super) contradictions: Vec<String>,
    /// Calls answered, for the progress line.
    pub(super) replies: u64,
}

impl Shown {
    pub(super) fn merge(&mut self, other: Shown) {
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
    pub(super) fn history(&mut self, user: &str, shown: Vec<EntryKey>) {
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

    /// Records an acknowledged transaction.
    pub(super) fn transaction(&mut self, user: &str, id: u64, payer: String, points: i64) {
        self.transactions.entry(user.to_owned()).or_default().push((id, payer, points));
    }

    /// Records an accepted spend of `points`.
    pub(super) fn spend(&mut self, user: &str, points: i64, reply: SpendResponse) {
        let spent = reply.spent.into_iter().map(|part| (part.payer, part.points)).collect();
        self.spends.entry(user.to_owned()).or_default().push((reply.spend_id, points, spent));
        self.replies += 1;
    }

    /// Records a Spend refusal; any other error stops the task (the server is gone).
    pub(super) fn refusal(&mut self, user: &str, status: &tonic::Status) -> bool {
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

/// Checks a user's history as the restarted server has it against every
/// reply shown before the kill; returns what is wrong.
pub(super) fn check_user(
    user: &str,
    restarted: &[EntryKey],
    balances: &BTreeMap<String, i64>,
    shown: &Shown,
) -> Vec<String> {
    let mut problems = Vec::new();
    for kind in ["transaction", "spend"] {
        let keys = restarted.iter().map(EntryKey::kind_and_id);
        let ids: Vec<u64> = keys.filter(|key| key.0 == kind).map(|key| key.1).collect();
        if ids != (1..=ids.len() as u64).collect::<Vec<_>>() {
            problems.push(format!("{user}: {kind} ids are not 1..n in order: {ids:?}"));
        }
    }
    let states = prefix_states(restarted);
    if states.last() != Some(balances) {
        problems.push(format!(
            "{user}: balances {balances:?} disagree with the history's {:?}",
            states.last()
        ));
    }
    let by_key: HashMap<(&str, u64), &EntryKey> =
        restarted.iter().map(|entry| (entry.kind_and_id(), entry)).collect();
    let transactions =
        shown.transactions.get(user).into_iter().flatten().map(|(id, payer, points)| {
            EntryKey::Transaction { id: *id, payer: payer.clone(), points: *points }
        });
    let spends = shown.spends.get(user).into_iter().flatten().map(|(id, points, spent)| {
        EntryKey::Spend { id: *id, points: *points, spent: spent.clone() }
    });
    for expected in transactions.chain(spends) {
        let key = expected.kind_and_id();
        if by_key.get(&key) != Some(&&expected) {
            problems.push(format!(
                "{user}: acknowledged {} {expected:?} is {:?} after the restart",
                key.0,
                by_key.get(&key)
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
