//! The server around the API: health, reflection, hostile bytes on the socket,
//! and shutdown of the real binary on SIGTERM and SIGINT.

use crate::common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{ServerProcess, TestServer, timestamp};
use points::proto::v1::{AddTransactionRequest, GetBalancesRequest};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// Health reports SERVING for the whole server and for points.v1.PointsService.
#[tokio::test]
async fn health_reports_serving_for_server_and_points_service() {
    let server = TestServer::start().await;
    let mut health = HealthClient::new(server.channel().await);
    for service in ["", "points.v1.PointsService"] {
        let reply = health
            .check(HealthCheckRequest { service: service.to_owned() })
            .await
            .expect("health check")
            .into_inner();
        assert_eq!(reply.status(), ServingStatus::Serving, "service {service:?}");
    }
    let unknown = health
        .check(HealthCheckRequest { service: "no.such.Service".to_owned() })
        .await
        .expect_err("unknown services are NOT_FOUND");
    assert_eq!(unknown.code(), tonic::Code::NotFound);
}

/// Reflection v1 lists the services and describes points.v1 and the error detail types.
#[tokio::test]
async fn reflection_v1_describes_points_health_and_error_details() {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::{ServerReflectionRequest, ServerReflectionResponse};

    let server = TestServer::start().await;
    let mut reflection = ServerReflectionClient::new(server.channel().await);
    let ask = |request: MessageRequest| ServerReflectionRequest {
        host: String::new(),
        message_request: Some(request),
    };
    let requests = vec![
        ask(MessageRequest::ListServices(String::new())),
        ask(MessageRequest::FileContainingSymbol("points.v1.PointsService".into())),
        ask(MessageRequest::FileContainingSymbol("grpc.health.v1.Health".into())),
        ask(MessageRequest::FileContainingSymbol("google.rpc.BadRequest".into())),
        ask(MessageRequest::FileContainingSymbol("google.rpc.ErrorInfo".into())),
    ];
    let mut replies = reflection
        .server_reflection_info(tokio_stream::iter(requests))
        .await
        .expect("reflection stream")
        .into_inner();
    let mut responses: Vec<ServerReflectionResponse> = Vec::new();
    while let Some(reply) = replies.message().await.expect("reflection reply") {
        responses.push(reply);
    }
    assert_eq!(responses.len(), 5);
    let Some(MessageResponse::ListServicesResponse(list)) = &responses[0].message_response else {
        panic!("expected a service list, got {:?}", responses[0]);
    };
    let mut names: Vec<_> = list.service.iter().map(|service| service.name.as_str()).collect();
    names.sort();
    assert_eq!(
        names,
        ["grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection", "points.v1.PointsService"]
    );
    for response in &responses[1..] {
        match &response.message_response {
            Some(MessageResponse::FileDescriptorResponse(files)) => {
                assert!(!files.file_descriptor_proto.is_empty())
            }
            other => panic!("expected file descriptors, got {other:?}"),
        }
    }
}

/// Reflection v1alpha (all grpcurl 1.8.6 speaks) describes points.v1 too.
#[tokio::test]
async fn reflection_v1alpha_describes_points_service() {
    use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;

    let server = TestServer::start().await;
    let mut reflection = ServerReflectionClient::new(server.channel().await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::FileContainingSymbol(
            "points.v1.AddTransactionRequest".into(),
        )),
    };
    let mut replies = reflection
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .expect("reflection stream")
        .into_inner();
    let reply = replies.message().await.expect("reply").expect("one reply");
    let Some(MessageResponse::FileDescriptorResponse(files)) = reply.message_response else {
        panic!("expected file descriptors, got {reply:?}");
    };
    use prost::Message;
    let file = prost_types::FileDescriptorProto::decode(files.file_descriptor_proto[0].as_slice())
        .expect("a file descriptor");
    assert_eq!(file.package(), "points.v1");
}

/// Bytes that are not HTTP/2 close that connection only; the server keeps serving.
#[tokio::test]
async fn garbage_on_the_socket_does_not_take_the_server_down() {
    let server = TestServer::start().await;
    let address = server.address;
    tokio::task::spawn_blocking(move || {
        let payloads: [&[u8]; 4] = [
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            &[0u8; 4096],
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\xff\xff\xff\xff\xff\xff\xff\xff\xff",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
        ];
        for payload in payloads {
            let mut stream = TcpStream::connect(address).expect("connect");
            stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
            // The server may close the connection while we write: that is fine.
            let _ = stream.write_all(payload);
            let mut sink = Vec::new();
            let _ = stream.read_to_end(&mut sink);
        }
    })
    .await
    .expect("garbage task");
    let mut client = server.client().await;
    let reply = client.get_balances(GetBalancesRequest::default()).await;
    assert!(reply.is_ok(), "server still serves: {reply:?}");
    server.stop().await.expect("clean stop");
}

