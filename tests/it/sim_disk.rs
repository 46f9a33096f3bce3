//! Self-tests of the simulated disk (`tests/it/common/sim_disk.rs`): it must
//! model what a real Linux file system guarantees across a power cut, and
//! nothing more, or the crash tests built on it prove nothing.
//!
//! Every assertion names its seed: `SimDisk::new(seed)` replays a failure.

use crate::common::sim_disk;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Display;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use points::durability::file_system::{FileSystem, WritableFile};
use sim_disk::{MACHINE_OFF, POWER_WAS_CUT, SECTOR_BYTES, SimDisk, SimFault, SimOp};

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

#[test]
fn synced_data_survives_every_power_cut() {
    for seed in 0..SEEDS {
        let disk = disk(seed);
        let journal = file("journal");
        let mut handle = create_synced(&disk, seed, &journal, &pattern(seed, 1000));
        let untouched = file("untouched");
        let untouched_bytes = pattern(seed + 1, 777);
        drop(create_synced(&disk, seed, &untouched, &untouched_bytes));
        let mut synced = pattern(seed, 1000);
        for round in 0..4u64 {
            handle.append(&pattern(seed + round, 700)).at(seed, "unsynced append");
            let mut other = disk.create_new(&file(&format!("other{round}"))).at(seed, "create");
            other.append(&pattern(round, 100)).at(seed, "append other");
            disk.power_cut();
            let image = durable(&disk, &journal)
                .unwrap_or_else(|| panic!("seed {seed}: a dir-synced file vanished"));
            assert!(image.starts_with(&synced), "seed {seed}: round {round} altered synced data");
            assert_eq!(
                durable(&disk, &untouched).as_deref(),
                Some(untouched_bytes.as_slice()),
                "seed {seed}: a file with nothing unsynced changed"
            );
            // Whatever landed is the new baseline; sync more on top of it.
            handle = disk.open_append(&journal).at(seed, "open_append");
            let more = pattern(seed * 3 + round, 300 + round as usize * 211);
            handle.append(&more).at(seed, "append");
            handle.sync().at(seed, "sync");
            synced = image;
            synced.extend_from_slice(&more);
        }
        disk.power_cut();
        let image = durable(&disk, &file("journal")).unwrap_or_default();
        assert!(image.starts_with(&synced), "seed {seed}: the last cut altered synced data");
    }
}

#[test]
fn unsynced_appends_are_kept_dropped_torn_or_left_as_zeros_and_over_many_seeds_all_happen() {
    let (mut kept, mut dropped, mut torn, mut zeros) = (0, 0, 0, 0);
    for seed in 0..SEEDS {
        let disk = disk(seed);
        let path = file("journal");
        let synced = pattern(seed, 100);
        let mut handle = create_synced(&disk, seed, &path, &synced);
        let unsynced = pattern(seed + 7, 1500);
        handle.append(&unsynced).at(seed, "unsynced append");
        disk.power_cut();
        let image = durable(&disk, &path).unwrap_or_default();
        assert!(image.starts_with(&synced), "seed {seed}: synced data altered");
        assert!(image.len() <= 1600, "seed {seed}: the file grew past what was written");
        let tail = &image[100..];
        if tail.is_empty() {
            dropped += 1;
        } else if tail == unsynced.as_slice() {
            kept += 1;
        } else if tail.len() == unsynced.len() && tail.iter().all(|byte| *byte == 0) {
            zeros += 1;
        } else {
            torn += 1;
        }
        check_sector_pieces(seed, &image, 100, &unsynced);
    }
    assert!(
        kept > 0 && dropped > 0 && torn > 0 && zeros > 0,
        "kept {kept}, dropped {dropped}, torn {torn}, zeros {zeros}"
    );
}

