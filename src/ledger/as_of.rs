//! Places in a user's history, and the balances as they were at any of
//! them.
//!
//! A *position* numbers the history's entries 1, 2, 3… in arrival order
//! (the order history pages list them); position 0 is before the first.
//! Every entry's effect on each payer's balance and held points is final
//! once it is recorded (a later refund is an entry of its own), so the
//! balances right after entry k are the sum of the effects of entries
//! 1..=k.
//!
//! Summing those on every question would cost O(k). Instead the history is
//! cut into blocks of [`ENTRIES_PER_BLOCK`] entries: at the end of each
//! block, every payer whose points changed in it gets a checkpoint of its
//! balance and held points, and the block's starting place in the three
//! lists is kept. The balances after entry k are then, per payer, its last
//! checkpoint at or before k's block (a binary search), plus the effects of
//! the at most `ENTRIES_PER_BLOCK - 1` entries from that block's start to
//! k: O(log n) per payer and O(1) entries replayed. Memory: one checkpoint
//! (20 bytes) per payer per block it changed in, and one place per block:
//! a user whose entries spread over many payers (at most one checkpoint
//! per effect) costs about 8 bytes per entry with blocks of 256, where
//! blocks of 64 cost as much as the rest of the history. Checkpoints keep
//! their block numbers apart from their points, so that the binary search
//! reads 16 blocks per cache line.
//!
//! The running totals the checkpoints are cut from are kept from the
//! entries' effects alone, independently of the payers' own balances; the
//! ledger's invariants check that both agree.

use super::history::{Event, HistoryCursor, NextEntry, next_entry};
use super::holds::split_taken;
use super::{Ledger, PayerIndex};

/// Entries per block of the index: the most entries a question about a
/// past position replays.
pub(super) const ENTRIES_PER_BLOCK: u64 = 256;

/// The accept time of an entry whose accept time is unknown (kept before
/// accept times were): the Unix epoch, before any real one.
pub(super) const UNKNOWN_ACCEPT_TIME_MS: i64 = 0;

/// The most effects the indexing buffer keeps room for between entries.
const SCRATCH_EFFECTS: usize = 64;

/// A payer's points right after some entry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct PayerPoints {
    pub(super) balance: i64,
    pub(super) held: i64,
}

/// What the index keeps of one payer.
#[derive(Debug, Clone, Default)]
struct IndexedPayer {
    /// Its points after every entry so far, from the effects.
    totals: PayerPoints,
    /// The position of its first entry (its first credit).
    first_position: u64,
    /// The blocks it changed in, ascending: block `b`'s last entry is at
    /// position `b * ENTRIES_PER_BLOCK`.
    blocks: Vec<u32>,
    /// Its points at the end of each of `blocks`.
    points: Vec<PayerPoints>,
    /// Whether it is in [`AsOfIndex::changed`].
    changed: bool,
}

impl IndexedPayer {
    /// The payer's points at the end of `block`: those of its last
    /// checkpoint at or before it.
    fn at(&self, block: u64) -> PayerPoints {
        debug_assert_eq!(self.blocks.len(), self.points.len());
        let before = self.blocks.partition_point(|&at| u64::from(at) <= block);
        before.checked_sub(1).map_or_else(PayerPoints::default, |at| self.points[at])
    }
}

/// The index of balances by position; see the module documentation.
#[derive(Debug, Clone, Default)]
pub(super) struct AsOfIndex {
    /// Entries indexed so far (the position of the last one).
    entries: u64,
    /// Per payer, in the order first credited.
    payers: Vec<IndexedPayer>,
    /// Payers whose points changed in the block being filled.
    changed: Vec<PayerIndex>,
    /// Where block `b + 1` starts (after `(b + 1) * ENTRIES_PER_BLOCK`
    /// entries) in the three lists; block 0 starts at the beginning.
    block_starts: Vec<HistoryCursor>,
    /// The effects of the entry being indexed, kept between entries so that
    /// indexing one allocates nothing.
    scratch: Vec<Effect>,
}

/// One entry's effect on one payer: (payer, balance change, held change).
pub(super) type Effect = (PayerIndex, i64, i64);

impl AsOfIndex {
    /// Indexes the next entry, whose effects are `effects` and after which
    /// the lists stand at `after`.
    fn push(&mut self, effects: &[Effect], after: HistoryCursor) {
        self.entries += 1;
        let position = self.entries;
        for &(payer, balance_change, held_change) in effects {
            let index = payer as usize;
            if index >= self.payers.len() {
                // Payers are numbered in the order of their first entry.
                assert_eq!(index, self.payers.len(), "a payer's first entry names it");
                self.payers
                    .push(IndexedPayer { first_position: position, ..IndexedPayer::default() });
            }
            let indexed = &mut self.payers[index];
            indexed.totals.balance += balance_change;
            indexed.totals.held += held_change;
            if !indexed.changed {
                indexed.changed = true;
                self.changed.push(payer);
            }
        }
        if position.is_multiple_of(ENTRIES_PER_BLOCK) {
            let block = position / ENTRIES_PER_BLOCK;
            // A history of 2^32 blocks would take terabytes of memory.
            let block_u32 = u32::try_from(block).expect("fewer than 2^32 blocks of entries");
            for payer in self.changed.drain(..) {
                let indexed = &mut self.payers[payer as usize];
                indexed.changed = false;
                indexed.blocks.push(block_u32);
                indexed.points.push(indexed.totals);
            }
            self.block_starts.push(after);
            debug_assert_eq!(self.block_starts.len() as u64, block);
        }
    }

