//! Waiting for something that happens in the background (a snapshot, a
//! closed connection, a metric), by polling with a deadline instead of
//! sleeping for a guessed time.

use std::future::Future;
use std::time::{Duration, Instant};

/// How often a condition is polled.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Polls `attempt` until it returns `Some` and returns that value; fails the
/// test, naming `what`, if `timeout` passes first.
pub async fn eventually<T, F>(what: &str, timeout: Duration, attempt: impl FnMut() -> F) -> T
where
    F: Future<Output = Option<T>>,
{
    let value = poll_until(timeout, attempt).await;
    value.unwrap_or_else(|| panic!("timed out after {timeout:?} waiting for {what}"))
}

/// [`eventually`] for tests that do not run on an async runtime.
pub fn eventually_blocking<T>(
    what: &str,
    timeout: Duration,
    attempt: impl FnMut() -> Option<T>,
) -> T {
    let value = poll_until_blocking(timeout, attempt);
    value.unwrap_or_else(|| panic!("timed out after {timeout:?} waiting for {what}"))
}

/// Polls `attempt` until it returns `Some` and returns that value, or `None`
/// once `timeout` has passed: for a wait whose end is not a failure.
pub async fn poll_until<T, F>(timeout: Duration, mut attempt: impl FnMut() -> F) -> Option<T>
where
    F: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = attempt().await {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// [`poll_until`] for code that does not run on an async runtime.
pub fn poll_until_blocking<T>(
    timeout: Duration,
    mut attempt: impl FnMut() -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = attempt() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}
