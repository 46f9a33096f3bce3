//! Snapshot state: a restored ledger behaves the same, and impossible states
//! are refused.

use super::*;

/// Exporting the state and restoring it gives a ledger that behaves identically.
#[test]
fn restore_from_state_behaves_identically() {
    let mut ledger = Ledger::new();
    add(&mut ledger, "P", 100, "2024-01-03T00:00:00Z");
    add(&mut ledger, "Q", 100, "2024-01-02T00:00:00Z");
    spend(&mut ledger, 150);
    add(&mut ledger, "P", 30, "2024-01-01T00:00:00Z");
    add(&mut ledger, "R", 10, "2024-01-02T12:00:00Z");
    let request = Request { id: "r-1", now_ms: 1_000, retention_ms: 10_000, max_remembered: 10 };
    ledger.execute_spend(Some(request), 1_000_000).into_result().unwrap_err();
    let state = ledger.state();
    let mut restored = Ledger::restore(state.clone()).expect("restores");
    assert_eq!(restored.state(), state);
    assert_eq!(spend(&mut restored, 20), pairs(&[("R", -10), ("P", -10)]));
    assert_eq!(spend(&mut ledger, 20), pairs(&[("R", -10), ("P", -10)]));
    assert_eq!(add(&mut restored, "Q", 1, "2024-01-09T00:00:00Z").id, 5);
    // The remembered refusal survived too.
    let retry = restored.execute_spend(Some(request), 1_000_000);
    assert!(matches!(retry, Outcome::Repeated(Err(LedgerError::InsufficientPoints { .. }))));
}

/// Restoring refuses states no ledger could have produced.
#[test]
fn restore_refuses_impossible_states() {
    let transaction = |payer_index, points| TransactionRecord {
        payer_index,
        points,
        timestamp: at("2024-01-01T00:00:00Z"),
        accepted_at_ms: 0,
    };
    let state =
        |payers: &[(&str, i64)], transactions: Vec<TransactionRecord>, spends: Vec<SpendRecord>| {
            LedgerState {
                payers: payers.iter().map(|&(name, balance)| (name.to_owned(), balance)).collect(),
                transactions,
                spends,
                requests: Vec::new(),
                ..LedgerState::default()
            }
        };
    let spend = |points, taken: Vec<(u32, i64)>| SpendRecord {
        points,
        transactions_before: 1,
        taken,
        refunded: 0,
        hold_id: 0,
        accepted_at_ms: 0,
    };
    let cases = [
        (state(&[("A", 11)], vec![transaction(0, 10)], vec![]), "balance above credits"),
        (state(&[("A", -1)], vec![transaction(0, 10)], vec![]), "negative balance"),
        (state(&[("A", 0)], vec![transaction(1, 10)], vec![]), "unknown payer index"),
        (state(&[("A", 0)], vec![transaction(0, 0)], vec![]), "zero-point transaction"),
        (
            state(&[("A", 1), ("A", 1)], vec![transaction(0, 1), transaction(1, 1)], vec![]),
            "duplicate payer",
        ),
        (state(&[(" ", 1)], vec![transaction(0, 1)], vec![]), "blank payer"),
        (state(&[("A", 10)], vec![transaction(0, 10)], vec![]), "fine"),
        (
            state(&[("A", 5)], vec![transaction(0, 10)], vec![spend(5, vec![(0, 4)])]),
            "spend does not add up",
        ),
        (state(&[("A", 5)], vec![transaction(0, 10)], vec![]), "balance disagrees with history"),
    ];
    for (state, case) in cases {
        assert_eq!(Ledger::restore(state).is_ok(), case == "fine", "{case}");
    }
}

/// Entries restored from a snapshot taken before accept times were kept
/// have none: a time that falls among them has no answer, while times
/// before the epoch, or at or after a known accept time (or the ledger's
/// time), still do.
#[test]
fn a_time_among_entries_without_accept_times_has_no_position() {
    const DAY_MS: i64 = 86_400_000;
    let t1_ms = 1_700_000_000_000;
    let clock = |now_ms| Clock { now_ms, points_validity_ms: None };
    let mut ledger = Ledger::new();
    ledger.advance(clock(t1_ms));
    add(&mut ledger, "P", 10, "2024-01-01T00:00:00Z");
    add(&mut ledger, "Q", 10, "2024-01-02T00:00:00Z");
    let mut state = ledger.state();
    for transaction in &mut state.transactions {
        transaction.accepted_at_ms = 0;
    }
    let mut restored = Ledger::restore(state).expect("restores");
    assert_eq!(restored.position_at_time(t1_ms - 365 * DAY_MS), Err(2));
    assert_eq!(restored.position_at_time(t1_ms - 1), Err(2));
    assert_eq!(restored.position_at_time(-1), Ok(0));
    assert_eq!(restored.position_at_time(t1_ms), Ok(2), "all accepted by the ledger's time");
    let t2_ms = t1_ms + DAY_MS;
    restored.advance(clock(t2_ms));
    add(&mut restored, "P", 5, "2024-01-03T00:00:00Z");
    assert_eq!(restored.position_at_time(t1_ms), Err(2), "before the first known time");
    assert_eq!(restored.position_at_time(t2_ms), Ok(3));
    assert_eq!(restored.position_at_time(t2_ms + DAY_MS), Ok(3));
}
