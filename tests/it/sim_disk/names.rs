//! The simulated disk's names across a power cut: creations, renames and
//! removals survive only once their directory is synced, and then as an
//! in-order prefix; listing, opening and handles behave as POSIX says.

use super::{At, DIR, SEEDS, create_synced, disk, every_outcome_happens, file};

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};

use points::FileSystem;

#[test]
fn a_created_but_not_dir_synced_file_can_vanish_on_a_cut_and_a_dir_synced_one_never_does() {
    every_outcome_happens(["vanished", "survived"], |seed| {
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
            None => "vanished",
            Some(bytes) => {
                assert_eq!(bytes.as_slice(), b"late", "seed {seed}: synced data altered");
                "survived"
            }
        }
    });
}

#[test]
fn a_rename_not_dir_synced_may_revert_and_a_dir_synced_one_never_does() {
    every_outcome_happens(["reverted", "stuck"], |seed| {
        let disk = disk(seed);
        let (temporary, target) = (file("snapshot.tmp"), file("snapshot"));
        drop(create_synced(&disk, seed, &temporary, b"snap"));
        disk.rename(&temporary, &target).at(seed, "rename");
        let (other_temporary, other_target) = (file("other.tmp"), file("other"));
        let before_sync = disk.durable_files();
        assert!(before_sync.contains_key(&temporary), "seed {seed}: rename was durable at once");
        disk.power_cut();
        let names: BTreeSet<PathBuf> = disk.durable_files().into_keys().collect();
        let outcome = if names == BTreeSet::from([temporary.clone()]) {
            "reverted"
        } else if names == BTreeSet::from([target.clone()]) {
            "stuck"
        } else {
            panic!("seed {seed}: a rename in one directory was not atomic: {names:?}");
        };
        drop(create_synced(&disk, seed, &other_temporary, b"other"));
        disk.rename(&other_temporary, &other_target).at(seed, "rename");
        disk.sync_dir(Path::new(DIR)).at(seed, "sync_dir");
        disk.power_cut();
        let files = disk.durable_files();
        assert_eq!(files.get(&other_target).map(Vec::as_slice), Some(&b"other"[..]), "seed {seed}");
        assert!(!files.contains_key(&other_temporary), "seed {seed}: a synced rename reverted");
        outcome
    });
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
