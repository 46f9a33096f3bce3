//! A deliberately naive reference ledger, the rules written as plainly as
//! possible, against which the ledger and the replicas are checked.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use points::ledger::{LedgerError, MAX_PAYER_BYTES, PayerPoints, Transaction};

/// The spec, written as plainly as possible: every lot is kept, each payer's
/// debits are a single number, and what is left of each lot is recomputed by
/// sorting that payer's lots and using up the debits oldest first.
#[derive(Default)]
pub struct ReferenceLedger {
    lots: Vec<ReferenceLot>,
    debited_by_payer: HashMap<String, i128>,
    payers_in_credit_order: Vec<String>,
    transactions_accepted: u64,
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
            if balance + i128::from(points) > i128::from(i64::MAX) {
                return Err(LedgerError::PayerBalanceOverflow {
                    payer: payer.to_owned(),
                    balance: balance as i64,
                    points,
                });
            }
            let total = self.total();
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
        } else {
            *self.debited_by_payer.entry(payer.to_owned()).or_default() -= i128::from(points);
        }
        Ok(Transaction { id, payer: payer.to_owned(), points, timestamp })
    }

    pub fn spend(&mut self, points: i64) -> Result<Vec<PayerPoints>, LedgerError> {
        if points <= 0 {
            return Err(LedgerError::NonPositiveSpend { points });
        }
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
