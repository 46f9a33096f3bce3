//! What `points-server backup` refuses: a destination that is not empty or
//! lies inside the data directory, and a source that is not a data
//! directory; neither directory is changed.

use super::run_backup;
use crate::common::ServerProcess;
use crate::common::files::files_in;

/// A destination that holds anything already is refused, and neither it nor
/// the data directory is changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_refuses_a_non_empty_destination() {
    let source = ServerProcess::data_dir_with_daily_writes(&[], 1, 5).await;
    let destination = tempfile::tempdir().expect("temporary directory");
    std::fs::write(destination.path().join("notes.txt"), "keep me").unwrap();
    let (source_before, destination_before) =
        (files_in(source.path()), files_in(destination.path()));

    let output = run_backup(source.path(), destination.path()).await;
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.starts_with("points-server: backup failed: "), "{stderr}");
    assert!(stderr.contains("is not empty"), "{stderr}");
    assert!(output.stdout.is_empty());
    assert_eq!(files_in(destination.path()), destination_before);
    assert_eq!(files_in(source.path()), source_before);
}

/// A destination inside the data directory is refused before anything is
/// created there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_refuses_a_destination_inside_the_data_directory() {
    let source = ServerProcess::data_dir_with_daily_writes(&[], 1, 5).await;
    let before = files_in(source.path());

    let output = run_backup(source.path(), &source.path().join("backup")).await;
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("is inside the data directory"), "{stderr}");
    assert_eq!(files_in(source.path()), before);
}

/// A directory that is not a data directory (empty, or missing) is refused
/// with a message saying so, and no destination is created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_of_a_directory_that_is_not_a_data_directory_fails_clearly() {
    let scratch = tempfile::tempdir().expect("temporary directory");
    let empty = scratch.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let destination = scratch.path().join("backup");
    for (source, expected) in [
        (empty.clone(), "is not a points-server data directory"),
        (scratch.path().join("missing"), "No such file or directory"),
    ] {
        let output = run_backup(&source, &destination).await;
        assert_eq!(output.status.code(), Some(1));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.starts_with("points-server: backup failed: "), "{stderr}");
        assert!(stderr.contains(expected), "{stderr}");
        assert!(!destination.exists(), "a failed backup created {}", destination.display());
    }
}
