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

mod as_of;
mod clock;
mod error;
mod history;
mod holds;
mod invariants;
mod lots;
mod payer;
mod requests;
mod spend;
mod state;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Utc};

pub use clock::{Clock, ExpiringPoints, MAX_POINTS_VALIDITY_MS};
pub use error::{ErrorKind, HoldResolution, LedgerError};
use history::NextEntry;
pub use history::{
    Event, EventRecord, HistoryCursor, HoldRecord, HoldState, PageLimits, PagedEntry, SpendRecord,
    TransactionRecord,
};
pub use holds::{
    Capture, DEFAULT_HOLD_TIMEOUT_MS, Hold, HoldId, MAX_HOLD_TIMEOUT_MS, Refund, Release,
    validate_hold_timeout,
};
pub use invariants::InvariantViolation;
use lots::LotArena;
use payer::Payer;
use requests::RequestLog;
pub use requests::{Executed, MAX_REQUEST_ID_BYTES, RequestParams, RequestRecord};
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
    /// A hold opened.
    Hold(Hold),
    /// A hold captured: part of it spent, the rest given back.
    Capture(Capture),
    /// A hold released, by a call or because it timed out.
    Release(Release),
    /// Points of a spend given back.
    Refund(Refund),
    /// Points that expired, per payer, as negative numbers.
    Expiration(Vec<PayerPoints>),
}

/// A page of history and where the next one starts (`None` at the end).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryPage {
    /// The entries, in arrival order.
    pub entries: Vec<PagedEntry>,
    /// The cursor of the next page, if there is more.
    pub next: Option<HistoryCursor>,
    /// The cursor right after the page's last entry (where the page started
    /// for an empty page): where a follower reads on from.
    pub after: HistoryCursor,
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

/// A balance (a payer's or the user's total) with the points that may come
/// back to it (held, or spent and refundable). Credits keep the sum at or
/// below `i64::MAX`, so that giving points back can never overflow.
#[derive(Debug, Clone, Copy, Default)]
struct Room {
    balance: i64,
    returnable: i64,
}

impl Room {
    fn of(payer: &Payer) -> Self {
        Self { balance: payer.balance(), returnable: payer.held() + payer.refundable() }
    }
}

