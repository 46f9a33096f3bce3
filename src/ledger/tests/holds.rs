//! Holds, captures, releases, refunds and expiry: the issue's examples and
//! every refusal, with the invariants checked after each step.

use super::*;

/// Example A's transactions: DANNON 300, UNILEVER 200, DANNON -200, MILLER
/// COORS 10000, DANNON 1000.
fn example_a() -> Ledger {
    let mut ledger = Ledger::new();
    add(&mut ledger, "DANNON", 300, "2022-10-31T10:00:00Z");
    add(&mut ledger, "UNILEVER", 200, "2022-10-31T11:00:00Z");
    add(&mut ledger, "DANNON", -200, "2022-10-31T15:00:00Z");
    add(&mut ledger, "MILLER COORS", 10000, "2022-11-01T14:00:00Z");
    add(&mut ledger, "DANNON", 1000, "2022-11-02T14:00:00Z");
    ledger
}

fn of(entries: &[PayerPoints]) -> Vec<(String, i64)> {
    entries.iter().map(|entry| (entry.payer.clone(), entry.points)).collect()
}

fn held(ledger: &Ledger) -> Vec<(String, i64)> {
    let mut held: Vec<_> =
        ledger.held().map(|(payer, points)| (payer.to_owned(), points)).collect();
    held.sort();
    held
}

fn checked<T>(ledger: &Ledger, result: Result<T, LedgerError>) -> T {
    ledger.check_invariants().expect("invariants hold");
    result.expect("accepted")
}

const MINUTE_MS: i64 = 60_000;
const DAY_MS: i64 = 24 * 60 * MINUTE_MS;

#[test]
fn a_hold_takes_points_as_a_spend_would_and_a_capture_gives_the_rest_back() {
    let mut ledger = example_a();
    let hold = ledger.hold(5000, 15 * MINUTE_MS);
    let hold = checked(&ledger, hold);
    assert_eq!(hold.id, 1);
    assert_eq!(
        of(&hold.held),
        pairs(&[("DANNON", -100), ("UNILEVER", -200), ("MILLER COORS", -4700)])
    );
    assert_eq!(
        balances(&ledger),
        pairs(&[("DANNON", 1000), ("MILLER COORS", 5300), ("UNILEVER", 0)])
    );
    assert_eq!(held(&ledger), pairs(&[("DANNON", 100), ("MILLER COORS", 4700), ("UNILEVER", 200)]));
    assert_eq!(spend(&mut ledger, 1000), pairs(&[("MILLER COORS", -1000)]));
    let capture = ledger.capture(1, 3000);
    let capture = checked(&ledger, capture);
    assert_eq!(capture.spend.id, 2, "a capture takes the next spend id");
    assert_eq!(
        of(&capture.spend.spent),
        pairs(&[("DANNON", -100), ("UNILEVER", -200), ("MILLER COORS", -2700)])
    );
    assert_eq!(of(&capture.released), pairs(&[("MILLER COORS", 2000)]));
    assert_eq!(
        balances(&ledger),
        pairs(&[("DANNON", 1000), ("MILLER COORS", 6300), ("UNILEVER", 0)])
    );
    assert_eq!(held(&ledger), Vec::<(String, i64)>::new());
    // Resolved once.
    let resolution = HoldResolution::Captured;
    assert_eq!(ledger.capture(1, 0), Err(LedgerError::HoldNotOpen { hold_id: 1, resolution }));
    assert_eq!(ledger.release(1), Err(LedgerError::HoldNotOpen { hold_id: 1, resolution }));
    assert_eq!(ledger.release(2), Err(LedgerError::HoldNotFound { hold_id: 2 }));
    assert_eq!(ledger.release(0), Err(LedgerError::HoldNotFound { hold_id: 0 }));
}

#[test]
fn a_release_gives_everything_back_the_payer_taken_last_first() {
    let mut ledger = example_a();
    let before = balances(&ledger);
    checked(&ledger, ledger.clone().hold(5000, MINUTE_MS));
    let hold = ledger.hold(5000, MINUTE_MS).expect("held");
    assert_eq!(
        ledger.capture(hold.id, 5001),
        Err(LedgerError::CaptureExceedsHold { requested: 5001, held: 5000 })
    );
    assert_eq!(ledger.capture(hold.id, -1), Err(LedgerError::NegativePoints { points: -1 }));
    let release = ledger.release(hold.id);
    let release = checked(&ledger, release);
    assert_eq!(
        of(&release.released),
        pairs(&[("MILLER COORS", 4700), ("UNILEVER", 200), ("DANNON", 100)])
    );
    assert_eq!(balances(&ledger), before);
    assert_eq!(
        ledger.capture(hold.id, 0),
        Err(LedgerError::HoldNotOpen { hold_id: 1, resolution: HoldResolution::Released })
    );
}

