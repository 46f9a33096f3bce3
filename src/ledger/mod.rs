//! The ledger core: one user's payers, lots and the exact spending rules.
//!
//! Pure by design (no I/O, no async, no transport types) so that it can be
//! tested exhaustively against a reference model and wrapped by whatever
//! durability and transport sit around it.
//!
//! Rules:
//! - A transaction with positive points is a *lot*, ordered by
//!   (timestamp, arrival order). Ids are assigned in arrival order from 1.
//! - Every deduction from a payer takes that payer's oldest points, so a
//!   payer's remaining points are always its newest, even after an older lot
//!   arrives late (the payer's past deductions then re-settle onto it).
//! - A spend takes the oldest remaining points across all payers.
//! - No balance goes negative or past `i64::MAX`; a refused command changes
//!   nothing.
//!
//! - With a request id, a retried command gets its original outcome instead
//!   of being applied twice (see [`requests`]).
//! - Every accepted transaction and spend is kept in arrival order (see
//!   [`history`]).
//!
//! Cost: O(log n) per lot a command touches, never O(ledger size). Each payer
//! keeps its lots in order with a *front* (its oldest lot with points left),
//! and the ledger keeps every payer's front in one ordered map, so a spend
//! repeatedly takes from the oldest front.

mod error;
mod history;
mod lots;
mod payer;
mod requests;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};

pub use error::{ErrorKind, LedgerError};
pub use history::{HistoryCursor, SpendRecord, TransactionRecord};
use lots::{LotArena, LotTree};
use payer::Payer;
use requests::RequestLog;
pub use requests::{MAX_REQUEST_ID_BYTES, RequestParams, RequestRecord};

/// Upper bounds of a history entry's protobuf encoding, without its payer
/// names: a transaction entry (id, points, timestamp, remaining points and
/// their tags and lengths), a spend entry, and each payer of a spend. Used to
/// keep pages within a reply size; generous on purpose.
const TRANSACTION_ENTRY_BYTES: usize = 80;
const SPEND_ENTRY_BYTES: usize = 48;
const PAYER_POINTS_BYTES: usize = 24;

/// The longest payer name accepted, in bytes of UTF-8.
pub const MAX_PAYER_BYTES: usize = 256;

/// Identifies a transaction; assigned in arrival order starting at 1.
pub type TransactionId = u64;

/// Position of a payer in [`Ledger::payers`]; payers are never removed.
type PayerIndex = u32;

/// Orders lots: by timestamp, then by arrival (the id), so keys are unique.
///
/// Packed into 16 bytes because every lot has one in a B-tree: the seconds,
/// then the nanoseconds (below 2^30) and the id (below 2^34) in one `u64`,
/// which orders exactly like (seconds, nanoseconds, id).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct LotKey {
    seconds: i64,
    nanos_and_id: u64,
}

/// The most transactions one user may record (about 4.29 billion, more than
/// one user's memory holds): ids must fit a [`LotKey`] (below 2^34).
pub const MAX_TRANSACTION_ID: TransactionId = u32::MAX as TransactionId - 1;

/// Payer switches a spend makes lot by lot (plus two per payer involved)
/// before it takes the rest through a time cut; see [`Ledger::take_oldest`].
const MERGE_SWITCH_BUDGET: usize = 4;

impl LotKey {
    /// Bits of `nanos_and_id` that hold the id; the nanoseconds sit above.
    const ID_BITS: u32 = 34;

    fn new(timestamp: DateTime<Utc>, id: TransactionId) -> Self {
        let nanos = u64::from(timestamp.timestamp_subsec_nanos());
        assert!(nanos < 1 << 30, "nanoseconds below one second fit 30 bits");
        assert!(id <= MAX_TRANSACTION_ID, "transaction ids are checked against the limit");
        Self { seconds: timestamp.timestamp(), nanos_and_id: nanos << Self::ID_BITS | id }
    }
}

// The packing orders like (nanoseconds, id): every id fits below the
// nanoseconds, and 30 bits of nanoseconds (below 10^9 < 2^30) fit above it.
const _: () = assert!(MAX_TRANSACTION_ID < 1 << LotKey::ID_BITS);
const _: () = assert!(LotKey::ID_BITS + 30 <= u64::BITS);

/// A transaction as the ledger recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction {
    /// Assigned in arrival order, starting at 1.
    pub id: TransactionId,
    /// The partner the points came from.
    pub payer: String,
    /// Points earned (positive) or taken back (negative); never 0.
    pub points: i64,
    /// When the points were earned, as given by the caller.
    pub timestamp: DateTime<Utc>,
}

/// The most transactions one batch may hold.
pub const MAX_BATCH_TRANSACTIONS: usize = 10_000;

/// One transaction of a batch.
#[derive(Debug, Clone, Copy)]
pub struct NewTransaction<'a> {
    /// The payer.
    pub payer: &'a str,
    /// The points, positive or negative.
    pub points: i64,
    /// When the points were earned.
    pub timestamp: DateTime<Utc>,
}

