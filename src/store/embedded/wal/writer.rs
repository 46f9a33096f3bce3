//! The journal's writer thread: takes everything appended, writes it as
//! batches, syncs as the policy asks, switches segments for snapshots, and
//! publishes how far the journal is durable.

use std::sync::Arc;

use tokio::sync::watch;

use super::super::files::DataDir;
use super::batch::encode_batch;
use super::journal::{
    BATCH_BUFFER_KEEP_BYTES, FsyncPolicy, Horizon, JournalFailed, Published, Rotation, Shared,
    SnapshotTrigger,
};
use super::segment::Segment;

pub(super) struct Writer {
    pub(super) shared: Arc<Shared>,
    pub(super) segment: Segment,
    pub(super) fsync: FsyncPolicy,
    /// What was last published.
    pub(super) horizon: Horizon,
    pub(super) publisher: watch::Sender<Published>,
    pub(super) data_dir: Arc<DataDir>,
    pub(super) snapshots: Option<SnapshotTrigger>,
    /// Segment size at the last snapshot request, so that a failed snapshot
    /// is retried after another threshold of growth rather than on every write.
    pub(super) last_request_size: Option<u64>,
}

/// One turn's work, taken from [`Pending`] under its lock.
struct Turn {
    last_sequence: u64,
    rotation: Option<Rotation>,
    sync_through: u64,
    closing: bool,
}

