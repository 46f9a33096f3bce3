//! Where the real binary listens: --listen or POINTS_LISTEN, and a clear
//! refusal of a busy port or a malformed address.

use crate::common::ServerProcess;
use crate::common::client::balances;

/// A port already in use gives a clear error and a non-zero exit code.
#[test]
fn listening_on_a_busy_port_fails_with_a_clear_message() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = busy.local_addr().expect("address").to_string();
    let mut command = ServerProcess::command();
    command.args(["--listen", &address, "--in-memory"]);
    let exited = ServerProcess::run_to_exit(command);
    assert!(!exited.status.success());
    assert!(exited.log.contains(&format!("cannot listen on {address}")), "stderr: {}", exited.log);
}

/// POINTS_LISTEN sets the listen address when --listen is not given.
#[tokio::test]
async fn points_listen_environment_variable_sets_the_address() {
    let mut command = ServerProcess::command();
    command.env("POINTS_LISTEN", "127.0.0.1:0").arg("--in-memory");
    let server = ServerProcess::spawn(command);
    assert!(server.address.ip().is_loopback());
    assert!(balances(&mut server.client().await).await.is_empty());
}

/// A listen address that is not host:port is refused by the argument parser.
#[test]
fn malformed_listen_address_is_refused_at_start() {
    let mut command = ServerProcess::command();
    command.args(["--listen", "not-an-address"]);
    let exited = ServerProcess::run_to_exit(command);
    assert_eq!(exited.status.code(), Some(2), "clap exits 2 on a bad argument");
    assert!(exited.log.contains("--listen"), "stderr: {}", exited.log);
}
