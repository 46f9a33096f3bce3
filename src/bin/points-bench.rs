//! `points-bench`: a load generator that drives a running points-server over
//! real gRPC and reports calls/s and latency percentiles per workload.
//!
//! In the same run it measures the *ceiling*: the same load on
//! grpc.health.v1 Check, an RPC that does no work, so every result is also a
//! ratio to what this client, this machine and the gRPC stack allow at all.
//! With `--spawn` it also reports the CPU time the servers spent per call
//! (on Linux, from `/proc`): a cost the machine's noise moves less than
//! throughput, and one that the load generator's own CPU does not blur.
//!
//! ```text
//! cargo run --release --bin points-bench -- --spawn --duration-secs 5
//! cargo run --release --bin points-bench -- --spawn --server-arg=--data-dir=target/bench-data --workloads add,batch
//! cargo run --release --bin points-bench -- --addr http://127.0.0.1:50051 --workloads mixed
//! ```

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use hdrhistogram::Histogram;
use points::proto::v1::points_service_client::PointsServiceClient;
use points::proto::v1::{
    AddTransactionRequest, AddTransactionsRequest, GetBalancesRequest, NewTransaction, SpendRequest,
};
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

/// Drives a points-server with concurrent gRPC load and reports throughput
/// and latency per workload, with the health-check ceiling for comparison.
#[derive(Debug, Parser)]
#[command(name = "points-bench", version)]
struct Options {
    /// The server to load, e.g. http://127.0.0.1:50051; repeat it for
    /// replicas, and connections are spread over them in turn.
    #[arg(long, conflicts_with = "spawn", required_unless_present = "spawn")]
    addr: Vec<String>,

    /// Start points-server (from the same directory as this binary) on a free
    /// loopback port, in memory unless --server-arg says otherwise.
    #[arg(long)]
    spawn: bool,

    /// With --spawn: how many servers to start, each with the same
    /// --server-arg (replicas, given a --database-url).
    #[arg(long, default_value_t = 1, requires = "spawn", value_parser = clap::value_parser!(u32).range(1..=64))]
    replicas: u32,

    /// An argument for the spawned server (repeatable), e.g. --server-arg=--fsync=never.
    #[arg(long = "server-arg", value_name = "ARG", allow_hyphen_values = true)]
    server_args: Vec<String>,

    /// HTTP/2 connections to spread the load over.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..))]
    connections: u32,

    /// Calls in flight at once (concurrent streams).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    concurrency: u32,

    /// How long each workload is measured, in seconds.
    #[arg(long, default_value_t = 5.0)]
    duration_secs: f64,

    /// Unmeasured load before each workload, in seconds.
    #[arg(long, default_value_t = 1.0)]
    warmup_secs: f64,

    /// Stop each workload after this many calls instead of after the duration.
    #[arg(long)]
    calls: Option<u64>,

    /// Workloads, in order: check (the ceiling), add, spend, balances,
    /// mixed (70% add, 20% spend, 10% balances), batch.
    #[arg(long, value_delimiter = ',', default_value = "check,add,spend,balances,mixed,batch")]
    workloads: Vec<Workload>,

    /// Users the load is spread over.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    users: u32,

    /// Transactions per AddTransactions call in the batch workload.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    batch_size: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Workload {
    Check,
    Add,
    Spend,
    Balances,
    Mixed,
    Batch,
}

/// One workload's measurement.
struct Measurement {
    calls: u64,
    errors: u64,
    first_error: Option<String>,
    elapsed: Duration,
    latency_us: Histogram<u64>,
    /// CPU time the spawned servers spent while the calls were measured;
    /// `None` without `--spawn` or where it cannot be read.
    server_cpu: Option<Duration>,
}

impl Measurement {
    fn calls_per_second(&self) -> f64 {
        self.calls as f64 / self.elapsed.as_secs_f64()
    }
}

/// The server started by --spawn; killed when dropped.
struct SpawnedServer(Child);

impl SpawnedServer {
    /// The CPU time (user and system, every thread) the server has used so
    /// far, from `/proc/<pid>/stat`; `None` where there is no such file.
    fn cpu_time(&self) -> Option<Duration> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.0.id())).ok()?;
        let ticks = cpu_ticks(&stat)?;
        // SAFETY: sysconf only reads a system constant.
        let ticks_per_second = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) })
            .ok()
            .filter(|&ticks| ticks > 0)?;
        Some(Duration::from_nanos(ticks.saturating_mul(1_000_000_000) / ticks_per_second))
    }
}

