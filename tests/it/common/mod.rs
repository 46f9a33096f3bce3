//! Helpers shared by the integration tests: the real server in-process on an
//! ephemeral port, the real binary as a child process, a raw-bytes gRPC codec
//! for malformed requests, and self-installing external tools.

pub mod client;
pub mod metrics;
pub mod operations;
pub mod refusal;
pub mod sim_disk;
pub mod tools;
pub mod wait;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use points::proto::v1::points_service_client::PointsServiceClient;
use points::server::{ServeError, ServerSettings};
use points::service::PointsService;
use prost_types::Timestamp;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

/// The real tonic server, in this process, on 127.0.0.1 with an ephemeral port.
pub struct TestServer {
    pub address: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), ServeError>>,
}

impl TestServer {
    /// Starts a server over an empty ledger.
    pub async fn start() -> Self {
        Self::start_with(ServerSettings::default()).await
    }

    /// Starts a server with the given settings.
    pub async fn start_with(settings: ServerSettings) -> Self {
        let listener =
            tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind an ephemeral port");
        let address = listener.local_addr().expect("bound address");
        let (shutdown, shutdown_received) = oneshot::channel::<()>();
        let task = tokio::spawn(points::server::serve(
            listener,
            PointsService::new(std::sync::Arc::new(points::durability::Store::in_memory())),
            settings,
            async move {
                let _ = shutdown_received.await;
            },
        ));
        Self { address, shutdown: Some(shutdown), task }
    }

    /// The URI clients connect to.
    pub fn uri(&self) -> String {
        format!("http://{}", self.address)
    }

    /// A channel to the server.
    pub async fn channel(&self) -> Channel {
        Channel::from_shared(self.uri())
            .expect("valid URI")
            .connect()
            .await
            .expect("connect to the test server")
    }

    /// A generated points client.
    pub async fn client(&self) -> PointsServiceClient<Channel> {
        PointsServiceClient::new(self.channel().await)
    }

    /// Signals shutdown and waits for the server to stop.
    pub async fn stop(mut self) -> Result<(), ServeError> {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        tokio::time::timeout(Duration::from_secs(30), &mut self.task)
            .await
            .expect("server stops within 30 s")
            .expect("server task does not panic")
    }
}

/// The real `points-server` binary, running as a child process.
pub struct ServerProcess {
    pub address: SocketAddr,
    child: Child,
    log: Arc<Mutex<String>>,
}

impl ServerProcess {
    /// Starts the binary in memory with `args` (plus `--listen 127.0.0.1:0`)
    /// and waits until it logs the address it listens on.
    pub fn start(args: &[&str]) -> Self {
        let mut command = Self::command();
        command.args(["--listen", "127.0.0.1:0", "--in-memory"]).args(args);
        Self::spawn(command)
    }

    /// Starts the binary on `data_dir` with `args`.
    pub fn start_durable(data_dir: &std::path::Path, args: &[&str]) -> Self {
        let mut command = Self::command();
        command.args(["--listen", "127.0.0.1:0", "--data-dir"]).arg(data_dir).args(args);
        Self::spawn(command)
    }

    /// A command for the binary, for tests that set its flags or environment themselves.
    pub fn command() -> Command {
        Command::new(env!("CARGO_BIN_EXE_points-server"))
    }