/// A write over bytes already in the file (a journal written over its
/// preallocated zeros) survives a cut whole, not at all, or torn at sector
/// boundaries; the bytes it did not cover, synced, are never altered, and
/// the file's length does not change.
#[test]
fn unsynced_writes_over_synced_zeros_are_kept_dropped_or_torn_by_sector() {
    let (mut kept, mut dropped, mut torn) = (0, 0, 0);
    for seed in 0..SEEDS {
        let disk = disk(seed);
        let path = file("journal");
        let (records, zeros) = (pattern(seed, 100), vec![0; 4000]);
        let mut handle = create_synced(&disk, seed, &path, &[records.clone(), zeros].concat());
        let unsynced = pattern(seed + 7, 1500);
        handle.write_at(100, &unsynced).at(seed, "unsynced write over zeros");
        assert_eq!(
            disk.current_files()[&path],
            [&records[..], &unsynced, &[0; 2500]].concat(),
            "seed {seed}: reads see the write at once"
        );
        disk.power_cut();
        let image = durable(&disk, &path).expect("a synced file survives");
        assert_eq!(image.len(), 4100, "seed {seed}: the length changed");
        assert_eq!(image[..100], records, "seed {seed}: synced data before it altered");
        assert!(image[1600..].iter().all(|&byte| byte == 0), "seed {seed}: bytes after altered");
        match check_sector_pieces(seed, &image, 100, &unsynced) {
            (_, 0) => kept += 1,
            (0, _) => dropped += 1,
            _ => torn += 1,
        }
    }
    assert!(kept > 0 && dropped > 0 && torn > 0, "kept {kept}, dropped {dropped}, torn {torn}");
}

#[test]
fn torn_appends_are_sector_aligned_to_absolute_file_offsets() {
    let (mut partly_landed, mut gaps_before_landed_data) = (0, 0);
    for seed in 0..SEEDS {
        let disk = disk(seed);
        let path = file("journal");
        let mut handle = create_synced(&disk, seed, &path, &pattern(seed, 300));
        // Unaligned offsets and lengths, several sectors each.
        let first = pattern(seed + 1, 1300);
        let second = pattern(seed + 2, 2049);
        handle.append(&first).at(seed, "append");
        handle.append(&second).at(seed, "append");
        disk.power_cut();
        let image = durable(&disk, &path).unwrap_or_default();
        assert!(image.len() <= 300 + 1300 + 2049, "seed {seed}: the file grew too long");
        let (first_landed, first_missing) = check_sector_pieces(seed, &image, 300, &first);
        let (second_landed, second_missing) = check_sector_pieces(seed, &image, 1600, &second);
        if (first_landed > 0 && first_missing > 0) || (second_landed > 0 && second_missing > 0) {
            partly_landed += 1;
        }
        if first_missing > 0 && second_landed > 0 {
            gaps_before_landed_data += 1;
        }
    }
    assert!(partly_landed > 0, "no append was ever torn");
    assert!(gaps_before_landed_data > 0, "a dropped append never preceded a kept one");
}

#[test]
fn a_created_but_not_dir_synced_file_can_vanish_on_a_cut_and_a_dir_synced_one_never_does() {
    let (mut vanished, mut survived) = (0, 0);
    for seed in 0..SEEDS {
        let disk = disk(seed);
        let unnamed = file("unnamed");
        let mut handle = disk.create_new(&unnamed).at(seed, "create_new");
        handle.append(b"data").at(seed, "append");
        handle.sync().at(seed, "sync data but not the directory");
        let named = file("named");
        drop(create_synced(&disk, seed, &named, b"kept"));
        // The creation of `unnamed` was queued before the sync_dir above
        // made it durable too; so create one more after it.
        let late = file("late");
        let mut late_handle = disk.create_new(&late).at(seed, "create_new");
        late_handle.append(b"late").at(seed, "append");
        late_handle.sync().at(seed, "sync");
        disk.power_cut();
        let files = disk.current_files();
        assert_eq!(files.get(&named).map(Vec::as_slice), Some(&b"kept"[..]), "seed {seed}");
        assert_eq!(files.get(&unnamed).map(Vec::as_slice), Some(&b"data"[..]), "seed {seed}");
        match files.get(&late) {
            None => vanished += 1,
            Some(bytes) => {
                assert_eq!(bytes.as_slice(), b"late", "seed {seed}: synced data altered");
                survived += 1;
            }
        }
    }
    assert!(vanished > 0 && survived > 0, "vanished {vanished}, survived {survived}");
}

