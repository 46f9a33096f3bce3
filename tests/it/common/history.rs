//! A user's history, read page by page with ListTransactions.

use points::proto::v1::history_entry::Entry;
use points::proto::v1::{ListTransactionsRequest, ListTransactionsResponse};
use tonic::Status;

use super::client::Client;

/// Every page of `user_id`'s history, with pages of `page_size`, in order.
/// On an error, the pages read so far and the error.
pub async fn pages(
    client: &mut Client,
    user_id: &str,
    page_size: i32,
) -> (Vec<ListTransactionsResponse>, Result<(), Status>) {
    let mut pages = Vec::new();
    let mut page_token = String::new();
    // Bounded: no test writes anywhere near this many pages.
    for _ in 0..100_000 {
        let request =
            ListTransactionsRequest { user_id: user_id.to_owned(), page_size, page_token };
        let page = match client.list_transactions(request).await {
            Ok(page) => page.into_inner(),
            Err(status) => return (pages, Err(status)),
        };
        page_token = page.next_page_token.clone();
        pages.push(page);
        if page_token.is_empty() {
            return (pages, Ok(()));
        }
    }
    panic!("the history of {user_id:?} never ended");
}

/// The entries of `pages`, in order.
pub fn entries_of(pages: Vec<ListTransactionsResponse>) -> Vec<Entry> {
    pages.into_iter().flat_map(|page| page.entries).filter_map(|entry| entry.entry).collect()
}

/// `user_id`'s whole history, failing the test if a page cannot be read.
pub async fn entries(client: &mut Client, user_id: &str) -> Vec<Entry> {
    let (pages, ended) = pages(client, user_id, 1000).await;
    ended.expect("history");
    entries_of(pages)
}

/// Walks `user_id`'s whole history with pages of `page_size`, checking that
/// no page is longer than asked; returns ('t' or 's', id) per entry.
pub async fn walk(client: &mut Client, user_id: &str, page_size: i32) -> Vec<(char, u64)> {
    let (pages, ended) = pages(client, user_id, page_size).await;
    ended.expect("a page");
    for page in &pages {
        assert!(page.entries.len() <= page_size.max(1) as usize);
    }
    entries_of(pages)
        .into_iter()
        .map(|entry| match entry {
            Entry::Transaction(transaction) => ('t', transaction.id),
            Entry::Spend(spend) => ('s', spend.id),
            other => panic!("only transactions and spends were written, not {other:?}"),
        })
        .collect()
}
