//! Which files a backup copies, and how much of the newest segment.

use super::*;

fn listing(journals: &[u64], snapshots: &[u64]) -> Listing {
    Listing {
        journals: journals
            .iter()
            .map(|&first| (first, files::journal_path(Path::new("d"), first)))
            .collect(),
        snapshots: snapshots
            .iter()
            .map(|&last| (last, files::snapshot_path(Path::new("d"), last)))
            .collect(),
        temporary: Vec::new(),
    }
}

fn firsts(segments: &[(u64, PathBuf)]) -> Vec<u64> {
    segments.iter().map(|(first, _)| *first).collect()
}

#[test]
fn segments_wholly_covered_by_the_snapshot_are_left_out() {
    // Segments 1..=40, 41..=90, 91..: a snapshot at 90 covers the first two.
    assert_eq!(firsts(&segments_to_copy(&listing(&[1, 41, 91], &[90]), 90)), [91]);
    // At 60 it covers only the first; the second holds 61..=90.
    assert_eq!(firsts(&segments_to_copy(&listing(&[1, 41, 91], &[60]), 60)), [41, 91]);
    // Without a snapshot every segment is needed.
    assert_eq!(firsts(&segments_to_copy(&listing(&[1, 41], &[]), 0)), [1, 41]);
    // The newest is kept even when the snapshot covers it (a rotation the
    // listing missed); verification decides whether the copy fits.
    assert_eq!(firsts(&segments_to_copy(&listing(&[1, 41], &[95]), 95)), [41]);
}

#[test]
fn only_the_newest_segment_may_be_cut_and_a_headerless_one_is_left_out() {
    let path = Path::new("journal-00000000000000000001.log");
    let mut data =
        files::encode_header(files::JOURNAL_MAGIC, files::JOURNAL_FORMAT_VERSION, 1).to_vec();
    data.extend_from_slice(&files::encode_journal_salt(42));
    let mut records = Vec::new();
    for payload in [&b"one"[..], b"two"] {
        records.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        records.extend_from_slice(payload);
    }
    let seed = files::frame_seed(42);
    crate::store::embedded::wal::batch::encode_batches(&records, 2, 1, seed, &mut data);
    let whole = data.len();
    data.extend_from_slice(&[7, 0, 0]); // a batch still being written
    assert_eq!(journal_length(path, 1, &data, true).unwrap(), Some(whole));
    assert!(matches!(journal_length(path, 1, &data, false), Err(BackupError::Damaged(_))));
    assert_eq!(journal_length(path, 1, &data[..whole], false).unwrap(), Some(whole));
    // Named for another sequence than its header says: damage, as at start-up.
    assert!(matches!(journal_length(path, 5, &data, true), Err(BackupError::Damaged(_))));
    assert_eq!(journal_length(path, 1, &[0; 10], true).unwrap(), None);
    assert_eq!(journal_length(path, 1, &[0; 24], true).unwrap(), None);
    // A zeroed header with records after it is damage, not a new segment.
    let mut zeroed = data[..whole].to_vec();
    zeroed[..files::JOURNAL_HEADER_BYTES].fill(0);
    assert!(matches!(journal_length(path, 1, &zeroed, true), Err(BackupError::Damaged(_))));
}