#[test]
fn a_rename_not_dir_synced_may_revert_and_a_dir_synced_one_never_does() {
    let (mut reverted, mut stuck) = (0, 0);
    for seed in 0..SEEDS {
        let disk = disk(seed);
        let (temporary, target) = (file("snapshot.tmp"), file("snapshot"));
        drop(create_synced(&disk, seed, &temporary, b"snap"));
        disk.rename(&temporary, &target).at(seed, "rename");
        let (other_temporary, other_target) = (file("other.tmp"), file("other"));
        let before_sync = disk.durable_files();
        assert!(before_sync.contains_key(&temporary), "seed {seed}: rename was durable at once");
        disk.power_cut();
        let names: BTreeSet<PathBuf> = disk.durable_files().into_keys().collect();
        if names == BTreeSet::from([temporary.clone()]) {
            reverted += 1;
        } else if names == BTreeSet::from([target.clone()]) {
            stuck += 1;
        } else {
            panic!("seed {seed}: a rename in one directory was not atomic: {names:?}");
        }
        drop(create_synced(&disk, seed, &other_temporary, b"other"));
        disk.rename(&other_temporary, &other_target).at(seed, "rename");
        disk.sync_dir(Path::new(DIR)).at(seed, "sync_dir");
        disk.power_cut();
        let files = disk.durable_files();
        assert_eq!(files.get(&other_target).map(Vec::as_slice), Some(&b"other"[..]), "seed {seed}");
        assert!(!files.contains_key(&other_temporary), "seed {seed}: a synced rename reverted");
    }
    assert!(reverted > 0 && stuck > 0, "reverted {reverted}, stuck {stuck}");
}

#[test]
fn name_changes_in_one_directory_survive_as_an_in_order_prefix() {
    let mut prefix_lengths_seen = BTreeSet::new();
    for seed in 0..SEEDS {
        let disk = disk(seed);
        disk.create_dir_all(Path::new("/other")).at(seed, "create_dir_all");
        // Each op, and the set of names after it, in order.
        let mut states: Vec<BTreeSet<String>> = vec![BTreeSet::new()];
        let mut names = BTreeSet::new();
        for index in 0..6 {
            let name = format!("a{index}");
            drop(disk.create_new(&file(&name)).at(seed, "create_new"));
            names.insert(name);
            states.push(names.clone());
            // Interleave another directory, whose queue is its own.
            drop(
                disk.create_new(&Path::new("/other").join(format!("x{index}"))).at(seed, "create"),
            );
        }
        disk.rename(&file("a3"), &file("b3")).at(seed, "rename");
        names.remove("a3");
        names.insert("b3".to_owned());
        states.push(names.clone());
        disk.remove_file(&file("a1")).at(seed, "remove_file");
        names.remove("a1");
        states.push(names.clone());
        drop(disk.create_new(&file("a1")).at(seed, "create_new again"));
        names.insert("a1".to_owned());
        states.push(names.clone());
        disk.power_cut();
        let survivors: BTreeSet<String> =
            disk.list(Path::new(DIR)).at(seed, "list").into_iter().collect();
        let position = states.iter().position(|state| *state == survivors);
        let position = position
            .unwrap_or_else(|| panic!("seed {seed}: {survivors:?} is not an in-order prefix"));
        prefix_lengths_seen.insert(position);
        let others: Vec<String> =
            disk.list(Path::new("/other")).at(seed, "list").into_iter().collect();
        let expected: BTreeSet<String> =
            (0..others.len()).map(|index| format!("x{index}")).collect();
        assert_eq!(
            others.into_iter().collect::<BTreeSet<_>>(),
            expected,
            "seed {seed}: the other directory kept no prefix"
        );
    }
    assert!(prefix_lengths_seen.len() >= 5, "prefix lengths seen: {prefix_lengths_seen:?}");
}

#[test]
fn handles_and_locks_from_before_a_cut_are_gone_after_it() {
    let seed = 11;
    let disk = disk(seed);
    let path = file("journal");
    let mut handle = create_synced(&disk, seed, &path, b"abc");
    let lock_path = file("LOCK");
    let old_guard = disk.try_lock(&lock_path).at(seed, "try_lock").expect("lock was free");
    assert!(disk.try_lock(&lock_path).at(seed, "try_lock").is_none(), "seed {seed}: lock shared");
    disk.power_cut();
    for error in [handle.append(b"x").err(), handle.sync().err(), handle.truncate(0).err()] {
        let error = error.unwrap_or_else(|| panic!("seed {seed}: a stale handle worked"));
        assert!(is_power_was_cut(&error), "seed {seed}: wrong error {error}");
    }
    let new_guard = disk.try_lock(&lock_path).at(seed, "try_lock").expect("the cut freed the lock");
    drop(old_guard);
    assert!(
        disk.try_lock(&lock_path).at(seed, "try_lock").is_none(),
        "seed {seed}: an old guard released a newer holder's lock"
    );
    drop(new_guard);
    assert!(disk.try_lock(&lock_path).at(seed, "try_lock").is_some(), "seed {seed}: not released");
    // New handles work.
    let mut handle = disk.open_append(&path).at(seed, "open_append");
    handle.append(b"d").at(seed, "append after the cut");
}