/// The clock ticks of CPU (user and system) in a `/proc/<pid>/stat` line.
/// The command name, field 2, is in parentheses and may hold spaces and
/// parentheses itself: fields are counted from the last `)`, after which
/// the state is field 3, and utime and stime fields 14 and 15.
fn cpu_ticks(stat: &str) -> Option<u64> {
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace().skip(11);
    let mut ticks = || fields.next()?.parse::<u64>().ok();
    let (user, system) = (ticks()?, ticks()?);
    user.checked_add(system)
}

/// The CPU time all `servers` have used so far; `None` without any, or if
/// one cannot be read.
fn servers_cpu_time(servers: &[SpawnedServer]) -> Option<Duration> {
    if servers.is_empty() {
        return None;
    }
    servers.iter().map(SpawnedServer::cpu_time).sum()
}

impl Drop for SpawnedServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_server(args: &[String]) -> Result<(SpawnedServer, String), String> {
    let binary = std::env::current_exe()
        .map_err(|error| format!("cannot find this binary: {error}"))?
        .with_file_name("points-server");
    let mut command = Command::new(&binary);
    command.args(["--listen", "127.0.0.1:0"]);
    if !args.iter().any(|arg| arg.starts_with("--data-dir") || arg.starts_with("--database-url")) {
        command.arg("--in-memory");
    }
    let mut child = command
        .args(args)
        // The server's default configuration, per-call log lines included:
        // that is what users run.
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|error| format!("cannot start {}: {error}", binary.display()))?;
    let stderr = child.stderr.take().ok_or("no stderr")?;
    let server = SpawnedServer(child);
    let mut lines = BufReader::new(stderr).lines();
    // The first lines of the log say where it listens; bounded by the log itself.
    for line in lines.by_ref().take(100) {
        let line = line.map_err(|error| format!("cannot read the server log: {error}"))?;
        if let Some(address) = line.split("address=").nth(1).filter(|_| line.contains("listening"))
        {
            let address = format!("http://{}", address.trim());
            // Keep draining the log so the server never blocks on it.
            std::thread::spawn(move || lines.for_each(drop));
            return Ok((server, address));
        }
    }
    Err("the server stopped before it listened".to_owned())
}

fn timestamp(seconds: i64) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp { seconds: 1_700_000_000 + seconds, nanos: 0 })
}

const PAYERS: [&str; 8] =
    ["DANNON", "UNILEVER", "MILLER COORS", "KRAFT", "NESTLE", "PEPSICO", "MARS", "DANONE"];

/// Gives every user plenty of points so spends never run dry.
async fn fund_users(channel: Channel, users: u32) -> Result<(), String> {
    let mut client = PointsServiceClient::new(channel);
    for user in 0..users {
        let transactions = PAYERS
            .iter()
            .enumerate()
            .map(|(index, payer)| NewTransaction {
                payer: (*payer).to_owned(),
                points: 1_000_000_000_000,
                timestamp: timestamp(index as i64),
            })
            .collect();
        let request = AddTransactionsRequest { user_id: format!("user-{user}"), transactions };
        client
            .add_transactions(request)
            .await
            .map_err(|status| format!("cannot fund users: {status}"))?;
    }
    Ok(())
}

