//! The snapshotter: writes a snapshot of every user when the journal asks
//! (from its own thread) or when called, then removes what it covers.

use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use super::files::DataDir;
use super::snapshot::{self, SnapshotFile};
use super::wal::Journal;
use crate::store::OpenError;
use crate::store::users::{Users, collect_users};

/// Writes snapshots: from its own thread when the journal asks, or when
/// called.
pub(super) struct Snapshotter {
    pub(super) users: Arc<Users>,
    pub(super) journal: Arc<Journal>,
    pub(super) data_dir: Arc<DataDir>,
    /// Snapshots never overlap.
    pub(super) one_at_a_time: Mutex<()>,
}

impl Snapshotter {
    /// Starts the thread that takes a snapshot for each request on
    /// `requested`; it ends once the journal writer, which holds the other
    /// end, has stopped.
    pub(super) fn spawn(
        self: &Arc<Self>,
        requested: mpsc::Receiver<()>,
    ) -> Result<JoinHandle<()>, OpenError> {
        let snapshotter = Arc::clone(self);
        std::thread::Builder::new()
            .name("snapshotter".to_owned())
            .spawn(move || {
                for () in requested {
                    if let Err(reason) = snapshotter.take() {
                        tracing::error!(%reason, "snapshot failed; the journal still holds everything");
                    }
                }
            })
            .map_err(|source| OpenError::Io {
                action: "start the snapshot thread for",
                path: PathBuf::new(),
                source,
            })
    }

    /// Writes a snapshot of every user, then removes the journal segments and
    /// older snapshots it covers.
    ///
    /// No global lock and no second copy of the ledgers: the journal is
    /// rotated at sequence R first, then each user is written out under its
    /// own read lock with the sequence of its last record. Every record up to
    /// R is in its user's copy (it was applied before R was read); later ones
    /// may be, and recovery skips exactly those a user's copy holds. The
    /// snapshot is put in place only once the journal has everything it holds
    /// fsynced, whatever the fsync policy, so a snapshot is never ahead of the
    /// journal on disk.
    pub(super) fn take(&self) -> Result<(), String> {
        let _one_at_a_time =
            self.one_at_a_time.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let (journal, data_dir) = (&self.journal, &*self.data_dir);
        let started = Instant::now();
        let Some(ticket) = journal.request_rotation().map_err(|failure| failure.to_string())?
        else {
            tracing::info!("snapshot skipped: the store is closing");
            return Ok(());
        };
        let rotation_sequence = ticket.last_sequence;
        // The new segment first: then a failed rotation costs no snapshot
        // work, and the snapshot's file operations never interleave with the
        // rotation's (which keeps simulated-disk runs deterministic).
        ticket.switched.recv().map_err(|_| "the journal writer stopped".to_owned())??;
        let cannot_write =
            |error: std::io::Error| format!("cannot write snapshot {rotation_sequence}: {error}");
        let mut file = SnapshotFile::create(data_dir, rotation_sequence).map_err(cannot_write)?;
        let mut newest = 0;
        for (user_id, user) in collect_users(&self.users) {
            {
                // Encoding only, under the lock: a stalled disk must never
                // hold a user's lock (and with it the callers of that user).
                let user = user.read().map_err(|_| format!("user {user_id:?} is poisoned"))?;
                newest = newest.max(user.last_sequence);
                file.encode_user(&user_id, user.last_sequence, &user.ledger).map_err(
                    |violation| format!("user {user_id:?} breaks an invariant: {violation}"),
                )?;
            }
            file.write_encoded(snapshot::ENCODED_KEEP_BYTES).map_err(cannot_write)?;
        }
        let written_ms = started.elapsed().as_millis() as u64;
        let size_bytes = file.finish().map_err(cannot_write)?;
        journal.wait_synced_blocking(newest).map_err(|failure| failure.to_string())?;
        file.publish().map_err(cannot_write)?;

        let listing = data_dir.list().map_err(|error| error.to_string())?;
        let covered_journals =
            listing.journals.iter().filter(|(first, _)| *first <= rotation_sequence);
        let older_snapshots =
            listing.snapshots.iter().filter(|(sequence, _)| *sequence < rotation_sequence);
        for (_, path) in covered_journals.chain(older_snapshots) {
            data_dir
                .fs()
                .remove_file(path)
                .map_err(|error| format!("cannot remove {}: {error}", path.display()))?;
        }
        data_dir.sync().map_err(|error| format!("cannot sync the data directory: {error}"))?;
        metrics::histogram!("points_snapshot_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        tracing::info!(
            rotation_sequence,
            size_bytes,
            write_ms = written_ms,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "snapshot written"
        );
        Ok(())
    }
}
