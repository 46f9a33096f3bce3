//! Holds (points taken now, then captured as a spend or given back),
//! refunds of spends, and the replies of both, rebuilt from the history.
//!
//! Giving points back to a payer shrinks its deductions, so its newest
//! used-up points come back and what it has left stays its newest points.
//! Points come back in the reverse order they were taken: the payer taken
//! from last first.

use super::history::{Event, HoldRecord, HoldState, SpendRecord};
use super::{
    HistoryEntry, Ledger, LedgerError, MERGE_SWITCH_BUDGET, PayerIndex, PayerPoints, Spend,
    SpendId, validate_spend_points,
};
use crate::ledger::error::HoldResolution;

/// Identifies a hold; assigned in arrival order starting at 1.
pub type HoldId = u64;

/// How long a hold stays open when the caller gives no timeout: 15
/// minutes, in milliseconds.
pub const DEFAULT_HOLD_TIMEOUT_MS: i64 = 15 * 60 * 1000;

/// The longest a hold may stay open: 30 days, in milliseconds.
pub const MAX_HOLD_TIMEOUT_MS: i64 = 30 * 24 * 60 * 60 * 1000;

/// An open hold, as HoldPoints replies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    /// Assigned in arrival order, starting at 1.
    pub id: HoldId,
    /// The points held.
    pub points: i64,
    /// Each payer once, in the order its points were first taken (as a
    /// spend takes them), as negative numbers.
    pub held: Vec<PayerPoints>,
    /// When the server releases the hold if nobody resolves it, in
    /// milliseconds since 1970-01-01T00:00:00Z.
    pub expire_at_ms: i64,
}

/// A captured hold: the spend it became and what came back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capture {
    /// The hold.
    pub hold_id: HoldId,
    /// The spend: the first points of the hold, in its order.
    pub spend: Spend,
    /// The rest of the hold, given back, as positive numbers, the payer
    /// taken from last first.
    pub released: Vec<PayerPoints>,
}

/// A released hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    /// The hold.
    pub hold_id: HoldId,
    /// Every point of the hold, given back, as positive numbers, the payer
    /// taken from last first.
    pub released: Vec<PayerPoints>,
    /// Released by the server because the hold timed out.
    pub timed_out: bool,
}

/// Points of a spend given back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refund {
    /// The spend.
    pub spend_id: SpendId,
    /// What came back per payer, as positive numbers, in the order given
    /// back (the payer taken from last first).
    pub refunded: Vec<PayerPoints>,
    /// What stays refundable of the spend.
    pub refundable_points: i64,
}

impl Ledger {
    /// Holds `points`: takes them exactly as [`Ledger::spend`] would (they
    /// leave the balances at once) and keeps the hold open until it is
    /// captured, released, or times out `timeout_ms` after the ledger's time.
    ///
    /// Refused, changing nothing, when `points` is not positive or more
    /// than the total, or the timeout is outside 1 ms..=30 days.
    pub fn hold(&mut self, points: i64, timeout_ms: i64) -> Result<Hold, LedgerError> {
        // Refusals of the request alone come before those of the state.
        validate_spend_points(points)?;
        validate_hold_timeout(timeout_ms)?;
        self.check_takeable(points)?;
        let taken = self.take_oldest(points, MERGE_SWITCH_BUDGET);
        for &(index, points) in &taken {
            self.payers[index as usize].adjust_returnable(points, 0);
        }
        self.returnable_total += points;
        let expire_at_ms = self.clock.now_ms.saturating_add(timeout_ms);
        self.holds.push(HoldRecord { points, taken, expire_at_ms, state: HoldState::Open });
        let hold_id = self.holds.len() as HoldId;
        self.open_holds.insert((expire_at_ms, hold_id));
        self.push_event(Event::Hold { hold_id });
        Ok(self.hold_reply(hold_id))
    }

    /// Captures the first `points` of hold `hold_id` (0: all of it), in the
    /// hold's order, as a spend with its own spend id, and gives the rest
    /// back.
    ///
    /// Refused, changing nothing, when the hold does not exist or is not
    /// open, or `points` is negative or more than the hold.
    pub fn capture(&mut self, hold_id: HoldId, points: i64) -> Result<Capture, LedgerError> {
        if points < 0 {
            return Err(LedgerError::NegativePoints { points });
        }
        let hold = self.open_hold(hold_id)?;
        let held = hold.points;
        let captured = if points == 0 { held } else { points };
        if captured > held {
            return Err(LedgerError::CaptureExceedsHold { requested: captured, held });
        }
        let (spent, rest) = split_taken(&hold.taken, captured);
        for &(index, points) in &spent {
            self.payers[index as usize].adjust_returnable(-points, 0);
        }
        let released: i64 = rest.iter().map(|&(_, points)| points).sum();
        self.give_back_held(&rest);
        self.returnable_total -= captured;
        self.push_spend(captured, spent, hold_id);
        let spend_id = self.spends.len() as SpendId;
        self.close_hold(hold_id, HoldState::Captured { spend_id });
        debug_assert_eq!(captured + released, held);
        self.expire_due();
        Ok(self.capture_reply(spend_id))
    }