/// One call of `workload` by worker `worker`.
async fn call(
    workload: Workload,
    points: &mut PointsServiceClient<Channel>,
    health: &mut HealthClient<Channel>,
    random: &mut fastrand::Rng,
    users: u32,
    batch_size: u32,
) -> Result<(), tonic::Status> {
    let user_id = format!("user-{}", random.u32(0..users));
    let kind = match workload {
        Workload::Mixed => match random.u32(0..10) {
            0..=6 => Workload::Add,
            7..=8 => Workload::Spend,
            _ => Workload::Balances,
        },
        other => other,
    };
    match kind {
        Workload::Check => health.check(HealthCheckRequest::default()).await.map(drop),
        Workload::Add => {
            let request = AddTransactionRequest {
                user_id,
                payer: PAYERS[random.usize(0..PAYERS.len())].to_owned(),
                points: random.i64(1..100),
                timestamp: timestamp(random.i64(0..100_000_000)),
                request_id: String::new(),
            };
            points.add_transaction(request).await.map(drop)
        }
        Workload::Spend => {
            let request =
                SpendRequest { user_id, points: random.i64(1..10), request_id: String::new() };
            points.spend(request).await.map(drop)
        }
        Workload::Balances => points
            .get_balances(GetBalancesRequest { user_id, ..Default::default() })
            .await
            .map(drop),
        Workload::Batch => {
            let transactions = (0..batch_size)
                .map(|_| NewTransaction {
                    payer: PAYERS[random.usize(0..PAYERS.len())].to_owned(),
                    points: random.i64(1..100),
                    timestamp: timestamp(random.i64(0..100_000_000)),
                })
                .collect();
            points
                .add_transactions(AddTransactionsRequest { user_id, transactions })
                .await
                .map(drop)
        }
        Workload::Mixed => unreachable!("mixed picks one of the others"),
    }
}

/// Latencies from 1 µs to an hour, to 3 significant digits; longer ones are
/// recorded as an hour.
fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds")
}

/// Runs `workload` with `concurrency` workers over `channels`.
async fn measure(
    options: &Options,
    workload: Workload,
    channels: &[Channel],
    servers: &[SpawnedServer],
) -> Measurement {
    let warmup = Duration::from_secs_f64(options.warmup_secs);
    let duration = Duration::from_secs_f64(options.duration_secs);
    let calls_per_worker =
        options.calls.map(|calls| calls.div_ceil(u64::from(options.concurrency)));
    let start = Instant::now();
    let measure_from = start + warmup;
    let stop_at = measure_from + duration;
    let workers: Vec<_> = (0..options.concurrency)
        .map(|worker| {
            let channel = channels[worker as usize % channels.len()].clone();
            let (users, batch_size) = (options.users, options.batch_size);
            tokio::spawn(async move {
                let mut points =
                    PointsServiceClient::new(channel.clone()).max_decoding_message_size(64 << 20);
                let mut health = HealthClient::new(channel);
                let mut random = fastrand::Rng::with_seed(u64::from(worker));
                let mut latency_us = latency_histogram();
                let (mut calls, mut errors, mut first_error) = (0u64, 0u64, None);
                loop {
                    let started = Instant::now();
                    if calls_per_worker.is_some_and(|limit| calls >= limit)
                        || (calls_per_worker.is_none() && started >= stop_at)
                    {
                        break;
                    }
                    let outcome =
                        call(workload, &mut points, &mut health, &mut random, users, batch_size)
                            .await;
                    if started < measure_from && calls_per_worker.is_none() {
                        continue;
                    }
                    calls += 1;
                    latency_us.saturating_record(started.elapsed().as_micros() as u64);
                    if let Err(status) = outcome {
                        errors += 1;
                        first_error.get_or_insert_with(|| {
                            format!("{:?}: {}", status.code(), status.message())
                        });
                    }
                }
                (calls, errors, first_error, latency_us)
            })
        })
        .collect();
    // The servers' CPU over the measured calls: from the end of the
    // warm-up (with --calls, every call is measured).
    if options.calls.is_none() {
        tokio::time::sleep_until(measure_from.into()).await;
    }
    let cpu_from = servers_cpu_time(servers);
    let mut measurement = Measurement {
        calls: 0,
        errors: 0,
        first_error: None,
        elapsed: Duration::ZERO,
        latency_us: latency_histogram(),
        server_cpu: None,
    };
    for worker in workers {
        let Ok((calls, errors, first_error, latency_us)) = worker.await else { continue };
        measurement.calls += calls;
        measurement.errors += errors;
        measurement.first_error = measurement.first_error.or(first_error);
        measurement.latency_us.add(&latency_us).expect("same precision");
    }
    measurement.elapsed = if options.calls.is_some() { start.elapsed() } else { duration };
    measurement.server_cpu =
        servers_cpu_time(servers).zip(cpu_from).map(|(to, from)| to.saturating_sub(from));
    measurement
}

