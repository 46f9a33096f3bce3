//! When each user's ledger next changes by itself (a hold times out, points
//! expire), ordered by time, so that the server brings idle users up to date
//! without scanning every user.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

/// Users by the time their ledger next changes by itself, in milliseconds
/// since 1970-01-01T00:00:00Z. Holds only users with something waiting.
#[derive(Debug, Default)]
pub(crate) struct Deadlines {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    by_time: BTreeSet<(i64, Arc<str>)>,
    by_user: HashMap<Arc<str>, i64>,
}

impl Deadlines {
    /// `user_id`'s ledger next changes by itself at `due_ms` (`None`:
    /// nothing waits). O(log users).
    pub(crate) fn set(&self, user_id: &str, due_ms: Option<i64>) {
        let mut inner = self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let Inner { by_time, by_user } = &mut *inner;
        if let Some((user, previous)) = by_user.remove_entry(user_id) {
            by_time.remove(&(previous, user));
        }
        if let Some(due_ms) = due_ms {
            let user: Arc<str> = user_id.into();
            by_time.insert((due_ms, Arc::clone(&user)));
            by_user.insert(user, due_ms);
        }
        debug_assert_eq!(by_time.len(), by_user.len());
    }

    /// Up to `limit` users whose ledger is due by `now_ms`, earliest first.
    /// They stay listed until their ledger is advanced (which sets them
    /// anew). O(limit · log users).
    pub(crate) fn due(&self, now_ms: i64, limit: usize) -> Vec<Arc<str>> {
        let inner = self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        inner
            .by_time
            .iter()
            .take_while(|(due_ms, _)| *due_ms <= now_ms)
            .take(limit)
            .map(|(_, user)| Arc::clone(user))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::Deadlines;

    #[test]
    fn users_come_due_in_time_order_and_a_new_time_replaces_the_old_one() {
        let deadlines = Deadlines::default();
        deadlines.set("a", Some(30));
        deadlines.set("b", Some(10));
        deadlines.set("c", Some(20));
        deadlines.set("c", Some(40));
        deadlines.set("b", None);
        let due = |now_ms| -> Vec<String> {
            deadlines.due(now_ms, 10).iter().map(|user| user.to_string()).collect()
        };
        assert_eq!(due(29), Vec::<String>::new());
        assert_eq!(due(35), ["a"]);
        assert_eq!(due(100), ["a", "c"]);
        assert_eq!(deadlines.due(100, 1).len(), 1);
    }
}
