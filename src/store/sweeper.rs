//! The request-id sweeper: a background thread that releases remembered
//! request ids past their retention, so that users who never write again do
//! not keep theirs forever.

use std::sync::Arc;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use chrono::Utc;

use super::users::{Users, collect_users};

/// How often remembered request ids past their retention are released.
const REQUEST_SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// The running sweeper; dropping it stops the thread without waiting.
#[derive(Debug)]
pub(crate) struct Sweeper {
    /// Dropping it wakes the thread, which then ends.
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Sweeper {
    /// Starts sweeping `users` every [`REQUEST_SWEEP_INTERVAL`]. A store that
    /// cannot start it still works; it only keeps expired request ids until
    /// their users write again.
    pub(crate) fn start(users: Arc<Users>, retention_ms: i64) -> Self {
        let (stop, stopped) = mpsc::channel::<()>();
        let spawned =
            std::thread::Builder::new().name("request-id-sweeper".to_owned()).spawn(move || {
                while let Err(mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(REQUEST_SWEEP_INTERVAL)
                {
                    let now_ms = Utc::now().timestamp_millis();
                    for (_, user) in collect_users(&users) {
                        if let Ok(mut user) = user.write() {
                            user.ledger.purge_requests(now_ms, retention_ms);
                        }
                    }
                }
            });
        let thread = spawned
            .inspect_err(|error| tracing::warn!(%error, "cannot start the request-id sweeper"))
            .ok();
        Self { stop: Some(stop), thread }
    }

    /// Tells the thread to stop, without waiting.
    pub(crate) fn signal(&mut self) {
        drop(self.stop.take());
    }

    /// Stops the thread and joins it, giving up at `deadline`; returns
    /// whether it stopped. A sweep in progress finishes first.
    pub(crate) fn stop(&mut self, deadline: Option<Instant>) -> bool {
        self.signal();
        let Some(thread) = self.thread.take() else { return true };
        if !wait_finished(&thread, deadline) {
            self.thread = Some(thread);
            return false;
        }
        if thread.join().is_err() {
            tracing::error!("the request-id sweeper panicked");
        }
        true
    }
}

/// Waits until `thread` has finished or `deadline` passed; returns whether
/// it finished. Bounded by the deadline: each turn sleeps a millisecond.
pub(crate) fn wait_finished(thread: &JoinHandle<()>, deadline: Option<Instant>) -> bool {
    loop {
        if thread.is_finished() {
            return true;
        }
        if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}