/// The payer's room and the ledger's total room after a valid transaction
/// of `points`, or why it is refused. Every refusal of a well-formed
/// transaction depends on these two alone, which is what lets a batch be
/// checked against an overlay of them before anything is applied.
/// (A lot that arrives expired and expires at once leaves less than this
/// says: the overlay then only errs on the side of refusing an overflow.)
fn settle(payer: &str, points: i64, room: Room, total: Room) -> Result<(Room, Room), LedgerError> {
    debug_assert!(points != 0 && room.balance >= 0 && total.balance >= room.balance);
    if points > 0 {
        let potential = room.balance + room.returnable;
        if potential.checked_add(points).is_none() {
            return Err(LedgerError::PayerBalanceOverflow {
                payer: payer.to_owned(),
                balance: potential,
                points,
            });
        }
        let total_potential = total.balance + total.returnable;
        if total_potential.checked_add(points).is_none() {
            return Err(LedgerError::TotalOverflow { total: total_potential, points });
        }
        let credit = |room: Room| Room { balance: room.balance + points, ..room };
        return Ok((credit(room), credit(total)));
    }
    let requested = points.unsigned_abs();
    // `balance` is never negative, so the cast is exact.
    if requested > room.balance as u64 {
        return Err(LedgerError::InsufficientPayerPoints {
            payer: payer.to_owned(),
            requested,
            available: room.balance,
        });
    }
    // Here `requested` <= `balance` <= i64::MAX, so these casts are exact.
    let debit = |room: Room| Room { balance: room.balance - requested as i64, ..room };
    Ok((debit(room), debit(total)))
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
    /// Points held or spent and refundable, over every payer: what may come
    /// back to `total`.
    returnable_total: i64,
    /// Lots ever credited, kept so that metrics can read it in O(1).
    lots: usize,
    /// Every accepted transaction; the id is the index plus one.
    transactions: Vec<TransactionRecord>,
    /// Every accepted spend (captures included); the id is the index plus one.
    spends: Vec<SpendRecord>,
    /// Every hold; the id is the index plus one.
    holds: Vec<HoldRecord>,
    /// The open holds by when they time out: (expire at ms, hold id).
    open_holds: BTreeSet<(i64, HoldId)>,
    /// The history's other entries (holds, releases, refunds,
    /// expirations), each placed among the transactions and spends.
    events: Vec<EventRecord>,
    /// The clock of the last [`Ledger::advance`]: the latest time this
    /// ledger has seen, and how long points stay valid.
    clock: Clock,
    requests: RequestLog,
    /// Balances by position in the history.
    as_of: as_of::AsOfIndex,
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
            returnable_total: 0,
            lots: 0,
            transactions: Vec::new(),
            spends: Vec::new(),
            holds: Vec::new(),
            open_holds: BTreeSet::new(),
            events: Vec::new(),
            clock: Clock::default(),
            requests: RequestLog::default(),
            as_of: as_of::AsOfIndex::default(),
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
        let room = existing.map_or(Room::default(), |index| Room::of(&self.payers[index as usize]));
        settle(payer, points, room, self.room_total())?;

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
            // A lot that arrives already expired expires at once: it never
            // takes over earlier deductions to free newer points.
            if self.clock.cutoff().is_some_and(|cutoff| key <= cutoff) {
                self.update_payer(index, |payer, arena| payer.debit(arena, points));
                self.total -= points;
                self.push_transaction(index, points, timestamp);
                self.push_event(Event::Expiration { expired: vec![(index, points)] });
                return Ok(Transaction { id, payer: payer.to_owned(), points, timestamp });
            }
            index
        } else {
            let index = existing.expect("settle refuses debits from unknown payers");
            let taken = -points;
            self.update_payer(index, |payer, arena| payer.debit(arena, taken));
            self.total -= taken;
            index
        };
        debug_assert!(self.total >= 0);
        self.push_transaction(index, points, timestamp);
        Ok(Transaction { id, payer: payer.to_owned(), points, timestamp })
    }

    fn push_transaction(&mut self, payer_index: PayerIndex, points: i64, timestamp: DateTime<Utc>) {
        let accepted_at_ms = self.clock.now_ms;
        self.transactions.push(TransactionRecord {
            payer_index,
            points,
            timestamp,
            accepted_at_ms,
        });
        self.note_entry(NextEntry::Transaction);
    }

    /// Appends an event to the history, after every transaction and spend
    /// so far.
    fn push_event(&mut self, event: Event) {
        self.events.push(EventRecord {
            transactions_before: self.transactions.len() as u64,
            spends_before: self.spends.len() as u64,
            accepted_at_ms: self.clock.now_ms,
            event,
        });
        self.note_entry(NextEntry::Event);
    }

    /// The user's total with every point that may come back; see [`Room`].
    fn room_total(&self) -> Room {
        Room { balance: self.total, returnable: self.returnable_total }
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
        let mut rooms: HashMap<&str, Room> = HashMap::new();
        let mut total = self.room_total();
        for (index, entry) in batch.iter().enumerate() {
            if self.next_transaction_id() + index as TransactionId > MAX_TRANSACTION_ID {
                return Err(refuse(
                    index,
                    LedgerError::TransactionLimitReached { limit: MAX_TRANSACTION_ID },
                ));
            }
            validate_payer(entry.payer).map_err(|error| refuse(index, error))?;
            validate_transaction_points(entry.points).map_err(|error| refuse(index, error))?;
            let room = match rooms.get(entry.payer) {
                Some(&room) => room,
                None => self
                    .payer_by_name
                    .get(entry.payer)
                    .map_or(Room::default(), |&payer| Room::of(&self.payers[payer as usize])),
            };
            let (new_room, new_total) = settle(entry.payer, entry.points, room, total)
                .map_err(|error| refuse(index, error))?;
            // A lot that arrives expired expires at once: it leaves the room
            // as it was.
            if !(entry.points > 0 && self.clock.arrives_expired(entry.timestamp)) {
                total = new_total;
                rooms.insert(entry.payer, new_room);
            }
        }
        let transactions: Vec<Transaction> = batch
            .iter()
            .map(|entry| {
                self.add_transaction(entry.payer, entry.points, entry.timestamp)
                    .expect("the dry run accepted every entry")
            })
            .collect();
        debug_assert!(self.total <= total.balance);
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

    /// The number of entries in the history.
    pub fn history_len(&self) -> usize {
        self.transactions.len() + self.spends.len() + self.events.len()
    }

    /// Every payer with points in open holds, and how many, in the order
    /// payers were first credited.
    pub fn held(&self) -> impl Iterator<Item = (&str, i64)> {
        self.payers
            .iter()
            .filter(|payer| payer.held() > 0)
            .map(|payer| (&*payer.name, payer.held()))
    }
}
