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

/// One step of a loyalty program's day: the commands above, holds and what
/// resolves them, refunds, and time passing.
#[derive(Debug, Clone)]
pub enum LoyaltyOperation {
    /// AddTransaction or Spend.
    Basic(Operation),
    /// HoldPoints.
    Hold { points: i64, timeout_ms: i64 },
    /// CaptureHold.
    Capture { hold_id: u64, points: i64 },
    /// ReleaseHold.
    Release { hold_id: u64 },
    /// RefundSpend.
    Refund { spend_id: u64, points: i64 },
    /// Time passes.
    Pass { ms: i64 },
}

/// The time loyalty operations start at: the middle of the days the
/// transactions' timestamps cover, so that some have expired and some will.
pub fn loyalty_start_ms() -> i64 {
    (epoch() + TimeDelta::days(6)).timestamp_millis()
}

/// Mostly valid loyalty operations over a few holds and spends, with time
/// passing by minutes to days; some refused ones (unknown ids, too much).
pub fn loyalty_operation_strategy() -> impl Strategy<Value = LoyaltyOperation> {
    const HOUR_MS: i64 = 3_600_000;
    prop_oneof![
        6 => operation_strategy().prop_map(LoyaltyOperation::Basic),
        2 => (prop_oneof![8 => 1i64..300, 1 => Just(0)], prop_oneof![4 => 1i64..(48 * HOUR_MS), 1 => Just(0)])
            .prop_map(|(points, timeout_ms)| LoyaltyOperation::Hold { points, timeout_ms }),
        2 => (0u64..6, prop_oneof![2 => Just(0i64), 3 => 1i64..300, 1 => Just(-1i64)])
            .prop_map(|(hold_id, points)| LoyaltyOperation::Capture { hold_id, points }),
        1 => (0u64..6).prop_map(|hold_id| LoyaltyOperation::Release { hold_id }),
        2 => (0u64..8, prop_oneof![2 => Just(0i64), 3 => 1i64..300, 1 => Just(-1i64)])
            .prop_map(|(spend_id, points)| LoyaltyOperation::Refund { spend_id, points }),
        2 => prop_oneof![1i64..HOUR_MS, HOUR_MS..(72 * HOUR_MS)]
            .prop_map(|ms| LoyaltyOperation::Pass { ms }),
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

/// A ledger's state without the times its request ids and entries were
/// accepted at, which differ by design between a store (the wall clock)
/// and a model ledger run beside it.
pub fn comparable_state(ledger: &Ledger) -> LedgerState {
    let mut state = ledger.state();
    for request in &mut state.requests {
        request.accepted_at_ms = 0;
    }
    for record in &mut state.transactions {
        record.accepted_at_ms = 0;
    }
    for record in &mut state.spends {
        record.accepted_at_ms = 0;
    }
    for record in &mut state.events {
        record.accepted_at_ms = 0;
    }
    state.clock_ms = 0;
    state
}
