//! The pure ledger core, single-threaded: add, negative add, spend touching 1
//! and 100 lots, and balances, on ledgers of 1 thousand and 1 million lots;
//! holds released or captured, refunds, and expiry, on the same ledgers;
//! balances as of a position and the position at a time, on the same;
//! plus resident memory per stored transaction at 1 million in one ledger
//! and over many small ledgers. Run with
//! `cargo bench --bench ledger`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use points::ledger::{Clock, Ledger};

const PAYERS: usize = 100;

fn epoch() -> DateTime<Utc> {
    DateTime::from_timestamp(1_700_000_000, 0).expect("valid")
}

/// A ledger of `lots` one-point lots over 100 payers, in timestamp order,
/// all accepted at the ledger's starting time.
fn ledger_with(lots: usize) -> Ledger {
    build_ledger(lots, false)
}

/// [`ledger_with`]'s lots, each accepted a second after the one before (at
/// its own timestamp), so that accept times spread over the history.
fn accepted_a_second_apart(lots: usize) -> Ledger {
    build_ledger(lots, true)
}

/// `lots` one-point lots over 100 payers, in timestamp order; with
/// `advance_clock`, the ledger's time moves to each lot's timestamp before
/// it is accepted.
fn build_ledger(lots: usize, advance_clock: bool) -> Ledger {
    let mut ledger = Ledger::new();
    let names: Vec<String> = (0..PAYERS).map(|payer| format!("PAYER {payer:03}")).collect();
    for lot in 0..lots {
        let timestamp = epoch() + TimeDelta::seconds(lot as i64);
        if advance_clock {
            let now_ms = timestamp.timestamp_millis();
            ledger.advance(Clock { now_ms, points_validity_ms: None });
        }
        ledger.add_transaction(&names[lot % PAYERS], 1, timestamp).expect("valid");
    }
    assert_eq!(ledger.history_len(), lots);
    ledger
}

/// Times `operation` alone, topping the ledger up with `refill` (untimed)
/// whenever it has fewer than `needed` points left.
fn timed_with_refill(
    ledger: &mut Ledger,
    iterations: u64,
    needed: i64,
    mut refill: impl FnMut(&mut Ledger),
    mut operation: impl FnMut(&mut Ledger),
) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iterations {
        if ledger.total() < needed {
            refill(ledger);
        }
        let started = Instant::now();
        operation(ledger);
        total += started.elapsed();
    }
    total
}

fn core(criterion: &mut Criterion) {
    let mut group = criterion.benchmark_group("ledger");
    group.sample_size(20).measurement_time(Duration::from_secs(3));
    for lots in [1_000usize, 1_000_000] {
        let base = ledger_with(lots);
        let mut next_second = lots as i64;
        let mut newest = move || {
            next_second += 1;
            epoch() + TimeDelta::seconds(next_second)
        };

        let mut ledger = base.clone();
        group.bench_with_input(BenchmarkId::new("add", lots), &lots, |bench, _| {
            bench.iter(|| {
                black_box(ledger.add_transaction("PAYER 007", 5, newest()).expect("valid"))
            })
        });

        // Refill adds fresh one-point lots at the newest end, untimed.
        let refill = |ledger: &mut Ledger| {
            let start = ledger.next_transaction_id() as i64;
            for lot in 0..10_000 {
                let timestamp = epoch() + TimeDelta::seconds(10_000_000 + start + lot);
                ledger
                    .add_transaction(&format!("PAYER {:03}", lot % PAYERS as i64), 1, timestamp)
                    .expect("valid");
            }
        };

        let mut ledger = base.clone();
        group.bench_with_input(BenchmarkId::new("negative_add", lots), &lots, |bench, _| {
            bench.iter_custom(|iterations| {
                let mut total = Duration::ZERO;
                for _ in 0..iterations {
                    // Untimed: make sure PAYER 000 has a point to take back.
                    if ledger.balances().next().is_none_or(|(_, balance)| balance < 1) {
                        refill(&mut ledger);
                    }
                    let started = Instant::now();
                    black_box(
                        ledger.add_transaction("PAYER 000", -1, epoch()).expect("a point is there"),
                    );
                    total += started.elapsed();
                }
                total
            })
        });

        let mut ledger = base.clone();
        group.bench_with_input(BenchmarkId::new("spend_1_lot", lots), &lots, |bench, _| {
            bench.iter_custom(|iterations| {
                timed_with_refill(&mut ledger, iterations, 1, refill, |ledger| {
                    black_box(ledger.spend(1).expect("enough points"));
                })
            })
        });

        let mut ledger = base.clone();
        group.bench_with_input(BenchmarkId::new("spend_100_lots", lots), &lots, |bench, _| {
            bench.iter_custom(|iterations| {
                timed_with_refill(&mut ledger, iterations, 100, refill, |ledger| {
                    black_box(ledger.spend(100).expect("enough points"));
                })
            })
        });

        let ledger = base.clone();
        group.bench_with_input(BenchmarkId::new("balances", lots), &lots, |bench, _| {
            bench.iter(|| black_box(ledger.balances().map(|(_, points)| points).sum::<i64>()))
        });
    }
    group.finish();
}

