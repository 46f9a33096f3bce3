//! A deliberately naive reference ledger, the rules written as plainly as
//! possible, against which the ledger and the replicas are checked.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use points::ledger::{
    Clock, HoldResolution, LedgerError, MAX_HOLD_TIMEOUT_MS, MAX_PAYER_BYTES, PayerPoints,
    Transaction,
};

/// The spec, written as plainly as possible: every lot is kept, each payer's
/// debits are a single number, and what is left of each lot is recomputed by
/// sorting that payer's lots and using up the debits oldest first. Holds,
/// spends and refunds are lists searched from the start; expiry recomputes
/// every payer's credits up to the cut after every step.
#[derive(Default)]
pub struct ReferenceLedger {
    lots: Vec<ReferenceLot>,
    debited_by_payer: HashMap<String, i128>,
    payers_in_credit_order: Vec<String>,
    transactions_accepted: u64,
    now_ms: i64,
    validity_ms: Option<i64>,
    spends: Vec<ReferenceSpend>,
    holds: Vec<ReferenceHold>,
}

/// A spend (or capture): what it took from whom, in order, and how much of
/// it was refunded since.
struct ReferenceSpend {
    taken: Vec<(String, i64)>,
    refunded: i64,
}

struct ReferenceHold {
    taken: Vec<(String, i64)>,
    expire_at_ms: i64,
    /// `None` while open.
    resolution: Option<HoldResolution>,
}

#[derive(Clone)]
struct ReferenceLot {
    payer: String,
    points: i64,
    timestamp: DateTime<Utc>,
    arrival: u64,
}

impl ReferenceLedger {
    fn credited(&self, payer: &str) -> i128 {
        self.lots.iter().filter(|lot| lot.payer == payer).map(|lot| i128::from(lot.points)).sum()
    }

    fn balance(&self, payer: &str) -> i128 {
        self.credited(payer) - self.debited_by_payer.get(payer).copied().unwrap_or(0)
    }

    /// Points of `payer` in open holds.
    fn held_of(&self, payer: &str) -> i128 {
        self.holds
            .iter()
            .filter(|hold| hold.resolution.is_none())
            .flat_map(|hold| &hold.taken)
            .filter(|(name, _)| name == payer)
            .map(|&(_, points)| i128::from(points))
            .sum()
    }

    /// Points spent from `payer` and not refunded: refunds come back from
    /// the end of each spend.
    fn refundable_of(&self, payer: &str) -> i128 {
        let mut refundable = 0;
        for spend in &self.spends {
            let mut refunded = spend.refunded;
            for (name, taken) in spend.taken.iter().rev() {
                let back = refunded.min(*taken);
                refunded -= back;
                if name == payer {
                    refundable += i128::from(taken - back);
                }
            }
        }
        refundable
    }

    /// The balance with every point that may come back to it.
    fn potential(&self, payer: &str) -> i128 {
        self.balance(payer) + self.held_of(payer) + self.refundable_of(payer)
    }

    /// Lots with a timestamp at or before now − validity have expired.
    fn expired_by_now(&self, timestamp: DateTime<Utc>) -> bool {
        self.validity_ms.is_some_and(|validity_ms| {
            DateTime::from_timestamp_millis(self.now_ms - validity_ms)
                .is_some_and(|cut| timestamp <= cut)
        })
    }

    /// Expiry, as the spec says it: every payer's deductions are at least
    /// its credits with timestamps at or before now − validity.
    fn expire(&mut self) {
        for payer in self.payers_in_credit_order.clone() {
            let expired_credits: i128 = self
                .lots
                .iter()
                .filter(|lot| lot.payer == payer && self.expired_by_now(lot.timestamp))
                .map(|lot| i128::from(lot.points))
                .sum();
            let debited = self.debited_by_payer.entry(payer).or_default();
            *debited = (*debited).max(expired_credits);
        }
    }

    /// Time passes: holds past their timeout are released (earliest first),
    /// then points expire.
    pub fn advance(&mut self, clock: Clock) {
        self.now_ms = self.now_ms.max(clock.now_ms);
        self.validity_ms = clock.points_validity_ms;
        loop {
            let due = (0..self.holds.len())
                .filter(|&index| {
                    self.holds[index].resolution.is_none()
                        && self.holds[index].expire_at_ms <= self.now_ms
                })
                .min_by_key(|&index| (self.holds[index].expire_at_ms, index));
            let Some(index) = due else { break };
            self.give_back(&self.holds[index].taken.clone());
            self.holds[index].resolution = Some(HoldResolution::TimedOut);
        }
        self.expire();
    }

    /// Gives points back, the payer taken from last first.
    fn give_back(&mut self, taken: &[(String, i64)]) {
        for (payer, points) in taken.iter().rev() {
            *self.debited_by_payer.entry(payer.clone()).or_default() -= i128::from(*points);
        }
    }

    /// Points in open holds per payer, payers in credit order, 0s left out.
    pub fn held(&self) -> Vec<(String, i64)> {
        self.payers_in_credit_order
            .iter()
            .map(|payer| (payer.clone(), self.held_of(payer) as i64))
            .filter(|&(_, points)| points > 0)
            .collect()
    }