/// Identifies a spend; assigned in arrival order starting at 1.
pub type SpendId = u64;

/// An accepted spend, as its reply reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spend {
    /// Assigned in arrival order, starting at 1 (a sequence of its own).
    pub id: SpendId,
    /// The points spent.
    pub points: i64,
    /// Each payer once, in the order its points were first taken, with the
    /// points taken as a negative number.
    pub spent: Vec<PayerPoints>,
}

/// One entry of a user's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HistoryEntry {
    /// A transaction, with what is left of it now if it is a lot (0 for a
    /// negative transaction).
    Transaction {
        /// The transaction.
        transaction: Transaction,
        /// Points of this lot not yet used up.
        remaining_points: i64,
    },
    /// A spend.
    Spend(Spend),
}

/// A page of history and where the next one starts (`None` at the end).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryPage {
    /// The entries, in arrival order.
    pub entries: Vec<HistoryEntry>,
    /// The cursor of the next page, if there is more.
    pub next: Option<HistoryCursor>,
}

/// The identity of a command for request-id matching, with the clock.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The caller's request id (not empty).
    pub id: &'a str,
    /// Now, in milliseconds since 1970-01-01T00:00:00Z.
    pub now_ms: i64,
    /// How long a request id is remembered, in milliseconds.
    pub retention_ms: i64,
    /// The most request ids one user may have remembered: a new one past it
    /// is refused ([`LedgerError::RequestIdLimitReached`]), so memory per
    /// user stays bounded whatever the request rate.
    pub max_remembered: usize,
}

/// What executing a command did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome<T> {
    /// The command was executed now: applied, or refused.
    Fresh(Result<T, LedgerError>),
    /// A retry of a remembered request: its original outcome; nothing changed.
    Repeated(Result<T, LedgerError>),
}

impl<T> Outcome<T> {
    /// Maps the accepted value, keeping fresh or repeated.
    pub fn map<U>(self, convert: impl FnOnce(T) -> U) -> Outcome<U> {
        match self {
            Outcome::Fresh(result) => Outcome::Fresh(result.map(convert)),
            Outcome::Repeated(result) => Outcome::Repeated(result.map(convert)),
        }
    }

    /// The result, fresh or repeated.
    pub fn into_result(self) -> Result<T, LedgerError> {
        match self {
            Outcome::Fresh(result) | Outcome::Repeated(result) => result,
        }
    }
}

/// A ledger's whole state in plain records, as snapshots store it;
/// [`Ledger::restore`] rebuilds the ledger from it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LedgerState {
    /// (name, balance) of each payer, in the order first credited.
    pub payers: Vec<(String, i64)>,
    /// Every transaction, by id.
    pub transactions: Vec<TransactionRecord>,
    /// Every spend, by id.
    pub spends: Vec<SpendRecord>,
    /// The remembered requests, oldest first.
    pub requests: Vec<RequestRecord>,
}

/// A ledger's whole state, borrowed; the same records as [`LedgerState`].
#[derive(Debug)]
pub struct LedgerView<'a> {
    /// (name, balance) of each payer, in the order first credited.
    pub payers: Vec<(&'a str, i64)>,
    /// Every transaction, by id.
    pub transactions: &'a [TransactionRecord],
    /// Every spend, by id.
    pub spends: &'a [SpendRecord],
    /// The remembered requests, oldest first.
    pub requests: Vec<RequestRecord>,
}

/// Points attributed to one payer, as in a spend's reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PayerPoints {
    /// The partner.
    pub payer: String,
    /// The points; negative when they were taken.
    pub points: i64,
}

/// Checks a payer name against the contract: not blank, at most
/// [`MAX_PAYER_BYTES`] bytes. Exposed so the transport can report every bad
/// field of a request at once.
pub fn validate_payer(payer: &str) -> Result<(), LedgerError> {
    if payer.trim().is_empty() {
        return Err(LedgerError::BlankPayer);
    }
    if payer.len() > MAX_PAYER_BYTES {
        return Err(LedgerError::PayerTooLong { length_bytes: payer.len() });
    }
    Ok(())
}

/// Checks the points of a transaction: anything but 0.
pub fn validate_transaction_points(points: i64) -> Result<(), LedgerError> {
    if points == 0 {
        return Err(LedgerError::ZeroPoints);
    }
    Ok(())
}

/// Checks the points of a spend: strictly positive.
pub fn validate_spend_points(points: i64) -> Result<(), LedgerError> {
    if points <= 0 {
        return Err(LedgerError::NonPositiveSpend { points });
    }
    Ok(())
}

