//! Credentials on the real binary: the tokens file reloaded on SIGHUP (new
//! tokens in force within a second, a broken file keeping the last good
//! one), several token hashes per client, `not_after`, payer-scoped
//! partners on single and batch adds, and `points-server check-tokens`.

use crate::common::ServerProcess;
use crate::common::client::{Client, add_request};
use crate::common::metrics::{free_port, sample, scrape_async};
use crate::common::refusal::assert_refusal;
use crate::common::timestamp;
use crate::common::tokens::{balances_as, token_client, tokens_file, with_token};
use crate::common::wait::eventually;

use std::path::Path;
use std::time::Duration;

use points::proto::v1::{AddTransactionsRequest, NewTransaction, SpendRequest};
use points::token_sha256;
use tonic::Code;

/// A batch entry of `points` from `payer`.
fn entry(payer: &str, points: i64) -> NewTransaction {
    NewTransaction {
        payer: payer.to_owned(),
        points,
        timestamp: Some(timestamp("2024-01-02T00:00:00Z")),
    }
}

/// Starts the binary on loopback with `tokens` as its tokens file and a
/// metrics port; returns it with the port.
fn start_with_tokens(tokens: &Path) -> (ServerProcess, u16) {
    let port = free_port();
    let metrics = format!("127.0.0.1:{port}");
    let tokens = tokens.to_str().expect("utf-8 path");
    (ServerProcess::start(&["--tokens-file", tokens, "--metrics-listen", &metrics]), port)
}

/// SIGHUP swaps the tokens file: within a second the new token is accepted
/// and the old one refused; a broken file on the next SIGHUP keeps the last
/// good one, logs what is wrong, and the server stays up. Reloads are
/// counted by result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_swaps_the_tokens_file_and_a_broken_one_keeps_the_last_good() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = tokens_file(dir.path(), &[token_client("old", &["read"], &[])]);
    let (server, metrics_port) = start_with_tokens(&path);
    let mut client = server.client().await;
    balances_as(&mut client, "old-token", "alice").await.expect("the old token works");

    tokens_file(dir.path(), &[token_client("new", &["read"], &[])]);
    server.signal("HUP");
    eventually("the new token to be accepted", Duration::from_secs(1), || {
        let mut client = client.clone();
        async move { balances_as(&mut client, "new-token", "alice").await.ok() }
    })
    .await;
    let status = balances_as(&mut client, "old-token", "alice").await.expect_err("revoked");
    assert_refusal(&status, Code::Unauthenticated, "TOKEN_UNKNOWN");

    std::fs::write(&path, "[[client]]\nname = \"broken\"\ntoken_sha256 = \"xyz\"\n")
        .expect("write a broken file");
    server.signal("HUP");
    let log = eventually("the failed reload to be logged", Duration::from_secs(5), || {
        let log = server.log();
        std::future::ready(log.contains("reload failed").then_some(log))
    })
    .await;
    assert!(log.contains("tokens.toml"), "the error names the file: {log}");
    balances_as(&mut client, "new-token", "alice").await.expect("the last good file stays");
    let metrics = scrape_async(metrics_port).await;
    let reloads = |result: &str| {
        sample(&metrics, &format!("points_credential_reloads_total{{result=\"{result}\"}}"))
    };
    assert_eq!((reloads("success"), reloads("failure")), (Some(1.0), Some(1.0)), "{metrics}");
}

/// A client with two token hashes (a rotation in progress) is served with
/// either; a client past its `not_after` is refused with TOKEN_EXPIRED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hashes_of_one_client_both_work_and_not_after_in_the_past_refuses() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let rotating = format!(
        "[[client]]\nname = \"rotating\"\ntoken_sha256 = [\"{}\", \"{}\"]\nroles = [\"read\"]\n",
        token_sha256("first-token"),
        token_sha256("second-token"),
    );
    let expired = format!(
        "[[client]]\nname = \"expired\"\ntoken_sha256 = \"{}\"\nroles = [\"read\"]\n\
         not_after = \"2020-01-01T00:00:00Z\"\n",
        token_sha256("expired-token"),
    );
    let path = tokens_file(dir.path(), &[rotating, expired]);
    let (server, _) = start_with_tokens(&path);
    let mut client = server.client().await;
    for token in ["first-token", "second-token"] {
        balances_as(&mut client, token, "alice").await.expect("either hash works");
    }
    let status = balances_as(&mut client, "expired-token", "alice").await.expect_err("expired");
    assert_refusal(&status, Code::Unauthenticated, "TOKEN_EXPIRED");
}

