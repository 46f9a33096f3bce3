//! Random ledger commands for property tests, and the state they compare.

use chrono::{DateTime, TimeDelta, Utc};
use points::ledger::{Ledger, LedgerState, MAX_PAYER_BYTES};
use proptest::prelude::*;

fn epoch() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2024-01-01T00:00:00Z").expect("valid").with_timezone(&Utc)
}

/// One command of a random sequence.
#[derive(Debug, Clone)]
pub enum Operation {
    /// AddTransaction.
    Add { payer: String, points: i64, timestamp: DateTime<Utc> },
    /// Spend.
    Spend { points: i64 },
}

fn payer_strategy() -> impl Strategy<Value = String> {
    prop_oneof![
        20 => prop::sample::select(vec!["DANNON", "UNILEVER", "MILLER COORS", "P"]).prop_map(str::to_owned),
        1 => Just(String::new()),
        1 => Just("   ".to_owned()),
        1 => Just("X".repeat(MAX_PAYER_BYTES + 1)),
    ]
}

fn points_strategy() -> impl Strategy<Value = i64> {
    prop_oneof![
        12 => 1i64..200,
        6 => -150i64..0,
        1 => Just(0),
        1 => (i64::MAX - 300)..=i64::MAX,
        1 => Just(i64::MIN),
    ]
}

/// Mostly valid commands over a few payers and a few days, so that ties,
/// out-of-order arrivals and re-settlement are common; some invalid and
/// overflowing ones.
pub fn operation_strategy() -> impl Strategy<Value = Operation> {
    prop_oneof![
        3 => (payer_strategy(), points_strategy(), 0i64..12, 0i64..3)
            .prop_map(|(payer, points, day, hour)| Operation::Add {
                payer,
                points,
                timestamp: epoch() + TimeDelta::days(day) + TimeDelta::hours(hour),
            }),
        1 => prop_oneof![8 => 1i64..400, 1 => Just(0), 1 => -5i64..0, 1 => Just(i64::MAX)]
            .prop_map(|points| Operation::Spend { points }),
    ]
}

/// The orders that once made the ledger walk lots one by one: one-point lots
/// alternating between payers (so a spend switches payer at every lot),
/// arriving shuffled; lots older than everything, arriving late; take-backs;
/// and spends large enough to cross many lots.
pub fn adversarial_block_strategy() -> impl Strategy<Value = Vec<Operation>> {
    let payer = prop::sample::select(vec!["DANNON", "UNILEVER", "MILLER COORS"]);
    prop_oneof![
        3 => (20usize..150, 2usize..4, 0i64..48)
            .prop_flat_map(|(lots, payers, hour)| {
                let block: Vec<Operation> = (0..lots)
                    .map(|lot| Operation::Add {
                        payer: ["DANNON", "UNILEVER", "MILLER COORS"][lot % payers].to_owned(),
                        points: 1,
                        timestamp: epoch() + TimeDelta::hours(hour) + TimeDelta::seconds(lot as i64),
                    })
                    .collect();
                Just(block).prop_shuffle()
            }),
        2 => (payer.clone(), 1i64..5_000, 1i64..1_000).prop_map(|(payer, points, days_before)| {
            vec![Operation::Add {
                payer: payer.to_owned(),
                points,
                timestamp: epoch() - TimeDelta::days(days_before),
            }]
        }),
        2 => (payer, 1i64..300).prop_map(|(payer, points)| {
            vec![Operation::Add { payer: payer.to_owned(), points: -points, timestamp: epoch() }]
        }),
        2 => (1i64..700).prop_map(|points| vec![Operation::Spend { points }]),
    ]
}

/// A ledger's state without the times its request ids were accepted at,
/// which differ by design between a store (the wall clock) and a model
/// ledger run beside it.
pub fn comparable_state(ledger: &Ledger) -> LedgerState {
    let mut state = ledger.state();
    for request in &mut state.requests {
        request.accepted_at_ms = 0;
    }
    state
}
