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
//! Cost: O(log n) per lot a command touches, never O(ledger size). Each payer
//! keeps its lots in order with a *front* (its oldest lot with points left),
//! and the ledger keeps every payer's front in one ordered map, so a spend
//! repeatedly takes from the oldest front.

mod error;
mod payer;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};

pub use error::{ErrorKind, LedgerError};
use payer::Payer;

/// The longest payer name accepted, in bytes of UTF-8.
pub const MAX_PAYER_BYTES: usize = 256;

/// Identifies a transaction; assigned in arrival order starting at 1.
pub type TransactionId = u64;

/// Position of a payer in [`Ledger::payers`]; payers are never removed.
type PayerIndex = u32;

/// Orders lots: by timestamp, then by arrival (the id), so keys are unique.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct LotKey {
    timestamp: DateTime<Utc>,
    id: TransactionId,
}

/// A lot as a snapshot stores it: the transaction that credited it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lot {
    /// When the points were earned.
    pub timestamp: DateTime<Utc>,
    /// The id of the crediting transaction.
    pub id: TransactionId,
    /// The points originally credited (positive).
    pub points: i64,
}

/// One payer's full state, as exported for a snapshot and restored from one.
/// Which points of the lots remain follows from the balance: always the newest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PayerState {
    /// The payer's name.
    pub name: String,
    /// The payer's balance.
    pub balance: i64,
    /// Every lot ever credited to the payer, oldest first.
    pub lots: Vec<Lot>,
}

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

/// One user's points: payers, their lots, and the order spends take them in.
/// Cloning copies the whole state (used to snapshot it without holding a lock).
#[derive(Debug, Clone)]
pub struct Ledger {
    payers: Vec<Payer>,
    payer_by_name: HashMap<Box<str>, PayerIndex>,
    /// The front lot of every payer with a positive balance; its first entry
    /// holds the oldest remaining points of the whole ledger.
    fronts: BTreeMap<LotKey, PayerIndex>,
    total: i64,
    next_transaction_id: TransactionId,
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
            payer_by_name: HashMap::new(),
            fronts: BTreeMap::new(),
            total: 0,
            next_transaction_id: 1,
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
        if points > 0 {
            self.check_credit(existing, payer, points)?;
        } else {
            self.check_debit(existing, payer, points)?;
        }