    /// Releases hold `hold_id`: gives every point of it back.
    ///
    /// Refused, changing nothing, when the hold does not exist or is not open.
    pub fn release(&mut self, hold_id: HoldId) -> Result<Release, LedgerError> {
        self.open_hold(hold_id)?;
        self.release_open(hold_id, false);
        self.expire_due();
        Ok(self.release_reply(hold_id))
    }

    /// Releases an open hold that timed out; [`Ledger::advance`] expires
    /// what came back afterwards.
    pub(super) fn release_timed_out(&mut self, hold_id: HoldId) {
        self.release_open(hold_id, true);
    }

    fn release_open(&mut self, hold_id: HoldId, timed_out: bool) {
        let hold = &self.holds[hold_id as usize - 1];
        assert_eq!(hold.state, HoldState::Open, "only an open hold is released");
        let taken = hold.taken.clone();
        self.give_back_held(&taken);
        self.close_hold(hold_id, HoldState::Released { timed_out });
        self.push_event(Event::Release { hold_id, timed_out });
    }

    /// Gives held points back, the payer taken from last first; `taken` is
    /// in the order taken.
    fn give_back_held(&mut self, taken: &[(PayerIndex, i64)]) {
        for &(index, points) in taken.iter().rev() {
            self.update_payer(index, |payer, arena| {
                payer.adjust_returnable(-points, 0);
                payer.give_back(arena, points);
            });
            self.total += points;
            self.returnable_total -= points;
        }
    }

    fn close_hold(&mut self, hold_id: HoldId, state: HoldState) {
        let hold = &mut self.holds[hold_id as usize - 1];
        let removed = self.open_holds.remove(&(hold.expire_at_ms, hold_id));
        assert!(removed, "an open hold is in the timeout order");
        hold.state = state;
    }

    /// The open hold `hold_id`, or why it cannot be resolved.
    fn open_hold(&self, hold_id: HoldId) -> Result<&HoldRecord, LedgerError> {
        let hold = hold_id
            .checked_sub(1)
            .and_then(|index| self.holds.get(usize::try_from(index).ok()?))
            .ok_or(LedgerError::HoldNotFound { hold_id })?;
        let resolution = match hold.state {
            HoldState::Open => return Ok(hold),
            HoldState::Captured { .. } => HoldResolution::Captured,
            HoldState::Released { timed_out: false } => HoldResolution::Released,
            HoldState::Released { timed_out: true } => HoldResolution::TimedOut,
        };
        Err(LedgerError::HoldNotOpen { hold_id, resolution })
    }

    /// Refunds up to `points` of spend `spend_id` (0: all that is left),
    /// giving them back from the payer taken from last; never more than the
    /// spend took from a payer, counting earlier refunds.
    ///
    /// Refused, changing nothing, when the spend does not exist, nothing of
    /// it is left to refund, or `points` is negative or more than is left.
    pub fn refund(&mut self, spend_id: SpendId, points: i64) -> Result<Refund, LedgerError> {
        if points < 0 {
            return Err(LedgerError::NegativePoints { points });
        }
        let spend = spend_id
            .checked_sub(1)
            .and_then(|index| self.spends.get(usize::try_from(index).ok()?))
            .ok_or(LedgerError::SpendNotFound { spend_id })?;
        let refundable = spend.points - spend.refunded;
        if refundable == 0 {
            return Err(LedgerError::NothingToRefund { spend_id });
        }
        let refunding = if points == 0 { refundable } else { points };
        if refunding > refundable {
            return Err(LedgerError::RefundExceedsSpend { requested: refunding, refundable });
        }
        // Earlier refunds came back from the end of what the spend took:
        // give back from where they stopped.
        let (refunded, _) = split_taken(&refundable_of(spend), refunding);
        for &(index, points) in &refunded {
            self.update_payer(index, |payer, arena| {
                payer.adjust_returnable(0, -points);
                payer.give_back(arena, points);
            });
        }
        self.total += refunding;
        self.returnable_total -= refunding;
        self.spends[spend_id as usize - 1].refunded += refunding;
        self.push_event(Event::Refund {
            spend_id,
            refunded,
            refundable_after: refundable - refunding,
        });
        let event_index = self.events.len() - 1;
        self.expire_due();
        Ok(self.refund_reply(event_index))
    }

    fn payer_points(&self, pairs: &[(PayerIndex, i64)], sign: i64) -> Vec<PayerPoints> {
        pairs
            .iter()
            .map(|&(index, points)| PayerPoints {
                payer: self.payers[index as usize].name.to_string(),
                points: sign * points,
            })
            .collect()
    }

