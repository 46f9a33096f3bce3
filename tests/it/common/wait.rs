//! Waiting for something that happens in the background (a snapshot, a
//! closed connection, a metric), by polling with a deadline instead of
//! sleeping for a guessed time.

use std::future::Future;
use std::time::{Duration, Instant};

/// How often a condition is polled.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Polls `attempt` until it returns `Some` and returns that value; fails the
/// test, naming `what`, if `timeout` passes first.
pub async fn eventually<T, F>(what: &str, timeout: Duration, mut attempt: impl FnMut() -> F) -> T
where
    F: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = attempt().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// [`eventually`] for tests that do not run on an async runtime.
pub fn eventually_blocking<T>(
    what: &str,
    timeout: Duration,
    mut attempt: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = attempt() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(POLL_INTERVAL);
    }
}
