//! A user's history: every accepted transaction, spend, hold, release,
//! refund and expiration, in arrival order.
//!
//! Transactions and spends are kept in two append-only lists indexed by id
//! (ids are contiguous from 1 in each), and each spend remembers how many
//! transactions arrived before it; every other entry is an *event* in a
//! third list, remembering how many transactions and spends arrived before
//! it. Arrival order is therefore a merge of the three lists, and a position
//! in it is just three counts: a page cursor that stays valid while new
//! entries are appended, with no gaps or repeats.

use chrono::{DateTime, Utc};

use super::holds::HoldId;
use super::{HistoryEntry, HistoryPage, Ledger, LotKey, PayerIndex, SpendId};

/// A transaction as stored: its id is its position in the list plus one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransactionRecord {
    /// Index of the payer in the ledger's payer list (first credited first).
    pub payer_index: u32,
    /// Points earned (positive) or taken back (negative).
    pub points: i64,
    /// When the points were earned.
    pub timestamp: DateTime<Utc>,
    /// When the server accepted it (the ledger's time then), in
    /// milliseconds since 1970-01-01T00:00:00Z; 0 if unknown (kept before
    /// accept times were).
    pub accepted_at_ms: i64,
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
    /// Points refunded so far: given back from the end of `taken`.
    pub refunded: i64,
    /// The hold this spend captured, or 0 for a spend of its own.
    pub hold_id: HoldId,
    /// When the server accepted it, as for a transaction.
    pub accepted_at_ms: i64,
}

/// A hold as stored: its id is its position in the list plus one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoldRecord {
    /// The points held.
    pub points: i64,
    /// (payer index, points taken) in the order taken, as for a spend.
    pub taken: Vec<(u32, i64)>,
    /// When the hold times out, in milliseconds since 1970-01-01T00:00:00Z.
    pub expire_at_ms: i64,
    /// Open, or how it was resolved.
    pub state: HoldState,
}

/// Whether a hold is open, or how it was resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldState {
    /// Its points are held.
    Open,
    /// Captured as the spend with this id (the rest was given back).
    Captured {
        /// The spend.
        spend_id: SpendId,
    },
    /// Given back.
    Released {
        /// Released by the server because it timed out.
        timed_out: bool,
    },
}

/// A history entry that is neither a transaction nor a spend, placed after
/// the transactions and spends that came before it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRecord {
    /// Transactions before it.
    pub transactions_before: u64,
    /// Spends before it.
    pub spends_before: u64,
    /// When the server accepted it, as for a transaction.
    pub accepted_at_ms: i64,
    /// What happened.
    pub event: Event,
}

/// What an [`EventRecord`] records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A hold opened.
    Hold {
        /// The hold.
        hold_id: HoldId,
    },
    /// A hold given back whole.
    Release {
        /// The hold.
        hold_id: HoldId,
        /// Released by the server because it timed out.
        timed_out: bool,
    },
    /// Points of a spend given back.
    Refund {
        /// The spend.
        spend_id: SpendId,
        /// (payer index, points given back), in the order given back.
        refunded: Vec<(u32, i64)>,
        /// What stayed refundable of the spend after this refund.
        refundable_after: i64,
    },
    /// Points that expired.
    Expiration {
        /// (payer index, points that expired).
        expired: Vec<(u32, i64)>,
    },
}

/// A position in a user's history: how many transactions, spends and other
/// events come before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HistoryCursor {
    /// Transactions before the position.
    pub transactions: u64,
    /// Spends before the position.
    pub spends: u64,
    /// Other events before the position.
    pub events: u64,
}

/// A history entry as a page lists it: where it is and when it was
/// accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PagedEntry {
    /// Its place in the history, from 1.
    pub position: u64,
    /// When the server accepted it, in milliseconds since
    /// 1970-01-01T00:00:00Z; 0 if unknown (kept before accept times were).
    pub accepted_at_ms: i64,
    /// The entry.
    pub entry: HistoryEntry,
}

/// The kind of entry at a position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum NextEntry {
    Transaction,
    Spend,
    Event,
}