/// The payer's balance and the ledger's total after a valid transaction of
/// `points`, or why it is refused. Every refusal of a well-formed transaction
/// depends on these two numbers alone, which is what lets a batch be checked
/// against an overlay of balances before anything is applied.
fn settle(payer: &str, points: i64, balance: i64, total: i64) -> Result<(i64, i64), LedgerError> {
    debug_assert!(points != 0 && balance >= 0 && total >= balance);
    if points > 0 {
        let Some(new_balance) = balance.checked_add(points) else {
            return Err(LedgerError::PayerBalanceOverflow {
                payer: payer.to_owned(),
                balance,
                points,
            });
        };
        let Some(new_total) = total.checked_add(points) else {
            return Err(LedgerError::TotalOverflow { total, points });
        };
        return Ok((new_balance, new_total));
    }
    let requested = points.unsigned_abs();
    // `balance` is never negative, so the cast is exact.
    if requested > balance as u64 {
        return Err(LedgerError::InsufficientPayerPoints {
            payer: payer.to_owned(),
            requested,
            available: balance,
        });
    }
    // Here `requested` <= `balance` <= i64::MAX, so these casts are exact.
    Ok((balance - requested as i64, total - requested as i64))
}

/// One user's points: payers, their lots, the order spends take them in,
/// the history, and the remembered request ids. Cloning copies the whole state
/// (used to snapshot it without holding a lock).
#[derive(Debug, Clone)]
pub struct Ledger {
    payers: Vec<Payer>,
    /// The leaves and branches of every payer's lot tree.
    arena: LotArena,
    payer_by_name: HashMap<Box<str>, PayerIndex>,
    /// The front lot of every payer with a positive balance; its first entry
    /// holds the oldest remaining points of the whole ledger.
    fronts: BTreeMap<LotKey, PayerIndex>,
    total: i64,
    /// Lots ever credited, kept so that metrics can read it in O(1).
    lots: usize,
    /// Every accepted transaction; the id is the index plus one.
    transactions: Vec<TransactionRecord>,
    /// Every accepted spend; the id is the index plus one.
    spends: Vec<SpendRecord>,
    requests: RequestLog,
}

impl Default for Ledger {
    fn default() -> Self {
        Self::new()
    }
}

impl Ledger {
    /// An empty ledger whose first transaction gets id 1.
    pub fn new() -> Self {
        Self {
            payers: Vec::new(),
            arena: LotArena::default(),
            payer_by_name: HashMap::new(),
            fronts: BTreeMap::new(),
            total: 0,
            lots: 0,
            transactions: Vec::new(),
            spends: Vec::new(),
            requests: RequestLog::default(),
        }
    }

    /// Records a transaction: positive points add a lot, negative points take
    /// that many of the payer's oldest points back.
    ///
    /// Refused, changing nothing, when the payer or points are invalid, when a
    /// negative transaction is larger than the payer's balance, or when a
    /// balance would pass `i64::MAX`.
    pub fn add_transaction(
        &mut self,
        payer: &str,
        points: i64,
        timestamp: DateTime<Utc>,
    ) -> Result<Transaction, LedgerError> {
        validate_payer(payer)?;
        validate_transaction_points(points)?;
        let existing = self.payer_by_name.get(payer).copied();
        let balance = existing.map_or(0, |index| self.payers[index as usize].balance());
        settle(payer, points, balance, self.total)?;

        if self.next_transaction_id() > MAX_TRANSACTION_ID {
            return Err(LedgerError::TransactionLimitReached { limit: MAX_TRANSACTION_ID });
        }

        // Checks passed: from here on nothing can fail.
        let id = self.next_transaction_id();
        let key = LotKey::new(timestamp, id);
        let index = if points > 0 {
            let index = existing.unwrap_or_else(|| self.insert_payer(payer));
            self.update_payer(index, |payer, arena| payer.credit(arena, key, points));
            self.total += points;
            self.lots += 1;
            index
        } else {
            let index = existing.expect("settle refuses debits from unknown payers");
            let taken = -points;
            self.update_payer(index, |payer, arena| payer.debit(arena, taken));
            self.total -= taken;
            index
        };
        debug_assert!(self.total >= 0);
        self.transactions.push(TransactionRecord { payer_index: index, points, timestamp });
        Ok(Transaction { id, payer: payer.to_owned(), points, timestamp })
    }

