//! A newest journal segment shorter than its header, left by a crash while
//! it was being created, is created again.

use super::{connect, last_sequence, stop};
use crate::common::client::{add, balances, small_history};
use crate::common::files::FILE_HEADER_BYTES;
use crate::common::{ServerProcess, copy_dir, journal_files};

/// A crash while a new segment was being created can leave it with only part
/// of its header, or a header of zeros. The server starts, keeps every
/// earlier write, creates the segment again, accepts new writes, and keeps
/// them across another restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newest_segment_shorter_than_its_header_is_recreated() {
    let (data_dir, server) = ServerProcess::start_on_new_dir(&[]);
    let mut client = connect(&server).await;
    small_history(&mut client).await;
    add(&mut client, "DANNON", 50, "2024-01-03T00:00:00Z").await;
    let before = balances(&mut client).await;
    stop(server);
    let last = last_sequence(data_dir.path());
    assert_eq!(last, 4);
    assert_eq!(journal_files(data_dir.path()).len(), 1);

    let mut partial_header = Vec::new();
    partial_header.extend_from_slice(b"PNTSJRNL");
    partial_header.extend_from_slice(&2u32.to_le_bytes()[..2]);
    for (bytes, description) in
        [(partial_header, "10 bytes of its header"), (vec![0u8; 24], "24 zero bytes")]
    {
        let copy = copy_dir(data_dir.path());
        let newest = copy.path().join(format!("journal-{:020}.log", last + 1));
        std::fs::write(&newest, &bytes).unwrap();

        let server = ServerProcess::start_durable(copy.path(), &[]);
        let mut client = connect(&server).await;
        assert_eq!(balances(&mut client).await, before, "{description}");
        assert!(
            server.log().contains("header never reached the disk"),
            "{description}: {}",
            server.log()
        );
        assert_eq!(
            add(&mut client, "KRAFT", 7, "2024-01-04T00:00:00Z").await.id,
            4,
            "{description}"
        );
        let mut after = before.clone();
        after.insert("KRAFT".to_owned(), 7);
        assert_eq!(balances(&mut client).await, after, "{description}");
        stop(server);

        // The segment was created again, properly, and holds the new write.
        let created = std::fs::read(&newest).unwrap();
        assert!(created.len() > FILE_HEADER_BYTES, "{description}: {} bytes", created.len());
        assert_eq!(&created[..8], b"PNTSJRNL", "{description}");
        assert_eq!(created[12..20], (last + 1).to_le_bytes(), "{description}");
        assert_eq!(last_sequence(copy.path()), last + 1, "{description}");

        let server = ServerProcess::start_durable(copy.path(), &[]);
        let mut client = connect(&server).await;
        assert_eq!(balances(&mut client).await, after, "{description}: after another restart");
        assert_eq!(
            add(&mut client, "KRAFT", 1, "2024-01-05T00:00:00Z").await.id,
            5,
            "{description}"
        );
        stop(server);
        let server = ServerProcess::start_durable(copy.path(), &[]);
        assert_eq!(balances(&mut connect(&server).await).await["KRAFT"], 8, "{description}");
    }
}
