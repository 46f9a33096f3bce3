//! The real binary's logs: with --log-format json, one JSON object per line,
//! and one line per RPC with its method, outcome code, latency and user.

use crate::common::ServerProcess;
use crate::common::client::{spend_request, try_spend};

use std::time::Duration;

/// --log-format json writes one JSON object per line, and each RPC's line
/// (at DEBUG, which the harness turns on for the service) carries its
/// method, outcome code, latency and user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_have_one_line_per_rpc_with_method_code_latency_and_user() {
    let mut server = ServerProcess::start(&["--log-format", "json"]);
    let mut client = server.client().await;
    let refused = try_spend(&mut client, spend_request("alice", "", 5)).await;
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
