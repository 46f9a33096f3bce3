//! Unit tests for every ledger rule, including the examples A, B and C.

use chrono::{DateTime, Utc};

use super::*;

pub(super) fn at(rfc3339: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(rfc3339)
        .expect("test timestamps are valid RFC 3339")
        .with_timezone(&Utc)
}

pub(super) fn add(ledger: &mut Ledger, payer: &str, points: i64, timestamp: &str) -> Transaction {
    let transaction =
        ledger.add_transaction(payer, points, at(timestamp)).expect("test transaction is accepted");
    ledger.check_invariants().expect("invariants hold after add");
    transaction
}

pub(super) fn spend(ledger: &mut Ledger, points: i64) -> Vec<(String, i64)> {
    let reply = ledger.spend(points).expect("test spend is accepted");
    ledger.check_invariants().expect("invariants hold after spend");
    reply.spent.into_iter().map(|entry| (entry.payer, entry.points)).collect()
}

pub(super) fn balances(ledger: &Ledger) -> Vec<(String, i64)> {
    let mut balances: Vec<_> =
        ledger.balances().map(|(payer, points)| (payer.to_owned(), points)).collect();
    balances.sort();
    balances
}

impl Ledger {
    /// Every history entry from position `start` on (in one page).
    pub(super) fn history_page_from(&self, start: usize) -> Vec<HistoryEntry> {
        let page = self.history_page(HistoryCursor::default(), usize::MAX).expect("a page");
        page.entries.into_iter().skip(start).map(|paged| paged.entry).collect()
    }
}

pub(super) fn pairs(entries: &[(&str, i64)]) -> Vec<(String, i64)> {
    entries.iter().map(|&(payer, points)| (payer.to_owned(), points)).collect()
}

mod batch;
mod history;
mod holds;
mod requests;
mod rules;
mod state;