    fn open_hold(&self, hold_id: u64) -> Result<usize, LedgerError> {
        let index = usize::try_from(hold_id).unwrap_or(usize::MAX).wrapping_sub(1);
        let hold = self.holds.get(index).ok_or(LedgerError::HoldNotFound { hold_id })?;
        match hold.resolution {
            None => Ok(index),
            Some(resolution) => Err(LedgerError::HoldNotOpen { hold_id, resolution }),
        }
    }

    /// HoldPoints: taken as a spend takes them; returns (hold id, held).
    pub fn hold(
        &mut self,
        points: i64,
        timeout_ms: i64,
    ) -> Result<(u64, Vec<PayerPoints>), LedgerError> {
        if points <= 0 {
            return Err(LedgerError::NonPositiveSpend { points });
        }
        if !(1..=MAX_HOLD_TIMEOUT_MS).contains(&timeout_ms) {
            return Err(LedgerError::HoldTimeoutOutOfRange { timeout_ms });
        }
        let held = self.take_oldest(points)?;
        self.holds.push(ReferenceHold {
            taken: held.iter().map(|entry| (entry.payer.clone(), -entry.points)).collect(),
            expire_at_ms: self.now_ms + timeout_ms,
            resolution: None,
        });
        Ok((self.holds.len() as u64, held))
    }

    /// CaptureHold: returns (spend id, spent, released).
    #[allow(clippy::type_complexity)]
    pub fn capture(
        &mut self,
        hold_id: u64,
        points: i64,
    ) -> Result<(u64, Vec<PayerPoints>, Vec<PayerPoints>), LedgerError> {
        if points < 0 {
            return Err(LedgerError::NegativePoints { points });
        }
        let index = self.open_hold(hold_id)?;
        let hold_points: i64 = self.holds[index].taken.iter().map(|(_, points)| points).sum();
        let captured = if points == 0 { hold_points } else { points };
        if captured > hold_points {
            return Err(LedgerError::CaptureExceedsHold { requested: captured, held: hold_points });
        }
        let mut left = captured;
        let (mut spent, mut rest) = (Vec::new(), Vec::new());
        for (payer, taken) in &self.holds[index].taken {
            let first = left.min(*taken);
            left -= first;
            if first > 0 {
                spent.push((payer.clone(), first));
            }
            if taken - first > 0 {
                rest.push((payer.clone(), taken - first));
            }
        }
        self.give_back(&rest);
        self.holds[index].resolution = Some(HoldResolution::Captured);
        self.spends.push(ReferenceSpend { taken: spent.clone(), refunded: 0 });
        self.expire();
        let as_points = |pairs: Vec<(String, i64)>, sign: i64| -> Vec<PayerPoints> {
            pairs
                .into_iter()
                .map(|(payer, points)| PayerPoints { payer, points: sign * points })
                .collect()
        };
        rest.reverse();
        Ok((self.spends.len() as u64, as_points(spent, -1), as_points(rest, 1)))
    }

    /// ReleaseHold: returns what came back.
    pub fn release(&mut self, hold_id: u64) -> Result<Vec<PayerPoints>, LedgerError> {
        let index = self.open_hold(hold_id)?;
        let taken = self.holds[index].taken.clone();
        self.give_back(&taken);
        self.holds[index].resolution = Some(HoldResolution::Released);
        self.expire();
        Ok(taken.into_iter().rev().map(|(payer, points)| PayerPoints { payer, points }).collect())
    }

    /// RefundSpend: returns (refunded, still refundable).
    pub fn refund(
        &mut self,
        spend_id: u64,
        points: i64,
    ) -> Result<(Vec<PayerPoints>, i64), LedgerError> {
        if points < 0 {
            return Err(LedgerError::NegativePoints { points });
        }
        let index = usize::try_from(spend_id).unwrap_or(usize::MAX).wrapping_sub(1);
        let spend = self.spends.get(index).ok_or(LedgerError::SpendNotFound { spend_id })?;
        let total: i64 = spend.taken.iter().map(|(_, points)| points).sum();
        let refundable = total - spend.refunded;
        if refundable == 0 {
            return Err(LedgerError::NothingToRefund { spend_id });
        }
        let refunding = if points == 0 { refundable } else { points };
        if refunding > refundable {
            return Err(LedgerError::RefundExceedsSpend { requested: refunding, refundable });
        }
        // Walk back from the end: the first `refunded` points were given
        // back before, the next `refunding` now.
        let (mut skip, mut left) = (spend.refunded, refunding);
        let mut refunded = Vec::new();
        for (payer, taken) in spend.taken.iter().rev() {
            let before = skip.min(*taken);
            skip -= before;
            let now = (taken - before).min(left);
            left -= now;
            if now > 0 {
                refunded.push((payer.clone(), now));
            }
        }
        self.spends[index].refunded += refunding;
        let mut in_taking_order = refunded.clone();
        in_taking_order.reverse();
        self.give_back(&in_taking_order);
        self.expire();
        let reply =
            refunded.into_iter().map(|(payer, points)| PayerPoints { payer, points }).collect();
        Ok((reply, refundable - refunding))
    }

