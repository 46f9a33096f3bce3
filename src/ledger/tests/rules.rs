//! The spending rules: the README's examples, oldest first across payers,
//! take-backs within a payer, refusals, validation and overflow.

use super::*;

/// Adds `transactions` (payer, points, RFC 3339 time) in the order given,
/// then spends 5000 points: the examples A and B both answer so.
fn assert_spends_as_in_the_examples(transactions: &[(&str, i64, &str)]) {
    let mut ledger = Ledger::new();
    for &(payer, points, timestamp) in transactions {
        add(&mut ledger, payer, points, timestamp);
    }
    assert_eq!(
        spend(&mut ledger, 5000),
        pairs(&[("DANNON", -100), ("UNILEVER", -200), ("MILLER COORS", -4700)])
    );
    assert_eq!(
        balances(&ledger),
        pairs(&[("DANNON", 1000), ("MILLER COORS", 5300), ("UNILEVER", 0)])
    );
}

/// Example A: transactions arrive in timestamp order.
#[test]
fn example_a_spends_oldest_points_first() {
    assert_spends_as_in_the_examples(&[
        ("DANNON", 300, "2022-10-31T10:00:00Z"),
        ("UNILEVER", 200, "2022-10-31T11:00:00Z"),
        ("DANNON", -200, "2022-10-31T15:00:00Z"),
        ("MILLER COORS", 10000, "2022-11-01T14:00:00Z"),
        ("DANNON", 1000, "2022-11-02T14:00:00Z"),
    ]);
}

/// Example B: the same transactions arriving out of order give the same result.
#[test]
fn example_b_out_of_order_arrival_matches_example_a() {
    assert_spends_as_in_the_examples(&[
        ("DANNON", 1000, "2020-11-02T14:00:00Z"),
        ("UNILEVER", 200, "2020-10-31T11:00:00Z"),
        ("DANNON", -200, "2020-10-31T15:00:00Z"),
        ("MILLER COORS", 10000, "2020-11-01T14:00:00Z"),
        ("DANNON", 300, "2020-10-31T10:00:00Z"),
    ]);
}

/// Example C: a late, older lot re-settles its payer's earlier spend.
#[test]
fn example_c_late_older_lot_resettles_within_its_payer() {
    let mut ledger = Ledger::new();
    add(&mut ledger, "P", 100, "2024-01-03T00:00:00Z");
    add(&mut ledger, "Q", 100, "2024-01-02T00:00:00Z");
    assert_eq!(spend(&mut ledger, 150), pairs(&[("Q", -100), ("P", -50)]));
    add(&mut ledger, "P", 30, "2024-01-01T00:00:00Z");
    add(&mut ledger, "R", 10, "2024-01-02T12:00:00Z");
    assert_eq!(spend(&mut ledger, 20), pairs(&[("R", -10), ("P", -10)]));
    assert_eq!(balances(&ledger), pairs(&[("P", 70), ("Q", 0), ("R", 0)]));
}

/// Ids are assigned in arrival order from 1, and refusals do not use one up.
#[test]
fn ids_count_accepted_transactions_from_one() {
    let mut ledger = Ledger::new();
    assert_eq!(add(&mut ledger, "A", 5, "2024-01-02T00:00:00Z").id, 1);
    assert!(ledger.add_transaction("A", -50, at("2024-01-02T00:00:00Z")).is_err());
    assert_eq!(add(&mut ledger, "A", -5, "2024-01-01T00:00:00Z").id, 2);
    assert_eq!(ledger.next_transaction_id(), 3);
}

/// Equal timestamps are spent in arrival order.
#[test]
fn equal_timestamps_spend_in_arrival_order() {
    let mut ledger = Ledger::new();
    add(&mut ledger, "B", 10, "2024-01-01T00:00:00Z");
    add(&mut ledger, "A", 10, "2024-01-01T00:00:00Z");
    add(&mut ledger, "C", 10, "2024-01-01T00:00:00Z");
    assert_eq!(spend(&mut ledger, 25), pairs(&[("B", -10), ("A", -10), ("C", -5)]));
}

/// A payer that comes back after another payer's lot is listed once, where it first appeared.
#[test]
fn spend_lists_each_payer_once_in_first_taken_order() {
    let mut ledger = Ledger::new();
    add(&mut ledger, "A", 10, "2024-01-01T00:00:00Z");
    add(&mut ledger, "B", 10, "2024-01-02T00:00:00Z");
    add(&mut ledger, "A", 10, "2024-01-03T00:00:00Z");
    assert_eq!(spend(&mut ledger, 30), pairs(&[("A", -20), ("B", -10)]));
}

