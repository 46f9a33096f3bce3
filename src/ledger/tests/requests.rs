//! Request ids: retries get the original outcome, reuses are refused, and
//! remembered ids are bounded and expire.

use super::*;

fn request(id: &str, now_ms: i64) -> Request<'_> {
    Request { id, now_ms, retention_ms: 1_000, max_remembered: 3 }
}

/// A retry with the same request id and parameters gets the original reply and changes nothing.
#[test]
fn retried_request_returns_the_original_outcome_once() {
    let mut ledger = Ledger::new();
    let timestamp = at("2024-01-01T00:00:00Z");
    let first = ledger.execute_add_transaction(Some(request("a", 0)), "A", 10, timestamp);
    let Outcome::Fresh(Ok(transaction)) = first else { panic!("{first:?}") };
    let again = ledger.execute_add_transaction(Some(request("a", 500)), "A", 10, timestamp);
    assert_eq!(again, Outcome::Repeated(Ok(transaction)));
    let spent = ledger.execute_spend(Some(request("s", 0)), 4);
    let Outcome::Fresh(Ok(original)) = spent else { panic!("{spent:?}") };
    assert_eq!(ledger.execute_spend(Some(request("s", 900)), 4), Outcome::Repeated(Ok(original)));
    assert_eq!(ledger.total(), 6);
    assert_eq!(ledger.history_len(), 2);
}

/// A refusal is remembered too: its retry gets the same error even once it would succeed.
#[test]
fn retried_refusal_returns_the_same_error_after_the_state_changed() {
    let mut ledger = Ledger::new();
    let refused = ledger.execute_spend(Some(request("s", 0)), 5).into_result().unwrap_err();
    add(&mut ledger, "A", 10, "2024-01-01T00:00:00Z");
    assert_eq!(ledger.execute_spend(Some(request("s", 10)), 5), Outcome::Repeated(Err(refused)));
    assert_eq!(ledger.total(), 10);
}

/// The same request id with other parameters is refused as reused, and changes nothing.
#[test]
fn reused_request_id_with_other_parameters_is_refused() {
    let (mut ledger, timestamp) = ledger_with_request_a();
    for outcome in [
        ledger.execute_add_transaction(Some(request("a", 1)), "A", 11, timestamp),
        ledger.execute_add_transaction(Some(request("a", 1)), "B", 10, timestamp),
        ledger.execute_spend(Some(request("a", 1)), 10).map(|_| unreachable_transaction()),
    ] {
        assert_eq!(
            outcome,
            Outcome::Fresh(Err(LedgerError::RequestIdReused { request_id: "a".into() }))
        );
    }
    assert_eq!(ledger.total(), 10);
}

/// A ledger that accepted 10 points of payer A with request id "a" at time
/// 0, and the transaction's timestamp.
fn ledger_with_request_a() -> (Ledger, DateTime<Utc>) {
    let mut ledger = Ledger::new();
    let timestamp = at("2024-01-01T00:00:00Z");
    ledger
        .execute_add_transaction(Some(request("a", 0)), "A", 10, timestamp)
        .into_result()
        .expect("a first credit is accepted");
    (ledger, timestamp)
}

fn unreachable_transaction() -> Transaction {
    panic!("a reused request id must not spend")
}

/// After the retention a request id is forgotten: the same call applies again.
#[test]
fn request_ids_are_forgotten_after_the_retention() {
    let (mut ledger, timestamp) = ledger_with_request_a();
    assert_eq!(ledger.remembered_request_count(), 1);
    let later = ledger.execute_add_transaction(Some(request("a", 1_000)), "A", 10, timestamp);
    assert!(matches!(later, Outcome::Fresh(Ok(Transaction { id: 2, .. }))), "{later:?}");
    ledger.purge_requests(5_000, 1_000);
    assert_eq!(ledger.remembered_request_count(), 0);
}

/// A user has at most `max_remembered` request ids at once: a new one past
/// it is refused and changes nothing; once older ones expire, it is accepted.
#[test]
fn request_ids_past_the_cap_are_refused_until_older_ones_expire() {
    let mut ledger = Ledger::new();
    for (index, id) in ["a", "b", "c"].into_iter().enumerate() {
        let outcome = ledger.execute_add_transaction(
            Some(request(id, index as i64)),
            "P",
            1,
            at("2024-01-01T00:00:00Z"),
        );
        assert!(matches!(outcome, Outcome::Fresh(Ok(_))), "{outcome:?}");
    }
    let refused = ledger.execute_spend(Some(request("d", 10)), 1);
    assert_eq!(refused, Outcome::Fresh(Err(LedgerError::RequestIdLimitReached { limit: 3 })));
    assert_eq!(ledger.total(), 3, "the refusal changed nothing");
    let retry =
        ledger.execute_add_transaction(Some(request("a", 10)), "P", 1, at("2024-01-01T00:00:00Z"));
    assert!(matches!(retry, Outcome::Repeated(Ok(_))), "retries still work: {retry:?}");
    // 1,000 ms later "a" has expired: room for one more.
    assert!(matches!(ledger.execute_spend(Some(request("d", 1_000)), 1), Outcome::Fresh(Ok(_))));
}