#[test]
fn a_hold_that_times_out_is_released_when_the_clock_passes_it() {
    let mut ledger = example_a();
    let clock = |now_ms| Clock { now_ms, points_validity_ms: None };
    assert!(!ledger.advance(clock(1_000)));
    let hold = ledger.hold(500, MINUTE_MS).expect("held");
    assert_eq!(hold.expire_at_ms, 1_000 + MINUTE_MS);
    assert_eq!(ledger.next_due_ms(None), Some(1_000 + MINUTE_MS));
    assert!(!ledger.advance(clock(MINUTE_MS)), "not yet");
    assert!(ledger.advance(clock(1_000 + MINUTE_MS)));
    ledger.check_invariants().expect("invariants hold");
    assert_eq!(ledger.next_due_ms(None), None);
    assert_eq!(
        ledger.capture(hold.id, 0),
        Err(LedgerError::HoldNotOpen { hold_id: 1, resolution: HoldResolution::TimedOut })
    );
    let last = ledger.history_len() - 1;
    let page = ledger.history_page_from(last);
    assert!(
        matches!(&page[..], [HistoryEntry::Release(Release { timed_out: true, .. })]),
        "{page:?}"
    );
    // The clock never goes back.
    assert!(!ledger.advance(clock(0)));
    assert_eq!(ledger.hold(1, MINUTE_MS).expect("held").expire_at_ms, 1_000 + 2 * MINUTE_MS);
    assert_eq!(ledger.hold(1, 0), Err(LedgerError::HoldTimeoutOutOfRange { timeout_ms: 0 }));
    assert_eq!(
        ledger.hold(1, MAX_HOLD_TIMEOUT_MS + 1),
        Err(LedgerError::HoldTimeoutOutOfRange { timeout_ms: MAX_HOLD_TIMEOUT_MS + 1 })
    );
}

#[test]
fn refunds_give_back_in_reverse_order_up_to_what_the_spend_took() {
    let mut ledger = example_a();
    let original = ledger.clone().spend(5000).expect("spent");
    assert_eq!(
        spend(&mut ledger, 5000),
        pairs(&[("DANNON", -100), ("UNILEVER", -200), ("MILLER COORS", -4700)])
    );
    let refund = ledger.refund(1, 4800);
    let refund = checked(&ledger, refund);
    assert_eq!(of(&refund.refunded), pairs(&[("MILLER COORS", 4700), ("UNILEVER", 100)]));
    assert_eq!(refund.refundable_points, 200);
    assert_eq!(
        ledger.refund(1, 201),
        Err(LedgerError::RefundExceedsSpend { requested: 201, refundable: 200 })
    );
    let refund = ledger.refund(1, 0);
    let refund = checked(&ledger, refund);
    assert_eq!(of(&refund.refunded), pairs(&[("UNILEVER", 100), ("DANNON", 100)]));
    assert_eq!(refund.refundable_points, 0);
    assert_eq!(
        balances(&ledger),
        pairs(&[("DANNON", 1100), ("MILLER COORS", 10000), ("UNILEVER", 200)])
    );
    assert_eq!(ledger.refund(1, 0), Err(LedgerError::NothingToRefund { spend_id: 1 }));
    assert_eq!(ledger.refund(2, 0), Err(LedgerError::SpendNotFound { spend_id: 2 }));
    assert_eq!(ledger.refund(1, -5), Err(LedgerError::NegativePoints { points: -5 }));
    let again = ledger.spend(5000).expect("spent");
    assert_eq!(again.spent, original.spent, "the same reply as the first time");
}

#[test]
fn a_captured_hold_is_refundable_like_a_spend() {
    let mut ledger = example_a();
    let hold = ledger.hold(400, MINUTE_MS).expect("held");
    let capture = ledger.capture(hold.id, 250).expect("captured");
    assert_eq!(of(&capture.spend.spent), pairs(&[("DANNON", -100), ("UNILEVER", -150)]));
    assert_eq!(of(&capture.released), pairs(&[("MILLER COORS", 100), ("UNILEVER", 50)]));
    let refund = ledger.refund(capture.spend.id, 0);
    let refund = checked(&ledger, refund);
    assert_eq!(of(&refund.refunded), pairs(&[("UNILEVER", 150), ("DANNON", 100)]));
    assert_eq!(balances(&ledger), balances(&example_a()));
}

