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
//!   of being applied twice (see `requests`).
//! - Every accepted transaction and spend is kept in arrival order (see
//!   `history`).
//!
//! Cost: O(log n) per lot a command touches, never O(ledger size). Each payer
//! keeps its lots in order with a *front* (its oldest lot with points left),
//! and the ledger keeps every payer's front in one ordered map, so a spend
//! repeatedly takes from the oldest front.

mod error;
mod history;
mod invariants;
mod lots;
mod payer;
mod requests;
mod spend;
mod state;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};

pub use error::{ErrorKind, LedgerError};
pub use history::{HistoryCursor, PageLimits, SpendRecord, TransactionRecord};
pub use invariants::InvariantViolation;
use lots::LotArena;
use payer::Payer;
use requests::RequestLog;
pub use requests::{MAX_REQUEST_ID_BYTES, RequestParams, RequestRecord};
pub use state::{LedgerState, LedgerView, RestoreError};

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
/// one user's memory holds): ids must fit a `LotKey` (below 2^34).
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
    /// The id the next accepted transaction will get.
    pub fn next_transaction_id(&self) -> TransactionId {
        self.transactions.len() as TransactionId + 1
    }

    /// The number of transactions and spends in the history.
    pub fn history_len(&self) -> usize {
        self.transactions.len() + self.spends.len()
    }
}
