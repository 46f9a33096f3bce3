//! A ledger's whole state as plain records, for snapshots: borrowed to
//! write one out, moved out, and checked record by record when a ledger is
//! rebuilt from one.

use super::history::{Event, EventRecord, HoldRecord, HoldState, SpendRecord, TransactionRecord};
use super::holds::{refundable_of, split_taken};
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
        // What may still come back to each payer: (held, refundable).
        let mut returnable_by_payer = vec![(0i128, 0i128); payer_count];
        let mut previous_transactions_before = 0;
        for (index, spend) in state.spends.iter().enumerate() {
            let spend_id = index as u64 + 1;
            // A capture took the first points of its hold, in its order.
            let captured_hold = match spend.hold_id {
                0 => true,
                hold_id => state.holds.get(hold_id as usize - 1).is_some_and(|hold| {
                    hold.state == HoldState::Captured { spend_id }
                        && pairs_fit(&hold.taken, hold.points)
                        && (1..=hold.points).contains(&spend.points)
                        && split_taken(&hold.taken, spend.points).0 == spend.taken
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
            // What its refunds have not given back yet, from the end.
            for (payer, refundable) in refundable_of(spend) {
                returnable_by_payer[payer as usize].1 += i128::from(refundable);
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
                    returnable_by_payer[payer as usize].0 += i128::from(points);
                }
                ledger.open_holds.insert((hold.expire_at_ms, hold_id));
            }
        }
        // Credits keep room for every point that may come back, so that
        // giving back never overflows.
        let mut returnable_total: i128 = 0;
        for (payer, (held, refundable)) in ledger.payers.iter_mut().zip(returnable_by_payer) {
            // Only points taken from a payer can come back to it.
            if payer.debited() < held + refundable {
                return Err(format!(
                    "payer {:?} could get back {} points, more than was taken from it",
                    payer.name,
                    held + refundable
                ));
            }
            let room = i128::from(payer.balance()) + held + refundable;
            if room > i128::from(i64::MAX) {
                return Err(format!(
                    "payer {:?} could come back to {room} points, past i64::MAX",
                    payer.name
                ));
            }
            // Within i64: each is at most `room`.
            payer.adjust_returnable(held as i64, refundable as i64);
            returnable_total += held + refundable;
        }
        if total + returnable_total > i128::from(i64::MAX) {
            return Err(format!("the total could come back to {}", total + returnable_total));
        }
        ledger.returnable_total = returnable_total as i64;
        // Each hold opened once and, if released, released once as its
        // state says; each spend's refunds add up to what it says came back.
        let mut hold_events = vec![(0u32, None::<bool>, 0u32); state.holds.len()];
        let mut refunded_by_spend = vec![0i128; state.spends.len()];
        let mut previous = (0, 0);
        for (index, record) in state.events.iter().enumerate() {
            let place = (record.transactions_before, record.spends_before);
            let refers = match &record.event {
                Event::Hold { hold_id } => {
                    let opened = (*hold_id as usize)
                        .checked_sub(1)
                        .and_then(|index| hold_events.get_mut(index).map(|events| events.0 += 1));
                    opened.is_some()
                }
                Event::Release { hold_id, timed_out } => {
                    // After the hold opened.
                    let released = (*hold_id as usize).checked_sub(1).and_then(|index| {
                        hold_events.get_mut(index).filter(|events| events.0 == 1).map(|events| {
                            events.1 = Some(*timed_out);
                            events.2 += 1;
                        })
                    });
                    released.is_some()
                }
                Event::Refund { spend_id, refunded, refundable_after } => {
                    let points: i128 = refunded.iter().map(|&(_, points)| i128::from(points)).sum();
                    let spend = (*spend_id as usize)
                        .checked_sub(1)
                        .and_then(|index| Some((index, state.spends.get(index)?)));
                    spend.is_some_and(|(index, spend)| {
                        // After its spend, and giving back the next points
                        // from the end of what the spend took.
                        let before = refunded_by_spend[index];
                        refunded_by_spend[index] += points;
                        let left = i128::from(spend.points) - refunded_by_spend[index];
                        record.spends_before > index as u64
                            && (0..i128::from(spend.points)).contains(&before)
                            && left == i128::from(*refundable_after)
                            && left >= 0
                            && i64::try_from(points).is_ok_and(|points| {
                                let earlier =
                                    SpendRecord { refunded: before as i64, ..spend.clone() };
                                points > 0
                                    && pairs_fit(refunded, points)
                                    && split_taken(&refundable_of(&earlier), points).0 == *refunded
                            })
                    })
                }
                Event::Expiration { expired } => {
                    let points: i128 = expired.iter().map(|&(_, points)| i128::from(points)).sum();
                    i64::try_from(points).is_ok_and(|points| pairs_fit(expired, points))
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
        for (index, (hold, (opened, released, releases))) in
            state.holds.iter().zip(hold_events).enumerate()
        {
            let expected_release = match hold.state {
                HoldState::Released { timed_out } => Some(timed_out),
                HoldState::Open | HoldState::Captured { .. } => None,
            };
            if opened != 1 || released != expected_release || releases > 1 {
                return Err(format!("hold {}'s entries do not match its state", index + 1));
            }
        }
        for (index, (spend, refunded)) in state.spends.iter().zip(refunded_by_spend).enumerate() {
            if refunded != i128::from(spend.refunded) {
                return Err(format!(
                    "spend {}'s refunds add up to {refunded}, not the {} it says",
                    index + 1,
                    spend.refunded
                ));
            }
        }
        ledger.lots = state.transactions.iter().filter(|record| record.points > 0).count();
        ledger.transactions = state.transactions;
        ledger.spends = state.spends;
        ledger.holds = state.holds;
        ledger.events = state.events;
        ledger.clock.now_ms = state.clock_ms;
        ledger.index_history()?;
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
