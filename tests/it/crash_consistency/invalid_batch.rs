//! An invalid batch followed by a valid one is damage, not a torn write:
//! start is refused without touching the files.

use super::{connect, journal_of};
use crate::common::client::balances;
use crate::common::files::{FRAME_HEADER_BYTES, files_in, frame_offsets};
use crate::common::process::Exited;
use crate::common::{ServerProcess, copy_dir, journal_files};

/// A batch that fails its checksum with a valid batch after it is damage,
/// not a torn write: the server refuses to start, names the file and the
/// batch's byte offset, and changes nothing in the data directory. Also for
/// a journal written under `--fsync never`: the clean stop synced all of it,
/// so a damaged batch in it is no power-cut hole either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_batch_followed_by_a_valid_one_refuses_start() {
    let mut failures = Vec::new();
    for policy in ["always", "never"] {
        let args = ["--fsync", policy];
        let data_dir = ServerProcess::data_dir_with_daily_writes(&args, 4, 10).await;

        let path = journal_files(data_dir.path()).remove(0);
        let file = std::fs::read(&path).unwrap();
        let journal = journal_of(&data_dir);
        let offsets = frame_offsets(&journal);
        // One batch per sequential write (and perhaps more, such as one
        // that records a final sync).
        assert!(offsets.len() >= 4, "{} batches for 4 sequential writes", offsets.len());
        let end = |index: usize| offsets.get(index + 1).copied().unwrap_or(journal.len());
        let cases = [
            (0, offsets[0] + FRAME_HEADER_BYTES, "the first byte of the first batch's payload"),
            (
                0,
                (offsets[0] + FRAME_HEADER_BYTES + end(0)) / 2,
                "the middle of the first batch's payload",
            ),
            (2, end(2) - 1, "the last byte of the third batch's payload"),
            (1, offsets[1] + 9, "the payload checksum of the second batch"),
            (1, offsets[1] + FRAME_HEADER_BYTES + 9, "the record count of the second batch"),
        ];
        for (batch, byte, description) in cases {
            let case = format!("--fsync {policy}, a flipped byte in {description}");
            let copy = copy_dir(data_dir.path());
            let path = copy.path().join(path.file_name().unwrap());
            let mut damaged = file.clone();
            damaged[byte] ^= 0x10;
            std::fs::write(&path, &damaged).unwrap();
            let before = files_in(copy.path());
            match ServerProcess::try_spawn(ServerProcess::durable(copy.path(), &args)) {
                Err(Exited { status, log: stderr }) => {
                    let offset = offsets[batch];
                    let expected = format!("{} is damaged at byte offset {offset}", path.display());
                    if status.success() || !stderr.contains(&expected) {
                        failures
                            .push(format!("{case}: {status}, expected {expected:?} in:\n{stderr}"));
                    }
                }
                Ok(server) => {
                    failures.push(format!("{case}: the server started; log:\n{}", server.log()))
                }
            }
            let after = files_in(copy.path());
            if after != before {
                let changed: Vec<String> = after
                    .iter()
                    .filter(|(name, bytes)| before.get(*name) != Some(*bytes))
                    .map(|(name, bytes)| format!("{name} ({} bytes)", bytes.len()))
                    .collect();
                failures.push(format!(
                    "{case}: the data directory changed: {changed:?} (the journal was {} bytes)",
                    damaged.len()
                ));
            }
        }
        // The undamaged directory starts and has everything.
        let server = ServerProcess::start_durable(data_dir.path(), &args);
        assert_eq!(balances(&mut connect(&server).await).await["DANNON"], 40);
    }
    assert!(failures.is_empty(), "{} case(s) failed:\n{}", failures.len(), failures.join("\n"));
}
