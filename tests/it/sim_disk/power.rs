//! The simulated disk's power and life cycle: handles and locks from before
//! a cut are gone after it, the machine-off mode fails every call until
//! power-on, locks are exclusive, the same seed replays exactly, and the
//! disk is shared by several threads.

use super::{
    At, DIR, SimDisk, create_synced, disk, file, is_machine_off, is_power_was_cut, pattern,
};

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use points::FileSystem;

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