/// A spend across more payers than the linear-search limit still merges by payer.
#[test]
fn spend_across_many_payers_merges_each_payer_once() {
    let mut ledger = Ledger::new();
    for round in 0..3 {
        for payer in 0..40 {
            let timestamp = format!("2024-01-01T{:02}:{:02}:00Z", round, payer);
            add(&mut ledger, &format!("P{payer:02}"), 1, &timestamp);
        }
    }
    let reply = spend(&mut ledger, 120);
    let expected: Vec<_> = (0..40).map(|payer| (format!("P{payer:02}"), -3)).collect();
    assert_eq!(reply, expected);
}

/// A negative transaction takes the payer's oldest points whatever its own timestamp.
#[test]
fn negative_transaction_takes_oldest_points_of_its_payer() {
    let mut ledger = Ledger::new();
    add(&mut ledger, "A", 100, "2024-01-05T00:00:00Z");
    add(&mut ledger, "B", 100, "2024-01-03T00:00:00Z");
    add(&mut ledger, "A", 100, "2024-01-01T00:00:00Z");
    add(&mut ledger, "A", -150, "2023-01-01T00:00:00Z");
    // A keeps 50 of its 01-05 lot, which is newer than B's lot.
    assert_eq!(spend(&mut ledger, 120), pairs(&[("B", -100), ("A", -20)]));
}

/// A payer spent to 0 that is credited again uses the new lot.
#[test]
fn payer_at_zero_can_be_credited_again() {
    let mut ledger = Ledger::new();
    add(&mut ledger, "A", 10, "2024-01-02T00:00:00Z");
    assert_eq!(spend(&mut ledger, 10), pairs(&[("A", -10)]));
    add(&mut ledger, "A", 7, "2024-01-01T00:00:00Z");
    add(&mut ledger, "B", 5, "2024-01-01T12:00:00Z");
    // A's debit of 10 now counts against the older 7-point lot first, so A's
    // remaining 7 points sit in its 01-02 lot, after B's.
    assert_eq!(spend(&mut ledger, 12), pairs(&[("B", -5), ("A", -7)]));
}

/// A negative transaction larger than the payer's balance is refused and changes nothing.
#[test]
fn negative_transaction_over_balance_is_refused() {
    let mut ledger = Ledger::new();
    add(&mut ledger, "A", 10, "2024-01-01T00:00:00Z");
    add(&mut ledger, "B", 100, "2024-01-01T00:00:00Z");
    let error = ledger.add_transaction("A", -11, at("2024-01-02T00:00:00Z")).unwrap_err();
    assert_eq!(
        error,
        LedgerError::InsufficientPayerPoints { payer: "A".into(), requested: 11, available: 10 }
    );
    assert_eq!(error.kind(), ErrorKind::FailedPrecondition);
    assert_eq!(error.reason(), "INSUFFICIENT_PAYER_POINTS");
    assert_eq!(balances(&ledger), pairs(&[("A", 10), ("B", 100)]));
    assert_eq!(ledger.next_transaction_id(), 3);
}

/// A negative transaction for a payer never credited is refused and creates no payer.
#[test]
fn negative_transaction_for_unknown_payer_is_refused() {
    let mut ledger = Ledger::new();
    let error = ledger.add_transaction("NEW", -1, at("2024-01-01T00:00:00Z")).unwrap_err();
    assert_eq!(
        error,
        LedgerError::InsufficientPayerPoints { payer: "NEW".into(), requested: 1, available: 0 }
    );
    assert_eq!(ledger.balances().len(), 0);
}

/// i64::MIN points cannot be negated; it is refused as larger than any balance.
#[test]
fn most_negative_points_are_refused_without_overflow() {
    let mut ledger = Ledger::new();
    add(&mut ledger, "A", i64::MAX, "2024-01-01T00:00:00Z");
    let error = ledger.add_transaction("A", i64::MIN, at("2024-01-01T00:00:00Z")).unwrap_err();
    assert_eq!(
        error,
        LedgerError::InsufficientPayerPoints {
            payer: "A".into(),
            requested: 1 << 63,
            available: i64::MAX
        }
    );
    add(&mut ledger, "A", -i64::MAX, "2024-01-01T00:00:00Z");
    assert_eq!(ledger.total(), 0);
}

/// A spend larger than the total is refused and changes nothing.
#[test]
fn spend_over_total_is_refused() {
    let mut ledger = Ledger::new();
    add(&mut ledger, "A", 4300, "2024-01-01T00:00:00Z");
    let error = ledger.spend(5000).unwrap_err();
    assert_eq!(error.to_string(), "insufficient points: requested 5000, available 4300");
    assert_eq!(error.reason(), "INSUFFICIENT_POINTS");
    assert_eq!(error.kind(), ErrorKind::FailedPrecondition);
    assert_eq!(balances(&ledger), pairs(&[("A", 4300)]));
}

