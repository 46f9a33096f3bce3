//! A short run of the real load generator against a server it spawns, so the
//! tool never rots. Seconds long, no performance thresholds: it checks that
//! every workload runs without errors and is reported, with the spawned
//! server's CPU time per call.

use std::process::Command;

/// points-bench --spawn runs every workload to completion without errors,
/// and reports the server's CPU time per call for each.
#[test]
fn load_generator_runs_every_workload_against_a_spawned_server() {
    let output = Command::new(env!("CARGO_BIN_EXE_points-bench"))
        .args(["--spawn", "--calls", "200", "--concurrency", "4", "--connections", "2"])
        .args(["--users", "5", "--batch-size", "20"])
        .args(["--workloads", "check,add,spend,balances,mixed,batch"])
        .output()
        .expect("run points-bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "points-bench failed:\n{stdout}\n{stderr}");
    for workload in ["check", "add", "spend", "balances", "mixed", "batch"] {
        let row = stdout
            .lines()
            .find(|line| line.starts_with(workload))
            .unwrap_or_else(|| panic!("no {workload} row in:\n{stdout}"));
        let columns: Vec<&str> = row.split_whitespace().collect();
        let errors: u64 = columns.last().and_then(|value| value.parse().ok()).expect("errors");
        assert_eq!(errors, 0, "{row}");
        let server_us: f64 = columns
            .get(columns.len().saturating_sub(2))
            .and_then(|value| value.parse().ok())
            .unwrap_or_else(|| panic!("no server µs column in {row:?}"));
        assert!(server_us.is_finite() && server_us >= 0.0, "{row}");
    }
}