#[test]
fn the_machine_off_mode_makes_every_call_fail_until_power_on() {
    let seed = 5;
    let disk = disk(seed);
    let (first, renamed) = (file("first"), file("renamed"));
    let mut handle = create_synced(&disk, seed, &first, b"first");
    let cut_at = disk.mutating_calls() + 2;
    disk.set_power_cut_at(cut_at);
    handle.append(b" more").at(seed, "call before the cut");
    handle.sync().at(seed, "last call before the cut");
    assert!(!disk.is_off(), "seed {seed}");
    let error = disk.rename(&first, &renamed).expect_err("the cut call must fail");
    assert!(is_machine_off(&error), "seed {seed}: wrong error {error}");
    assert!(disk.is_off(), "seed {seed}");
    let calls = disk.mutating_calls();
    let errors = [
        disk.create_dir_all(Path::new("/elsewhere")).err(),
        disk.try_lock(&file("LOCK")).err(),
        disk.list(Path::new(DIR)).err(),
        disk.read(&first).err(),
        disk.create_new(&file("new")).err(),
        disk.open_append(&first).err(),
        disk.rename(&first, &renamed).err(),
        disk.remove_file(&first).err(),
        disk.sync_dir(Path::new(DIR)).err(),
        handle.append(b"x").err(),
        handle.sync().err(),
        handle.truncate(0).err(),
    ];
    for (index, error) in errors.into_iter().enumerate() {
        let error = error.unwrap_or_else(|| panic!("seed {seed}: call {index} worked while off"));
        assert!(is_machine_off(&error), "seed {seed}: call {index}: wrong error {error}");
    }
    assert_eq!(disk.mutating_calls(), calls, "seed {seed}: calls counted while off");
    disk.power_on();
    assert!(!disk.is_off(), "seed {seed}");
    // The rename never ran; the synced append survived.
    let files = disk.current_files();
    assert_eq!(files.get(&first).map(Vec::as_slice), Some(&b"first more"[..]), "seed {seed}");
    assert!(!files.contains_key(&renamed), "seed {seed}: the cut call ran");
    let error = handle.append(b"x").expect_err("stale handle");
    assert!(is_power_was_cut(&error), "seed {seed}: wrong error {error}");
    disk.rename(&first, &renamed).at(seed, "rename after power-on");
}

#[test]
fn a_power_cut_during_an_append_keeps_at_most_a_prefix_of_it() {
    let mut lengths = BTreeSet::new();
    for seed in 0..SEEDS {
        let disk = disk(seed);
        let path = file("journal");
        let mut handle = create_synced(&disk, seed, &path, b"head");
        disk.set_power_cut_at(disk.mutating_calls());
        let bytes = pattern(seed, 2000);
        assert!(is_machine_off(&handle.append(&bytes).expect_err("cut")), "seed {seed}");
        disk.power_on();
        let image = durable(&disk, &path).unwrap_or_default();
        assert!(image.starts_with(b"head"), "seed {seed}: synced data altered");
        assert!(image.len() <= 2004, "seed {seed}: more than the append landed");
        let tail = &image[4..];
        assert!(
            tail.iter().zip(&bytes).all(|(landed, written)| landed == written || *landed == 0),
            "seed {seed}: bytes that were never written landed"
        );
        lengths.insert(tail.len());
    }
    assert!(lengths.len() > 3, "seed-independent outcome: {lengths:?}");
}

