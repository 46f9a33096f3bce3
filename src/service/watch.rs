//! WatchTransactions: a user's history, then each new entry once durable,
//! read from the history at the client's pace.
//!
//! The stream holds no queue of its own. It reads a page of at most
//! [`WATCH_PAGE_ENTRIES`] entries only when the client has taken the last
//! one (HTTP/2 flow control and tonic's body pull it), so a slow client
//! costs one page of memory however far behind it falls. Caught up, it
//! waits for a change of the user to become durable (on replicas over a
//! shared database, also one another replica stored, which the server looks
//! for once for all streams: [`Store::wake_followers`]), or for shutdown,
//! which ends the stream with UNAVAILABLE so the client reconnects
//! elsewhere from its last position.

use std::sync::Arc;

use tokio::sync::watch;
use tokio_stream::Stream;
use tonic::Status;

use super::admission::ClientSlot;
use super::{MAX_PAGE_BYTES, history_entry, status};
use crate::ledger::{HistoryCursor, PageLimits};
use crate::proto::v1::WatchTransactionsResponse;
use crate::store::{Store, UserId};

/// Entries read from the history at a time.
const WATCH_PAGE_ENTRIES: usize = 64;

/// What a stream keeps for as long as it is open: its share of its
/// client's calls and its place among the server's watch streams.
pub(super) struct StreamSlots {
    pub(super) _client: Option<ClientSlot>,
    pub(super) _watch: tokio::sync::OwnedSemaphorePermit,
}

/// The entries of `user_id`'s history after `cursor`, then each new one
/// once durable, until the client goes away or `shutdown` turns true.
pub(super) fn follow(
    store: Arc<Store>,
    user_id: String,
    cursor: HistoryCursor,
    mut shutdown: watch::Receiver<bool>,
    slots: StreamSlots,
) -> impl Stream<Item = Result<WatchTransactionsResponse, Status>> + Send + 'static {
    async_stream::stream! {
        let _slots = slots;
        metrics::gauge!("points_watch_streams").increment(1.0);
        let _open = OpenStream;
        let mut changes = store.subscribe_changes(UserId::new(&user_id));
        let mut cursor = cursor;
        let limits = PageLimits { max_entries: WATCH_PAGE_ENTRIES, max_bytes: MAX_PAGE_BYTES };
        // The first read brings the user up to what is stored; later ones
        // read them as the store keeps them up to date for followers.
        let mut first_read = true;
        loop {
            // Told to shut down, or the server that would tell it is gone.
            if *shutdown.borrow() || shutdown.has_changed().is_err() {
                yield Err(shutting_down());
                break;
            }
            changes.mark_seen();
            let user = UserId::new(&user_id);
            let read = async {
                if first_read {
                    store.history_page(user, cursor, limits).await
                } else {
                    store.followed_history_page(user, cursor, limits).await
                }
            };
            // A read waiting on a database that does not answer must not
            // hold the stream past shutdown.
            let page = tokio::select! {
                page = read => page,
                _ = shutdown.wait_for(|down| *down) => continue,
            };
            first_read = false;
            let page = match page {
                Ok(Some(page)) => page,
                Ok(None) => {
                    // The history never shrinks: a place in it stays valid.
                    yield Err(Status::internal("the followed history lost its place"));
                    break;
                }
                Err(error) => {
                    yield Err(status::store_error(&error));
                    break;
                }
            };
            cursor = page.after;
            if page.entries.is_empty() {
                tokio::select! {
                    () = changes.changed() => {}
                    _ = shutdown.wait_for(|down| *down) => {}
                }
                continue;
            }
            for entry in page.entries {
                yield Ok(WatchTransactionsResponse { entry: Some(history_entry(entry)) });
            }
        }
    }
}

/// UNAVAILABLE: the server is going away, reconnect.
fn shutting_down() -> Status {
    Status::unavailable(
        "the server is shutting down; reconnect (to another replica) with after_position set to \
         the last position received",
    )
}

/// Counts an open stream in `points_watch_streams` for as long as it lives.
struct OpenStream;

impl Drop for OpenStream {
    fn drop(&mut self) {
        metrics::gauge!("points_watch_streams").decrement(1.0);
    }
}
