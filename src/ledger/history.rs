//! A user's history: every accepted transaction and spend, in arrival order.
//!
//! Transactions and spends are kept in two append-only lists indexed by id
//! (ids are contiguous from 1 in each), and each spend remembers how many
//! transactions arrived before it. Arrival order is therefore a merge of the
//! two lists, and a position in it is just two counts: a page cursor that
//! stays valid while new entries are appended, with no gaps or repeats.

use chrono::{DateTime, Utc};

use super::{HistoryEntry, HistoryPage, Ledger, LotKey, PayerIndex};

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

/// Upper bounds of a history entry's protobuf encoding, without its payer
/// names: a transaction entry (id, points, timestamp, remaining points and
/// their tags and lengths), a spend entry, and each payer of a spend. Used to
/// keep pages within a reply size; generous on purpose.
const TRANSACTION_ENTRY_BYTES: usize = 80;
const SPEND_ENTRY_BYTES: usize = 48;
const PAYER_POINTS_BYTES: usize = 24;

/// How much one history page may hold: at most `max_entries` entries whose
/// encoded size stays within `max_bytes`, except that the first entry always
/// fits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageLimits {
    /// The most entries.
    pub max_entries: usize,
    /// The most bytes of encoded entries (one entry always fits).
    pub max_bytes: usize,
}

impl Ledger {
    /// Up to `limit` history entries from `cursor`, in arrival order, or
    /// `None` if `cursor` is not a position of this history.
    pub fn history_page(&self, cursor: HistoryCursor, limit: usize) -> Option<HistoryPage> {
        self.history_page_within(cursor, PageLimits { max_entries: limit, max_bytes: usize::MAX })
    }

    /// [`Ledger::history_page`], also stopping before the entries' encoded
    /// size (bounded from above by the `*_BYTES` constants here) passes
    /// `limits.max_bytes`; the first entry is always included, so a page
    /// always makes progress.
    /// Bounds the memory a page takes as well as the reply: a spend can list
    /// thousands of payers.
    pub fn history_page_within(
        &self,
        cursor: HistoryCursor,
        limits: PageLimits,
    ) -> Option<HistoryPage> {
        let PageLimits { max_entries: limit, max_bytes } = limits;
        if !is_valid(cursor, &self.transactions, &self.spends) {
            return None;
        }
        let mut cursor = cursor;
        let mut entries = Vec::with_capacity(limit.min(1024));
        let mut bytes = 0usize;
        let total = (self.transactions.len() + self.spends.len()) as u64;
        while entries.len() < limit && cursor.transactions + cursor.spends < total {
            let is_spend = next_is_spend(cursor, &self.spends);
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
}