/// Spending on an empty ledger is refused.
#[test]
fn spend_on_empty_ledger_is_refused() {
    let mut ledger = Ledger::new();
    assert_eq!(
        ledger.spend(1).unwrap_err(),
        LedgerError::InsufficientPoints { requested: 1, available: 0 }
    );
}

/// Spending zero or negative points is an invalid argument.
#[test]
fn spend_of_non_positive_points_is_invalid() {
    let mut ledger = Ledger::new();
    add(&mut ledger, "A", 10, "2024-01-01T00:00:00Z");
    for points in [0, -1, i64::MIN] {
        let error = ledger.spend(points).unwrap_err();
        assert_eq!(error, LedgerError::NonPositiveSpend { points });
        assert_eq!(error.kind(), ErrorKind::InvalidArgument);
    }
    assert_eq!(ledger.total(), 10);
}

/// Blank, whitespace-only and over-long payers are invalid; 256 bytes is fine.
#[test]
fn payer_names_are_validated() {
    let mut ledger = Ledger::new();
    let timestamp = at("2024-01-01T00:00:00Z");
    for blank in ["", " ", "\t\n", "\u{3000}"] {
        assert_eq!(
            ledger.add_transaction(blank, 1, timestamp).unwrap_err(),
            LedgerError::BlankPayer
        );
    }
    let too_long = "é".repeat(129);
    assert_eq!(
        ledger.add_transaction(&too_long, 1, timestamp).unwrap_err(),
        LedgerError::PayerTooLong { length_bytes: 258 }
    );
    ledger
        .add_transaction(&"x".repeat(MAX_PAYER_BYTES), 1, timestamp)
        .expect("a 256-byte payer is accepted");
    assert_eq!(ledger.balances().len(), 1);
}

/// Zero points are an invalid argument.
#[test]
fn zero_points_are_invalid() {
    let mut ledger = Ledger::new();
    let error = ledger.add_transaction("A", 0, at("2024-01-01T00:00:00Z")).unwrap_err();
    assert_eq!(error, LedgerError::ZeroPoints);
    assert_eq!(error.kind(), ErrorKind::InvalidArgument);
    assert_eq!(ledger.next_transaction_id(), 1);
}

/// A payer balance past i64::MAX is out of range and changes nothing.
#[test]
fn payer_balance_overflow_is_out_of_range() {
    let mut ledger = Ledger::new();
    add(&mut ledger, "A", i64::MAX, "2024-01-01T00:00:00Z");
    let error = ledger.add_transaction("A", 1, at("2024-01-02T00:00:00Z")).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::OutOfRange);
    assert_eq!(error.reason(), "PAYER_BALANCE_OVERFLOW");
    assert_eq!(balances(&ledger), pairs(&[("A", i64::MAX)]));
}

/// A total past i64::MAX is out of range, even when each payer would fit.
#[test]
fn total_overflow_is_out_of_range() {
    let mut ledger = Ledger::new();
    add(&mut ledger, "A", i64::MAX - 5, "2024-01-01T00:00:00Z");
    let error = ledger.add_transaction("B", 6, at("2024-01-02T00:00:00Z")).unwrap_err();
    assert_eq!(error, LedgerError::TotalOverflow { total: i64::MAX - 5, points: 6 });
    assert_eq!(error.kind(), ErrorKind::OutOfRange);
    assert_eq!(balances(&ledger), pairs(&[("A", i64::MAX - 5)]));
    add(&mut ledger, "B", 5, "2024-01-02T00:00:00Z");
    assert_eq!(ledger.total(), i64::MAX);
}

/// Payers spent to zero stay listed in the balances.
#[test]
fn balances_list_payers_at_zero() {
    let mut ledger = Ledger::new();
    add(&mut ledger, "A", 10, "2024-01-01T00:00:00Z");
    add(&mut ledger, "A", -10, "2024-01-01T00:00:00Z");
    assert_eq!(balances(&ledger), pairs(&[("A", 0)]));
}

/// A late lot older than many used-up lots hands points back to the newest ones.
#[test]
fn late_lot_hands_points_back_across_several_lots() {
    let mut ledger = Ledger::new();
    for day in 2..=6 {
        add(&mut ledger, "A", 10, &format!("2024-01-{day:02}T00:00:00Z"));
    }
    add(&mut ledger, "B", 100, "2024-01-04T12:00:00Z");
    add(&mut ledger, "A", -45, "2024-01-07T00:00:00Z");
    // A has 5 left, in its 01-06 lot. A 30-point lot from 01-01 absorbs 30
    // of the 45 debited, so A's last 35 points are 01-03 (5), 01-04, 01-05, 01-06.
    add(&mut ledger, "A", 30, "2024-01-01T00:00:00Z");
    assert_eq!(spend(&mut ledger, 20), pairs(&[("A", -15), ("B", -5)]));
    assert_eq!(balances(&ledger), pairs(&[("A", 20), ("B", 95)]));
}

