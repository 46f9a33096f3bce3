//! Interop with Python: a client generated from proto/ with grpcio-tools (in
//! the self-installing test virtualenv) runs examples A and B, decodes the
//! error details with grpcio-status, checks health with
//! grpcio-health-checking, and retries a spend with a request_id, against the
//! real server. The copyable example client runs too, following a user's
//! history with WatchTransactions and resuming it.

use crate::common;

use std::process::Command;

use common::{ServerProcess, tools};

fn run_python(script: &str, stubs: &std::path::Path, address: &str) -> String {
    let output = tools::output_within(
        Command::new(tools::python()).arg(script).arg(address).env("PYTHONPATH", stubs),
        std::time::Duration::from_secs(120),
        script,
    );
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{script} failed:\n{stdout}\n{stderr}");
    stdout
}

/// The generated Python client passes every interop check.
#[test]
fn python_client_generated_from_the_proto_interoperates() {
    let stubs = tempfile::tempdir().expect("temporary directory");
    tools::python_stubs(stubs.path());
    let server = ServerProcess::start(&[]);
    let address = server.address.to_string();
    let root = env!("CARGO_MANIFEST_DIR");
    let stdout = run_python(&format!("{root}/tests/python/interop.py"), stubs.path(), &address);
    assert!(stdout.contains("python interop: all checks passed"), "{stdout}");
    let stdout = run_python(&format!("{root}/examples/python_client.py"), stubs.path(), &address);
    assert!(stdout.contains("refused: FAILED_PRECONDITION INSUFFICIENT_POINTS"), "{stdout}");
    assert!(stdout.contains("balances {'DANNON': 300}"), "{stdout}");
    // It follows the history, and resumes after the last position it saw.
    assert!(stdout.contains("entry 1 transaction\nentry 2 spend\n"), "{stdout}");
    assert!(stdout.contains("resumed at 3"), "{stdout}");
    assert!(stdout.contains("balances as of 1 {'DANNON': 500}"), "{stdout}");
}
