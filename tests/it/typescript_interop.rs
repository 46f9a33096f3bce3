//! Interop with TypeScript: the example client in examples/typescript,
//! generated from proto/ with protoc-gen-es (its npm packages installed by
//! the self-installing harness under the target directory) and speaking gRPC
//! through Connect for Node, type-checks with tsc and runs against the real
//! server: examples A and B, ErrorInfo and BadRequest read from the
//! grpc-status-details-bin details, a spend retried with a request_id,
//! health, and following a user's history with WatchTransactions and
//! resuming it.

use crate::common;

use common::{ServerProcess, tools};

/// The generated TypeScript client type-checks and passes every interop
/// check, printing what it saw.
#[test]
fn typescript_client_generated_from_the_proto_interoperates() {
    let example = tools::typescript_example();
    tools::run(
        example.command("tsc").args(["--noEmit", "-p", "."]),
        "tsc on the TypeScript client",
    );

    let server = ServerProcess::start(&[]);
    let output = tools::output_within(
        example.command("tsx").arg("client.ts").arg(server.address.to_string()),
        std::time::Duration::from_secs(120),
        "the TypeScript client",
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the TypeScript client failed:\n{stdout}\n{stderr}");

    // Examples A and B: the README's spend and balances.
    for example in ["A", "B"] {
        let line = format!(
            "example {example}: spent DANNON -100, UNILEVER -200, MILLER COORS -4700 (spend 1); \
             balances DANNON 1000, MILLER COORS 5300, UNILEVER 0\n"
        );
        assert!(stdout.contains(&line), "{stdout}");
    }
    // The refusals' ErrorInfo (and BadRequest), from the status details.
    assert!(
        stdout.contains(
            "refused: FAILED_PRECONDITION INSUFFICIENT_POINTS from points.v1.PointsService \
             (requested 1000000, available 6300)\n"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "refused: INVALID_ARGUMENT PAYER_BLANK; bad fields payer, points, timestamp\n"
        ),
        "{stdout}"
    );
    // The retry got the first reply, and the points were spent once.
    assert!(
        stdout
            .contains("retried spend: same reply (spend 2: MILLER COORS -10); 6290 points left\n"),
        "{stdout}"
    );
    assert!(stdout.contains("health: SERVING\n"), "{stdout}");
    // It follows the history from the start (the refusals left nothing in
    // it), then resumes after the last position it saw with only the entry
    // written since.
    let history: String = (1..=5)
        .map(|position| format!("entry {position} transaction\n"))
        .chain(["entry 6 spend\n".to_owned(), "entry 7 spend\n".to_owned()])
        .collect();
    assert!(stdout.contains(&history), "{stdout}");
    assert!(stdout.contains("resumed after 7: entry 8 transaction 6\n"), "{stdout}");
    assert!(stdout.contains("balances as of 1: DANNON 300\n"), "{stdout}");
    assert!(stdout.ends_with("typescript interop: all checks passed\n"), "{stdout}");
}
