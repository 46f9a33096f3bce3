//! Who may call what, on the real binary: every RPC against a missing token,
//! an unknown token, a client without the role, a client limited to other
//! users, and an allowed client; refusals change nothing; calls without a
//! valid token are refused before their body is read; health and
//! reflection stay open; protected mode refuses open non-loopback serving.

use crate::common::ServerProcess;
use crate::common::client::{Client, add_request, connect_to};
use crate::common::raw::{H2Connection, status_of};
use crate::common::refusal::{assert_refusal, reason};
use crate::common::tokens::{balances_as, token_client, tokens_file, with_token};
use crate::common::wait::eventually;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use points::proto::v1::{GetBalancesRequest, ListTransactionsRequest, SpendRequest};
use tonic::{Code, Status};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

/// Writes a tokens file with one client per role plus an admin limited to "alice".
fn role_tokens_file(dir: &Path) -> PathBuf {
    let clients = [
        token_client("reader", &["read"], &[]),
        token_client("earner", &["earn"], &[]),
        token_client("spender", &["spend"], &[]),
        token_client("ops", &["admin"], &[]),
        token_client("alice-only", &["admin"], &["alice"]),
    ];
    tokens_file(dir, &clients)
}

/// Calls `method` for user "bob" with `token` and returns the outcome's code.
async fn call(
    client: &mut Client,
    method: &str,
    token: Option<&str>,
    user: &str,
) -> Result<(), Status> {
    let user_id = user.to_owned();
    match method {
        "AddTransaction" => {
            let earn = add_request(user, "", "DANNON", 10, "2024-01-01T00:00:00Z");
            client.add_transaction(with_token(earn, token)).await.map(drop)
        }
        "Spend" => client
            .spend(with_token(SpendRequest { user_id, points: 1, ..Default::default() }, token))
            .await
            .map(drop),
        "GetBalances" => client
            .get_balances(with_token(GetBalancesRequest { user_id, ..Default::default() }, token))
            .await
            .map(drop),
        "ListTransactions" => client
            .list_transactions(with_token(
                ListTransactionsRequest { user_id, ..Default::default() },
                token,
            ))
            .await
            .map(drop),
        other => panic!("no method {other}"),
    }
}

async fn balances_as_admin(client: &mut Client, user: &str) -> HashMap<String, i64> {
    balances_as(client, "ops-token", user).await.expect("admin reads")
}

/// Every RPC × {no token, bad token, wrong role, wrong user, right role}: the
/// exact code, the reason, and no change on refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_enforces_tokens_roles_and_users() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let tokens = role_tokens_file(dir.path());
    let server = ServerProcess::start(&["--tokens-file", tokens.to_str().unwrap()]);
    let mut client = server.client().await;
    // Give alice and bob some points so that spends can succeed.
    for user in ["alice", "bob"] {
        call(&mut client, "AddTransaction", Some("ops-token"), user).await.expect("admin earns");
    }
    let role_of = |method: &str| match method {
        "AddTransaction" => "earner-token",
        "Spend" => "spender-token",
        _ => "reader-token",
    };
    let wrong_role_of =
        |method: &str| if method == "AddTransaction" { "reader-token" } else { "earner-token" };
    for method in ["AddTransaction", "Spend", "GetBalances", "ListTransactions"] {
        let before = (
            balances_as_admin(&mut client, "alice").await,
            balances_as_admin(&mut client, "bob").await,
        );
        let refusals = [
            (None, "bob", Code::Unauthenticated, "TOKEN_MISSING"),
            (Some("not-a-token"), "bob", Code::Unauthenticated, "TOKEN_UNKNOWN"),
            (Some(wrong_role_of(method)), "bob", Code::PermissionDenied, "ROLE_MISSING"),
            (Some("alice-only-token"), "bob", Code::PermissionDenied, "USER_NOT_ALLOWED"),
        ];
        for (token, user, code, reason) in refusals {
            let status = call(&mut client, method, token, user).await.expect_err("refused");
            assert_refusal(&status, code, reason);
        }
        let after = (
            balances_as_admin(&mut client, "alice").await,
            balances_as_admin(&mut client, "bob").await,
        );
        assert_eq!(before, after, "{method}: refusals change nothing");
        call(&mut client, method, Some(role_of(method)), "bob")
            .await
            .expect("the right role is allowed");
        call(&mut client, method, Some("alice-only-token"), "alice")
            .await
            .expect("its own user is allowed");
        call(&mut client, method, Some("ops-token"), "bob").await.expect("admin is allowed");
    }
    // The client's name is in the call's log line; the token never is.
    let log = eventually("the call's log line", Duration::from_secs(5), || async {
        let log = server.log();
        log.contains("client=\"spender\"").then_some(log)
    })
    .await;
    assert!(!log.contains("spender-token"), "a token was logged");
}