/// A partner limited to its payer credits and takes back only that payer's
/// points, on single and batch adds; a batch with one foreign payer is
/// refused whole and changes nothing; spends and reads are not limited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payer_scoped_client_touches_only_its_payers_and_a_mixed_batch_is_refused_whole() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut dannon = token_client("dannon", &["earn", "spend", "read"], &[]);
    dannon.push_str("payers = [\"DANNON\"]\n");
    let path = tokens_file(dir.path(), &[dannon, token_client("ops", &["admin"], &[])]);
    let (server, _) = start_with_tokens(&path);
    let mut client: Client = server.client().await;

    let add = |payer: &str, points: i64| {
        with_token(add_request("alice", "", payer, points, "2024-01-01T00:00:00Z"), "dannon-token")
    };
    client.add_transaction(add("DANNON", 500)).await.expect("its own payer");
    client.add_transaction(add("DANNON", -100)).await.expect("taking back its own payer");
    for (payer, points) in [("UNILEVER", 10), ("UNILEVER", -10)] {
        let status = client.add_transaction(add(payer, points)).await.expect_err("not its payer");
        assert_refusal(&status, Code::PermissionDenied, "PAYER_NOT_ALLOWED");
    }
    let ops =
        with_token(add_request("alice", "", "UNILEVER", 50, "2024-01-01T00:00:00Z"), "ops-token");
    client.add_transaction(ops).await.expect("an unscoped client credits any payer");

    let batch = AddTransactionsRequest {
        user_id: "alice".to_owned(),
        transactions: vec![entry("DANNON", 5), entry("UNILEVER", 5)],
    };
    let status = client
        .add_transactions(with_token(batch.clone(), "dannon-token"))
        .await
        .expect_err("a foreign payer in the batch");
    assert_refusal(&status, Code::PermissionDenied, "PAYER_NOT_ALLOWED");
    let balances = balances_as(&mut client, "dannon-token", "alice").await.expect("reads");
    assert_eq!(
        (balances["DANNON"], balances["UNILEVER"]),
        (400, 50),
        "nothing of the batch applied"
    );

    let own = AddTransactionsRequest { transactions: vec![batch.transactions[0].clone()], ..batch };
    client.add_transactions(with_token(own, "dannon-token")).await.expect("its own payer only");
    let spend = with_token(
        SpendRequest { user_id: "alice".to_owned(), points: 420, ..Default::default() },
        "dannon-token",
    );
    let spent = client.spend(spend).await.expect("spending is not limited by payers");
    assert_eq!(spent.into_inner().spent.iter().map(|entry| -entry.points).sum::<i64>(), 420);
}

/// `points-server check-tokens` lists a valid file's clients without their
/// secrets, and says what is wrong with a bad one, naming the line.
#[test]
fn check_tokens_lists_clients_without_secrets_and_names_a_bad_line() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut dannon = token_client("dannon", &["earn"], &[]);
    dannon.push_str("payers = [\"DANNON\"]\n");
    let path = tokens_file(dir.path(), &[token_client("ops", &["admin"], &[]), dannon]);
    let output = ServerProcess::command().arg("check-tokens").arg(&path).output().expect("run");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("client \"ops\" roles admin"), "{stdout}");
    assert!(
        stdout.contains("client \"dannon\" roles earn") && stdout.contains("DANNON"),
        "{stdout}"
    );
    assert!(stdout.contains("valid, 2 client(s)"), "{stdout}");
    assert!(!stdout.contains(&token_sha256("ops-token")), "a hash was printed: {stdout}");

    let repeated = tokens_file(
        dir.path(),
        &[token_client("ops", &["admin"], &[]), token_client("ops", &["read"], &[])],
    );
    let output = ServerProcess::command().arg("check-tokens").arg(&repeated).output().expect("run");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr.contains("line 6") && stderr.contains("already used at line 1"), "{stderr}");
}