    /// Entries indexed.
    pub(super) fn entries(&self) -> u64 {
        self.entries
    }

    /// Payers indexed.
    pub(super) fn payers(&self) -> usize {
        self.payers.len()
    }

    /// Each payer's points after every entry, from the effects.
    pub(super) fn totals(&self) -> impl ExactSizeIterator<Item = PayerPoints> + '_ {
        self.payers.iter().map(|payer| payer.totals)
    }

    /// Where the block holding position `position + 1` starts: its place in
    /// the lists and its position.
    fn block_start(&self, position: u64) -> (HistoryCursor, u64) {
        let block = position / ENTRIES_PER_BLOCK;
        let cursor = match block.checked_sub(1) {
            None => HistoryCursor::default(),
            Some(index) => self.block_starts[index as usize],
        };
        (cursor, block * ENTRIES_PER_BLOCK)
    }
}

impl Ledger {
    /// Indexes the entry just appended to the history, of kind `kind`.
    pub(super) fn note_entry(&mut self, kind: NextEntry) {
        let index = match kind {
            NextEntry::Transaction => self.transactions.len(),
            NextEntry::Spend => self.spends.len(),
            NextEntry::Event => self.events.len(),
        } - 1;
        let mut effects = std::mem::take(&mut self.as_of.scratch);
        effects.clear();
        self.effects_of(kind, index, &mut effects);
        let after = HistoryCursor {
            transactions: self.transactions.len() as u64,
            spends: self.spends.len() as u64,
            events: self.events.len() as u64,
        };
        self.as_of.push(&effects, after);
        // Kept only while small: a spend over thousands of payers must not
        // leave every ledger holding room for as many.
        if effects.capacity() <= SCRATCH_EFFECTS {
            self.as_of.scratch = effects;
        }
        debug_assert_eq!(self.as_of.entries(), self.history_len() as u64);
    }

    /// Indexes the whole history anew (after a restore), checking that
    /// accept times never decrease along it and that every payer was named
    /// by an entry; entries must refer to holds and payers that exist.
    pub(super) fn index_history(&mut self) -> Result<(), String> {
        self.as_of = Default::default();
        let mut cursor = HistoryCursor::default();
        let mut effects = Vec::new();
        let mut last_accepted_at_ms = i64::MIN;
        while cursor.transactions + cursor.spends + cursor.events < self.history_len() as u64 {
            let kind = next_entry(cursor, &self.spends, &self.events);
            let index = step(&mut cursor, kind);
            let accepted_at_ms = match kind {
                NextEntry::Transaction => self.transactions[index].accepted_at_ms,
                NextEntry::Spend => self.spends[index].accepted_at_ms,
                NextEntry::Event => self.events[index].accepted_at_ms,
            };
            if accepted_at_ms < last_accepted_at_ms || accepted_at_ms > self.clock.now_ms {
                return Err(format!(
                    "entry {} was accepted at {accepted_at_ms} ms, out of order",
                    self.as_of.entries() + 1
                ));
            }
            last_accepted_at_ms = accepted_at_ms;
            effects.clear();
            self.effects_of(kind, index, &mut effects);
            if effects.iter().any(|&(payer, _, _)| payer as usize > self.as_of.payers()) {
                return Err(format!(
                    "entry {} names a payer before its first credit",
                    self.as_of.entries() + 1
                ));
            }
            self.as_of.push(&effects, cursor);
        }
        if self.as_of.payers() != self.payers.len() {
            return Err("a payer has no transaction".to_owned());
        }
        Ok(())
    }

    /// What the entry of kind `kind` at `index` of its list did to each
    /// payer's balance and held points, appended to `effects`.
    fn effects_of(&self, kind: NextEntry, index: usize, effects: &mut Vec<Effect>) {
        let hold_taken = |hold_id: u64| &self.holds[hold_id as usize - 1].taken;
        match kind {
            NextEntry::Transaction => {
                let record = &self.transactions[index];
                effects.push((record.payer_index, record.points, 0));
            }
            NextEntry::Spend => {
                let spend = &self.spends[index];
                if spend.hold_id == 0 {
                    effects.extend(spend.taken.iter().map(|&(payer, points)| (payer, -points, 0)));
                } else {
                    // A capture: the hold's points leave `held`; what was
                    // not captured comes back.
                    let taken = hold_taken(spend.hold_id);
                    effects.extend(taken.iter().map(|&(payer, points)| (payer, 0, -points)));
                    let (_, rest) = split_taken(taken, spend.points);
                    effects.extend(rest.into_iter().map(|(payer, points)| (payer, points, 0)));
                }
            }
            NextEntry::Event => match &self.events[index].event {
                Event::Hold { hold_id } => effects.extend(
                    hold_taken(*hold_id).iter().map(|&(payer, points)| (payer, -points, points)),
                ),
                Event::Release { hold_id, .. } => effects.extend(
                    hold_taken(*hold_id).iter().map(|&(payer, points)| (payer, points, -points)),
                ),
                Event::Refund { refunded, .. } => {
                    effects.extend(refunded.iter().map(|&(payer, points)| (payer, points, 0)));
                }
                Event::Expiration { expired } => {
                    effects.extend(expired.iter().map(|&(payer, points)| (payer, -points, 0)));
                }
            },
        }
    }

