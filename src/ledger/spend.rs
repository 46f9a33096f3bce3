//! Spending: take the oldest remaining points across all payers, merging
//! payers' lots by time, and report what each payer gave.

use std::collections::HashMap;

use super::history::{NextEntry, SpendRecord};
use super::lots::{self, LotTree};
use super::{
    Ledger, LedgerError, LotKey, MERGE_SWITCH_BUDGET, PayerIndex, PayerPoints, Spend, SpendId,
    validate_spend_points,
};

impl Ledger {
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
    pub(super) fn spend_with_switch_budget(
        &mut self,
        points: i64,
        switch_budget: usize,
    ) -> Result<Spend, LedgerError> {
        self.check_takeable(points)?;
        let taken = self.take_oldest(points, switch_budget);
        self.push_spend(points, taken, 0);
        Ok(self.spend_reply(self.spends.len() - 1))
    }

    /// Checks that `points` can be taken as a spend takes them: positive,
    /// and at most the total.
    pub(super) fn check_takeable(&self, points: i64) -> Result<(), LedgerError> {
        validate_spend_points(points)?;
        if points > self.total {
            return Err(LedgerError::InsufficientPoints {
                requested: points,
                available: self.total,
            });
        }
        Ok(())
    }

    /// Records a spend of `points` (a spend's, or a capture of hold
    /// `hold_id`) that took `taken` from the payers' balances or holds: the
    /// points become refundable.
    pub(super) fn push_spend(&mut self, points: i64, taken: Vec<(PayerIndex, i64)>, hold_id: u64) {
        for &(index, points) in &taken {
            self.payers[index as usize].adjust_returnable(0, points);
        }
        self.returnable_total += points;
        self.spends.push(SpendRecord {
            points,
            transactions_before: self.transactions.len() as u64,
            taken,
            refunded: 0,
            hold_id,
            accepted_at_ms: self.clock.now_ms,
        });
        self.note_entry(NextEntry::Spend);
    }

    /// Takes the oldest `points` across all payers (the total covers them)
    /// out of the total, as a spend or a hold does, and returns what each
    /// payer gave, in the order each was first taken from; see
    /// [`Ledger::take_oldest_by_payer`].
    pub(super) fn take_oldest(
        &mut self,
        points: i64,
        switch_budget: usize,
    ) -> Vec<(PayerIndex, i64)> {
        let taken = self.take_oldest_by_payer(points, switch_budget).entries;
        self.total -= points;
        debug_assert!(self.total >= 0);
        taken
    }

    /// What [`Ledger::take_oldest`] takes from each payer.
    ///
    /// A merge of the payers' lots: take from the payer with the oldest front
    /// everything older than the next payer's front, then switch. Each switch
    /// costs O(log n), but lots that alternate between payers make one switch
    /// per lot, so after `switch_budget` plus two per payer involved, the
    /// rest is taken at once through a time cut ([`Ledger::take_by_cut`]):
    /// the cost of a spend is bounded by the payers it involves, never by
    /// how their lots interleave.
    fn take_oldest_by_payer(&mut self, points: i64, switch_budget: usize) -> TakenByPayer {
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
    pub(super) fn spend_reply(&self, index: usize) -> Spend {
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