    /// The reply of the hold `hold_id` (which exists), rebuilt from the history.
    pub(super) fn hold_reply(&self, hold_id: HoldId) -> Hold {
        let hold = &self.holds[hold_id as usize - 1];
        Hold {
            id: hold_id,
            points: hold.points,
            held: self.payer_points(&hold.taken, -1),
            expire_at_ms: hold.expire_at_ms,
        }
    }

    /// The reply of the capture that made spend `spend_id` (which exists
    /// and captured a hold), rebuilt from the history.
    pub(super) fn capture_reply(&self, spend_id: SpendId) -> Capture {
        let spend = &self.spends[spend_id as usize - 1];
        let hold = &self.holds[spend.hold_id as usize - 1];
        let (_, rest) = split_taken(&hold.taken, spend.points);
        let rest: Vec<_> = rest.into_iter().rev().collect();
        Capture {
            hold_id: spend.hold_id,
            spend: self.spend_reply(spend_id as usize - 1),
            released: self.payer_points(&rest, 1),
        }
    }

    /// The reply of the release of hold `hold_id` (which exists), rebuilt
    /// from the history.
    pub(super) fn release_reply(&self, hold_id: HoldId) -> Release {
        let hold = &self.holds[hold_id as usize - 1];
        let given_back: Vec<_> = hold.taken.iter().rev().copied().collect();
        Release {
            hold_id,
            released: self.payer_points(&given_back, 1),
            timed_out: hold.state == HoldState::Released { timed_out: true },
        }
    }

    /// The reply of the refund recorded as event `event_index`.
    pub(super) fn refund_reply(&self, event_index: usize) -> Refund {
        match &self.events[event_index].event {
            Event::Refund { spend_id, refunded, refundable_after } => Refund {
                spend_id: *spend_id,
                refunded: self.payer_points(refunded, 1),
                refundable_points: *refundable_after,
            },
            other => unreachable!("event {event_index} is a refund, not {other:?}"),
        }
    }

    /// The history entry of spend `index` (0-based): a spend, or a capture.
    pub(super) fn spend_entry(&self, index: usize) -> HistoryEntry {
        match self.spends[index].hold_id {
            0 => HistoryEntry::Spend(self.spend_reply(index)),
            _ => HistoryEntry::Capture(self.capture_reply(index as SpendId + 1)),
        }
    }

    /// The history entry of event `index` (0-based).
    pub(super) fn event_entry(&self, index: usize) -> HistoryEntry {
        match &self.events[index].event {
            Event::Hold { hold_id } => HistoryEntry::Hold(self.hold_reply(*hold_id)),
            Event::Release { hold_id, timed_out } => HistoryEntry::Release(Release {
                timed_out: *timed_out,
                ..self.release_reply(*hold_id)
            }),
            Event::Refund { .. } => HistoryEntry::Refund(self.refund_reply(index)),
            Event::Expiration { expired } => {
                HistoryEntry::Expiration(self.payer_points(expired, -1))
            }
        }
    }
}

/// Checks a hold's timeout: 1 ms to [`MAX_HOLD_TIMEOUT_MS`].
pub fn validate_hold_timeout(timeout_ms: i64) -> Result<(), LedgerError> {
    if !(1..=MAX_HOLD_TIMEOUT_MS).contains(&timeout_ms) {
        return Err(LedgerError::HoldTimeoutOutOfRange { timeout_ms });
    }
    Ok(())
}

/// Points per payer, in an order that matters (taken, or given back).
type PayerAmounts = Vec<(PayerIndex, i64)>;

/// Splits what a hold took, in the order taken, into its first `points`
/// and the rest.
pub(super) fn split_taken(
    taken: &[(PayerIndex, i64)],
    points: i64,
) -> (PayerAmounts, PayerAmounts) {
    let mut first = Vec::new();
    let mut rest = Vec::new();
    let mut left = points;
    for &(index, taken) in taken {
        let into_first = left.min(taken);
        left -= into_first;
        if into_first > 0 {
            first.push((index, into_first));
        }
        if taken > into_first {
            rest.push((index, taken - into_first));
        }
    }
    assert_eq!(left, 0, "the points split are within what was taken");
    (first, rest)
}

/// What a spend took and has not refunded, per payer, in the order it is
/// given back: refunds give back from the end of what the spend took.
pub(super) fn refundable_of(spend: &SpendRecord) -> PayerAmounts {
    let from_the_end: PayerAmounts = spend.taken.iter().rev().copied().collect();
    split_taken(&from_the_end, spend.refunded).1
}

impl Ledger {
    /// The place among the events of the refund just recorded: the last
    /// event, or the one before an expiration that followed it.
    pub(super) fn last_refund_event(&self) -> usize {
        let last = self.events.len();
        (last.saturating_sub(2)..last)
            .rev()
            .find(|&index| matches!(self.events[index].event, Event::Refund { .. }))
            .expect("a refund was just recorded")
    }
}
