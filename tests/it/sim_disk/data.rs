//! The simulated disk's file data across a power cut: synced data always
//! survives, unsynced writes and truncates are kept, dropped or torn at
//! sector boundaries, and synced damage stays.

use super::{
    At, SEEDS, check_sector_pieces, create_synced, disk, durable, every_outcome_happens, file,
    is_machine_off, pattern,
};

use std::collections::BTreeSet;

use points::FileSystem;

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
    every_outcome_happens(["kept", "dropped", "torn", "zeros"], |seed| {
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
        check_sector_pieces(seed, &image, 100, &unsynced);
        let tail = &image[100..];
        if tail.is_empty() {
            "dropped"
        } else if tail == unsynced.as_slice() {
            "kept"
        } else if tail.len() == unsynced.len() && tail.iter().all(|byte| *byte == 0) {
            "zeros"
        } else {
            "torn"
        }
    });
}

/// A write over bytes already in the file (a journal written over its
/// preallocated zeros) survives a cut whole, not at all, or torn at sector
/// boundaries; the bytes it did not cover, synced, are never altered, and
/// the file's length does not change.
#[test]
fn unsynced_writes_over_synced_zeros_are_kept_dropped_or_torn_by_sector() {
    every_outcome_happens(["kept", "dropped", "torn"], |seed| {
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
            (_, 0) => "kept",
            (0, _) => "dropped",
            _ => "torn",
        }
    });
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

#[test]
fn truncates_are_kept_or_dropped_and_later_appends_follow_them() {
    every_outcome_happens(["kept", "dropped"], |seed| {
        let disk = disk(seed);
        let path = file("journal");
        let original = pattern(seed, 1000);
        let mut handle = create_synced(&disk, seed, &path, &original);
        handle.truncate(400).at(seed, "truncate");
        assert_eq!(disk.read(&path).at(seed, "read"), &original[..400], "seed {seed}");
        disk.power_cut();
        let image = durable(&disk, &path).unwrap_or_default();
        if image == original[..400] {
            "kept"
        } else {
            assert_eq!(image, original, "seed {seed}: a truncate landed partly");
            "dropped"
        }
    });
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
