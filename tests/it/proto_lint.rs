//! The API contract passes `buf lint` with the STANDARD rules (proto/buf.yaml).

use crate::common;

use std::process::Command;

/// buf lint finds nothing to complain about in proto/.
#[test]
fn proto_passes_buf_lint_standard() {
    let buf = common::tools::buf();
    let output = common::tools::output_within(
        Command::new(buf).arg("lint").current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/proto")),
        std::time::Duration::from_secs(120),
        "buf lint",
    );
    assert!(
        output.status.success(),
        "buf lint failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