        // Checks passed: from here on nothing can fail.
        let id = self.next_transaction_id;
        self.next_transaction_id += 1;
        let key = LotKey { timestamp, id };
        if points > 0 {
            let index = existing.unwrap_or_else(|| self.insert_payer(payer));
            self.update_payer(index, |payer| payer.credit(key, points));
            self.total += points;
        } else {
            let index = existing.expect("check_debit refuses unknown payers");
            let taken = -points;
            self.update_payer(index, |payer| payer.debit(taken));
            self.total -= taken;
        }
        debug_assert!(self.total >= 0);
        Ok(Transaction { id, payer: payer.to_owned(), points, timestamp })
    }

    fn check_credit(
        &self,
        existing: Option<PayerIndex>,
        payer: &str,
        points: i64,
    ) -> Result<(), LedgerError> {
        let balance = existing.map_or(0, |index| self.payers[index as usize].balance());
        if balance.checked_add(points).is_none() {
            return Err(LedgerError::PayerBalanceOverflow {
                payer: payer.to_owned(),
                balance,
                points,
            });
        }
        if self.total.checked_add(points).is_none() {
            return Err(LedgerError::TotalOverflow { total: self.total, points });
        }
        Ok(())
    }

    fn check_debit(
        &self,
        existing: Option<PayerIndex>,
        payer: &str,
        points: i64,
    ) -> Result<(), LedgerError> {
        debug_assert!(points < 0);
        let available = existing.map_or(0, |index| self.payers[index as usize].balance());
        let requested = points.unsigned_abs();
        // `available` is never negative, so the cast is exact.
        if requested > available as u64 {
            return Err(LedgerError::InsufficientPayerPoints {
                payer: payer.to_owned(),
                requested,
                available,
            });
        }
        Ok(())
    }

    fn insert_payer(&mut self, name: &str) -> PayerIndex {
        let index = PayerIndex::try_from(self.payers.len()).expect("fewer than 2^32 payers");
        self.payers.push(Payer::new(name));
        self.payer_by_name.insert(name.into(), index);
        index
    }

    /// Runs `change` on one payer and moves its entry in `fronts` if its front
    /// lot changed, keeping `fronts` exactly the set of payers' front keys.
    fn update_payer<T>(&mut self, index: PayerIndex, change: impl FnOnce(&mut Payer) -> T) -> T {
        let payer = &mut self.payers[index as usize];
        let before = payer.front_key();
        let result = change(payer);
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
    pub fn spend(&mut self, points: i64) -> Result<Vec<PayerPoints>, LedgerError> {
        validate_spend_points(points)?;
        if points > self.total {
            return Err(LedgerError::InsufficientPoints {
                requested: points,
                available: self.total,
            });
        }

        let mut taken_by_payer = TakenByPayer::default();
        let mut left = points;
        while left > 0 {
            let (_, &index) = self
                .fronts
                .first_key_value()
                .expect("the total covers the spend, so some payer has points");
            let taken = self.update_payer(index, |payer| payer.take_from_front(left));
            debug_assert!(taken > 0);
            taken_by_payer.add(index, taken);
            left -= taken;
        }
        self.total -= points;
        debug_assert!(self.total >= 0);

        Ok(taken_by_payer
            .entries
            .into_iter()
            .map(|(index, taken)| PayerPoints {
                payer: self.payers[index as usize].name.to_string(),
                points: -taken,
            })
            .collect())
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

    /// The number of payers ever credited.
    pub fn payer_count(&self) -> usize {
        self.payers.len()
    }

    /// The number of lots ever credited.
    pub fn lot_count(&self) -> usize {
        self.payers.iter().map(|payer| payer.lots().len()).sum()
    }

    /// Every payer's state, in the order payers were first credited, for
    /// snapshots. [`Ledger::restore`] rebuilds an identical ledger from it.
    pub fn payer_states(&self) -> impl ExactSizeIterator<Item = PayerState> + '_ {
        self.payers.iter().map(|payer| PayerState {
            name: payer.name.to_string(),
            balance: payer.balance(),
            lots: payer
                .lots()
                .map(|(key, points)| Lot { timestamp: key.timestamp, id: key.id, points })
                .collect(),
        })
    }

    /// Rebuilds a ledger from the payer states [`Ledger::payer_states`]
    /// exported, checking everything a damaged or forged snapshot could get
    /// wrong: names, order, ids, amounts, and every invariant.
    pub fn restore(
        next_transaction_id: TransactionId,
        payer_states: impl IntoIterator<Item = PayerState>,
    ) -> Result<Self, String> {
        let mut ledger = Self::new();
        if next_transaction_id == 0 {
            return Err("the next transaction id must be at least 1".to_owned());
        }
        ledger.next_transaction_id = next_transaction_id;
        let mut total: i128 = 0;
        for state in payer_states {
            validate_payer(&state.name)
                .map_err(|error| format!("payer {:?}: {error}", state.name))?;
            if ledger.payer_by_name.contains_key(state.name.as_str()) {
                return Err(format!("payer {:?} appears twice", state.name));
            }
            if let Some(lot) =
                state.lots.iter().find(|lot| lot.id == 0 || lot.id >= next_transaction_id)
            {
                return Err(format!(
                    "payer {:?}: lot id {} outside 1..{next_transaction_id}",
                    state.name, lot.id
                ));
            }
            let lots = state
                .lots
                .iter()
                .map(|lot| (LotKey { timestamp: lot.timestamp, id: lot.id }, lot.points))
                .collect();
            let payer = Payer::restore(&state.name, state.balance, lots)?;
            total += i128::from(payer.balance());
            let index = ledger.insert_payer(&state.name);
            if let Some(key) = payer.front_key() {
                ledger.fronts.insert(key, index);
            }
            ledger.payers[index as usize] = payer;
        }
        ledger.total =
            i64::try_from(total).map_err(|_| format!("total {total} passes i64::MAX"))?;
        let mut ids: Vec<TransactionId> =
            ledger.payers.iter().flat_map(|payer| payer.lots().map(|(key, _)| key.id)).collect();
        ids.sort_unstable();
        if ids.windows(2).any(|pair| pair[0] == pair[1]) {
            return Err("two lots share a transaction id".to_owned());
        }
        ledger.check_invariants()?;
        Ok(ledger)
    }

    /// The id the next accepted transaction will get.
    pub fn next_transaction_id(&self) -> TransactionId {
        self.next_transaction_id
    }

    /// Checks every invariant in O(lots): each payer's balance equals its
    /// credits minus debits and is never negative, its lots hold exactly its
    /// balance, `fronts` holds exactly each payer's front lot, and the total
    /// is the sum of the balances. For tests and debugging.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut total: i128 = 0;
        for (index, payer) in self.payers.iter().enumerate() {
            payer.check_invariants()?;
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