    /// Spawns `command` and waits until the server logs the address it listens on.
    pub fn spawn(mut command: Command) -> Self {
        let mut child = command
            // Per-call lines are at DEBUG; tests read them.
            .env("RUST_LOG", "info,points::service=debug")
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
                if line.contains("listening")
                    && let Some(address) = listen_address_in(&line)
                {
                    let _ = address_sender.send(address);
                }
                let mut log = log_writer.lock().expect("log lock");
                log.push_str(&line);
                log.push('\n');
            }
        });
        let address = match address_receiver.recv_timeout(Duration::from_secs(30)) {
            Ok(address) => address.parse().expect("the logged address parses"),
            Err(_) => {
                let _ = child.kill();
                panic!("points-server did not report its address; log:\n{}", log.lock().unwrap());
            }
        };
        Self { address, child, log }
    }

    /// The URI clients connect to.
    pub fn uri(&self) -> String {
        format!("http://{}", self.address)
    }

    /// A generated points client.
    pub async fn client(&self) -> PointsServiceClient<Channel> {
        PointsServiceClient::connect(self.uri()).await.expect("connect to points-server")
    }

    /// Everything the server has logged so far.
    pub fn log(&self) -> String {
        self.log.lock().expect("log lock").clone()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (e.g. "TERM") to the process.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([format!("-{signal}"), self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Waits for the process to exit, failing the test after `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll child") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("points-server did not exit within {timeout:?}; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The address in the server's "listening" log line, text or JSON.
fn listen_address_in(line: &str) -> Option<String> {
    if let Some(rest) = line.split("\"address\":\"").nth(1) {
        return rest.split('"').next().map(str::to_owned);
    }
    line.split("address=").nth(1).map(|address| address.trim().to_owned())
}

/// Parses an RFC 3339 time into a protobuf timestamp.
pub fn timestamp(rfc3339: &str) -> Timestamp {
    let time = chrono::DateTime::parse_from_rfc3339(rfc3339).expect("valid RFC 3339");
    Timestamp { seconds: time.timestamp(), nanos: time.timestamp_subsec_nanos() as i32 }
}

/// A gRPC codec that sends and receives raw bytes, for requests that are not
/// valid protobuf.
#[derive(Debug, Clone, Default)]
pub struct RawBytesCodec;

impl tonic::codec::Codec for RawBytesCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawBytesCodec;
    type Decoder = RawBytesCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawBytesCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawBytesCodec
    }
}

impl tonic::codec::Encoder for RawBytesCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: Vec<u8>,
        destination: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        use bytes::BufMut;
        destination.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawBytesCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        source: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        use bytes::Buf;
        let mut bytes = vec![0; source.remaining()];
        source.copy_to_slice(&mut bytes);
        Ok(Some(bytes))
    }
}

/// Sends `body` as the raw request message of `method` (a full path such as
/// `/points.v1.PointsService/Spend`).
pub async fn call_raw(
    channel: Channel,
    method: &'static str,
    body: Vec<u8>,
) -> Result<Vec<u8>, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.map_err(|error| tonic::Status::unavailable(error.to_string()))?;
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(method);
    grpc.unary(tonic::Request::new(body), path, RawBytesCodec)
        .await
        .map(tonic::Response::into_inner)
}

/// The journal segment files of a data directory, oldest first.
pub fn journal_files(data_dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(data_dir)
        .expect("list the data directory")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| path.extension().is_some_and(|extension| extension == "log"))
        .collect();
    files.sort();
    files
}

/// Where the records of the journal segment `path` end: a segment's file is
/// preallocated with zeros after its records, so its length says nothing of
/// what it holds.
pub fn journal_records_bytes(path: &std::path::Path) -> usize {
    let directory = path.parent().expect("a segment's directory");
    let ends = points::durability::journal_records_bytes(directory).expect("read the journal");
    let end = ends.iter().find(|(segment, _)| segment == path).expect("the segment is listed");
    usize::try_from(end.1).expect("a segment's length fits in memory")
}

/// The records of the journal segment `path`, without the zeros after them.
pub fn journal_records(path: &std::path::Path) -> Vec<u8> {
    let mut records = std::fs::read(path).expect("read a journal segment");
    records.truncate(journal_records_bytes(path));
    records
}

/// Copies every file of `from` into a new temporary directory.
pub fn copy_dir(from: &std::path::Path) -> tempfile::TempDir {
    let copy = tempfile::tempdir().expect("temporary directory");
    for entry in std::fs::read_dir(from).expect("list") {
        let path = entry.expect("entry").path();
        std::fs::copy(&path, copy.path().join(path.file_name().expect("a file name")))
            .expect("copy");
    }
    copy
}

/// Opens the store of `options`, retrying for a few seconds while its data
/// directory reads as locked. A store closed just before may still look
/// locked for a moment: a child process that another test of this binary is
/// starting holds a copy of every descriptor of this process, the lock's
/// included, until it executes its program. The server never starts child
/// processes, so only tests that reopen a store in-process need this.
pub fn open_store(
    options: &points::durability::StoreOptions,
) -> Result<(points::durability::Store, points::durability::Recovery), points::durability::OpenError>
{
    wait::eventually_blocking("the data directory's lock", Duration::from_secs(5), || {
        match points::durability::Store::open(options) {
            Err(points::durability::OpenError::Locked { .. }) => None,
            opened => Some(opened),
        }
    })
}
