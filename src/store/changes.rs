//! Who follows which user's history, and waking them when it changes.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use dashmap::DashMap;
use tokio::sync::watch;

/// Per user followed, a signal that a change of theirs was taken (their
/// followers' reads wait for it to be durable before showing it). Only
/// users someone follows are listed, so its size is bounded by the
/// followers; a write costs one atomic load when nobody follows anyone.
#[derive(Debug, Default)]
pub(crate) struct Changes {
    senders: DashMap<Arc<str>, watch::Sender<()>>,
    /// Followers subscribed, over every user.
    followers: AtomicUsize,
}

/// A follower of one user: wakes when a change of theirs is taken.
/// Unsubscribes when dropped.
#[derive(Debug)]
pub struct ChangeSubscription {
    changes: Arc<Changes>,
    user_id: Arc<str>,
    /// Taken only when dropped.
    receiver: Option<watch::Receiver<()>>,
}

impl Changes {
    /// Follows `user_id`'s changes from now on.
    pub(crate) fn subscribe(self: &Arc<Self>, user_id: &str) -> ChangeSubscription {
        self.followers.fetch_add(1, Ordering::AcqRel);
        let user_id: Arc<str> = user_id.into();
        let receiver = self
            .senders
            .entry(Arc::clone(&user_id))
            .or_insert_with(|| watch::Sender::new(()))
            .subscribe();
        ChangeSubscription { changes: Arc::clone(self), user_id, receiver: Some(receiver) }
    }

    /// The users someone follows now (at most one per follower), sorted.
    pub(crate) fn followed(&self) -> Vec<Arc<str>> {
        if self.followers.load(Ordering::Acquire) == 0 {
            return Vec::new();
        }
        let mut followed: Vec<Arc<str>> =
            self.senders.iter().map(|entry| Arc::clone(entry.key())).collect();
        followed.sort_unstable();
        followed
    }

    /// A change of `user_id`'s was taken by the backend: wakes their
    /// followers, whose reads then wait for it to be durable.
    pub(crate) fn notify(&self, user_id: &str) {
        if self.followers.load(Ordering::Acquire) == 0 {
            return;
        }
        if let Some(sender) = self.senders.get(user_id) {
            sender.send_replace(());
        }
    }
}

impl ChangeSubscription {
    /// Marks every change so far as seen: call before reading the history,
    /// so that a change taken after it wakes [`ChangeSubscription::changed`].
    pub fn mark_seen(&mut self) {
        if let Some(receiver) = &mut self.receiver {
            receiver.borrow_and_update();
        }
    }

    /// Completes once a change not yet seen is taken.
    pub async fn changed(&mut self) {
        // The sender lives in the map while this subscription does.
        let Some(receiver) = &mut self.receiver else { return };
        if receiver.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

impl Drop for ChangeSubscription {
    fn drop(&mut self) {
        self.changes.followers.fetch_sub(1, Ordering::AcqRel);
        // The last follower of a user takes the user's entry with it. Its
        // own receiver goes first, so that of two followers dropped at once
        // the second to look finds none left (the map's shard lock orders
        // the looks; a subscribe holds it while adding its receiver).
        drop(self.receiver.take());
        self.changes.senders.remove_if(&self.user_id, |_, sender| sender.receiver_count() == 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Followers of one user dropped at once leave nothing behind: the last
    /// to go takes the user's entry, whichever it is.
    #[test]
    fn followers_dropped_at_once_leave_no_entry_behind() {
        let changes = Arc::new(Changes::default());
        for _ in 0..2_000 {
            let first = changes.subscribe("alice");
            let second = changes.subscribe("alice");
            let barrier = Arc::new(std::sync::Barrier::new(2));
            let other = Arc::clone(&barrier);
            let dropper = std::thread::spawn(move || {
                other.wait();
                drop(second);
            });
            barrier.wait();
            drop(first);
            dropper.join().expect("the other dropper");
            assert!(changes.senders.is_empty(), "a dead entry was left behind");
        }
        assert_eq!(changes.followers.load(Ordering::Acquire), 0);
    }
}
