//! The real binary's logs: with --log-format json, one JSON object per line,
//! and one line per RPC with its method, outcome code, latency and user.

use crate::common::ServerProcess;
use crate::common::client::{add, spend_request, try_spend};
use crate::common::wait::eventually;

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

/// At the default level, one INFO line every 10 s counts the PointsService
/// calls that finished meanwhile: completed, refused and failed apart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_info_line_every_ten_seconds_counts_the_calls_that_finished() {
    let server = ServerProcess::start(&["--log-format", "json"]);
    let mut client = server.client().await;
    add(&mut client, "DANNON", 100, "2024-01-01T00:00:00Z").await;
    add(&mut client, "UNILEVER", 200, "2024-01-02T00:00:00Z").await;
    let refused = try_spend(&mut client, spend_request("alice", "", 5)).await;
    assert!(refused.is_err(), "alice has no points");
    // Summed over every summary line so far: the calls may straddle two.
    let summaries = || {
        let log = server.log();
        let lines: Vec<serde_json::Value> = log
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter(|line| line["fields"]["message"] == "calls finished")
            .collect();
        lines
    };
    let counted = |field: &str| -> u64 {
        summaries().iter().map(|line| line["fields"][field].as_u64().unwrap_or(0)).sum()
    };
    eventually("the summary lines", Duration::from_secs(25), || async {
        (counted("completed") + counted("refused") >= 3).then_some(())
    })
    .await;
    assert_eq!((counted("completed"), counted("refused"), counted("failed")), (2, 1, 0));
    for line in summaries() {
        assert_eq!(line["level"], "INFO", "{line}");
        assert_eq!(line["fields"]["interval_s"], 10, "{line}");
        for field in ["completed", "refused", "failed"] {
            assert!(line["fields"][field].is_u64(), "no {field} in {line}");
        }
    }
}