/// Holds (released, or captured and refunded), refunds and expiry, each
/// touching 100 lots of 100 payers: their cost must not grow with the
/// ledger (1 thousand against 1 million lots).
fn loyalty(criterion: &mut Criterion) {
    const MINUTE_MS: i64 = 60_000;
    let mut group = criterion.benchmark_group("loyalty");
    group.sample_size(20).measurement_time(Duration::from_secs(3));
    for lots in [1_000usize, 1_000_000] {
        let base = ledger_with(lots);

        let mut ledger = base.clone();
        group.bench_with_input(
            BenchmarkId::new("hold_and_release_100_lots", lots),
            &lots,
            |bench, _| {
                bench.iter(|| {
                    let hold = ledger.hold(100, MINUTE_MS).expect("enough points");
                    black_box(ledger.release(hold.id).expect("open"))
                })
            },
        );

        let mut ledger = base.clone();
        group.bench_with_input(
            BenchmarkId::new("hold_capture_and_refund_100_lots", lots),
            &lots,
            |bench, _| {
                bench.iter(|| {
                    let hold = ledger.hold(100, MINUTE_MS).expect("enough points");
                    let capture = ledger.capture(hold.id, 0).expect("open");
                    black_box(ledger.refund(capture.spend.id, 0).expect("refundable"))
                })
            },
        );

        let mut ledger = base.clone();
        group.bench_with_input(
            BenchmarkId::new("spend_and_refund_100_lots", lots),
            &lots,
            |bench, _| {
                bench.iter(|| {
                    let spend = ledger.spend(100).expect("enough points");
                    black_box(ledger.refund(spend.id, 0).expect("refundable"))
                })
            },
        );

        // Lots are one second apart: each step of 100 s expires the next
        // 100 lots, one of each payer. Refilled at the newest end, untimed.
        let mut ledger = base.clone();
        let validity_ms = 1_000;
        let mut now_ms = epoch().timestamp_millis() + validity_ms;
        let mut newest = lots as i64;
        group.bench_with_input(BenchmarkId::new("expire_100_lots", lots), &lots, |bench, _| {
            bench.iter_custom(|iterations| {
                let mut total = Duration::ZERO;
                for _ in 0..iterations {
                    if ledger.total() < 1_000 {
                        for lot in 0..10_000 {
                            newest += 1;
                            let timestamp = epoch() + TimeDelta::seconds(newest);
                            let payer = format!("PAYER {:03}", lot % PAYERS);
                            ledger.add_transaction(&payer, 1, timestamp).expect("valid");
                        }
                    }
                    now_ms += 100_000;
                    let clock = Clock { now_ms, points_validity_ms: Some(validity_ms) };
                    let started = Instant::now();
                    black_box(ledger.advance(clock));
                    total += started.elapsed();
                }
                total
            })
        });
    }
    group.finish();
}

/// Balances as of a position and the position at a time, on ledgers of 1
/// thousand and 1 million entries over 100 payers, accepted a second apart:
/// the cost must grow with the logarithm of the history, not with it.
/// Positions follow a fixed pseudo-random walk over the whole history, so
/// most land inside an index block and replay part of it.
fn as_of(criterion: &mut Criterion) {
    let mut group = criterion.benchmark_group("as_of");
    group.sample_size(20).measurement_time(Duration::from_secs(3));
    for lots in [1_000usize, 1_000_000] {
        let ledger = accepted_a_second_apart(lots);
        let history_len = ledger.history_len() as u64;
        let mut walk = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next_position = move || {
            walk = walk
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            1 + (walk >> 33) % history_len
        };
        group.bench_with_input(
            BenchmarkId::new("balances_as_of_position", lots),
            &lots,
            |bench, _| {
                bench.iter(|| black_box(ledger.points_as_of(next_position()).expect("in range")))
            },
        );
        let first_ms = epoch().timestamp_millis();
        let mut next_time_ms = move || first_ms + (next_position() as i64) * 1_000;
        group.bench_with_input(BenchmarkId::new("position_at_time", lots), &lots, |bench, _| {
            bench.iter(|| {
                black_box(ledger.position_at_time(next_time_ms()).expect("every time known"))
            })
        });
    }
    group.finish();
}

