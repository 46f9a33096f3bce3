//! A ledger's whole state as plain records, for snapshots: borrowed to
//! write one out, moved out, and checked record by record when a ledger is
//! rebuilt from one.

use super::history::{Event, EventRecord, HoldRecord, HoldState, SpendRecord, TransactionRecord};
use super::holds::refundable_of;
use super::payer::Payer;

/// Why a ledger cannot be rebuilt from a state: names, indices, amounts or
/// history order that no ledger could have, or a broken invariant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RestoreError(pub String);
use super::requests::RequestRecord;
use super::{Ledger, LotKey, MAX_TRANSACTION_ID, TransactionId, validate_payer};

/// A ledger's whole state in plain records, as snapshots store it;
/// [`Ledger::restore`] rebuilds the ledger from it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LedgerState {
    /// (name, balance) of each payer, in the order first credited.
    pub payers: Vec<(String, i64)>,
    /// Every transaction, by id.
    pub transactions: Vec<TransactionRecord>,
    /// Every spend, by id.
    pub spends: Vec<SpendRecord>,
    /// Every hold, by id.
    pub holds: Vec<HoldRecord>,
    /// The history's other entries, in order.
    pub events: Vec<EventRecord>,
    /// The ledger's time: the latest it has been advanced to, in
    /// milliseconds since 1970-01-01T00:00:00Z.
    pub clock_ms: i64,
    /// The remembered requests, oldest first.
    pub requests: Vec<RequestRecord>,
}

/// A ledger's whole state, borrowed; the same records as [`LedgerState`].
#[derive(Debug)]
pub struct LedgerView<'a> {
    /// (name, balance) of each payer, in the order first credited.
    pub payers: Vec<(&'a str, i64)>,
    /// Every transaction, by id.
    pub transactions: &'a [TransactionRecord],
    /// Every spend, by id.
    pub spends: &'a [SpendRecord],
    /// Every hold, by id.
    pub holds: &'a [HoldRecord],
    /// The history's other entries, in order.
    pub events: &'a [EventRecord],
    /// The ledger's time.
    pub clock_ms: i64,
    /// The remembered requests, oldest first.
    pub requests: Vec<RequestRecord>,
}

