//! `points-server migrate`: a data directory's ledger copied into an empty
//! database and verified, after which replicas on the database answer as
//! the single server did, and the directory is left exactly as it was;
//! refused into a database that holds users, from a directory a server runs
//! on, from one that holds no ledger, and from one that does not exist.

use crate::common::ServerProcess;
use crate::common::client::{Client, add_request, balances_of, spend_request, try_add, try_spend};
use crate::common::files::files_in;
use crate::common::history::entries;
use crate::common::postgres::{TestDatabase, query};
use crate::common::replicas::Replicas;

use std::ffi::OsStr;
use std::path::Path;
use std::time::Duration;

use points::proto::v1::HoldPointsRequest;

/// Runs `points-server migrate` and returns its output.
async fn run_migrate(data_dir: &Path, database_url: &str) -> std::process::Output {
    let args: [&OsStr; 5] = [
        "migrate".as_ref(),
        "--data-dir".as_ref(),
        data_dir.as_ref(),
        "--database-url".as_ref(),
        database_url.as_ref(),
    ];
    ServerProcess::run_command(&args).await
}

/// Writes three users' histories (with refusals and request ids to
/// remember) through `client`; returns the request id and reply of a spend.
async fn write_users(client: &mut Client) -> (String, points::proto::v1::SpendResponse) {
    for (round, user_id) in ["alice", "bob", "carol"].iter().cycle().take(90).enumerate() {
        let when = format!("2024-05-{:02}T00:00:00Z", 1 + round % 28);
        let payer = ["DANNON", "UNILEVER", "MILLER COORS"][round % 3];
        let request = add_request(user_id, &format!("add-{round}"), payer, 100, &when);
        try_add(client, request).await.expect("accepted");
        if round % 7 == 6 {
            try_spend(client, spend_request(user_id, "", 120)).await.expect("spent");
        }
    }
    let refused = try_spend(client, spend_request("bob", "too-much", 1_000_000)).await;
    assert!(refused.is_err(), "an overdraft is refused");
    let reply = try_spend(client, spend_request("alice", "the-spend", 50)).await.expect("spent");
    ("the-spend".to_owned(), reply)
}

/// A killed server's data directory moves into an empty database: the
/// summary says what was copied and verified, and two replicas on the
/// database answer every read as the server did, remember its request ids
/// (answers and refusals), and go on taking writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_copies_a_data_directory_into_replicas_that_answer_the_same() {
    let (data_dir, mut server) = ServerProcess::start_on_new_dir(&[]);
    let mut client = server.client().await;
    let (request_id, spend_reply) = write_users(&mut client).await;
    let hold = HoldPointsRequest { user_id: "carol".to_owned(), points: 10, ..Default::default() };
    client.hold_points(hold).await.expect("held");
    let mut before = Vec::new();
    for user_id in ["alice", "bob", "carol"] {
        before.push((balances_of(&mut client, user_id).await, entries(&mut client, user_id).await));
    }
    // Killed, so that the journal ends as a crash leaves it: migrate must
    // read it as start-up would and still change nothing.
    server.signal("KILL");
    server.wait(Duration::from_secs(10));

    let files_before = files_in(data_dir.path());
    let database = TestDatabase::create();
    let output = run_migrate(data_dir.path(), &database.url).await;
    assert_eq!(files_in(data_dir.path()), files_before, "migrate changed the data directory");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("migrated 3 users (90 transactions, 13 spends)"), "{stdout}");
    assert!(stdout.contains("verified"), "{stdout}");
    // The open hold's timeout is listed, so that replicas release it even
    // if nobody calls carol.
    let listed = query(&database.url, "SELECT user_id FROM points_user_deadlines");
    assert_eq!(listed, [[Some("carol".to_owned())]]);

    let replicas = Replicas::start_on(database, 2, &[]);
    for index in 0..2 {
        let mut client = replicas.client_of(index).await;
        for (user_id, expected) in ["alice", "bob", "carol"].into_iter().zip(&before) {
            let after =
                (balances_of(&mut client, user_id).await, entries(&mut client, user_id).await);
            assert_eq!(&after, expected, "replica {index}, user {user_id}");
        }
    }
    let mut client = replicas.client().await;
    let retried = try_spend(&mut client, spend_request("alice", &request_id, 50)).await;
    assert_eq!(retried.expect("the retry is answered"), spend_reply);
    let refused = try_spend(&mut client, spend_request("bob", "too-much", 1_000_000)).await;
    assert_eq!(refused.expect_err("remembered").code(), tonic::Code::FailedPrecondition);
    let request = add_request("alice", "add-0", "DANNON", 100, "2024-05-01T00:00:00Z");
    let repeated = try_add(&mut client, request).await.expect("the retry is answered");
    assert_eq!(repeated.id, 1, "a retry of the first write gets its id");
    let request = add_request("alice", "", "DANNON", 7, "2024-06-01T00:00:00Z");
    let added = try_add(&mut client, request).await.expect("accepted");
    assert_eq!(added.id, 31, "ids go on from the data directory's");
}

/// Migrate refuses, changing nothing, a database that already holds users,
/// a data directory a server is running on, and one that does not exist;
/// each says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_refuses_a_database_with_users_a_running_server_and_a_missing_directory() {
    let (data_dir, mut server) = ServerProcess::start_on_new_dir(&[]);
    let mut client = server.client().await;
    try_add(&mut client, add_request("dana", "", "DANNON", 10, "2024-01-01T00:00:00Z"))
        .await
        .expect("accepted");

    let database = TestDatabase::create();
    let output = run_migrate(data_dir.path(), &database.url).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && stderr.contains("in use by another points-server"),
        "{stderr}"
    );
    server.terminate();

    let empty = tempfile::tempdir().expect("temporary directory");
    let output = run_migrate(empty.path(), &database.url).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("holds no ledger"), "{stderr}");
    assert!(files_in(empty.path()).is_empty(), "nothing was created in it");

    let missing = data_dir.path().join("no-such-dir");
    let output = run_migrate(&missing, &database.url).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("does not exist"), "{stderr}");

    let output = run_migrate(data_dir.path(), &database.url).await;
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let output = run_migrate(data_dir.path(), &database.url).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("already holds users"), "{stderr}");
    let replica = ServerProcess::start_on_database(&database.url, &[]);
    let mut client = replica.client().await;
    assert_eq!(balances_of(&mut client, "dana").await["DANNON"], 10, "copied once");
}