/// Resident memory of this process, in bytes (Linux).
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// Not a timing: prints the resident memory one million stored transactions
/// (lots, history and all) cost, per transaction.
fn memory(_: &mut Criterion) {
    let before = resident_bytes();
    let ledger = ledger_with(1_000_000);
    let after = resident_bytes();
    if let (Some(before), Some(after)) = (before, after) {
        println!(
            "memory: {:.1} bytes of resident memory per stored transaction at 1,000,000 transactions",
            after.saturating_sub(before) as f64 / 1_000_000.0
        );
    }
    // Kept until the end: memory it freed would be reused below and
    // understate what the small ledgers take.
    let big = black_box(ledger);

    // Many small users, each earning from a few payers in turn: per-payer
    // overheads show here, not in one big ledger.
    let (users, payers, lots_per_payer) = (20_000usize, 4usize, 12usize);
    let names: Vec<String> = (0..payers).map(|payer| format!("PAYER {payer}")).collect();
    let before = resident_bytes();
    let ledgers: Vec<Ledger> = (0..users)
        .map(|_| {
            let mut ledger = Ledger::new();
            for lot in 0..payers * lots_per_payer {
                let timestamp = epoch() + TimeDelta::seconds(lot as i64);
                ledger.add_transaction(&names[lot % payers], 1, timestamp).expect("valid");
            }
            ledger
        })
        .collect();
    let after = resident_bytes();
    if let (Some(before), Some(after)) = (before, after) {
        let transactions = users * payers * lots_per_payer;
        println!(
            "memory: {:.1} bytes of resident memory per stored transaction over {users} users \
             of {payers} payers with {lots_per_payer} lots each (ledger included)",
            after.saturating_sub(before) as f64 / transactions as f64
        );
    }
    drop(black_box(ledgers));
    drop(big);
}

/// Times `iterations` of `step` on copies of `base` (which has `lots` lots),
/// starting over from a fresh copy (untimed) before the steps' own lots
/// could grow it by half: each size is measured at that size.
fn timed_from(
    base: &Ledger,
    lots: usize,
    iterations: u64,
    mut step: impl FnMut(&mut Ledger),
) -> Duration {
    // Each step adds two lots.
    let steps_per_copy = (lots as u64 / 4).max(1);
    // A copy's vectors are full: its first step reallocates them (copying
    // every lot), which a ledger growing in place pays once per doubling, not
    // once per copy. Take that step untimed.
    let fresh_copy = |step: &mut dyn FnMut(&mut Ledger)| {
        let mut ledger = base.clone();
        step(&mut ledger);
        ledger
    };
    let mut ledger = fresh_copy(&mut step);
    let mut total = Duration::ZERO;
    for done in 0..iterations {
        if done > 0 && done % steps_per_copy == 0 {
            ledger = fresh_copy(&mut step);
        }
        let started = Instant::now();
        step(&mut ledger);
        total += started.elapsed();
    }
    total
}

/// The two orders that once made the ledger walk lots one by one, at 1,000
/// and 1,000,000 lots; the target is that each costs within 2× at
/// both sizes (cost independent of history and arrival order).
///
/// - `late_lot_resettle`: one payer's one-point lots, all taken back; then
///   a 100,000-point lot older than all of them arrives late (re-settling
///   the payer's past deductions) and is taken back again. Timed per pair.
/// - `interleaved_spend`: two payers' one-point lots alternate in time, so
///   taking the oldest 1,000 points switches payer at every lot; then one
///   late 500-point lot per payer, older than everything, refills what was
///   spent. Timed per spend plus its two refills.
fn adversarial(criterion: &mut Criterion) {
    let mut group = criterion.benchmark_group("adversarial");
    group.sample_size(20).measurement_time(Duration::from_secs(3));
    let long_ago = DateTime::from_timestamp(1_000_000_000, 0).expect("valid");
    for lots in [1_000usize, 1_000_000] {
        let mut ledger = Ledger::new();
        for lot in 0..lots {
            let timestamp = epoch() + TimeDelta::seconds(lot as i64);
            ledger.add_transaction("DANNON", 1, timestamp).expect("valid");
        }
        ledger.add_transaction("DANNON", -(lots as i64), epoch()).expect("all points are there");
        group.bench_with_input(BenchmarkId::new("late_lot_resettle", lots), &lots, |bench, _| {
            bench.iter_custom(|iterations| {
                timed_from(&ledger, lots, iterations, |ledger| {
                    black_box(ledger.add_transaction("DANNON", 100_000, long_ago).expect("valid"));
                    black_box(ledger.add_transaction("DANNON", -100_000, epoch()).expect("valid"));
                })
            })
        });

        let mut ledger = Ledger::new();
        for lot in 0..lots {
            let payer = if lot % 2 == 0 { "DANNON" } else { "UNILEVER" };
            let timestamp = epoch() + TimeDelta::seconds(lot as i64);
            ledger.add_transaction(payer, 1, timestamp).expect("valid");
        }
        group.bench_with_input(BenchmarkId::new("interleaved_spend", lots), &lots, |bench, _| {
            bench.iter_custom(|iterations| {
                timed_from(&ledger, lots, iterations, |ledger| {
                    black_box(ledger.spend(1_000).expect("enough points"));
                    black_box(ledger.add_transaction("DANNON", 500, long_ago).expect("valid"));
                    black_box(ledger.add_transaction("UNILEVER", 500, long_ago).expect("valid"));
                })
            })
        });
    }
    group.finish();
}

criterion_group!(benches, memory, core, adversarial, loyalty, as_of);
criterion_main!(benches);