/// SIGTERM stops the real binary with exit code 0, with a client still connected.
// Multi-threaded so the client's connection keeps answering while this thread waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_server_cleanly_with_exit_code_zero() {
    let mut server = ServerProcess::start(&[]);
    let mut client = server.client().await;
    let reply = client
        .add_transaction(AddTransactionRequest {
            payer: "DANNON".into(),
            points: 10,
            timestamp: Some(timestamp("2024-01-01T00:00:00Z")),
            ..Default::default()
        })
        .await;
    assert!(reply.is_ok(), "{reply:?}");
    let started = Instant::now();
    server.signal("TERM");
    let status = server.wait(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "log:\n{}", server.log());
    // Well inside the 10 s grace period: an idle connection does not hold shutdown.
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    assert!(server.log().contains("server stopped"), "log:\n{}", server.log());
}

/// SIGINT (Ctrl-C) stops the real binary with exit code 0.
#[test]
fn sigint_stops_the_server_cleanly_with_exit_code_zero() {
    let mut server = ServerProcess::start(&[]);
    server.signal("INT");
    let status = server.wait(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "log:\n{}", server.log());
}

/// A connection that never finishes its handshake cannot hold shutdown past the grace period.
#[test]
fn shutdown_is_bounded_by_the_grace_period() {
    let mut server = ServerProcess::start(&["--shutdown-grace-ms", "300"]);
    // Half a preface: the server waits for the rest of it.
    let mut stalled = TcpStream::connect(server.address).expect("connect");
    stalled.write_all(b"PRI * HTTP/2.0\r\n").expect("write");
    std::thread::sleep(Duration::from_millis(100));
    let started = Instant::now();
    server.signal("TERM");
    let status = server.wait(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "log:\n{}", server.log());
    assert!(started.elapsed() < Duration::from_secs(15), "shutdown took {:?}", started.elapsed());
    drop(stalled);
}

/// A port already in use gives a clear error and a non-zero exit code.
#[test]
fn listening_on_a_busy_port_fails_with_a_clear_message() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = busy.local_addr().expect("address").to_string();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_points-server"))
        .args(["--listen", &address, "--in-memory"])
        .output()
        .expect("run points-server");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(&format!("cannot listen on {address}")), "stderr: {stderr}");
}

/// POINTS_LISTEN sets the listen address when --listen is not given.
#[tokio::test]
async fn points_listen_environment_variable_sets_the_address() {
    let mut command = ServerProcess::command();
    command.env("POINTS_LISTEN", "127.0.0.1:0").arg("--in-memory");
    let server = ServerProcess::spawn(command);
    assert!(server.address.ip().is_loopback());
    let mut client = server.client().await;
    let reply = client.get_balances(GetBalancesRequest::default()).await;
    assert!(reply.is_ok(), "{reply:?}");
}

/// A listen address that is not host:port is refused by the argument parser.
#[test]
fn malformed_listen_address_is_refused_at_start() {
    let output = ServerProcess::command()
        .args(["--listen", "not-an-address"])
        .output()
        .expect("run points-server");
    assert_eq!(output.status.code(), Some(2), "clap exits 2 on a bad argument");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--listen"), "stderr: {stderr}");
}

/// --log-format json writes one JSON object per line, and each RPC's line
/// (at DEBUG, which the harness turns on for the service) carries its
/// method, outcome code, latency and user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_have_one_line_per_rpc_with_method_code_latency_and_user() {
    let mut server = ServerProcess::start(&["--log-format", "json"]);
    let mut client = server.client().await;
    let refused = client
        .spend(points::proto::v1::SpendRequest {
            user_id: "alice".into(),
            points: 5,
            ..Default::default()
        })
        .await;
    assert!(refused.is_err());
    server.signal("TERM");
    assert_eq!(server.wait(Duration::from_secs(20)).code(), Some(0));
    let log = server.log();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|line| {
            serde_json::from_str(line).unwrap_or_else(|error| panic!("not JSON ({error}): {line}"))
        })
        .collect();
    let rpc = lines
        .iter()
        .find(|line| line["span"]["method"] == "Spend")
        .unwrap_or_else(|| panic!("no Spend line in:\n{log}"));
    assert_eq!(rpc["span"]["code"], "FAILED_PRECONDITION");
    assert_eq!(rpc["span"]["user"], "alice");
    assert!(rpc["fields"]["latency_us"].is_u64(), "{rpc}");
    assert_eq!(rpc["level"], "DEBUG", "refusals are not errors");
}