impl Ledger {
    /// The ledger's whole state, borrowed: a snapshot writes it out without
    /// copying the history.
    pub fn view(&self) -> LedgerView<'_> {
        LedgerView {
            payers: self.balances().collect(),
            transactions: &self.transactions,
            spends: &self.spends,
            holds: &self.holds,
            events: &self.events,
            clock_ms: self.clock.now_ms,
            requests: self.requests.records().collect(),
        }
    }

    /// The ledger's whole state as plain records, for snapshots.
    pub fn state(&self) -> LedgerState {
        self.clone().into_state()
    }

    /// The ledger's whole state as plain records, moving the history out
    /// rather than copying it: a snapshot works on its own copy of the ledger.
    pub fn into_state(self) -> LedgerState {
        LedgerState {
            payers: self.balances().map(|(name, balance)| (name.to_owned(), balance)).collect(),
            requests: self.requests.records().collect(),
            transactions: self.transactions,
            spends: self.spends,
            holds: self.holds,
            events: self.events,
            clock_ms: self.clock.now_ms,
        }
    }

    /// Rebuilds a ledger from [`Ledger::state`], checking everything a
    /// damaged or forged snapshot could get wrong: names, indices, amounts,
    /// history order, and every invariant.
    pub fn restore(state: LedgerState) -> Result<Self, RestoreError> {
        Self::restore_checked(state).map_err(RestoreError)
    }

    fn restore_checked(state: LedgerState) -> Result<Self, String> {
        let mut ledger = Self::new();
        let payer_count = state.payers.len();
        let mut lots_by_payer: Vec<Vec<(LotKey, i64)>> = vec![Vec::new(); payer_count];
        if state.transactions.len() as u64 > MAX_TRANSACTION_ID {
            return Err(format!(
                "{} transactions pass the limit of {MAX_TRANSACTION_ID}",
                state.transactions.len()
            ));
        }
        for (index, record) in state.transactions.iter().enumerate() {
            let id = index as TransactionId + 1;
            if record.payer_index as usize >= payer_count || record.points == 0 {
                return Err(format!(
                    "transaction {id} names payer {} of {payer_count}",
                    record.payer_index
                ));
            }
            if record.points > 0 {
                lots_by_payer[record.payer_index as usize]
                    .push((LotKey::new(record.timestamp, id), record.points));
            }
        }
        let mut total: i128 = 0;
        for ((name, balance), mut lots) in state.payers.into_iter().zip(lots_by_payer) {
            validate_payer(&name).map_err(|error| format!("payer {name:?}: {error}"))?;
            if ledger.payer_by_name.contains_key(name.as_str()) {
                return Err(format!("payer {name:?} appears twice"));
            }
            lots.sort_unstable_by_key(|&(key, _)| key);
            let payer = Payer::restore(&mut ledger.arena, &name, balance, lots)?;
            total += i128::from(payer.balance());
            let index = ledger.insert_payer(&name);
            if let Some(key) = payer.front_key() {
                ledger.fronts.insert(key, index);
            }
            ledger.payers[index as usize] = payer;
        }
        ledger.total =
            i64::try_from(total).map_err(|_| format!("total {total} passes i64::MAX"))?;
        let pairs_fit = |pairs: &[(u32, i64)], points: i64| {
            let sum: i128 = pairs.iter().map(|&(_, points)| i128::from(points)).sum();
            sum == i128::from(points)
                && pairs.iter().all(|&(payer, points)| (payer as usize) < payer_count && points > 0)
        };
        let mut previous_transactions_before = 0;
        for (index, spend) in state.spends.iter().enumerate() {
            let spend_id = index as u64 + 1;
            let captured_hold = match spend.hold_id {
                0 => true,
                hold_id => state.holds.get(hold_id as usize - 1).is_some_and(|hold| {
                    hold.state == HoldState::Captured { spend_id } && hold.points >= spend.points
                }),
            };
            if !pairs_fit(&spend.taken, spend.points)
                || !(0..=spend.points).contains(&spend.refunded)
                || !captured_hold
                || spend.transactions_before < previous_transactions_before
                || spend.transactions_before > state.transactions.len() as u64
            {
                return Err(format!("spend {spend_id} is inconsistent with the history"));
            }
            previous_transactions_before = spend.transactions_before;
            // What may still come back: what the spend took, less what its
            // refunds gave back from the end.
            for (payer, refundable) in refundable_of(spend) {
                ledger.payers[payer as usize].adjust_returnable(0, refundable);
                ledger.returnable_total = ledger
                    .returnable_total
                    .checked_add(refundable)
                    .ok_or("refundable points pass i64::MAX")?;
            }
        }
        for (index, hold) in state.holds.iter().enumerate() {
            let hold_id = index as u64 + 1;
            let resolved_fits = match hold.state {
                HoldState::Captured { spend_id } => state
                    .spends
                    .get((spend_id as usize).wrapping_sub(1))
                    .is_some_and(|spend| spend.hold_id == hold_id),
                HoldState::Open | HoldState::Released { .. } => true,
            };
            if !pairs_fit(&hold.taken, hold.points) || !resolved_fits {
                return Err(format!("hold {hold_id} is inconsistent with the history"));
            }
            if hold.state == HoldState::Open {
                for &(payer, points) in &hold.taken {
                    ledger.payers[payer as usize].adjust_returnable(points, 0);
                }
                ledger.returnable_total = ledger
                    .returnable_total
                    .checked_add(hold.points)
                    .ok_or("held points pass i64::MAX")?;
                ledger.open_holds.insert((hold.expire_at_ms, hold_id));
            }
        }
        let mut previous = (0, 0);
        for (index, record) in state.events.iter().enumerate() {
            let place = (record.transactions_before, record.spends_before);
            let refers = match &record.event {
                Event::Hold { hold_id } | Event::Release { hold_id, .. } => {
                    (1..=state.holds.len() as u64).contains(hold_id)
                }
                Event::Refund { spend_id, refunded, .. } => {
                    let points = refunded.iter().map(|&(_, points)| points).sum::<i64>();
                    (1..=state.spends.len() as u64).contains(spend_id)
                        && pairs_fit(refunded, points)
                }
                Event::Expiration { expired } => {
                    let points = expired.iter().map(|&(_, points)| points).sum::<i64>();
                    pairs_fit(expired, points)
                }
            };
            if !refers
                || place.0 < previous.0
                || place.1 < previous.1
                || place.0 > state.transactions.len() as u64
                || place.1 > state.spends.len() as u64
            {
                return Err(format!("event {} is inconsistent with the history", index + 1));
            }
            previous = place;
        }
        ledger.lots = state.transactions.iter().filter(|record| record.points > 0).count();
        ledger.transactions = state.transactions;
        ledger.spends = state.spends;
        ledger.holds = state.holds;
        ledger.events = state.events;
        ledger.clock.now_ms = state.clock_ms;
        for request in state.requests {
            if let Ok(id) = request.outcome
                && !request.params.outcome_fits(&ledger, id)
            {
                return Err(format!(
                    "request {:?} refers to id {id}, which is not an outcome of its kind",
                    request.request_id
                ));
            }
            ledger.requests.insert(request);
        }
        ledger.check_invariants().map_err(|violation| violation.0)?;
        Ok(ledger)
    }
}
