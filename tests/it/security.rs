//! Who may call what, on the real binary: every RPC against a missing token,
//! an unknown token, a client without the role, a client limited to other
//! users, and an allowed client; refusals change nothing; health and
//! reflection stay open; protected mode refuses open non-loopback serving.

use crate::common;
use crate::common::refusal::assert_refusal;
use crate::common::wait::eventually;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{ServerProcess, timestamp};
use points::auth::token_sha256;
use points::proto::v1::points_service_client::PointsServiceClient;
use points::proto::v1::{
    AddTransactionRequest, GetBalancesRequest, ListTransactionsRequest, SpendRequest,
};
use tonic::transport::Channel;
use tonic::{Code, Request, Status};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

/// Writes a tokens file with one client per role plus an admin limited to "alice".
fn tokens_file(dir: &Path) -> PathBuf {
    let client = |name: &str, roles: &str, users: &str| {
        format!(
            "[[client]]\nname = \"{name}\"\ntoken_sha256 = \"{}\"\nroles = [{roles}]\n{users}\n",
            token_sha256(&format!("{name}-token"))
        )
    };
    let text = [
        client("reader", "\"read\"", ""),
        client("earner", "\"earn\"", ""),
        client("spender", "\"spend\"", ""),
        client("ops", "\"admin\"", ""),
        client("alice-only", "\"admin\"", "user_ids = [\"alice\"]"),
    ]
    .join("\n");
    let path = dir.join("tokens.toml");
    std::fs::write(&path, text).expect("write the tokens file");
    path
}

fn with_token<T>(message: T, token: Option<&str>) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(token) = token {
        request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    request
}

/// Calls `method` for user "bob" with `token` and returns the outcome's code.
async fn call(
    client: &mut PointsServiceClient<Channel>,
    method: &str,
    token: Option<&str>,
    user: &str,
) -> Result<(), Status> {
    let user_id = user.to_owned();
    match method {
        "AddTransaction" => client
            .add_transaction(with_token(
                AddTransactionRequest {
                    user_id,
                    payer: "DANNON".into(),
                    points: 10,
                    timestamp: Some(timestamp("2024-01-01T00:00:00Z")),
                    ..Default::default()
                },
                token,
            ))
            .await
            .map(drop),
        "Spend" => client
            .spend(with_token(SpendRequest { user_id, points: 1, ..Default::default() }, token))
            .await
            .map(drop),
        "GetBalances" => {
            client.get_balances(with_token(GetBalancesRequest { user_id }, token)).await.map(drop)
        }
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

async fn balances_as_admin(
    client: &mut PointsServiceClient<Channel>,
    user: &str,
) -> HashMap<String, i64> {
    client
        .get_balances(with_token(
            GetBalancesRequest { user_id: user.to_owned() },
            Some("ops-token"),
        ))
        .await
        .expect("admin reads")
        .into_inner()
        .balances
}

/// Every RPC × {no token, bad token, wrong role, wrong user, right role}: the
/// exact code, the reason, and no change on refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_enforces_tokens_roles_and_users() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let tokens = tokens_file(dir.path());
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
    let tokens = tokens_file(dir.path());
    let server = ServerProcess::start(&["--tokens-file", tokens.to_str().unwrap()]);
    let channel = Channel::from_shared(server.uri()).unwrap().connect().await.unwrap();
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
    let mut client = PointsServiceClient::new(channel);
    assert_eq!(
        call(&mut client, "GetBalances", None, "bob").await.unwrap_err().code(),
        Code::Unauthenticated
    );
}

/// Protected mode: no tokens file and a non-loopback address refuses to start
/// and says what to do; --insecure-no-auth or a tokens file allow it.
#[test]
fn protected_mode_refuses_an_open_non_loopback_listener() {
    let output = ServerProcess::command()
        .args(["--listen", "0.0.0.0:0", "--in-memory"])
        .output()
        .expect("run points-server");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--tokens-file") && stderr.contains("--insecure-no-auth"), "{stderr}");

    for extra in [vec!["--insecure-no-auth"], vec!["--tokens-file", "TOKENS"]] {
        let dir = tempfile::tempdir().expect("temporary directory");
        let tokens = tokens_file(dir.path());
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
        let output = ServerProcess::command()
            .args(["--listen", "127.0.0.1:0", "--in-memory", "--tokens-file"])
            .arg(&path)
            .output()
            .expect("run points-server");
        assert_eq!(output.status.code(), Some(1));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(expected), "{stderr}");
    }
}