    /// Records a batch of transactions in order, all or nothing: if any would
    /// be refused (in the state the earlier entries leave), none is recorded
    /// and the error names the first refused entry.
    ///
    /// The checks run first against a small overlay of the touched payers'
    /// balances, which is exact because every refusal depends only on
    /// balances; then the batch is applied, which can no longer fail.
    pub fn add_transactions(
        &mut self,
        batch: &[NewTransaction<'_>],
    ) -> Result<Vec<Transaction>, LedgerError> {
        let refuse = |index: usize, error: LedgerError| LedgerError::InBatch {
            index,
            error: Box::new(error),
        };
        let mut balances: HashMap<&str, i64> = HashMap::new();
        let mut total = self.total;
        for (index, entry) in batch.iter().enumerate() {
            if self.next_transaction_id() + index as TransactionId > MAX_TRANSACTION_ID {
                return Err(refuse(
                    index,
                    LedgerError::TransactionLimitReached { limit: MAX_TRANSACTION_ID },
                ));
            }
            validate_payer(entry.payer).map_err(|error| refuse(index, error))?;
            validate_transaction_points(entry.points).map_err(|error| refuse(index, error))?;
            let balance = match balances.get(entry.payer) {
                Some(&balance) => balance,
                None => self
                    .payer_by_name
                    .get(entry.payer)
                    .map_or(0, |&payer| self.payers[payer as usize].balance()),
            };
            let (new_balance, new_total) = settle(entry.payer, entry.points, balance, total)
                .map_err(|error| refuse(index, error))?;
            total = new_total;
            balances.insert(entry.payer, new_balance);
        }
        let transactions: Vec<Transaction> = batch
            .iter()
            .map(|entry| {
                self.add_transaction(entry.payer, entry.points, entry.timestamp)
                    .expect("the dry run accepted every entry")
            })
            .collect();
        debug_assert_eq!(self.total, total);
        Ok(transactions)
    }

    fn insert_payer(&mut self, name: &str) -> PayerIndex {
        let index = PayerIndex::try_from(self.payers.len()).expect("fewer than 2^32 payers");
        self.payers.push(Payer::new(name));
        self.payer_by_name.insert(name.into(), index);
        index
    }

    /// Runs `change` on one payer and moves its entry in `fronts` if its front
    /// lot changed, keeping `fronts` exactly the set of payers' front keys.
    fn update_payer<T>(
        &mut self,
        index: PayerIndex,
        change: impl FnOnce(&mut Payer, &mut LotArena) -> T,
    ) -> T {
        let payer = &mut self.payers[index as usize];
        let before = payer.front_key();
        let result = change(payer, &mut self.arena);
        let after = payer.front_key();
        if before != after {
            if let Some(key) = before {
                let removed = self.fronts.remove(&key);
                debug_assert_eq!(removed, Some(index));
            }
            if let Some(key) = after {
                let replaced = self.fronts.insert(key, index);
                debug_assert!(replaced.is_none());
            }
        }
        result
    }

    /// Spends `points`, taking the oldest remaining points across all payers,
    /// and returns each payer once, in the order its points were first taken,
    /// with the points taken as a negative number.
    ///
    /// Refused, changing nothing, when `points` is not positive or is more than
    /// the total.
    pub fn spend(&mut self, points: i64) -> Result<Spend, LedgerError> {
        self.spend_with_switch_budget(points, MERGE_SWITCH_BUDGET)
    }

    /// [`Ledger::spend`] with the merge's switch budget given, so that tests
    /// can send every spend through the time cut (budget 0).
    fn spend_with_switch_budget(
        &mut self,
        points: i64,
        switch_budget: usize,
    ) -> Result<Spend, LedgerError> {
        validate_spend_points(points)?;
        if points > self.total {
            return Err(LedgerError::InsufficientPoints {
                requested: points,
                available: self.total,
            });
        }

        let taken_by_payer = self.take_oldest(points, switch_budget);
        self.total -= points;
        debug_assert!(self.total >= 0);
        self.spends.push(SpendRecord {
            points,
            transactions_before: self.transactions.len() as u64,
            taken: taken_by_payer.entries,
        });
        Ok(self.spend_reply(self.spends.len() - 1))
    }

    /// Takes the oldest `points` across all payers (the total covers them)
    /// and returns what each payer gave, in the order each was first taken
    /// from.
    ///
    /// A merge of the payers' lots: take from the payer with the oldest front
    /// everything older than the next payer's front, then switch. Each switch
    /// costs O(log n), but lots that alternate between payers make one switch
    /// per lot, so after `switch_budget` plus two per payer involved, the
    /// rest is taken at once through a time cut ([`Ledger::take_by_cut`]):
    /// the cost of a spend is bounded by the payers it involves, never by
    /// how their lots interleave.
    fn take_oldest(&mut self, points: i64, switch_budget: usize) -> TakenByPayer {
        let mut taken_by_payer = TakenByPayer::default();
        let mut left = points;
        let mut switches = 0usize;
        while left > 0 {
            if switches >= switch_budget.saturating_add(2 * taken_by_payer.entries.len()) {
                self.take_by_cut(left, &mut taken_by_payer);
                break;
            }
            let mut oldest_fronts = self.fronts.iter();
            let (_, &index) =
                oldest_fronts.next().expect("the total covers the spend, so some payer has points");
            let next_front = oldest_fronts.next().map(|(&key, _)| key);
            let taken =
                self.update_payer(index, |payer, arena| payer.take_before(arena, next_front, left));
            taken_by_payer.add(index, taken);
            left -= taken;
            switches += 1;
            // The budget grows by two per payer taken from, and only up to
            // every payer: the loop is bounded whatever the lots.
            assert!(
                switches <= switch_budget.saturating_add(2 * self.payers.len()),
                "a spend switches payers a bounded number of times"
            );
        }
        taken_by_payer
    }

    /// Takes the oldest `points` across all payers in one step: finds the
    /// lot K where they end (a simultaneous descent of the payers' trees, see
    /// [`lots::first_reaching`]), then takes from each payer everything
    /// older than K, and the rest from K.
    ///
    /// Only payers whose front is older than K take part; they are a prefix
    /// of `fronts`, found first by a galloping search over its length. With
    /// c payers taking part the cost is O(c · log c · log n), whatever the
    /// number of lots or how they interleave.
    fn take_by_cut(&mut self, points: i64, taken_by_payer: &mut TakenByPayer) {
        debug_assert!(points > 0 && points <= self.total);
        // Payers in front order, collected as far as the search needs.
        let mut fronts = self.fronts.iter().map(|(&key, &index)| (key, index));
        let mut order: Vec<(LotKey, PayerIndex)> = Vec::new();
        let payers_with_points = self.fronts.len();
        // The points older than the front of payer `count` (all points when
        // `count` is every payer): only payers before it have any.
        let older_than_front = |order: &[(LotKey, PayerIndex)], count: usize| -> i128 {
            let limit = order.get(count).map(|&(key, _)| key);
            order[..count]
                .iter()
                .map(|&(_, index)| {
                    i128::from(self.payers[index as usize].available_before(&self.arena, limit))
                })
                .sum()
        };
        // Smallest `count` with at least `points` older than payer `count`'s
        // front: gallop to an upper bound, then bisect.
        let mut low = 0usize; // older_than_front(low) < points
        let mut high = 1usize;
        loop {
            high = high.min(payers_with_points);
            while order.len() <= high.min(payers_with_points - 1) {
                order.push(fronts.next().expect("fronts has payers_with_points entries"));
            }
            if older_than_front(&order, high) >= i128::from(points) {
                break;
            }
            assert!(high < payers_with_points, "the total covers the spend");
            low = high;
            high = high.saturating_mul(2);
        }
        while high - low > 1 {
            let middle = low + (high - low) / 2;
            if older_than_front(&order, middle) >= i128::from(points) {
                high = middle;
            } else {
                low = middle;
            }
        }
        let involved = &order[..high];

        // The cut: the smallest key with `points` available at or before
        // it. It is at or after every involved payer's front, where what a
        // payer has available is its lots' prefix sum minus its debits.
        let trees: Vec<&LotTree> =
            involved.iter().map(|&(_, index)| self.payers[index as usize].lots()).collect();
        let debited: i128 =
            involved.iter().map(|&(_, index)| self.payers[index as usize].debited()).sum();
        let cut = lots::first_reaching(&self.arena, &trees, i128::from(points) + debited)
            .expect("the involved payers hold the points");

        // Everything older than the cut, and the rest from the cut's lot.
        let gifts: Vec<(PayerIndex, i64, i64)> = involved
            .iter()
            .map(|&(_, index)| {
                let payer = &self.payers[index as usize];
                (
                    index,
                    payer.available_before(&self.arena, Some(cut)),
                    payer.available_through(&self.arena, cut),
                )
            })
            .collect();
        let older: i64 = gifts.iter().map(|&(_, before, _)| before).sum();
        let mut rest = points - older;
        debug_assert!(rest > 0, "the cut is the first key with enough points");
        for (index, before, through) in gifts {
            let from_cut = if through > before { std::mem::take(&mut rest) } else { 0 };
            let gives = before + from_cut;
            assert!(gives > 0, "every payer with a front before the cut gives points");
            self.update_payer(index, |payer, arena| payer.debit(arena, gives));
            taken_by_payer.add(index, gives);
        }
        assert_eq!(rest, 0, "the cut's lot belongs to one involved payer");
    }

    /// The reply of the spend at `index`, rebuilt from the history.
    fn spend_reply(&self, index: usize) -> Spend {
        let record = &self.spends[index];
        Spend {
            id: index as SpendId + 1,
            points: record.points,
            spent: record
                .taken
                .iter()
                .map(|&(payer, taken)| PayerPoints {
                    payer: self.payers[payer as usize].name.to_string(),
                    points: -taken,
                })
                .collect(),
        }
    }

    /// The transaction with `id` (which must exist), rebuilt from the history.
    fn transaction(&self, id: TransactionId) -> Transaction {
        let record = &self.transactions[id as usize - 1];
        Transaction {
            id,
            payer: self.payers[record.payer_index as usize].name.to_string(),
            points: record.points,
            timestamp: record.timestamp,
        }
    }

    /// Records a transaction once per request id: a retry with the same id
    /// and parameters gets the original outcome, a reuse with other
    /// parameters is refused with [`LedgerError::RequestIdReused`].
    pub fn execute_add_transaction(
        &mut self,
        request: Option<Request<'_>>,
        payer: &str,
        points: i64,
        timestamp: DateTime<Utc>,
    ) -> Outcome<Transaction> {
        let params = RequestParams::AddTransaction { payer: payer.to_owned(), points, timestamp };
        match request.map(|request| self.remembered(request, &params)) {
            Some(Some(outcome)) => outcome.map(|id| self.transaction(id)),
            _ => Outcome::Fresh(self.replay_add_transaction(
                request.map(|request| (request.id, request.now_ms)),
                payer,
                points,
                timestamp,
            )),
        }
    }

    /// Spends once per request id; see [`Ledger::execute_add_transaction`].
    pub fn execute_spend(&mut self, request: Option<Request<'_>>, points: i64) -> Outcome<Spend> {
        let params = RequestParams::Spend { points };
        match request.map(|request| self.remembered(request, &params)) {
            Some(Some(outcome)) => outcome.map(|id| self.spend_reply(id as usize - 1)),
            _ => Outcome::Fresh(
                self.replay_spend(request.map(|request| (request.id, request.now_ms)), points),
            ),
        }
    }

    /// The remembered outcome of `request`, as ids, if it is a retry (or a
    /// refusal if the id was reused); `None` if the request is new.
    fn remembered(&mut self, request: Request<'_>, params: &RequestParams) -> Option<Outcome<u64>> {
        self.requests.purge(request.now_ms, request.retention_ms);
        let Some((remembered_params, outcome)) =
            self.requests.get(request.id, request.now_ms, request.retention_ms)
        else {
            if self.requests.len() >= request.max_remembered {
                return Some(Outcome::Fresh(Err(LedgerError::RequestIdLimitReached {
                    limit: request.max_remembered,
                })));
            }
            return None;
        };
        if remembered_params != params {
            return Some(Outcome::Fresh(Err(LedgerError::RequestIdReused {
                request_id: request.id.to_owned(),
            })));
        }
        Some(Outcome::Repeated(outcome.clone()))
    }

    /// Records a transaction without looking the request id up, remembering
    /// it if given as (id, accepted at ms): what the journal replays, where
    /// every record is a command that was executed.
    pub fn replay_add_transaction(
        &mut self,
        request: Option<(&str, i64)>,
        payer: &str,
        points: i64,
        timestamp: DateTime<Utc>,
    ) -> Result<Transaction, LedgerError> {
        let result = self.add_transaction(payer, points, timestamp);
        if let Some((request_id, accepted_at_ms)) = request {
            let params =
                RequestParams::AddTransaction { payer: payer.to_owned(), points, timestamp };
            self.remember(
                request_id,
                accepted_at_ms,
                params,
                result.as_ref().map(|transaction| transaction.id),
            );
        }
        result
    }

    /// Spends without looking the request id up; see [`Ledger::replay_add_transaction`].
    pub fn replay_spend(
        &mut self,
        request: Option<(&str, i64)>,
        points: i64,
    ) -> Result<Spend, LedgerError> {
        let result = self.spend(points);
        if let Some((request_id, accepted_at_ms)) = request {
            let params = RequestParams::Spend { points };
            self.remember(
                request_id,
                accepted_at_ms,
                params,
                result.as_ref().map(|spend| spend.id),
            );
        }
        result
    }

    fn remember(
        &mut self,
        request_id: &str,
        accepted_at_ms: i64,
        params: RequestParams,
        outcome: Result<u64, &LedgerError>,
    ) {
        // Refusals that depend on the request alone are refused again anyway.
        if let Err(error) = outcome
            && !error.depends_on_state()
        {
            return;
        }
        self.requests.insert(RequestRecord {
            request_id: request_id.to_owned(),
            params,
            outcome: outcome.map_err(Clone::clone),
            accepted_at_ms,
        });
    }

    /// Forgets request ids accepted `retention_ms` or more before `now_ms`.
    pub fn purge_requests(&mut self, now_ms: i64, retention_ms: i64) {
        self.requests.purge(now_ms, retention_ms);
    }

    /// How many request ids are remembered.
    pub fn remembered_request_count(&self) -> usize {
        self.requests.len()
    }

    /// Up to `limit` history entries from `cursor`, in arrival order, or
    /// `None` if `cursor` is not a position of this history.
    pub fn history_page(&self, cursor: HistoryCursor, limit: usize) -> Option<HistoryPage> {
        self.history_page_within(cursor, limit, usize::MAX)
    }

    /// [`Ledger::history_page`], also stopping before the entries' encoded
    /// size (bounded from above by the `*_BYTES` constants here) passes
    /// `max_bytes`; the
    /// first entry is always included, so a page always makes progress.
    /// Bounds the memory a page takes as well as the reply: a spend can list
    /// thousands of payers.
    pub fn history_page_within(
        &self,
        cursor: HistoryCursor,
        limit: usize,
        max_bytes: usize,
    ) -> Option<HistoryPage> {
        if !history::is_valid(cursor, &self.transactions, &self.spends) {
            return None;
        }
        let mut cursor = cursor;
        let mut entries = Vec::with_capacity(limit.min(1024));
        let mut bytes = 0usize;
        let total = (self.transactions.len() + self.spends.len()) as u64;
        while entries.len() < limit && cursor.transactions + cursor.spends < total {
            let is_spend = history::next_is_spend(cursor, &self.spends);
            let name_bytes = |payer: PayerIndex| self.payers[payer as usize].name.len();
            let size = if is_spend {
                let taken = &self.spends[cursor.spends as usize].taken;
                SPEND_ENTRY_BYTES
                    + taken
                        .iter()
                        .map(|&(payer, _)| PAYER_POINTS_BYTES + name_bytes(payer))
                        .sum::<usize>()
            } else {
                let record = &self.transactions[cursor.transactions as usize];
                TRANSACTION_ENTRY_BYTES + name_bytes(record.payer_index)
            };
            if !entries.is_empty() && bytes.saturating_add(size) > max_bytes {
                break;
            }
            bytes = bytes.saturating_add(size);
            if is_spend {
                entries.push(HistoryEntry::Spend(self.spend_reply(cursor.spends as usize)));
                cursor.spends += 1;
            } else {
                cursor.transactions += 1;
                let id = cursor.transactions;
                let record = &self.transactions[id as usize - 1];
                let remaining_points = if record.points > 0 {
                    let key = LotKey::new(record.timestamp, id);
                    self.payers[record.payer_index as usize].remaining_in(&self.arena, key)
                } else {
                    0
                };
                let transaction = self.transaction(id);
                entries.push(HistoryEntry::Transaction { transaction, remaining_points });
            }
        }
        let next = (cursor.transactions + cursor.spends < total).then_some(cursor);
        Some(HistoryPage { entries, next })
    }

    /// Every payer ever credited with its balance (0 included), in the order
    /// payers were first credited.
    pub fn balances(&self) -> impl ExactSizeIterator<Item = (&str, i64)> {
        self.payers.iter().map(|payer| (&*payer.name, payer.balance()))
    }

    /// The sum of all payers' balances.
    pub fn total(&self) -> i64 {
        self.total
    }

    /// Whether `payer` was ever credited.
    pub fn has_payer(&self, payer: &str) -> bool {
        self.payer_by_name.contains_key(payer)
    }

    /// The number of payers ever credited.
    pub fn payer_count(&self) -> usize {
        self.payers.len()
    }

    /// The number of lots ever credited (transactions with positive points).
    pub fn lot_count(&self) -> usize {
        self.lots
    }

    /// The ledger's whole state, borrowed: a snapshot writes it out without
    /// copying the history.
    pub fn view(&self) -> LedgerView<'_> {
        LedgerView {
            payers: self.balances().collect(),
            transactions: &self.transactions,
            spends: &self.spends,
            requests: self.requests.records().collect(),
        }
    }

