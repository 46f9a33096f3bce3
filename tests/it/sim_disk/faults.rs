//! The simulated disk's injected faults: EIO and ENOSPC at random or aimed
//! at chosen calls, a failed call changes nothing (a failed write may leave
//! a prefix of its bytes), and a failed sync leaves data a cut may drop.

use super::{At, DIR, create_synced, disk, durable, every_outcome_happens, file, pattern};
use crate::common::sim_disk::{SimFault, SimOp};

use std::collections::BTreeSet;
use std::path::Path;

use points::FileSystem;

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
    every_outcome_happens(["lost", "kept"], |seed| {
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
        if image.len() == 4 { "lost" } else { "kept" }
    });
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