/// The issue's expiry example: validity one day, now = N.
#[test]
fn points_expire_oldest_first_and_a_lot_that_arrives_expired_frees_nothing() {
    let now_ms = at("2024-06-10T12:00:00Z").timestamp_millis();
    let before = |ms: i64| DateTime::from_timestamp_millis(now_ms - ms).expect("a time");
    let mut ledger = Ledger::new();
    let clock = Clock { now_ms, points_validity_ms: Some(DAY_MS) };
    ledger.advance(clock);
    for (payer, points, ago_ms) in [
        ("A", 100, 2 * DAY_MS),
        ("A", 50, 60 * MINUTE_MS),
        ("B", 70, 3 * DAY_MS),
        ("B", 30, 10 * MINUTE_MS),
    ] {
        ledger.add_transaction(payer, points, before(ago_ms)).expect("added");
        ledger.check_invariants().expect("invariants hold");
    }
    assert_eq!(balances(&ledger), pairs(&[("A", 50), ("B", 30)]));
    assert_eq!(spend(&mut ledger, 60), pairs(&[("A", -50), ("B", -10)]));
    let expiring = ledger.expiring_points(clock, DAY_MS);
    assert_eq!(
        expiring,
        [ExpiringPoints {
            payer: "B".to_owned(),
            points: 20,
            expire_time: before(10 * MINUTE_MS) + chrono::TimeDelta::days(1),
        }]
    );
    ledger.add_transaction("A", 40, before(5 * DAY_MS)).expect("added");
    ledger.check_invariants().expect("invariants hold");
    assert_eq!(balances(&ledger), pairs(&[("A", 0), ("B", 20)]));
    ledger.add_transaction("A", 40, before(30 * MINUTE_MS)).expect("added");
    assert_eq!(balances(&ledger), pairs(&[("A", 40), ("B", 20)]));
    // A day later everything left has expired, in one history entry.
    assert!(ledger.advance(Clock { now_ms: now_ms + DAY_MS, ..clock }));
    ledger.check_invariants().expect("invariants hold");
    assert_eq!(balances(&ledger), pairs(&[("A", 0), ("B", 0)]));
    let last = ledger.history_page_from(ledger.history_len() - 1);
    // Oldest first: A's lot is older than B's.
    assert_eq!(
        last,
        [HistoryEntry::Expiration(vec![
            PayerPoints { payer: "A".to_owned(), points: -40 },
            PayerPoints { payer: "B".to_owned(), points: -20 },
        ])]
    );
    assert_eq!(ledger.next_due_ms(Some(DAY_MS)), None);
}

#[test]
fn points_given_back_after_their_validity_expire_at_once() {
    let day0 = at("2024-01-01T00:00:00Z").timestamp_millis();
    let mut ledger = Ledger::new();
    let clock = |now_ms| Clock { now_ms, points_validity_ms: Some(DAY_MS) };
    ledger.advance(clock(day0));
    add(&mut ledger, "A", 100, "2024-01-01T00:00:00Z");
    let spent = ledger.spend(60).expect("spent");
    let hold = ledger.hold(40, 2 * DAY_MS).expect("held");
    assert_eq!(balances(&ledger), pairs(&[("A", 0)]));
    // Two days on, the lot has expired: what comes back expires at once.
    ledger.advance(clock(day0 + 2 * DAY_MS - 1));
    let refund = ledger.refund(spent.id, 0).expect("refunded");
    assert_eq!(of(&refund.refunded), pairs(&[("A", 60)]));
    ledger.check_invariants().expect("invariants hold");
    assert_eq!(balances(&ledger), pairs(&[("A", 0)]));
    assert!(ledger.advance(clock(day0 + 3 * DAY_MS)), "the hold times out");
    ledger.check_invariants().expect("invariants hold");
    assert_eq!(balances(&ledger), pairs(&[("A", 0)]));
    assert_eq!(
        ledger.capture(hold.id, 0).map(|_| ()),
        Err(LedgerError::HoldNotOpen { hold_id: hold.id, resolution: HoldResolution::TimedOut })
    );
}

#[test]
fn a_ledger_with_holds_refunds_and_expirations_survives_a_restore() {
    let mut ledger = example_a();
    ledger.advance(Clock {
        now_ms: at("2022-11-03T00:00:00Z").timestamp_millis(),
        points_validity_ms: Some(2 * DAY_MS),
    });
    let hold = ledger.hold(100, MINUTE_MS).expect("held");
    ledger.hold(50, DAY_MS).expect("held");
    ledger.capture(hold.id, 60).expect("captured");
    let spent = ledger.spend(700).expect("spent");
    ledger.refund(spent.id, 300).expect("refunded");
    let restored = Ledger::restore(ledger.state()).expect("restored");
    assert_eq!(restored.state(), ledger.state());
    assert_eq!(held(&restored), held(&ledger));
    assert_eq!(restored.next_due_ms(Some(DAY_MS)), ledger.next_due_ms(Some(DAY_MS)));
    let all = |ledger: &Ledger| ledger.history_page_from(0);
    assert_eq!(all(&restored), all(&ledger));
}