#[tokio::main]
async fn main() -> ExitCode {
    let options = Options::parse();
    let mut servers = Vec::new();
    let addresses = if options.spawn {
        let mut addresses = Vec::new();
        for _ in 0..options.replicas {
            match spawn_server(&options.server_args) {
                Ok((server, address)) => {
                    servers.push(server);
                    addresses.push(address);
                }
                Err(message) => {
                    eprintln!("points-bench: {message}");
                    return ExitCode::FAILURE;
                }
            }
        }
        addresses
    } else {
        options.addr.clone()
    };
    let mut channels = Vec::new();
    for connection in 0..options.connections as usize {
        let address = &addresses[connection % addresses.len()];
        let endpoint = match Endpoint::from_shared(address.clone()) {
            Ok(endpoint) => endpoint.tcp_nodelay(true),
            Err(error) => {
                eprintln!("points-bench: {address} is not a URI: {error}");
                return ExitCode::FAILURE;
            }
        };
        match endpoint.connect().await {
            Ok(channel) => channels.push(channel),
            Err(error) => {
                eprintln!("points-bench: cannot connect to {address}: {error}");
                return ExitCode::FAILURE;
            }
        }
    }
    let spends = options
        .workloads
        .iter()
        .any(|workload| matches!(workload, Workload::Spend | Workload::Mixed));
    if spends && let Err(message) = fund_users(channels[0].clone(), options.users).await {
        eprintln!("points-bench: {message}");
        return ExitCode::FAILURE;
    }

    println!(
        "points-bench: {} streams over {} connections, {} users, {}",
        options.concurrency,
        options.connections,
        options.users,
        match options.calls {
            Some(calls) => format!("{calls} calls per workload"),
            None => format!(
                "{}s per workload after {}s warm-up",
                options.duration_secs, options.warmup_secs
            ),
        }
    );
    println!(
        "{:<10} {:>12} {:>14} {:>9} {:>9} {:>9} {:>9} {:>9} {:>12} {:>8}",
        "workload",
        "calls/s",
        "transactions/s",
        "ceiling",
        "p50 µs",
        "p90 µs",
        "p99 µs",
        "max µs",
        "server µs",
        "errors"
    );
    let mut ceiling = None;
    let mut failed = false;
    for &workload in &options.workloads {
        let measurement = measure(&options, workload, &channels, &servers).await;
        let rate = measurement.calls_per_second();
        if workload == Workload::Check {
            ceiling = Some(rate);
        }
        let per_call =
            if workload == Workload::Batch { f64::from(options.batch_size) } else { 1.0 };
        let ratio = ceiling.map_or("-".to_owned(), |ceiling| format!("{:.2}x", rate / ceiling));
        let histogram = &measurement.latency_us;
        // The servers' CPU time per measured call.
        let server_us = match measurement.server_cpu {
            Some(cpu) if measurement.calls > 0 => {
                format!("{:.1}", cpu.as_secs_f64() * 1e6 / measurement.calls as f64)
            }
            _ => "-".to_owned(),
        };
        println!(
            "{:<10} {:>12.0} {:>14.0} {:>9} {:>9} {:>9} {:>9} {:>9} {:>12} {:>8}",
            format!("{workload:?}").to_lowercase(),
            rate,
            rate * per_call,
            ratio,
            histogram.value_at_quantile(0.50),
            histogram.value_at_quantile(0.90),
            histogram.value_at_quantile(0.99),
            histogram.max(),
            server_us,
            measurement.errors,
        );
        if let Some(error) = &measurement.first_error {
            eprintln!("  first error: {error}");
            failed = true;
        }
    }
    if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}

#[cfg(test)]
mod tests {
    use super::cpu_ticks;

    /// utime and stime are found whatever the command name holds, and a
    /// line cut short gives nothing rather than another field.
    #[test]
    fn cpu_ticks_are_read_past_any_command_name() {
        let tail = "S 1 2 3 4 5 6 7 8 9 10 1234 567 13 14 15";
        assert_eq!(cpu_ticks(&format!("42 (points-server) {tail}")), Some(1801));
        assert_eq!(cpu_ticks(&format!("42 (a ) (b) c) {tail}")), Some(1801));
        assert_eq!(cpu_ticks("42 (points-server) S 1 2 3 4 5 6 7 8 9 10 1234"), None);
        assert_eq!(cpu_ticks("no parenthesis"), None);
    }
}