    /// The ledger's whole state as plain records, for snapshots.
    pub fn state(&self) -> LedgerState {
        self.clone().into_state()
    }

    /// The ledger's whole state as plain records, moving the history out
    /// rather than copying it: a snapshot works on its own copy of the ledger.
    pub fn into_state(self) -> LedgerState {
        LedgerState {
            payers: self.balances().map(|(name, balance)| (name.to_owned(), balance)).collect(),
            requests: self.requests.records().collect(),
            transactions: self.transactions,
            spends: self.spends,
        }
    }

    /// Rebuilds a ledger from [`Ledger::state`], checking everything a
    /// damaged or forged snapshot could get wrong: names, indices, amounts,
    /// history order, and every invariant.
    pub fn restore(state: LedgerState) -> Result<Self, String> {
        let mut ledger = Self::new();
        let payer_count = state.payers.len();
        let mut lots_by_payer: Vec<Vec<(LotKey, i64)>> = vec![Vec::new(); payer_count];
        if state.transactions.len() as u64 > MAX_TRANSACTION_ID {
            return Err(format!(
                "{} transactions pass the limit of {MAX_TRANSACTION_ID}",
                state.transactions.len()
            ));
        }
        for (index, record) in state.transactions.iter().enumerate() {
            let id = index as TransactionId + 1;
            if record.payer_index as usize >= payer_count || record.points == 0 {
                return Err(format!(
                    "transaction {id} names payer {} of {payer_count}",
                    record.payer_index
                ));
            }
            if record.points > 0 {
                lots_by_payer[record.payer_index as usize]
                    .push((LotKey::new(record.timestamp, id), record.points));
            }
        }
        let mut total: i128 = 0;
        for ((name, balance), mut lots) in state.payers.into_iter().zip(lots_by_payer) {
            validate_payer(&name).map_err(|error| format!("payer {name:?}: {error}"))?;
            if ledger.payer_by_name.contains_key(name.as_str()) {
                return Err(format!("payer {name:?} appears twice"));
            }
            lots.sort_unstable_by_key(|&(key, _)| key);
            let payer = Payer::restore(&mut ledger.arena, &name, balance, lots)?;
            total += i128::from(payer.balance());
            let index = ledger.insert_payer(&name);
            if let Some(key) = payer.front_key() {
                ledger.fronts.insert(key, index);
            }
            ledger.payers[index as usize] = payer;
        }
        ledger.total =
            i64::try_from(total).map_err(|_| format!("total {total} passes i64::MAX"))?;
        let mut previous_transactions_before = 0;
        for (index, spend) in state.spends.iter().enumerate() {
            let taken: i128 = spend.taken.iter().map(|&(_, points)| i128::from(points)).sum();
            let bad_payer = spend
                .taken
                .iter()
                .any(|&(payer, points)| payer as usize >= payer_count || points <= 0);
            if taken != i128::from(spend.points)
                || bad_payer
                || spend.transactions_before < previous_transactions_before
                || spend.transactions_before > state.transactions.len() as u64
            {
                return Err(format!("spend {} is inconsistent with the history", index + 1));
            }
            previous_transactions_before = spend.transactions_before;
        }
        ledger.lots = state.transactions.iter().filter(|record| record.points > 0).count();
        ledger.transactions = state.transactions;
        ledger.spends = state.spends;
        for request in state.requests {
            let limit = match request.params {
                RequestParams::AddTransaction { .. } => ledger.transactions.len() as u64,
                RequestParams::Spend { .. } => ledger.spends.len() as u64,
            };
            if let Ok(id) = request.outcome
                && !(1..=limit).contains(&id)
            {
                return Err(format!(
                    "request {:?} refers to id {id} of {limit}",
                    request.request_id
                ));
            }
            ledger.requests.insert(request);
        }
        ledger.check_invariants()?;
        Ok(ledger)
    }

