//! Self-tests of the simulated disk (`tests/it/common/sim_disk/`): it must
//! model what a real Linux file system guarantees across a power cut, and
//! nothing more, or the crash tests built on it prove nothing. One module
//! per part of the model: file data, names, power (handles, locks, the
//! machine off, determinism) and faults.
//!
//! Every assertion names its seed: `SimDisk::new(seed)` replays a failure.

mod data;
mod faults;
mod names;
mod power;

use crate::common::sim_disk::{MACHINE_OFF, POWER_WAS_CUT, SECTOR_BYTES, SimDisk};

use std::collections::BTreeMap;
use std::fmt::Display;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use points::{FileSystem, WritableFile};

/// How many seeds the randomised tests try.
const SEEDS: u64 = 400;

/// The data directory of most tests.
const DIR: &str = "/data";

/// A file of the data directory.
fn file(name: &str) -> PathBuf {
    Path::new(DIR).join(name)
}

/// A disk with the data directory made.
fn disk(seed: u64) -> Arc<SimDisk> {
    let disk = SimDisk::new(seed);
    disk.create_dir_all(Path::new(DIR)).at(seed, "create_dir_all");
    disk
}

/// `length` recognisable bytes, none of them zero (so "never landed" and
/// "landed" can be told apart), different for each `salt`.
fn pattern(salt: u64, length: usize) -> Vec<u8> {
    (0..length).map(|index| ((index as u64 * 7 + salt * 13) % 251) as u8 + 1).collect()
}

/// Unwrapping that names the seed and the step, so a failure replays.
trait At<T> {
    fn at(self, seed: u64, what: &str) -> T;
}

impl<T, E: Display> At<T> for Result<T, E> {
    fn at(self, seed: u64, what: &str) -> T {
        self.unwrap_or_else(|error| panic!("seed {seed}: {what} failed: {error}"))
    }
}

/// The durable content of `path`, if it would survive.
fn durable(disk: &SimDisk, path: &Path) -> Option<Vec<u8>> {
    disk.durable_files().get(path).cloned()
}

/// Creates `path` with `bytes`, syncs its data and its directory.
fn create_synced(disk: &SimDisk, seed: u64, path: &Path, bytes: &[u8]) -> Box<dyn WritableFile> {
    let mut handle = disk.create_new(path).at(seed, "create_new");
    handle.append(bytes).at(seed, "append");
    handle.sync().at(seed, "sync");
    disk.sync_dir(path.parent().unwrap_or(Path::new(""))).at(seed, "sync_dir");
    handle
}

/// Whether an error is the simulation's "machine is off" error.
fn is_machine_off(error: &io::Error) -> bool {
    error.kind() == io::ErrorKind::Other && error.to_string() == MACHINE_OFF
}

/// Whether an error is the simulation's stale-handle error.
fn is_power_was_cut(error: &io::Error) -> bool {
    error.kind() == io::ErrorKind::Other && error.to_string() == POWER_WAS_CUT
}

/// Checks that `image` holds, in `[offset, offset + bytes.len())`, only
/// whole sector pieces of `bytes` or zeros, and that its length does not
/// split a piece; returns how many pieces landed and how many did not.
fn check_sector_pieces(seed: u64, image: &[u8], offset: usize, bytes: &[u8]) -> (usize, usize) {
    let end = offset + bytes.len();
    let (mut landed, mut missing) = (0, 0);
    let mut low = offset;
    for _ in 0..=bytes.len() / SECTOR_BYTES + 1 {
        if low >= end {
            break;
        }
        let high = ((low / SECTOR_BYTES + 1) * SECTOR_BYTES).min(end);
        assert!(
            image.len() <= low || image.len() >= high,
            "seed {seed}: the file ends at {} inside the sector piece {low}..{high}",
            image.len()
        );
        if image.len() >= high {
            let piece = &image[low..high];
            if piece == &bytes[low - offset..high - offset] {
                landed += 1;
            } else {
                assert!(
                    piece.iter().all(|byte| *byte == 0),
                    "seed {seed}: the sector piece {low}..{high} is neither the data nor zeros"
                );
                missing += 1;
            }
        } else {
            missing += 1;
        }
        low = high;
    }
    (landed, missing)
}

/// Runs `case` for each of the [`SEEDS`] seeds; each run says which of
/// `outcomes` it saw. Fails unless every outcome was seen with some seed: a
/// model that never does one of them would prove nothing about it.
fn every_outcome_happens<const N: usize>(
    outcomes: [&str; N],
    mut case: impl FnMut(u64) -> &'static str,
) {
    let mut seen: BTreeMap<&str, u64> = outcomes.iter().map(|outcome| (*outcome, 0)).collect();
    for seed in 0..SEEDS {
        let outcome = case(seed);
        *seen.get_mut(outcome).unwrap_or_else(|| panic!("seed {seed}: no outcome {outcome}")) += 1;
    }
    let counts: Vec<String> =
        outcomes.iter().map(|outcome| format!("{outcome} {}", seen[outcome])).collect();
    assert!(seen.values().all(|count| *count > 0), "{}", counts.join(", "));
}
