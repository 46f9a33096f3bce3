//! Prometheus metrics of the real binary, scraped over HTTP after real calls:
//! calls by method and code, latency histograms, in-flight calls, refusals by
//! reason, users, payers, lots, journal bytes and fsync latency.

use crate::common::ServerProcess;
use crate::common::client::{add_request, spend_request, try_add, try_spend};
use crate::common::metrics::{free_port, scrape};

/// The value of the sample whose line starts with `series`.
fn sample(metrics: &str, series: &str) -> f64 {
    let value = crate::common::metrics::sample(metrics, series);
    value.unwrap_or_else(|| panic!("no {series} in:\n{metrics}"))
}

/// Every documented metric is exported and counts what happened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_calls_refusals_users_payers_lots_and_fsyncs() {
    let data_dir = tempfile::tempdir().expect("temporary directory");
    let port = free_port();
    let server = ServerProcess::start_durable(
        data_dir.path(),
        &["--metrics-listen", &format!("127.0.0.1:{port}")],
    );
    let mut client = server.client().await;
    for (payer, points) in [("DANNON", 10), ("UNILEVER", 5), ("DANNON", 1)] {
        let earn = add_request("alice", "", payer, points, "2024-01-01T00:00:00Z");
        try_add(&mut client, earn).await.expect("accepted");
    }
    let refused = try_spend(&mut client, spend_request("bob", "", 1)).await;
    assert!(refused.is_err());

    let metrics = scrape(port);
    assert_eq!(
        sample(&metrics, r#"points_rpc_calls_total{method="AddTransaction",code="OK"}"#),
        3.0
    );
    assert_eq!(
        sample(&metrics, r#"points_rpc_calls_total{method="Spend",code="FAILED_PRECONDITION"}"#),
        1.0
    );
    assert_eq!(
        sample(
            &metrics,
            r#"points_rpc_refusals_total{method="Spend",reason="INSUFFICIENT_POINTS"}"#
        ),
        1.0
    );
    assert_eq!(
        sample(&metrics, r#"points_rpc_duration_seconds_count{method="AddTransaction"}"#),
        3.0
    );
    assert_eq!(sample(&metrics, "points_rpc_in_flight"), 0.0);
    // bob's refused write created no user; alice has 2 payers and 3 lots.
    assert_eq!(sample(&metrics, "points_users"), 1.0);
    assert_eq!(sample(&metrics, "points_payers"), 2.0);
    assert_eq!(sample(&metrics, "points_lots"), 3.0);
    assert!(sample(&metrics, "points_journal_bytes_total") > 0.0);
    assert_eq!(sample(&metrics, "points_journal_fsync_seconds_count"), 3.0);
    assert!(metrics.contains("# HELP points_rpc_calls_total"), "metrics are described");
}