/// A scripted run with faults, three cuts and a crash point; returns every
/// call's outcome and the final durable image.
fn scripted_run(seed: u64) -> (Vec<String>, BTreeMap<PathBuf, Vec<u8>>) {
    let disk = disk(seed);
    let mut outcomes = Vec::new();
    disk.set_fault_rate(1, 8);
    for round in 0..3u64 {
        for index in 0..5u64 {
            let path = file(&format!("f{round}-{index}"));
            match disk.create_new(&path) {
                Ok(mut handle) => {
                    let bytes = pattern(seed + index, 600 + index as usize * 100);
                    outcomes.push(format!("{:?}", handle.append(&bytes)));
                    if index % 2 == 0 {
                        outcomes.push(format!("{:?}", handle.sync()));
                    }
                    outcomes.push(format!("{:?}", handle.truncate(300)));
                    outcomes.push(format!("{:?}", handle.append(&pattern(index, 50))));
                }
                Err(error) => outcomes.push(format!("{error:?}")),
            }
            if index == 3 {
                outcomes.push(format!("{:?}", disk.rename(&path, &file(&format!("r{round}")))));
            }
            if index == 1 {
                outcomes.push(format!("{:?}", disk.sync_dir(Path::new(DIR))));
            }
        }
        // Listing order is shuffled, but by the seeded PRNG.
        outcomes.push(format!("{:?}", disk.list(Path::new(DIR))));
        disk.power_cut();
    }
    disk.set_power_cut_at(disk.mutating_calls() + 3);
    for index in 0..6 {
        outcomes.push(format!("{:?}", disk.create_new(&file(&format!("late{index}"))).map(drop)));
    }
    disk.power_on();
    (outcomes, disk.durable_files())
}

#[test]
fn the_same_seed_and_calls_give_an_identical_durable_image() {
    let mut images = BTreeSet::new();
    for seed in 0..40 {
        let first = scripted_run(seed);
        let second = scripted_run(seed);
        assert_eq!(first, second, "seed {seed}: two identical runs differed");
        images.insert(format!("{:?}", first.1));
    }
    assert!(images.len() > 20, "different seeds rarely differ: {} images", images.len());
}

#[test]
fn listing_shows_the_current_files_and_subdirectories_in_a_seeded_order() {
    let seed = 3;
    let disk = disk(seed);
    disk.create_dir_all(&file("sub/deeper")).at(seed, "create_dir_all");
    for name in ["a", "b", "c"] {
        drop(disk.create_new(&file(name)).at(seed, "create_new"));
    }
    let mut names = disk.list(Path::new(DIR)).at(seed, "list");
    names.sort();
    assert_eq!(names, ["a", "b", "c", "sub"], "seed {seed}");
    assert_eq!(disk.list(&file("sub")).at(seed, "list"), ["deeper"], "seed {seed}");
    let error = disk.list(Path::new("/missing")).expect_err("missing directory");
    assert_eq!(error.kind(), io::ErrorKind::NotFound, "seed {seed}");
}

#[test]
fn open_append_of_a_missing_file_is_not_found_and_create_new_of_an_existing_one_already_exists() {
    let seed = 1;
    let disk = disk(seed);
    let path = file("journal");
    let error = disk.open_append(&path).err().expect("missing file");
    assert_eq!(error.kind(), io::ErrorKind::NotFound, "seed {seed}");
    assert_eq!(disk.read(&path).expect_err("missing").kind(), io::ErrorKind::NotFound);
    drop(disk.create_new(&path).at(seed, "create_new"));
    let error = disk.create_new(&path).err().expect("existing file");
    assert_eq!(error.kind(), io::ErrorKind::AlreadyExists, "seed {seed}");
    let error = disk.create_new(Path::new("/nowhere/file")).err().expect("missing directory");
    assert_eq!(error.kind(), io::ErrorKind::NotFound, "seed {seed}");
    let error = disk.remove_file(&file("absent")).expect_err("missing file");
    assert_eq!(error.kind(), io::ErrorKind::NotFound, "seed {seed}");
}

#[test]
fn handles_write_to_their_inode_not_to_a_path() {
    let seed = 2;
    let disk = disk(seed);
    let (original, renamed) = (file("original"), file("renamed"));
    let mut handle = disk.create_new(&original).at(seed, "create_new");
    handle.append(b"one").at(seed, "append");
    disk.rename(&original, &renamed).at(seed, "rename");
    handle.append(b" two").at(seed, "append after rename");
    assert_eq!(disk.read(&renamed).at(seed, "read"), b"one two", "seed {seed}");
    let mut replacement = disk.create_new(&original).at(seed, "create_new at the old name");
    replacement.append(b"new").at(seed, "append");
    handle.append(b" three").at(seed, "append");
    assert_eq!(disk.read(&original).at(seed, "read"), b"new", "seed {seed}");
    disk.remove_file(&renamed).at(seed, "remove_file");
    handle.append(b" four").at(seed, "append after removal");
    handle.sync().at(seed, "sync after removal");
    assert!(!disk.current_files().contains_key(&renamed), "seed {seed}");
}

