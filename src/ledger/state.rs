//! A ledger's whole state as plain records, for snapshots: borrowed to
//! write one out, moved out, and checked record by record when a ledger is
//! rebuilt from one.

use super::history::{SpendRecord, TransactionRecord};
use super::payer::Payer;

/// Why a ledger cannot be rebuilt from a state: names, indices, amounts or
/// history order that no ledger could have, or a broken invariant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RestoreError(pub String);
use super::requests::{RequestParams, RequestRecord};
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
        let mut previous_transactions_before = 0;
        for (index, spend) in state.spends.iter().enumerate() {
            let taken: i128 = spend.taken.iter().map(|&(_, points)| i128::from(points)).sum();
            let bad_payer = spend
                .taken
                .iter()
                .any(|&(payer, points)| payer as usize >= payer_count || points <= 0);
            if taken != i128::from(spend.points)
                || bad_payer
                || spend.transactions_before < previous_transactions_before
                || spend.transactions_before > state.transactions.len() as u64
            {
                return Err(format!("spend {} is inconsistent with the history", index + 1));
            }
            previous_transactions_before = spend.transactions_before;
        }
        ledger.lots = state.transactions.iter().filter(|record| record.points > 0).count();
        ledger.transactions = state.transactions;
        ledger.spends = state.spends;
        for request in state.requests {
            let limit = match request.params {
                RequestParams::AddTransaction { .. } => ledger.transactions.len() as u64,
                RequestParams::Spend { .. } => ledger.spends.len() as u64,
            };
            if let Ok(id) = request.outcome
                && !(1..=limit).contains(&id)
            {
                return Err(format!(
                    "request {:?} refers to id {id} of {limit}",
                    request.request_id
                ));
            }
            ledger.requests.insert(request);
        }
        ledger.check_invariants().map_err(|violation| violation.0)?;
        Ok(ledger)
    }
}