/// Checks that `cursor` is a position the merge of the three lists passes
/// through.
pub(super) fn is_valid(
    cursor: HistoryCursor,
    transactions: &[TransactionRecord],
    spends: &[SpendRecord],
    events: &[EventRecord],
) -> bool {
    let (t, s, e) = (cursor.transactions, cursor.spends, cursor.events);
    if t > transactions.len() as u64 || s > spends.len() as u64 || e > events.len() as u64 {
        return false;
    }
    let previous_spend_fits = s == 0 || spends[s as usize - 1].transactions_before <= t;
    let next_spend_fits = s == spends.len() as u64 || spends[s as usize].transactions_before >= t;
    let previous_event_fits = e == 0 || {
        let event = &events[e as usize - 1];
        event.transactions_before <= t && event.spends_before <= s
    };
    let next_event_fits = e == events.len() as u64 || {
        let event = &events[e as usize];
        event.transactions_before >= t && event.spends_before >= s
    };
    previous_spend_fits && next_spend_fits && previous_event_fits && next_event_fits
}

/// One step of the merge: the kind of the entry at `cursor` (which must not
/// be the end).
pub(super) fn next_entry(
    cursor: HistoryCursor,
    spends: &[SpendRecord],
    events: &[EventRecord],
) -> NextEntry {
    let event_next = events.get(cursor.events as usize).is_some_and(|event| {
        event.transactions_before == cursor.transactions && event.spends_before == cursor.spends
    });
    if event_next {
        return NextEntry::Event;
    }
    let spend_next = spends
        .get(cursor.spends as usize)
        .is_some_and(|spend| spend.transactions_before == cursor.transactions);
    if spend_next { NextEntry::Spend } else { NextEntry::Transaction }
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
        if !is_valid(cursor, &self.transactions, &self.spends, &self.events) {
            return None;
        }
        let mut cursor = cursor;
        let mut entries = Vec::with_capacity(limit.min(1024));
        let mut bytes = 0usize;
        let total = self.history_len() as u64;
        let position = |cursor: HistoryCursor| cursor.transactions + cursor.spends + cursor.events;
        while entries.len() < limit && position(cursor) < total {
            let next = next_entry(cursor, &self.spends, &self.events);
            let name_bytes = |payer: PayerIndex| self.payers[payer as usize].name.len();
            let payers_bytes = |pairs: &[(PayerIndex, i64)]| {
                pairs
                    .iter()
                    .map(|&(payer, _)| PAYER_POINTS_BYTES + name_bytes(payer))
                    .sum::<usize>()
            };
            let size = match next {
                NextEntry::Spend => {
                    let spend = &self.spends[cursor.spends as usize];
                    // A capture also lists what it gave back: at most the
                    // hold's payers.
                    let hold_payers = match spend.hold_id {
                        0 => 0,
                        hold_id => payers_bytes(&self.holds[hold_id as usize - 1].taken),
                    };
                    SPEND_ENTRY_BYTES + payers_bytes(&spend.taken) + hold_payers
                }
                NextEntry::Event => {
                    SPEND_ENTRY_BYTES
                        + match &self.events[cursor.events as usize].event {
                            Event::Hold { hold_id } | Event::Release { hold_id, .. } => {
                                payers_bytes(&self.holds[*hold_id as usize - 1].taken)
                            }
                            Event::Refund { refunded: pairs, .. }
                            | Event::Expiration { expired: pairs } => payers_bytes(pairs),
                        }
                }
                NextEntry::Transaction => {
                    let record = &self.transactions[cursor.transactions as usize];
                    TRANSACTION_ENTRY_BYTES + name_bytes(record.payer_index)
                }
            };
            if !entries.is_empty() && bytes.saturating_add(size) > max_bytes {
                break;
            }
            bytes = bytes.saturating_add(size);
            let position = position(cursor) + 1;
            let (entry, accepted_at_ms) = if next == NextEntry::Spend {
                let index = cursor.spends as usize;
                cursor.spends += 1;
                (self.spend_entry(index), self.spends[index].accepted_at_ms)
            } else if next == NextEntry::Event {
                let index = cursor.events as usize;
                cursor.events += 1;
                (self.event_entry(index), self.events[index].accepted_at_ms)
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
                (HistoryEntry::Transaction { transaction, remaining_points }, record.accepted_at_ms)
            };
            entries.push(PagedEntry { position, accepted_at_ms, entry });
        }
        let next = (position(cursor) < total).then_some(cursor);
        Some(HistoryPage { entries, next, after: cursor })
    }
}
