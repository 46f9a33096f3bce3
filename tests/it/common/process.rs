//! The real `points-server` binary as a child process: started until it
//! listens ([`ServerProcess::spawn`]), or run until it exits by itself
//! ([`ServerProcess::run_to_exit`]), with its log captured either way.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tonic::transport::Channel;

use super::client::{self, Client, add};
use super::wait::poll_until_blocking;

/// How long the binary has to listen, or to exit, after it is started.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The real `points-server` binary, running as a child process.
pub struct ServerProcess {
    pub address: SocketAddr,
    child: Child,
    log: Arc<Mutex<String>>,
}

/// A start of the binary that ended with the process exiting instead of
/// listening (a refused start).
#[derive(Debug)]
pub struct Exited {
    pub status: ExitStatus,
    /// Everything it wrote to stderr.
    pub log: String,
}

impl ServerProcess {
    /// Starts the binary in memory with `args` and waits until it listens.
    pub fn start(args: &[&str]) -> Self {
        Self::spawn(Self::in_memory(args))
    }

    /// Starts the binary on `data_dir` with `args` and waits until it listens.
    pub fn start_durable(data_dir: &Path, args: &[&str]) -> Self {
        Self::spawn(Self::durable(data_dir, args))
    }

    /// Starts the binary on a new, empty data directory with `args`; the
    /// directory is removed when the returned handle is dropped.
    pub fn start_on_new_dir(args: &[&str]) -> (tempfile::TempDir, Self) {
        let data_dir = tempfile::tempdir().expect("temporary directory");
        let server = Self::start_durable(data_dir.path(), args);
        (data_dir, server)
    }

    /// A new data directory in which the binary, started with `args`,
    /// recorded `days` transactions of `points` DANNON points, one a day
    /// from 2024-01-01, and then stopped cleanly.
    pub async fn data_dir_with_daily_writes(
        args: &[&str],
        days: u32,
        points: i64,
    ) -> tempfile::TempDir {
        let (data_dir, mut server) = Self::start_on_new_dir(args);
        let mut client = server.client().await;
        for day in 1..=days {
            add(&mut client, "DANNON", points, &format!("2024-01-{day:02}T00:00:00Z")).await;
        }
        server.terminate();
        data_dir
    }

    /// Starts the binary on the database at `url` with `args` and waits
    /// until it listens.
    pub fn start_on_database(url: &str, args: &[&str]) -> Self {
        Self::spawn(Self::on_database(url, args))
    }

    /// The binary on the database at `url`, on an ephemeral loopback port,
    /// with `args`.
    pub fn on_database(url: &str, args: &[&str]) -> Command {
        let mut command = Self::command();
        command.args(["--listen", "127.0.0.1:0", "--database-url", url]).args(args);
        command
    }

    /// Runs the binary with `args` (a command such as `backup` or `migrate`)
    /// to its exit, within two minutes, with no POINTS_DATA_DIR or
    /// POINTS_DATABASE_URL from the test's environment; returns its output.
    pub async fn run_command(args: &[&std::ffi::OsStr]) -> std::process::Output {
        let mut command = tokio::process::Command::from(Self::command());
        let output = command
            .args(args)
            .env_remove("POINTS_DATA_DIR")
            .env_remove("POINTS_DATABASE_URL")
            .kill_on_drop(true)
            .output();
        tokio::time::timeout(Duration::from_secs(120), output)
            .await
            .unwrap_or_else(|_| panic!("points-server {args:?} did not finish within 2 minutes"))
            .expect("run points-server")
    }