#[test]
fn truncates_are_kept_or_dropped_and_later_appends_follow_them() {
    let (mut kept, mut dropped) = (0, 0);
    for seed in 0..SEEDS {
        let disk = disk(seed);
        let path = file("journal");
        let original = pattern(seed, 1000);
        let mut handle = create_synced(&disk, seed, &path, &original);
        handle.truncate(400).at(seed, "truncate");
        assert_eq!(disk.read(&path).at(seed, "read"), &original[..400], "seed {seed}");
        disk.power_cut();
        let image = durable(&disk, &path).unwrap_or_default();
        if image == original[..400] {
            kept += 1;
        } else {
            assert_eq!(image, original, "seed {seed}: a truncate landed partly");
            dropped += 1;
        }
    }
    assert!(kept > 0 && dropped > 0, "kept {kept}, dropped {dropped}");
    let seed = 9;
    let disk = disk(seed);
    let path = file("journal");
    let mut handle = create_synced(&disk, seed, &path, b"abcdef");
    handle.truncate(2).at(seed, "truncate");
    handle.append(b"XY").at(seed, "append");
    handle.truncate(6).at(seed, "truncate that extends");
    assert_eq!(disk.read(&path).at(seed, "read"), b"abXY\0\0", "seed {seed}");
    handle.sync().at(seed, "sync");
    disk.power_cut();
    assert_eq!(durable(&disk, &path).as_deref(), Some(&b"abXY\0\0"[..]), "seed {seed}");
}

#[test]
fn fault_injection_produces_both_eio_and_enospc_and_failed_calls_change_nothing() {
    let (mut eio, mut enospc) = (0, 0);
    for seed in 0..40 {
        let disk = disk(seed);
        let path = file("journal");
        drop(create_synced(&disk, seed, &path, b"base"));
        disk.set_fault_rate(1, 2);
        for index in 0..40 {
            let before = (disk.current_files(), disk.durable_files());
            let target = file(&format!("t{index}"));
            let outcome = match index % 3 {
                0 => disk.create_new(&target).map(drop),
                1 => disk.rename(&path, &target),
                _ => disk.sync_dir(Path::new(DIR)),
            };
            let Err(error) = outcome else {
                if index % 3 == 1 {
                    // Put the file back, without faults, for the next round.
                    disk.set_fault_rate(0, 1);
                    disk.rename(&target, &path).at(seed, "rename back");
                    disk.set_fault_rate(1, 2);
                }
                continue;
            };
            match error.raw_os_error() {
                Some(libc::EIO) => eio += 1,
                Some(libc::ENOSPC) => enospc += 1,
                _ => panic!("seed {seed}: unexpected error {error}"),
            }
            assert_eq!(
                (disk.current_files(), disk.durable_files()),
                before,
                "seed {seed}: a failed call changed the disk"
            );
        }
    }
    assert!(eio > 0 && enospc > 0, "EIO {eio}, ENOSPC {enospc}");
}

#[test]
fn a_failed_sync_leaves_data_that_a_cut_may_drop() {
    let (mut lost, mut kept) = (0, 0);
    for seed in 0..SEEDS {
        let disk = disk(seed);
        let path = file("journal");
        let mut handle = create_synced(&disk, seed, &path, b"base");
        handle.append(&pattern(seed, 100)).at(seed, "append");
        disk.fail_calls_matching(SimOp::Sync, "journal", SimFault::Eio, 1);
        let error = handle.sync().expect_err("targeted fault");
        assert_eq!(error.raw_os_error(), Some(libc::EIO), "seed {seed}");
        assert_eq!(durable(&disk, &path).as_deref(), Some(&b"base"[..]), "seed {seed}");
        disk.power_cut();
        let image = durable(&disk, &path).unwrap_or_default();
        assert!(image.starts_with(b"base"), "seed {seed}: synced data altered");
        if image.len() == 4 { lost += 1 } else { kept += 1 }
    }
    assert!(lost > 0 && kept > 0, "lost {lost}, kept {kept}");
}