    pub fn total(&self) -> i128 {
        self.payers_in_credit_order.iter().map(|payer| self.balance(payer)).sum()
    }

    /// Every lot with what is left of it, in global (timestamp, arrival) order.
    fn remaining_lots(&self) -> Vec<(ReferenceLot, i128)> {
        let mut result = Vec::new();
        for payer in &self.payers_in_credit_order {
            let mut lots: Vec<_> = self.lots.iter().filter(|lot| &lot.payer == payer).collect();
            lots.sort_by_key(|lot| (lot.timestamp, lot.arrival));
            let mut debits_left = self.debited_by_payer.get(payer).copied().unwrap_or(0);
            for lot in lots {
                let used = debits_left.min(i128::from(lot.points));
                debits_left -= used;
                result.push((lot.clone(), i128::from(lot.points) - used));
            }
            assert_eq!(debits_left, 0, "debits never exceed credits");
        }
        result.sort_by_key(|(lot, _)| (lot.timestamp, lot.arrival));
        result
    }

    pub fn add_transaction(
        &mut self,
        payer: &str,
        points: i64,
        timestamp: DateTime<Utc>,
    ) -> Result<Transaction, LedgerError> {
        if payer.trim().is_empty() {
            return Err(LedgerError::BlankPayer);
        }
        if payer.len() > MAX_PAYER_BYTES {
            return Err(LedgerError::PayerTooLong { length_bytes: payer.len() });
        }
        if points == 0 {
            return Err(LedgerError::ZeroPoints);
        }
        let balance = self.balance(payer);
        if points > 0 {
            // Room is kept for every point that may come back.
            let potential = self.potential(payer);
            if potential + i128::from(points) > i128::from(i64::MAX) {
                return Err(LedgerError::PayerBalanceOverflow {
                    payer: payer.to_owned(),
                    balance: potential as i64,
                    points,
                });
            }
            let total: i128 =
                self.payers_in_credit_order.iter().map(|payer| self.potential(payer)).sum();
            if total + i128::from(points) > i128::from(i64::MAX) {
                return Err(LedgerError::TotalOverflow { total: total as i64, points });
            }
        } else if balance < -i128::from(points) {
            return Err(LedgerError::InsufficientPayerPoints {
                payer: payer.to_owned(),
                requested: points.unsigned_abs(),
                available: balance as i64,
            });
        }
        self.transactions_accepted += 1;
        let id = self.transactions_accepted;
        if points > 0 {
            if !self.payers_in_credit_order.iter().any(|known| known == payer) {
                self.payers_in_credit_order.push(payer.to_owned());
            }
            self.lots.push(ReferenceLot {
                payer: payer.to_owned(),
                points,
                timestamp,
                arrival: id,
            });
            // Arrived expired: it expires at once, freeing nothing.
            if self.expired_by_now(timestamp) {
                *self.debited_by_payer.entry(payer.to_owned()).or_default() += i128::from(points);
            }
        } else {
            *self.debited_by_payer.entry(payer.to_owned()).or_default() -= i128::from(points);
        }
        Ok(Transaction { id, payer: payer.to_owned(), points, timestamp })
    }

    pub fn spend(&mut self, points: i64) -> Result<Vec<PayerPoints>, LedgerError> {
        if points <= 0 {
            return Err(LedgerError::NonPositiveSpend { points });
        }
        let spent = self.take_oldest(points)?;
        let taken = spent.iter().map(|entry| (entry.payer.clone(), -entry.points)).collect();
        self.spends.push(ReferenceSpend { taken, refunded: 0 });
        Ok(spent)
    }

    /// Takes the oldest `points` across payers, as a spend does.
    fn take_oldest(&mut self, points: i64) -> Result<Vec<PayerPoints>, LedgerError> {
        let total = self.total();
        if i128::from(points) > total {
            return Err(LedgerError::InsufficientPoints {
                requested: points,
                available: total as i64,
            });
        }
        let mut left = i128::from(points);
        let mut reply: Vec<PayerPoints> = Vec::new();
        for (lot, remaining) in self.remaining_lots() {
            if left == 0 {
                break;
            }
            let taken = left.min(remaining);
            if taken == 0 {
                continue;
            }
            left -= taken;
            *self.debited_by_payer.entry(lot.payer.clone()).or_default() += taken;
            match reply.iter_mut().find(|entry| entry.payer == lot.payer) {
                Some(entry) => entry.points -= taken as i64,
                None => {
                    reply.push(PayerPoints { payer: lot.payer.clone(), points: -(taken as i64) })
                }
            }
        }
        assert_eq!(left, 0);
        Ok(reply)
    }

    pub fn balances(&self) -> Vec<(String, i64)> {
        self.payers_in_credit_order
            .iter()
            .map(|payer| (payer.clone(), self.balance(payer) as i64))
            .collect()
    }
}