    /// The id the next accepted transaction will get.
    pub fn next_transaction_id(&self) -> TransactionId {
        self.transactions.len() as TransactionId + 1
    }

    /// The number of transactions and spends in the history.
    pub fn history_len(&self) -> usize {
        self.transactions.len() + self.spends.len()
    }

    /// Checks every invariant in O(lots): each payer's balance equals its
    /// credits minus debits and is never negative, its lots hold exactly its
    /// balance, `fronts` holds exactly each payer's front lot, and the total
    /// is the sum of the balances. For tests and debugging.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut total: i128 = 0;
        let mut lots = 0usize;
        for (index, payer) in self.payers.iter().enumerate() {
            lots += payer.check_invariants(&self.arena)?;
            total += i128::from(payer.balance());
            if let Some(key) = payer.front_key()
                && self.fronts.get(&key).map(|&i| i as usize) != Some(index)
            {
                return Err(format!("payer {:?} front {key:?} missing from fronts", payer.name));
            }
            if self.payer_by_name.get(&payer.name).map(|&i| i as usize) != Some(index) {
                return Err(format!("payer {:?} missing from the name index", payer.name));
            }
        }
        if total != i128::from(self.total) {
            return Err(format!("total {} != sum of balances {total}", self.total));
        }
        if lots != self.arena.len() || lots != self.lots {
            return Err(format!(
                "the payers hold {lots} lots, the arena {}, the count {}",
                self.arena.len(),
                self.lots
            ));
        }
        let payers_with_points = self.payers.iter().filter(|payer| payer.balance() > 0).count();
        if self.fronts.len() != payers_with_points {
            return Err(format!(
                "{} fronts for {payers_with_points} payers with points",
                self.fronts.len()
            ));
        }
        if self.payer_by_name.len() != self.payers.len() {
            return Err("name index and payers differ in size".to_owned());
        }
        let mut net_by_payer = vec![0i128; self.payers.len()];
        for record in &self.transactions {
            net_by_payer[record.payer_index as usize] += i128::from(record.points);
        }
        for spend in &self.spends {
            for &(payer, taken) in &spend.taken {
                net_by_payer[payer as usize] -= i128::from(taken);
            }
        }
        for (payer, net) in self.payers.iter().zip(net_by_payer) {
            if net != i128::from(payer.balance()) {
                return Err(format!(
                    "payer {:?}: history nets {net} but the balance is {}",
                    payer.name,
                    payer.balance()
                ));
            }
        }
        Ok(())
    }
}

/// A spend's per-payer amounts in first-taken order. A payer can come back
/// after another payer's older lot, so amounts are merged by payer: linear
/// search while the reply is short (the common case, no allocation beyond the
/// reply), an index once it grows.
#[derive(Default)]
struct TakenByPayer {
    entries: Vec<(PayerIndex, i64)>,
    position_by_payer: Option<HashMap<PayerIndex, usize>>,
}

impl TakenByPayer {
    const LINEAR_SEARCH_LIMIT: usize = 16;

    fn add(&mut self, index: PayerIndex, taken: i64) {
        let position = match &mut self.position_by_payer {
            Some(positions) => positions.get(&index).copied(),
            None => self.entries.iter().position(|&(entry, _)| entry == index),
        };
        match position {
            Some(position) => self.entries[position].1 += taken,
            None => {
                self.entries.push((index, taken));
                if let Some(positions) = &mut self.position_by_payer {
                    positions.insert(index, self.entries.len() - 1);
                } else if self.entries.len() > Self::LINEAR_SEARCH_LIMIT {
                    self.position_by_payer = Some(
                        self.entries
                            .iter()
                            .enumerate()
                            .map(|(position, &(entry, _))| (entry, position))
                            .collect(),
                    );
                }
            }
        }
    }
}
