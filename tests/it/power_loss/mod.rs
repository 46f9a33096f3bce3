//! The store on a simulated disk: random multi-user workloads cut by power
//! losses and I/O failures at random points, checked against a reference
//! model after every recovery ([`cases`]), and single I/O failures and
//! stalls aimed at one operation ([`io_failures`]).
//!
//! Each case is one seed: it picks the workload, the crash point, the fault
//! rate and every choice the simulated disk makes. A failing case prints its
//! seed; `POINTS_SIM_SEED=<seed> cargo test --test it power_loss::` replays
//! it, and `POINTS_SIM_SEEDS=<n>` runs more cases than the default.

mod cases;
mod io_failures;
mod workload;

use crate::common::sim_disk;

use std::path::PathBuf;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use points::{DurableOptions, FileSystem, FsyncPolicy, Storage, StoreOptions};

const DATA_DIR: &str = "/data";

fn epoch() -> DateTime<Utc> {
    DateTime::from_timestamp(1_700_000_000, 0).expect("valid")
}

fn options(disk: Arc<dyn FileSystem>, fsync: FsyncPolicy) -> StoreOptions {
    let mut options = StoreOptions::in_memory();
    options.storage = Storage::Durable(DurableOptions {
        data_dir: PathBuf::from(DATA_DIR),
        fsync,
        // Snapshots happen only where the workload says, so that every file
        // operation happens in an order the seed decides.
        snapshot_threshold_bytes: u64::MAX,
        max_journal_backlog_bytes: StoreOptions::DEFAULT_MAX_JOURNAL_BACKLOG_BYTES,
        // Preallocated as in production, but a few sectors at a time, so
        // that runs extend segments often and cuts land in every phase of
        // it (zeros written, records written over them, neither synced).
        journal_preallocate_bytes: match fsync {
            FsyncPolicy::Always => 3 * sim_disk::SECTOR_BYTES as u64,
            FsyncPolicy::Never => 0,
        },
        file_system: disk,
    });
    options
}