/// Lots that alternate between payers one point at a time, arriving in
/// shuffled order, with late old lots and take-backs mixed in: the spends of
/// a ledger that always cuts (switch budget 0) and of one that merges lot by
/// lot as long as it may give exactly the same replies and states.
mod time_cut {
    use proptest::prelude::*;

    use super::*;

    #[derive(Debug, Clone)]
    enum Step {
        Add { payer: u8, points: i64, minute: i64 },
        Spend { points: i64 },
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            6 => (0u8..4, prop_oneof![4 => 1i64..3, 1 => 1i64..500, 1 => -40i64..0], -30i64..300)
                .prop_map(|(payer, points, minute)| Step::Add { payer, points, minute }),
            2 => prop_oneof![1i64..5, 1i64..400].prop_map(|points| Step::Spend { points }),
        ]
    }

    fn timestamp(minute: i64) -> DateTime<Utc> {
        at("2024-01-01T00:00:00Z") + chrono::TimeDelta::minutes(minute)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

        #[test]
        fn spends_through_the_cut_equal_spends_through_the_merge(
            steps in prop::collection::vec(step(), 1..300),
        ) {
            let mut merging = Ledger::new();
            let mut cutting = Ledger::new();
            for step in &steps {
                match *step {
                    Step::Add { payer, points, minute } => {
                        let payer = ["A", "B", "C", "D"][usize::from(payer)];
                        let merged = merging.add_transaction(payer, points, timestamp(minute));
                        let cut = cutting.add_transaction(payer, points, timestamp(minute));
                        prop_assert_eq!(merged, cut);
                    }
                    Step::Spend { points } => {
                        let merged = merging.spend_with_switch_budget(points, usize::MAX / 8);
                        let cut = cutting.spend_with_switch_budget(points, 0);
                        prop_assert_eq!(merged, cut, "{:?}", step);
                    }
                }
                cutting.check_invariants().map_err(|violation| TestCaseError::fail(violation.0))?;
            }
            let page = |ledger: &Ledger| ledger.history_page(HistoryCursor::default(), usize::MAX);
            prop_assert_eq!(page(&merging), page(&cutting));
        }
    }

    #[test]
    fn a_cut_inside_a_lot_takes_the_rest_from_that_lot() {
        let mut ledger = Ledger::new();
        for minute in 0..10 {
            let payer = if minute % 2 == 0 { "A" } else { "B" };
            ledger.add_transaction(payer, 10, timestamp(minute)).unwrap();
        }
        // 4 whole lots (A, B, A, B) and 5 of the fifth (A's).
        let spend = ledger.spend_with_switch_budget(45, 0).unwrap();
        let spent: Vec<_> = spend.spent.iter().map(|entry| (&*entry.payer, entry.points)).collect();
        assert_eq!(spent, [("A", -25), ("B", -20)]);
        ledger.check_invariants().unwrap();
        assert_eq!(balances(&ledger), pairs(&[("A", 25), ("B", 30)]));
    }
}

/// The shape the issue measured: many one-point lots of a payer all taken
/// back, then a large lot older than all of them and a take-back, again and
/// again. Each step must re-settle exactly (checked against the invariants,
/// which recompute every lot) without walking the lots.
#[test]
fn late_old_lots_and_take_backs_resettle_exactly() {
    let mut ledger = Ledger::new();
    for second in 0..2_000 {
        ledger
            .add_transaction(
                "A",
                1,
                at("2024-06-01T00:00:00Z") + chrono::TimeDelta::seconds(second),
            )
            .unwrap();
    }
    ledger.add_transaction("A", -2_000, at("2024-07-01T00:00:00Z")).unwrap();
    for round in 0..50 {
        let old = at("2020-01-01T00:00:00Z") + chrono::TimeDelta::seconds(round);
        ledger.add_transaction("A", 100_000, old).unwrap();
        // The late lot took the place of the oldest used-up points: the
        // payer's 100,000 points are now its newest ones.
        let newest = ledger.history_page(HistoryCursor::default(), usize::MAX).unwrap();
        let left_in_one_point_lots = newest
            .entries
            .iter()
            .filter_map(|paged| match &paged.entry {
                HistoryEntry::Transaction { transaction, remaining_points }
                    if transaction.points == 1 =>
                {
                    Some(*remaining_points)
                }
                _ => None,
            })
            .sum::<i64>();
        // All 2,000 one-point lots are among the newest 100,000 points.
        assert_eq!(left_in_one_point_lots, 2_000);
        ledger.add_transaction("A", -100_000, at("2024-07-02T00:00:00Z")).unwrap();
    }
    ledger.check_invariants().unwrap();
    assert_eq!(ledger.total(), 0);
}
