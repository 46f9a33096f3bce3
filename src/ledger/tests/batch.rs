//! Batches: applied in order, all or nothing.

use super::*;

/// A batch is applied in order, entries seeing the ones before them.
#[test]
fn batch_applies_in_order_with_ids() {
    let mut ledger = Ledger::new();
    let batch = [
        NewTransaction { payer: "A", points: 10, timestamp: at("2024-01-02T00:00:00Z") },
        NewTransaction { payer: "A", points: -10, timestamp: at("2024-01-03T00:00:00Z") },
        NewTransaction { payer: "B", points: 5, timestamp: at("2024-01-01T00:00:00Z") },
    ];
    let recorded = ledger.add_transactions(&batch).expect("accepted");
    assert_eq!(recorded.iter().map(|transaction| transaction.id).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(balances(&ledger), pairs(&[("A", 0), ("B", 5)]));
    ledger.check_invariants().expect("invariants");
}

/// One refused entry refuses the whole batch, naming it, and changes nothing.
#[test]
fn batch_is_all_or_nothing() {
    let mut ledger = Ledger::new();
    add(&mut ledger, "A", 5, "2024-01-01T00:00:00Z");
    let state = ledger.state();
    let entry =
        |payer, points| NewTransaction { payer, points, timestamp: at("2024-01-02T00:00:00Z") };
    let cases = [
        (vec![entry("A", 1), entry("A", -7)], 1, "INSUFFICIENT_PAYER_POINTS"),
        (vec![entry("B", 1), entry(" ", 1)], 1, "PAYER_BLANK"),
        (vec![entry("A", 0)], 0, "POINTS_ZERO"),
        (vec![entry("B", i64::MAX), entry("C", 1)], 0, "TOTAL_OVERFLOW"),
        (vec![entry("C", 1), entry("C", -1), entry("C", -1)], 2, "INSUFFICIENT_PAYER_POINTS"),
    ];
    for (batch, bad_index, reason) in cases {
        let error = ledger.add_transactions(&batch).unwrap_err();
        let LedgerError::InBatch { index, .. } = &error else { panic!("{error:?}") };
        assert_eq!((*index, error.reason()), (bad_index, reason), "{error}");
        assert_eq!(ledger.state(), state, "a refused batch changes nothing");
    }
}