#[test]
fn a_failed_append_may_leave_a_prefix_of_its_bytes() {
    let mut prefix_lengths = BTreeSet::new();
    for seed in 0..100 {
        let disk = disk(seed);
        let path = file("journal");
        let mut handle = create_synced(&disk, seed, &path, b"base");
        disk.fail_calls_matching(SimOp::Write, "journal", SimFault::Enospc, 1);
        let bytes = pattern(seed, 300);
        let error = handle.append(&bytes).expect_err("targeted fault");
        assert_eq!(error.raw_os_error(), Some(libc::ENOSPC), "seed {seed}");
        let now = disk.read(&path).at(seed, "read");
        assert!(now.starts_with(b"base"), "seed {seed}");
        assert!(bytes.starts_with(&now[4..]), "seed {seed}: not a prefix");
        assert!(now.len() < 304, "seed {seed}: a failed append wrote everything");
        prefix_lengths.insert(now.len() - 4);
    }
    assert!(prefix_lengths.contains(&0) && prefix_lengths.len() > 2, "{prefix_lengths:?}");
}

#[test]
fn targeted_faults_hit_only_the_matching_calls_and_only_as_often_as_asked() {
    let seed = 4;
    let disk = disk(seed);
    disk.fail_calls_matching(SimOp::CreateNew, "journal", SimFault::Enospc, 2);
    drop(disk.create_new(&file("snapshot-1")).at(seed, "a create that does not match"));
    for attempt in 0..2 {
        let error = disk.create_new(&file("journal-1")).err().expect("targeted fault");
        assert_eq!(error.raw_os_error(), Some(libc::ENOSPC), "seed {seed}: attempt {attempt}");
        assert!(!disk.current_files().contains_key(&file("journal-1")), "seed {seed}");
    }
    drop(disk.create_new(&file("journal-1")).at(seed, "the faults are used up"));
    disk.fail_calls_matching(SimOp::Rename, "journal-2", SimFault::Eio, u32::MAX);
    for attempt in 0..5 {
        let error = disk.rename(&file("journal-1"), &file("journal-2")).expect_err("for ever");
        assert_eq!(error.raw_os_error(), Some(libc::EIO), "seed {seed}: attempt {attempt}");
    }
    disk.clear_faults();
    disk.rename(&file("journal-1"), &file("journal-2")).at(seed, "faults cleared");
}

#[test]
fn a_lock_is_exclusive_creates_its_file_and_is_released_when_its_guard_drops() {
    let seed = 6;
    let disk = disk(seed);
    let path = file("LOCK");
    let guard = disk.try_lock(&path).at(seed, "try_lock").expect("free lock");
    assert!(disk.current_files().contains_key(&path), "seed {seed}: no lock file");
    assert!(disk.try_lock(&path).at(seed, "try_lock").is_none(), "seed {seed}: shared");
    drop(guard);
    assert!(disk.try_lock(&path).at(seed, "try_lock").is_some(), "seed {seed}: not released");
}

#[test]
fn corrupting_synced_bytes_is_seen_by_reads_and_survives_cuts() {
    let seed = 8;
    let disk = disk(seed);
    let path = file("snapshot");
    drop(create_synced(&disk, seed, &path, b"abcd"));
    disk.corrupt_durable(&path, 2, 0x20).at(seed, "corrupt_durable");
    assert_eq!(disk.read(&path).at(seed, "read"), b"abCd", "seed {seed}");
    disk.power_cut();
    assert_eq!(durable(&disk, &path).as_deref(), Some(&b"abCd"[..]), "seed {seed}");
    assert!(disk.corrupt_durable(&path, 4, 1).is_err(), "seed {seed}: past the end");
    assert!(disk.corrupt_durable(&file("absent"), 0, 1).is_err(), "seed {seed}: no file");
}

#[test]
fn the_disk_is_shared_by_several_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<SimDisk>();
    let seed = 10;
    let disk = disk(seed);
    let threads: Vec<_> = (0..4)
        .map(|thread| {
            let disk = Arc::clone(&disk);
            std::thread::spawn(move || {
                let path = file(&format!("thread{thread}"));
                let mut handle = disk.create_new(&path).at(seed, "create_new");
                for round in 0..50u64 {
                    handle.append(&pattern(round, 10)).at(seed, "append");
                    handle.sync().at(seed, "sync");
                }
                disk.sync_dir(Path::new(DIR)).at(seed, "sync_dir");
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap_or_else(|_| panic!("seed {seed}: a thread panicked"));
    }
    disk.power_cut();
    let files = disk.durable_files();
    assert_eq!(files.len(), 4, "seed {seed}");
    assert!(files.values().all(|bytes| bytes.len() == 500), "seed {seed}");
}