/// A snapshot whose holds, captures, releases and refunds disagree with
/// each other is refused, as one whose transactions do.
#[test]
fn restore_refuses_holds_and_refunds_that_disagree_with_their_entries() {
    let mut ledger = example_a();
    let captured = ledger.hold(600, MINUTE_MS).expect("held");
    ledger.capture(captured.id, 500).expect("captured");
    let released = ledger.hold(50, MINUTE_MS).expect("held");
    ledger.release(released.id).expect("released");
    ledger.hold(20, MINUTE_MS).expect("held");
    let spent = ledger.spend(700).expect("spent");
    ledger.refund(spent.id, 300).expect("refunded");
    let state = ledger.state();
    assert!(Ledger::restore(state.clone()).is_ok(), "the untouched state restores");
    type Tamper = fn(&mut LedgerState);
    let tampered: [(&str, Tamper); 10] = [
        ("spend 1 is inconsistent", |state| state.spends[0].points = i64::MIN),
        ("is inconsistent with the history", |state| {
            // A refund that gives back to a payer the spend did not end on.
            for record in &mut state.events {
                if let Event::Refund { refunded, .. } = &mut record.event {
                    let payer = &mut refunded[0].0;
                    *payer = (*payer + 1) % 3;
                }
            }
        }),
        ("is inconsistent with the history", |state| {
            // Hold 2 released before it opened.
            let place = |state: &LedgerState, wanted: &Event| {
                state.events.iter().position(|record| &record.event == wanted)
            };
            let opened = place(state, &Event::Hold { hold_id: 2 });
            let released = place(state, &Event::Release { hold_id: 2, timed_out: false });
            if let (Some(opened), Some(released)) = (opened, released) {
                let event = state.events[opened].event.clone();
                state.events[opened].event = state.events[released].event.clone();
                state.events[released].event = event;
            }
        }),
        ("spend 2's refunds add up to 300, not the 301", |state| {
            state.spends[1].refunded += 1;
        }),
        ("spend 1 is inconsistent", |state| state.spends[0].taken.reverse()),
        // Open again, it would hold points no longer taken from the payer.
        ("more than was taken from it", |state| state.holds[1].state = HoldState::Open),
        ("hold 2's entries do not match", |state| {
            state.holds[1].state = HoldState::Released { timed_out: true };
        }),
        ("hold 3's entries do not match", |state| {
            state.events.retain(|record| record.event != Event::Hold { hold_id: 3 });
        }),
        ("is inconsistent with the history", |state| {
            for record in &mut state.events {
                if let Event::Refund { refundable_after, .. } = &mut record.event {
                    *refundable_after += 1;
                }
            }
        }),
        ("more than was taken from it", |state| {
            let payer = state.holds[2].taken[0].0;
            state.holds[2].taken = vec![(payer, i64::MAX - 1)];
            state.holds[2].points = i64::MAX - 1;
        }),
    ];
    for (expected, tamper) in tampered {
        let mut state = state.clone();
        tamper(&mut state);
        let refused = Ledger::restore(state).expect_err(expected);
        assert!(refused.0.contains(expected), "{expected:?} not in {refused}");
    }
}

#[test]
fn history_pages_walk_every_kind_of_entry_in_order() {
    let mut ledger = example_a();
    ledger.hold(100, MINUTE_MS).expect("held");
    ledger.spend(10).expect("spent");
    add(&mut ledger, "UNILEVER", 5, "2023-01-01T00:00:00Z");
    ledger.release(1).expect("released");
    ledger.refund(1, 5).expect("refunded");
    let all = ledger.history_page_from(0);
    let kinds: Vec<&str> = all
        .iter()
        .map(|entry| match entry {
            HistoryEntry::Transaction { .. } => "t",
            HistoryEntry::Spend(_) => "s",
            HistoryEntry::Hold(_) => "h",
            HistoryEntry::Release(_) => "r",
            HistoryEntry::Refund(_) => "f",
            HistoryEntry::Capture(_) => "c",
            HistoryEntry::Expiration(_) => "e",
        })
        .collect();
    assert_eq!(kinds, ["t", "t", "t", "t", "t", "h", "s", "t", "r", "f"]);
    // Pages of one entry give the same walk.
    let mut cursor = HistoryCursor::default();
    let mut walked = Vec::new();
    while let Some(page) = ledger.history_page(cursor, 1) {
        walked.extend(page.entries.into_iter().map(|paged| paged.entry));
        match page.next {
            Some(next) => cursor = next,
            None => break,
        }
    }
    assert_eq!(walked, all);
}
