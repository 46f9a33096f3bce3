//! A user's history: every accepted transaction and spend, in arrival order.
//!
//! Transactions and spends are kept in two append-only lists indexed by id
//! (ids are contiguous from 1 in each), and each spend remembers how many
//! transactions arrived before it. Arrival order is therefore a merge of the
//! two lists, and a position in it is just two counts: a page cursor that
//! stays valid while new entries are appended, with no gaps or repeats.

use chrono::{DateTime, Utc};

/// A transaction as stored: its id is its position in the list plus one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransactionRecord {
    /// Index of the payer in the ledger's payer list (first credited first).
    pub payer_index: u32,
    /// Points earned (positive) or taken back (negative).
    pub points: i64,
    /// When the points were earned.
    pub timestamp: DateTime<Utc>,
}

/// A spend as stored: its id is its position in the list plus one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpendRecord {
    /// The points spent.
    pub points: i64,
    /// How many transactions had arrived when the spend did.
    pub transactions_before: u64,
    /// (payer index, points taken) in the order the payers were first taken
    /// from; the points are positive and add up to `points`.
    pub taken: Vec<(u32, i64)>,
}

/// A position in a user's history: how many transactions and spends come
/// before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HistoryCursor {
    /// Transactions before the position.
    pub transactions: u64,
    /// Spends before the position.
    pub spends: u64,
}

/// Checks that `cursor` is a position the merge of the two lists passes
/// through, and returns the next entry's kind walking forwards.
pub(super) fn is_valid(
    cursor: HistoryCursor,
    transactions: &[TransactionRecord],
    spends: &[SpendRecord],
) -> bool {
    let (t, s) = (cursor.transactions, cursor.spends);
    if t > transactions.len() as u64 || s > spends.len() as u64 {
        return false;
    }
    let previous_spend_fits = s == 0 || spends[s as usize - 1].transactions_before <= t;
    let next_spend_fits = s == spends.len() as u64 || spends[s as usize].transactions_before >= t;
    previous_spend_fits && next_spend_fits
}

/// One step of the merge: whether the entry at `cursor` is a spend.
pub(super) fn next_is_spend(cursor: HistoryCursor, spends: &[SpendRecord]) -> bool {
    spends
        .get(cursor.spends as usize)
        .is_some_and(|spend| spend.transactions_before == cursor.transactions)
}