    /// Each payer's balance and held points right after the entry at
    /// `position` (0: before the first), for every payer credited by then,
    /// in the order first credited; `None` past the end of the history.
    /// O(log n) per payer, plus at most [`ENTRIES_PER_BLOCK`] entries.
    pub fn points_as_of(&self, position: u64) -> Option<Vec<(&str, i64, i64)>> {
        if position > self.as_of.entries {
            return None;
        }
        let index = &self.as_of;
        let (start, start_position) = index.block_start(position);
        let block = start_position / ENTRIES_PER_BLOCK;
        let payers = index.payers.partition_point(|payer| payer.first_position <= position);
        let mut points: Vec<PayerPoints> =
            index.payers[..payers].iter().map(|payer| payer.at(block)).collect();
        // The block's entries up to `position`: fewer than a block.
        let mut cursor = start;
        let mut effects = Vec::new();
        for _ in start_position..position {
            let kind = next_entry(cursor, &self.spends, &self.events);
            let index = step(&mut cursor, kind);
            effects.clear();
            self.effects_of(kind, index, &mut effects);
            for &(payer, balance_change, held_change) in &effects {
                let payer_points = &mut points[payer as usize];
                payer_points.balance += balance_change;
                payer_points.held += held_change;
            }
        }
        debug_assert!(position - start_position < ENTRIES_PER_BLOCK);
        Some(
            points
                .iter()
                .zip(&self.payers)
                .map(|(points, payer)| (&*payer.name, points.balance, points.held))
                .collect(),
        )
    }

    /// The position of the last entry accepted at or before `time_ms`
    /// (0: none was). Accept times never decrease along the history, so
    /// the entries accepted by then are a prefix of it. O(log n).
    ///
    /// Entries restored from a snapshot taken before accept times were
    /// kept have none (0, before any real one): they are a prefix of the
    /// history, accepted at some time before the first entry with a known
    /// time (or, if none has one, by the ledger's time). A time after the
    /// Unix epoch and before those falls somewhere among them: the answer
    /// is then unknown, `Err` with how many entries have no accept time.
    pub fn position_at_time(&self, time_ms: i64) -> Result<u64, u64> {
        let position = self.accepted_by(time_ms);
        let unknown = self.accepted_by(UNKNOWN_ACCEPT_TIME_MS);
        // Every entry was accepted by the ledger's time, if it has one.
        let all_accepted_by_ms = match self.clock.now_ms {
            UNKNOWN_ACCEPT_TIME_MS => i64::MAX,
            now_ms => now_ms,
        };
        let among_unknown = (UNKNOWN_ACCEPT_TIME_MS..all_accepted_by_ms).contains(&time_ms);
        if unknown > 0 && position == unknown && among_unknown {
            return Err(unknown);
        }
        Ok(position)
    }

    /// How many entries were accepted at or before `time_ms`.
    fn accepted_by(&self, time_ms: i64) -> u64 {
        let transactions =
            self.transactions.partition_point(|record| record.accepted_at_ms <= time_ms);
        let spends = self.spends.partition_point(|record| record.accepted_at_ms <= time_ms);
        let events = self.events.partition_point(|record| record.accepted_at_ms <= time_ms);
        (transactions + spends + events) as u64
    }

    /// The place in the lists right after the entry at `position` (0: the
    /// beginning), from which a page lists the entries after it; `None`
    /// past the end of the history. O(1): at most a block's entries are
    /// stepped over.
    pub fn cursor_after(&self, position: u64) -> Option<HistoryCursor> {
        if position > self.as_of.entries {
            return None;
        }
        let (mut cursor, start_position) = self.as_of.block_start(position);
        for _ in start_position..position {
            let kind = next_entry(cursor, &self.spends, &self.events);
            step(&mut cursor, kind);
        }
        Some(cursor)
    }
}

/// Moves `cursor` past the entry of kind `kind` at it; returns that entry's
/// index in its list.
fn step(cursor: &mut HistoryCursor, kind: NextEntry) -> usize {
    let list = match kind {
        NextEntry::Transaction => &mut cursor.transactions,
        NextEntry::Spend => &mut cursor.spends,
        NextEntry::Event => &mut cursor.events,
    };
    *list += 1;
    *list as usize - 1
}
