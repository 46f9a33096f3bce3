//! Property test: long random sequences of transactions (positive and negative,
//! out-of-order timestamps, ties) and spends give exactly the replies and
//! balances of a deliberately naive reference model that re-derives every lot's
//! remaining points from scratch on each step.

use crate::common;

use common::operations::{
    LoyaltyOperation, Operation, adversarial_block_strategy, loyalty_operation_strategy,
    loyalty_start_ms, operation_strategy,
};
use common::reference::ReferenceLedger;
use points::ledger::{Clock, Executed, Ledger, RequestParams};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    /// Every reply, every refusal and the balances after each step match the reference.
    #[test]
    fn ledger_matches_naive_reference_model(operations in prop::collection::vec(operation_strategy(), 1..250)) {
        check_against_reference(&operations)?;
    }
}

proptest! {
    // Blocks are long and the reference is quadratic: fewer, richer cases.
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// The same under the adversarial orders: interleaved one-point lots
    /// arriving shuffled, late lots older than everything, take-backs, and
    /// spends that cross many lots (so they switch payers past the merge's
    /// budget and go through the time cut).
    #[test]
    fn ledger_matches_naive_reference_model_under_adversarial_orders(
        blocks in prop::collection::vec(adversarial_block_strategy(), 1..24),
    ) {
        check_against_reference(&blocks.concat())?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// Holds, captures, releases, timeouts, refunds and expiry (with and
    /// without a validity) give exactly the reference's replies, refusals,
    /// balances and held points after every step, the clock an input to
    /// both.
    #[test]
    fn ledger_matches_naive_reference_model_with_holds_refunds_and_expiry(
        validity_hours in prop_oneof![1 => Just(None), 3 => (1i64..200).prop_map(Some)],
        operations in prop::collection::vec(loyalty_operation_strategy(), 1..200),
    ) {
        check_loyalty_against_reference(validity_hours.map(|hours| hours * 3_600_000), &operations)?;
    }
}

/// Runs loyalty `operations` on the ledger and the reference, both
/// advanced to the same clock before each, and compares everything.
fn check_loyalty_against_reference(
    validity_ms: Option<i64>,
    operations: &[LoyaltyOperation],
) -> Result<(), TestCaseError> {
    let mut ledger = Ledger::new();
    let mut reference = ReferenceLedger::default();
    let mut clock = Clock { now_ms: loyalty_start_ms(), points_validity_ms: validity_ms };
    // After each step: the time, the history's length, the reference's
    // balances and held points.
    let mut past = Vec::new();
    let run = |ledger: &mut Ledger, params: RequestParams| {
        ledger.replay(None, params).map(|(_, executed)| executed)
    };
    for operation in operations {
        ledger.advance(clock);
        reference.advance(clock);
        // The time this step's entries are accepted at.
        let accepted_at_ms = clock.now_ms;
        match operation {
            LoyaltyOperation::Basic(Operation::Add { payer, points, timestamp }) => {
                let (points, timestamp) = (*points, *timestamp);
                let actual = ledger.add_transaction(payer, points, timestamp);
                let expected = reference.add_transaction(payer, points, timestamp);
                prop_assert_eq!(actual, expected, "{:?}", operation);
            }
            LoyaltyOperation::Basic(Operation::Spend { points }) => {
                let actual = ledger.spend(*points).map(|spend| spend.spent);
                prop_assert_eq!(actual, reference.spend(*points), "{:?}", operation);
            }
            &LoyaltyOperation::Hold { points, timeout_ms } => {
                let actual =
                    run(&mut ledger, RequestParams::Hold { points, timeout_ms }).map(|executed| {
                        match executed {
                            Executed::Hold(hold) => (hold.id, hold.held),
                            other => panic!("a hold executed as {other:?}"),
                        }
                    });
                prop_assert_eq!(actual, reference.hold(points, timeout_ms), "{:?}", operation);
            }
            &LoyaltyOperation::Capture { hold_id, points } => {
                let actual =
                    run(&mut ledger, RequestParams::Capture { hold_id, points }).map(|executed| {
                        match executed {
                            Executed::Capture(capture) => {
                                (capture.spend.id, capture.spend.spent, capture.released)
                            }
                            other => panic!("a capture executed as {other:?}"),
                        }
                    });
                prop_assert_eq!(actual, reference.capture(hold_id, points), "{:?}", operation);
            }
            &LoyaltyOperation::Release { hold_id } => {
                let actual = run(&mut ledger, RequestParams::Release { hold_id }).map(|executed| {
                    match executed {
                        Executed::Release(release) => release.released,
                        other => panic!("a release executed as {other:?}"),
                    }
                });
                prop_assert_eq!(actual, reference.release(hold_id), "{:?}", operation);
            }
            &LoyaltyOperation::Refund { spend_id, points } => {
                let actual =
                    run(&mut ledger, RequestParams::Refund { spend_id, points }).map(|executed| {
                        match executed {
                            Executed::Refund(refund) => (refund.refunded, refund.refundable_points),
                            other => panic!("a refund executed as {other:?}"),
                        }
                    });
                prop_assert_eq!(actual, reference.refund(spend_id, points), "{:?}", operation);
            }
            LoyaltyOperation::Pass { ms } => clock.now_ms += ms,
        }
        if let Err(violation) = ledger.check_invariants() {
            return Err(TestCaseError::fail(format!("after {operation:?}: {violation}")));
        }
        let balances: Vec<_> =
            ledger.balances().map(|(payer, points)| (payer.to_owned(), points)).collect();
        prop_assert_eq!(balances, reference.balances(), "after {:?}", operation);
        let held: Vec<_> =
            ledger.held().map(|(payer, points)| (payer.to_owned(), points)).collect();
        prop_assert_eq!(held, reference.held(), "after {:?}", operation);
        prop_assert_eq!(i128::from(ledger.total()), reference.total());
        // A snapshot of any state restores to the same state.
        let restored = Ledger::restore(ledger.state()).map_err(|error| {
            TestCaseError::fail(format!("after {operation:?}: restore refused: {error}"))
        })?;
        prop_assert_eq!(restored.state(), ledger.state());
        let position = ledger.history_len() as u64;
        prop_assert_eq!(restored.points_as_of(position), ledger.points_as_of(position));
        past.push((accepted_at_ms, position, reference.balances(), reference.held()));
    }
    // The balances as of every step's place in the history are the
    // reference's right after that step, and a time finds the last entry
    // accepted by then.
    for (index, (now_ms, position, balances, held)) in past.iter().enumerate() {
        let points = ledger.points_as_of(*position).expect("a position in the history");
        let as_of_balances: Vec<_> =
            points.iter().map(|&(payer, balance, _)| (payer.to_owned(), balance)).collect();
        let as_of_held: Vec<_> = points
            .iter()
            .filter(|&&(_, _, held)| held > 0)
            .map(|&(payer, _, held)| (payer.to_owned(), held))
            .collect();
        prop_assert_eq!(&as_of_balances, balances, "as of step {}", index);
        prop_assert_eq!(&as_of_held, held, "as of step {}", index);
        let last_at_that_time = past
            .iter()
            .filter(|(then_ms, ..)| then_ms <= now_ms)
            .map(|&(_, position, ..)| position)
            .max();
        prop_assert_eq!(ledger.position_at_time(*now_ms).ok(), last_at_that_time);
    }
    prop_assert_eq!(ledger.position_at_time(loyalty_start_ms() - 1), Ok(0));
    prop_assert_eq!(ledger.points_as_of(ledger.history_len() as u64 + 1), None);
    Ok(())
}

/// Runs `operations` on the ledger and on the reference, comparing every
/// reply, the invariants, the balances and the total after each step.
fn check_against_reference(operations: &[Operation]) -> Result<(), TestCaseError> {
    {
        let mut ledger = Ledger::new();
        let mut reference = ReferenceLedger::default();
        for operation in operations {
            match operation {
                Operation::Add { payer, points, timestamp } => {
                    let (points, timestamp) = (*points, *timestamp);
                    let actual = ledger.add_transaction(payer, points, timestamp);
                    let expected = reference.add_transaction(payer, points, timestamp);
                    prop_assert_eq!(actual, expected, "{:?}", operation);
                }
                Operation::Spend { points } => {
                    let actual = ledger.spend(*points).map(|spend| spend.spent);
                    let expected = reference.spend(*points);
                    prop_assert_eq!(actual, expected, "{:?}", operation);
                }
            }
            if let Err(violation) = ledger.check_invariants() {
                return Err(TestCaseError::fail(violation.to_string()));
            }
            let balances: Vec<_> =
                ledger.balances().map(|(payer, points)| (payer.to_owned(), points)).collect();
            prop_assert_eq!(balances, reference.balances());
            prop_assert_eq!(i128::from(ledger.total()), reference.total());
        }
        Ok(())
    }
}
