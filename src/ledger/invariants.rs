//! The ledger's invariants, checked in O(lots): after recovery, after every
//! restore, and by the tests after every command.

use super::Ledger;
use super::history::{Event, HoldState};

/// An invariant a ledger breaks: a bug, or a damaged or forged snapshot.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvariantViolation(pub String);

impl Ledger {
    /// Checks every invariant in O(lots): each payer's balance equals its
    /// credits minus debits and is never negative, its lots hold exactly its
    /// balance, `fronts` holds exactly each payer's front lot, and the total
    /// is the sum of the balances. For tests and debugging.
    pub fn check_invariants(&self) -> Result<(), InvariantViolation> {
        self.first_broken_invariant().map_err(InvariantViolation)
    }

    fn first_broken_invariant(&self) -> Result<(), String> {
        let mut total: i128 = 0;
        let mut lots = 0usize;
        for (index, payer) in self.payers.iter().enumerate() {
            lots += payer.check_invariants(&self.arena)?;
            total += i128::from(payer.balance());
            if let Some(key) = payer.front_key()
                && self.fronts.get(&key).map(|&i| i as usize) != Some(index)
            {
                return Err(format!("payer {:?} front {key:?} missing from fronts", payer.name));
            }
            if self.payer_by_name.get(&payer.name).map(|&i| i as usize) != Some(index) {
                return Err(format!("payer {:?} missing from the name index", payer.name));
            }
        }
        if total != i128::from(self.total) {
            return Err(format!("total {} != sum of balances {total}", self.total));
        }
        if lots != self.arena.len() || lots != self.lots {
            return Err(format!(
                "the payers hold {lots} lots, the arena {}, the count {}",
                self.arena.len(),
                self.lots
            ));
        }
        let payers_with_points = self.payers.iter().filter(|payer| payer.balance() > 0).count();
        if self.fronts.len() != payers_with_points {
            return Err(format!(
                "{} fronts for {payers_with_points} payers with points",
                self.fronts.len()
            ));
        }
        if self.payer_by_name.len() != self.payers.len() {
            return Err("name index and payers differ in size".to_owned());
        }
        let mut net_by_payer = vec![0i128; self.payers.len()];
        for record in &self.transactions {
            net_by_payer[record.payer_index as usize] += i128::from(record.points);
        }
        for spend in &self.spends {
            for &(payer, taken) in &spend.taken {
                net_by_payer[payer as usize] -= i128::from(taken);
            }
        }
        for hold in self.holds.iter().filter(|hold| hold.state == HoldState::Open) {
            for &(payer, taken) in &hold.taken {
                net_by_payer[payer as usize] -= i128::from(taken);
            }
        }
        for record in &self.events {
            match &record.event {
                Event::Refund { refunded, .. } => {
                    for &(payer, points) in refunded {
                        net_by_payer[payer as usize] += i128::from(points);
                    }
                }
                Event::Expiration { expired } => {
                    for &(payer, points) in expired {
                        net_by_payer[payer as usize] -= i128::from(points);
                    }
                }
                Event::Hold { .. } | Event::Release { .. } => {}
            }
        }
        let open_holds: std::collections::BTreeSet<(i64, u64)> = (1..)
            .zip(&self.holds)
            .filter(|(_, hold)| hold.state == HoldState::Open)
            .map(|(hold_id, hold)| (hold.expire_at_ms, hold_id))
            .collect();
        if open_holds != self.open_holds {
            return Err("the timeout order differs from the open holds".to_owned());
        }
        let returnable: i128 =
            self.payers.iter().map(|payer| i128::from(payer.held() + payer.refundable())).sum();
        if returnable != i128::from(self.returnable_total) {
            return Err(format!(
                "held and refundable points add up to {returnable}, not {}",
                self.returnable_total
            ));
        }
        let indexed = self.as_of.totals();
        if indexed.len() != self.payers.len() || self.as_of.entries() != self.history_len() as u64 {
            return Err("the index by position does not cover the history".to_owned());
        }
        for (payer, indexed) in self.payers.iter().zip(indexed) {
            if (indexed.balance, indexed.held) != (payer.balance(), payer.held()) {
                return Err(format!(
                    "payer {:?}: the entries add up to {indexed:?}, not its balance {} and held {}",
                    payer.name,
                    payer.balance(),
                    payer.held()
                ));
            }
        }
        for (payer, net) in self.payers.iter().zip(net_by_payer) {
            if net != i128::from(payer.balance()) {
                return Err(format!(
                    "payer {:?}: history nets {net} but the balance is {}",
                    payer.name,
                    payer.balance()
                ));
            }
        }
        Ok(())
    }
}