impl Writer {
    /// Runs the writer until the journal closes or fails. A panic (a broken
    /// assertion: a bug) fails the journal like a write error, so that
    /// callers are told and closing does not wait for a writer that is gone.
    pub(super) fn run_to_end(mut self) {
        let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.run()));
        if ran.is_err() {
            self.fail("the journal writer stopped on an internal error (a bug)".to_owned());
        }
    }

    fn run(&mut self) {
        let mut batch: Vec<u8> = Vec::new();
        let mut framed: Vec<u8> = Vec::new();
        let mut waiters = Vec::new();
        self.maybe_request_snapshot();
        loop {
            let turn = {
                let mut pending = self.shared.lock();
                while pending.bytes.is_empty()
                    && pending.rotation.is_none()
                    && pending.sync_through <= self.horizon.synced
                    && !pending.closing
                {
                    pending = self
                        .shared
                        .wake_writer
                        .wait(pending)
                        .unwrap_or_else(|poisoned| poisoned.into_inner());
                }
                std::mem::swap(&mut pending.bytes, &mut batch);
                std::mem::swap(&mut pending.waiters, &mut waiters);
                Turn {
                    last_sequence: pending.last_sequence,
                    rotation: pending.rotation.take(),
                    sync_through: pending.sync_through,
                    closing: pending.closing,
                }
            };
            // One waiter per buffered record, numbered right after what is
            // durable: anything else would wake the wrong callers.
            assert_eq!(
                turn.last_sequence - self.horizon.durable,
                waiters.len() as u64,
                "every buffered record has exactly one waiter"
            );
            let published = self.horizon;
            let written = self.write_turn(&batch, waiters.len(), &turn, &mut framed);
            if let Err(reason) = written {
                let failure = self.fail(reason);
                for waiter in waiters.drain(..) {
                    let _ = waiter.send(Err(failure.clone()));
                }
                return;
            }
            let batch_bytes = batch.len() as u64;
            batch.clear();
            batch.shrink_to(BATCH_BUFFER_KEEP_BYTES);
            framed.clear();
            framed.shrink_to(BATCH_BUFFER_KEEP_BYTES);
            self.shared.lock().backlog_bytes -= batch_bytes;
            assert!(
                self.horizon.durable >= published.durable
                    && self.horizon.synced >= published.synced,
                "the durable and synced sequences only grow"
            );
            self.publisher.send_replace(Published::Healthy(self.horizon));
            // A caller that gave up waiting has dropped its receiver: fine.
            for waiter in waiters.drain(..) {
                let _ = waiter.send(Ok(()));
            }

            self.maybe_request_snapshot();
            if turn.closing && self.shared.lock().bytes.is_empty() {
                self.stop();
                return;
            }
        }
    }

    /// Writes one turn's records (across a segment switch if a rotation was
    /// asked for) and syncs as the policy and any sync request demand.
    fn write_turn(
        &mut self,
        batch: &[u8],
        count: usize,
        turn: &Turn,
        framed: &mut Vec<u8>,
    ) -> Result<(), String> {
        let first_sequence = self.horizon.durable + 1;
        let last_sequence = self.horizon.durable + count as u64;
        match &turn.rotation {
            None => self.write_records(batch, count, first_sequence, framed)?,
            Some(rotation) => {
                // The rotation point was taken inside this buffer, at a
                // record boundary of the records it holds.
                assert!(
                    rotation.at_byte <= batch.len()
                        && rotation.at_record <= count
                        && rotation.after_sequence + 1
                            == first_sequence + rotation.at_record as u64,
                    "a rotation point lies inside the buffer it splits"
                );
                let (old, new) = batch.split_at(rotation.at_byte);
                let switched = self
                    .write_records(old, rotation.at_record, first_sequence, framed)
                    .and_then(|()| self.rotate(rotation.after_sequence + 1));
                // The snapshot waits for this answer either way.
                let _ = rotation.done.send(switched.clone());
                switched?;
                framed.clear();
                let new_first = rotation.after_sequence + 1;
                self.write_records(new, count - rotation.at_record, new_first, framed)?;
            }
        }
        self.horizon.durable = last_sequence;
        if self.fsync == FsyncPolicy::Never
            && (turn.sync_through > self.horizon.synced || turn.closing)
        {
            self.segment.sync().map_err(|error| self.write_failure(&error))?;
            self.horizon.synced = last_sequence;
            // An empty batch that says so, synced too: were a synced batch
            // later damaged, reading must not take it for the unsynced end.
            framed.clear();
            encode_batch(&[], 0, last_sequence + 1, last_sequence, self.segment.seed, framed);
            self.segment
                .write(framed, FsyncPolicy::Always)
                .map_err(|error| self.write_failure(&error))?;
        }
        assert!(self.horizon.synced <= self.horizon.durable, "nothing is synced before written");
        Ok(())
    }

    /// Writes `count` records, the first with sequence `first_sequence`, as
    /// batches. Under `--fsync always` each batch is synced before the next
    /// is written, and says so, so that an invalid batch followed by a valid
    /// one is always recognised as damage.
    fn write_records(
        &mut self,
        records: &[u8],
        count: usize,
        first_sequence: u64,
        framed: &mut Vec<u8>,
    ) -> Result<(), String> {
        let (mut rest, mut left, mut sequence) = (records, count, first_sequence);
        // Each turn writes at least one record, so this ends within `count` turns.
        while left > 0 {
            framed.clear();
            let synced = self.horizon.synced;
            let (taken, bytes) =
                encode_batch(rest, left, sequence, synced, self.segment.seed, framed);
            self.segment.write(framed, self.fsync).map_err(|error| self.write_failure(&error))?;
            (rest, left, sequence) = (&rest[bytes..], left - taken, sequence + taken as u64);
            if self.fsync == FsyncPolicy::Always {
                self.horizon.synced = sequence - 1;
            }
        }
        Ok(())
    }

    fn write_failure(&self, error: &std::io::Error) -> String {
        format!("cannot write the journal {}: {error}", self.segment.path.display())
    }

    /// Closes the current segment and starts a new one at `first_sequence`.
    fn rotate(&mut self, first_sequence: u64) -> Result<(), String> {
        if first_sequence == self.segment.first_sequence {
            return Ok(()); // nothing written since the segment began
        }
        self.segment
            .sync()
            .map_err(|error| format!("cannot sync {}: {error}", self.segment.path.display()))?;
        self.horizon.synced = first_sequence - 1;
        let preallocate_bytes = self.segment.preallocate_bytes;
        self.segment = Segment::create(&self.data_dir, first_sequence, preallocate_bytes)
            .map_err(|error| format!("cannot create journal segment {first_sequence}: {error}"))?;
        self.last_request_size = None;
        tracing::info!(path = %self.segment.path.display(), "started a new journal segment");
        Ok(())
    }

    fn maybe_request_snapshot(&mut self) {
        let Some(trigger) = &self.snapshots else { return };
        let size = self.segment.size_bytes;
        let due = match self.last_request_size {
            None => size >= trigger.threshold_bytes,
            Some(requested_at) => size >= requested_at.saturating_add(trigger.threshold_bytes),
        };
        if due {
            // A full channel means a snapshot is already on its way.
            let _ = trigger.requests.try_send(());
            self.last_request_size = Some(size);
        }
    }

    /// Stops after a clean close: everything written is synced; a rotation
    /// asked for meanwhile is told no, and records appended after the last
    /// turn (none, once closing is seen) are told the journal is closed.
    fn stop(&mut self) {
        let leftovers = {
            let mut pending = self.shared.lock();
            pending.writer_stopped = true;
            if let Some(rotation) = pending.rotation.take() {
                let _ = rotation.done.send(Err("the journal closed".to_owned()));
            }
            std::mem::take(&mut pending.waiters)
        };
        for waiter in leftovers {
            let _ = waiter.send(Err(JournalFailed("the journal is closed".into())));
        }
    }

    /// Fails the journal for good; callers still waiting, and a snapshot
    /// waiting for its rotation, are told so.
    fn fail(&self, reason: String) -> JournalFailed {
        tracing::error!(%reason, "journal failed: refusing all further changes (fail-stop)");
        let reason: Arc<str> = reason.into();
        let (waiting, rotation) = {
            let mut pending = self.shared.lock();
            pending.failure = Some(Arc::clone(&reason));
            pending.writer_stopped = true;
            (std::mem::take(&mut pending.waiters), pending.rotation.take())
        };
        if let Some(rotation) = rotation {
            let _ = rotation.done.send(Err(reason.to_string()));
        }
        for waiter in waiting {
            let _ = waiter.send(Err(JournalFailed(Arc::clone(&reason))));
        }
        self.publisher.send_replace(Published::Failed(Arc::clone(&reason)));
        JournalFailed(reason)
    }
}