    /// A command for the binary, for tests that set its flags or environment themselves.
    pub fn command() -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_points-server"));
        // The standard OpenTelemetry variables of the test's own environment
        // would export every server's spans, or stop it starting.
        for (name, _) in std::env::vars_os() {
            if name.to_str().is_some_and(|name| name.starts_with("OTEL_")) {
                command.env_remove(name);
            }
        }
        command
    }

    /// The binary in memory on an ephemeral loopback port, with `args`.
    pub fn in_memory(args: &[&str]) -> Command {
        let mut command = Self::command();
        command.args(["--listen", "127.0.0.1:0", "--in-memory"]).args(args);
        command
    }

    /// The binary on `data_dir`, on an ephemeral loopback port, with `args`.
    pub fn durable(data_dir: &Path, args: &[&str]) -> Command {
        let mut command = Self::command();
        command.args(["--listen", "127.0.0.1:0", "--data-dir"]).arg(data_dir).args(args);
        command
    }

    /// `command` (its program, arguments and environment) run by bash after
    /// `ulimit {limit}` (such as `-f 16`, a file size limit in KiB), so the
    /// limit applies to the binary alone.
    pub fn under_ulimit(limit: &str, command: &Command) -> Command {
        let mut limited = Command::new("bash");
        limited
            .arg("-c")
            .arg(format!(r#"ulimit {limit} && exec "$0" "$@""#))
            .arg(command.get_program())
            .args(command.get_args())
            .envs(command.get_envs().filter_map(|(name, value)| Some((name, value?))));
        limited
    }

    /// Spawns `command` and waits until the server logs the address it
    /// listens on; fails the test, with the log, if it exits instead.
    pub fn spawn(command: Command) -> Self {
        Self::try_spawn(command).unwrap_or_else(|exited| {
            panic!(
                "points-server exited ({}) instead of listening; log:\n{}",
                exited.status, exited.log
            )
        })
    }

    /// Spawns `command` and waits until the server logs the address it
    /// listens on, or until it exits (its status and log).
    pub fn try_spawn(mut command: Command) -> Result<Self, Exited> {
        // Per-call lines are at DEBUG; tests read them, unless the test
        // chose its own filter.
        if !command.get_envs().any(|(name, _)| name == "RUST_LOG") {
            command.env("RUST_LOG", "info,points::service=debug");
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn points-server");
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let (address_sender, address_receiver) = std::sync::mpsc::channel();
        let log_writer = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                {
                    let mut log = log_writer.lock().expect("log lock");
                    log.push_str(&line);
                    log.push('\n');
                }
                if line.contains("listening")
                    && let Some(address) = listen_address_in(&line)
                {
                    let _ = address_sender.send(address);
                }
            }
            // The sender drops here: stderr closed, the process is exiting.
        });
        match address_receiver.recv_timeout(START_TIMEOUT) {
            Ok(address) => {
                let address = address.parse().expect("the logged address parses");
                Ok(Self { address, child, log })
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                let status = wait_for_exit(&mut child, START_TIMEOUT, &log);
                let log = log.lock().expect("log lock").clone();
                Err(Exited { status, log })
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                let log = log.lock().expect("log lock").clone();
                panic!(
                    "points-server neither listened nor exited within {START_TIMEOUT:?}; log:\n{log}"
                );
            }
        }
    }

    /// Runs `command` expecting the binary to exit by itself (a refused
    /// start); fails the test, with the log, if it listens instead.
    pub fn run_to_exit(command: Command) -> Exited {
        match Self::try_spawn(command) {
            Err(exited) => exited,
            Ok(server) => panic!("points-server started listening; log:\n{}", server.log()),
        }
    }

    /// A channel to the server.
    pub async fn channel(&self) -> Channel {
        client::connect_to(self.address).channel().await
    }

    /// A generated points client.
    pub async fn client(&self) -> Client {
        client::connect_to(self.address).client().await
    }

    /// Everything the server has logged so far.
    pub fn log(&self) -> String {
        self.log.lock().expect("log lock").clone()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The resident memory of the process, in KiB.
    pub fn resident_kib(&self) -> u64 {
        let path = format!("/proc/{}/status", self.pid());
        let status = std::fs::read_to_string(path).expect("read /proc status");
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc status")
    }

    /// Sends `signal` (e.g. "TERM") to the process.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([format!("-{signal}"), self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Stops the server with SIGTERM and checks that it exits cleanly (code 0).
    pub fn terminate(&mut self) {
        self.signal("TERM");
        let status = self.wait(Duration::from_secs(20));
        assert_eq!(status.code(), Some(0), "clean stop; log:\n{}", self.log());
    }

    /// Waits for the process to exit, failing the test after `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        wait_for_exit(&mut self.child, timeout, &self.log)
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits for `child` to exit, killing it and failing the test, with `log`,
/// after `timeout`.
fn wait_for_exit(child: &mut Child, timeout: Duration, log: &Mutex<String>) -> ExitStatus {
    let exited = poll_until_blocking(timeout, || child.try_wait().expect("poll child"));
    exited.unwrap_or_else(|| {
        let _ = child.kill();
        let log = log.lock().expect("log lock").clone();
        panic!("points-server did not exit within {timeout:?}; log:\n{log}");
    })
}

/// The address in the server's "listening" log line, text or JSON.
fn listen_address_in(line: &str) -> Option<String> {
    if let Some(rest) = line.split("\"address\":\"").nth(1) {
        return rest.split('"').next().map(str::to_owned);
    }
    line.split("address=").nth(1).map(|address| address.trim().to_owned())
}