/// Health and reflection answer without a token; PointsService does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_reflection_stay_open_without_a_token() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let tokens = role_tokens_file(dir.path());
    let server = ServerProcess::start(&["--tokens-file", tokens.to_str().unwrap()]);
    let channel = server.channel().await;
    let mut health = HealthClient::new(channel.clone());
    let reply =
        health.check(HealthCheckRequest { service: "points.v1.PointsService".into() }).await;
    assert!(reply.is_ok(), "{reply:?}");
    use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
    let mut reflection = ServerReflectionClient::new(channel.clone());
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut replies = reflection
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .unwrap()
        .into_inner();
    assert!(replies.message().await.unwrap().is_some());
    let mut client = Client::new(channel);
    assert_eq!(
        call(&mut client, "GetBalances", None, "bob").await.unwrap_err().code(),
        Code::Unauthenticated
    );
}

/// Protected mode: no tokens file and a non-loopback address refuses to start
/// and says what to do; --insecure-no-auth, or a tokens file with
/// --insecure-plaintext, allow it.
#[test]
fn protected_mode_refuses_an_open_non_loopback_listener() {
    let mut command = ServerProcess::command();
    command.args(["--listen", "0.0.0.0:0", "--in-memory"]);
    let exited = ServerProcess::run_to_exit(command);
    assert_eq!(exited.status.code(), Some(1));
    let stderr = exited.log;
    assert!(stderr.contains("--tokens-file") && stderr.contains("--insecure-no-auth"), "{stderr}");

    for extra in
        [vec!["--insecure-no-auth"], vec!["--tokens-file", "TOKENS", "--insecure-plaintext"]]
    {
        let dir = tempfile::tempdir().expect("temporary directory");
        let tokens = role_tokens_file(dir.path());
        let extra: Vec<&str> = extra
            .iter()
            .map(|arg| if *arg == "TOKENS" { tokens.to_str().unwrap() } else { arg })
            .collect();
        let mut command = ServerProcess::command();
        command.args(["--listen", "0.0.0.0:0", "--in-memory"]).args(&extra);
        let mut server = ServerProcess::spawn(command);
        server.signal("TERM");
        assert_eq!(server.wait(Duration::from_secs(20)).code(), Some(0), "{extra:?}");
    }
}

/// Bearer tokens on a non-loopback address without TLS are refused at start,
/// saying how to turn TLS on or that --insecure-plaintext overrides it.
#[test]
fn bearer_tokens_in_plaintext_off_loopback_are_refused() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let tokens = role_tokens_file(dir.path());
    let mut command = ServerProcess::command();
    command.args(["--listen", "0.0.0.0:0", "--in-memory", "--tokens-file"]).arg(&tokens);
    let exited = ServerProcess::run_to_exit(command);
    assert_eq!(exited.status.code(), Some(1));
    let stderr = exited.log;
    assert!(
        stderr.contains("plaintext")
            && stderr.contains("--tls-cert")
            && stderr.contains("--insecure-plaintext"),
        "{stderr}"
    );
}

/// A tokens file that is missing or invalid stops the server at start with the reason.
#[test]
fn invalid_tokens_file_refuses_start() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[[client]]\nname = \"x\"\ntoken_sha256 = \"plaintext-token\"\nroles = [\"read\"]\n",
    )
    .unwrap();
    for (path, expected) in [
        (bad.clone(), "token_sha256 must be 64 hexadecimal digits"),
        (dir.path().join("missing.toml"), "cannot read"),
    ] {
        let mut command = ServerProcess::in_memory(&["--tokens-file"]);
        command.arg(&path);
        let exited = ServerProcess::run_to_exit(command);
        assert_eq!(exited.status.code(), Some(1));
        assert!(exited.log.contains(expected), "{}", exited.log);
    }
}

/// A call without a valid token is refused with UNAUTHENTICATED from its
/// headers, while its 1 MB body is still unsent: the server does not wait
/// for (or buffer) the body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_calls_are_refused_before_their_body_is_read() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let tokens = role_tokens_file(dir.path());
    let server = ServerProcess::start(&["--tokens-file", tokens.to_str().unwrap()]);
    let connection = H2Connection::open(server.address).await;
    for (token, expected) in [(None, "TOKEN_MISSING"), (Some("forged"), "TOKEN_UNKNOWN")] {
        let started = Instant::now();
        let (response, body) =
            connection.start_unfinished_call("AddTransactions", token, 1_000_000, 16 * 1024).await;
        let response = tokio::time::timeout(Duration::from_secs(5), response)
            .await
            .expect("no answer while the body was unfinished: the server waited for it")
            .expect("a response");
        let status = status_of(response).await;
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
        assert_eq!(reason(&status), expected);
        assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
        drop(body);
    }
    // The server serves on, to callers with a token.
    let mut client =
        connect_to(server.address).connect_timeout(Duration::from_secs(5)).client().await;
    balances_as(&mut client, "ops-token", "").await.expect("an authenticated call");
}
