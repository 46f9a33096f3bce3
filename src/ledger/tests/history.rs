//! History pages: arrival order, and the byte budget of a page.

use super::*;

/// History pages walk transactions and spends in arrival order with remaining points.
#[test]
fn history_pages_list_entries_in_arrival_order() {
    let mut ledger = Ledger::new();
    add(&mut ledger, "P", 100, "2024-01-03T00:00:00Z");
    spend(&mut ledger, 30);
    spend(&mut ledger, 10);
    add(&mut ledger, "P", 50, "2024-01-01T00:00:00Z");
    add(&mut ledger, "P", -5, "2024-01-05T00:00:00Z");
    let mut cursor = HistoryCursor::default();
    let mut entries = Vec::new();
    for _ in 0..10 {
        let page = ledger.history_page(cursor, 2).expect("valid cursor");
        assert!(page.entries.len() <= 2);
        entries.extend(page.entries);
        match page.next {
            Some(next) => cursor = next,
            None => break,
        }
    }
    let summary: Vec<String> = entries
        .iter()
        .map(|paged| match &paged.entry {
            HistoryEntry::Transaction { transaction, remaining_points } => {
                format!("t{} {} left {remaining_points}", transaction.id, transaction.points)
            }
            HistoryEntry::Spend(spend) => format!("s{} {}", spend.id, spend.points),
            other => panic!("only transactions and spends were written, not {other:?}"),
        })
        .collect();
    // 45 points were debited from P; they now count against the older 50-point lot.
    assert_eq!(summary, ["t1 100 left 100", "s1 30", "s2 10", "t2 50 left 5", "t3 -5 left 0"]);
    assert!(
        ledger.history_page(HistoryCursor { transactions: 9, spends: 0, events: 0 }, 1).is_none()
    );
    assert!(
        ledger.history_page(HistoryCursor { transactions: 0, spends: 1, events: 0 }, 1).is_none()
    );
}

/// A page stops before its byte budget, but always holds one entry, and the
/// pages together list every entry once.
#[test]
fn history_pages_stop_at_their_byte_budget_but_always_make_progress() {
    let mut ledger = Ledger::new();
    for day in 1..=9 {
        add(&mut ledger, "DANNON", 10, &format!("2024-01-0{day}T00:00:00Z"));
    }
    let mut cursor = HistoryCursor::default();
    let mut seen = 0;
    loop {
        let page = ledger
            .history_page_within(cursor, PageLimits { max_entries: 100, max_bytes: 1 })
            .expect("valid cursor");
        assert_eq!(page.entries.len(), 1, "one entry even past the budget");
        seen += 1;
        match page.next {
            Some(next) => cursor = next,
            None => break,
        }
    }
    assert_eq!(seen, 9);
    let two = ledger
        .history_page_within(
            HistoryCursor::default(),
            PageLimits { max_entries: 100, max_bytes: 2 * (80 + 6) },
        )
        .unwrap();
    assert_eq!(two.entries.len(), 2, "two transaction entries of payer DANNON fit");
}
