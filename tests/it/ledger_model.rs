//! Property test: long random sequences of transactions (positive and negative,
//! out-of-order timestamps, ties) and spends give exactly the replies and
//! balances of a deliberately naive reference model that re-derives every lot's
//! remaining points from scratch on each step.

use crate::common;

use common::operations::{Operation, adversarial_block_strategy, operation_strategy};
use common::reference::ReferenceLedger;
use points::ledger::Ledger;
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
