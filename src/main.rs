//! `points-server`: parses the configuration, binds the listener and serves
//! until SIGINT or SIGTERM; or runs a command instead (`points-server backup`,
//! `points-server migrate`, `points-server check-tokens`).

use std::future::Future;
use std::process::ExitCode;

use clap::Parser;
use std::sync::Arc;

use points::{
    Access, Authenticator, Command, Config, Credentials, DatabaseOptions, PointsService, ServerTls,
    Store,
};

/// mimalloc instead of the system allocator: a call allocates and frees
/// dozens of small buffers across threads (decoding, the journal writer,
/// replies), where glibc's malloc spends a tenth of a durable call's CPU
/// consolidating and locking its arenas.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let config = Config::parse();
    // Held to the end of main: dropping it writes out queued log lines and
    // lets the span exporter finish.
    let otlp_endpoint = match config.otlp_endpoint() {
        Ok(endpoint) => endpoint,
        Err(error) => {
            eprintln!("points-server: {error}");
            return ExitCode::FAILURE;
        }
    };
    let _telemetry = match points::init_telemetry(config.log_format, otlp_endpoint.as_deref()) {
        Ok(telemetry) => telemetry,
        Err(error) => {
            eprintln!("points-server: {error}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(command) = &config.command {
        return run(command).await;
    }
    // First of all: SIGHUP's default action would end the process, and a
    // reload hook may fire while the server starts.
    let hangups = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(hangups) => hangups,
        Err(error) => {
            eprintln!("points-server: cannot install the SIGHUP handler: {error}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(?config, "starting points-server");
    raise_open_files_limit(config.max_connections);
    if let Err(message) = config.check_protected_mode() {
        eprintln!("points-server: {message}");
        return ExitCode::FAILURE;
    }
    if let Some(address) = config.metrics_listen {
        if let Err(message) = points::install_metrics(address) {
            eprintln!("points-server: {message}");
            return ExitCode::FAILURE;
        }
        tracing::info!(%address, "serving Prometheus metrics");
        // Both series exist from the start, so that the first failure shows.
        for result in ["success", "failure"] {
            metrics::counter!("points_credential_reloads_total", "result" => result).absolute(0);
        }
    }
    // TLS files are read and checked before anything is served, so that bad
    // files stop start-up with a reason.
    let tls = match config.tls() {
        Ok(None) => None,
        Ok(Some(files)) => match ServerTls::prepare(&files) {
            Ok(prepared) => Some(ServerTls::new(prepared)),
            Err(message) => {
                eprintln!("points-server: cannot serve TLS: {message}");
                return ExitCode::FAILURE;
            }
        },
        Err(message) => {
            eprintln!("points-server: {message}");
            return ExitCode::FAILURE;
        }
    };
    let credentials = match &config.tokens_file {
        Some(path) => match Authenticator::from_file(path) {
            Ok(authenticator) => Some(Credentials::new(authenticator)),
            Err(error) => {
                eprintln!("points-server: {error}");
                return ExitCode::FAILURE;
            }
        },
        None => None,
    };
    tokio::spawn(reload_on_hangup(hangups, config.clone(), credentials.clone(), tls.clone()));
    let access = match credentials {
        Some(credentials) => Access::Tokens(credentials),
        None => {
            if config.insecure_no_auth {
                tracing::warn!("serving without authentication (--insecure-no-auth)");
            }
            Access::Open
        }
    };

    // When the signal came: the grace period bounds the whole shutdown,
    // calls and store together.
    let signalled = Arc::new(std::sync::OnceLock::new());
    let shutdown = match shutdown_signal() {
        Ok(shutdown) => {
            let signalled = Arc::clone(&signalled);
            async move {
                shutdown.await;
                let _ = signalled.set(std::time::Instant::now());
            }
        }
        Err(error) => {
            eprintln!("points-server: cannot install signal handlers: {error}");
            return ExitCode::FAILURE;
        }
    };
    // A file size limit (ulimit -f) must surface as a write error, which the
    // journal handles by failing stop, not kill the process mid-write.
    let _file_size_limit_signal =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::from_raw(libc::SIGXFSZ));
    if config.database_url.is_some() {
        tracing::info!(
            data_dir = %config.data_dir.display(),
            "--database-url is given: the ledger is kept in the database and --data-dir is ignored"
        );
    }
    let store = match Store::connect(&config.store_options()).await {
        Ok(store) => Arc::new(store),
        Err(error) => {
            eprintln!("points-server: {error}");
            return ExitCode::FAILURE;
        }
    };
    let listener = match tokio::net::TcpListener::bind(config.listen).await {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("points-server: cannot listen on {}: {error}", config.listen);
            return ExitCode::FAILURE;
        }
    };
    match listener.local_addr() {
        Ok(address) => tracing::info!(%address, "listening"),
        Err(error) => tracing::warn!(%error, "listening, but the bound address is unknown"),
    }

    let result = points::serve(
        listener,
        PointsService::with_limits(Arc::clone(&store), access, config.call_limits()),
        config.server_settings(tls),
        shutdown,
    )
    .await;
    // In-flight calls are done: write out what is buffered and stop the
    // threads, within a bound of its own so that a stalled disk cannot hang
    // shutdown (everything acknowledged is durable already).
    let grace = std::time::Duration::from_millis(config.shutdown_grace_ms);
    let remaining = signalled.get().map_or(grace, |at| grace.saturating_sub(at.elapsed()));
    let closing_store = Arc::clone(&store);
    let closed = tokio::task::spawn_blocking(move || closing_store.close_within(remaining)).await;
    if !matches!(closed, Ok(true)) {
        tracing::error!("the store did not stop cleanly within the shutdown grace period");
    }
    match result {
        // A server whose journal failed (while it served, or writing out at
        // close) must not look like one that stopped cleanly: supervisors
        // restart on a failure exit, and operators look.
        Ok(()) => match store.failure() {
            None => ExitCode::SUCCESS,
            Some(reason) => {
                tracing::error!(%reason, "stopped after the store failed");
                eprintln!("points-server: stopped after the store failed: {reason}");
                ExitCode::FAILURE
            }
        },
        Err(error) => {
            tracing::error!(%error, "server failed");
            eprintln!("points-server: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Re-reads the tokens file and the TLS files on each SIGHUP, and puts them
/// in force together if every one is valid; otherwise keeps the last good
/// configuration and logs what is wrong. Counted in
/// `points_credential_reloads_total` by `result`.
async fn reload_on_hangup(
    mut hangups: tokio::signal::unix::Signal,
    config: Config,
    credentials: Option<Credentials>,
    tls: Option<ServerTls>,
) {
    let tls_in_force = tls.is_some();
    while hangups.recv().await.is_some() {
        if credentials.is_none() && tls.is_none() {
            tracing::info!("SIGHUP: no tokens file and no TLS files to reload");
            continue;
        }
        // Reading files may block (a hung mount): not on a runtime worker.
        let (config, credentials, tls) = (config.clone(), credentials.clone(), tls.clone());
        let reloaded = tokio::task::spawn_blocking(move || {
            reload(&config, credentials.as_ref(), tls.as_ref())
        })
        .await
        .unwrap_or_else(|error| Err(format!("the reload did not finish: {error}")));
        match reloaded {
            Ok(clients) => {
                metrics::counter!("points_credential_reloads_total", "result" => "success")
                    .increment(1);
                tracing::info!(
                    clients,
                    tls = tls_in_force,
                    "SIGHUP: reloaded the tokens file and TLS files; new calls and connections use them"
                );
            }
            Err(reason) => {
                metrics::counter!("points_credential_reloads_total", "result" => "failure")
                    .increment(1);
                tracing::error!(%reason, "SIGHUP: reload failed; keeping the last good tokens and TLS files");
            }
        }
    }
}

/// How long the credential files must stay unchanged while a reload reads
/// them: a file caught half-written (a valid TOML prefix may lack a
/// client's limits) is refused rather than put in force.
const RELOAD_SETTLE: std::time::Duration = std::time::Duration::from_millis(100);

/// Reads and checks every credential file, then puts them all in force;
/// returns how many clients the tokens file lists.
fn reload(
    config: &Config,
    credentials: Option<&Credentials>,
    tls: Option<&ServerTls>,
) -> Result<usize, String> {
    let read = || -> Result<(Option<String>, Option<points::TlsFiles>), String> {
        let tokens = match (&config.tokens_file, credentials) {
            (Some(path), Some(_)) => {
                Some(Authenticator::read_file(path).map_err(|error| error.to_string())?)
            }
            _ => None,
        };
        let files = match tls {
            Some(_) => Some(
                config
                    .tls()
                    .map_err(|error| error.to_string())?
                    .ok_or("the TLS files are no longer configured")?,
            ),
            None => None,
        };
        Ok((tokens, files))
    };
    let (tokens, files) = read()?;
    std::thread::sleep(RELOAD_SETTLE);
    if read()? != (tokens.clone(), files.clone()) {
        return Err("a credential file changed while it was read (still being written?): write \
                    the new file elsewhere and mv it into place, then send SIGHUP"
            .to_owned());
    }
    let authenticator = match (tokens, &config.tokens_file) {
        (Some(text), Some(path)) => {
            Some(Authenticator::from_file_text(path, &text).map_err(|error| error.to_string())?)
        }
        _ => None,
    };
    let prepared = match files {
        Some(files) => Some(ServerTls::prepare(&files).map_err(|error| format!("TLS: {error}"))?),
        None => None,
    };
    let clients = authenticator.as_ref().map_or(0, |authenticator| authenticator.clients().len());
    if let (Some(credentials), Some(authenticator)) = (credentials, authenticator) {
        credentials.replace(authenticator);
    }
    if let (Some(tls), Some(prepared)) = (tls, prepared) {
        tls.install(prepared);
    }
    Ok(clients)
}

/// Raises the soft limit of open file descriptors to the hard limit, so that
/// `--max-connections` connections fit (a soft limit of 1,024 is common, and
/// past it every accept fails). Logs what it did; never fails start-up: the
/// connection limit and the accept loop's back-off keep the server serving
/// whatever the limit is.
fn raise_open_files_limit(max_connections: u32) {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes one rlimit through a pointer to a live one.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        let error = std::io::Error::last_os_error();
        tracing::warn!(%error, "cannot read the open-files limit (RLIMIT_NOFILE)");
        return;
    }
    let before = limit.rlim_cur;
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
        // SAFETY: setrlimit reads one rlimit through a pointer to a live one.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit = raised;
            tracing::info!(
                from = before,
                to = limit.rlim_cur,
                "raised the open-files limit (RLIMIT_NOFILE) to its hard limit"
            );
        } else {
            let error = std::io::Error::last_os_error();
            tracing::warn!(%error, soft = before, hard = limit.rlim_max,
                "cannot raise the open-files limit (RLIMIT_NOFILE)");
        }
    } else {
        tracing::info!(limit = before, "the open-files limit (RLIMIT_NOFILE) is at its hard limit");
    }
    // Besides connections: the listener, journal files, the metrics listener,
    // standard streams.
    const OTHER_DESCRIPTORS: libc::rlim_t = 64;
    if limit.rlim_cur < libc::rlim_t::from(max_connections) + OTHER_DESCRIPTORS {
        tracing::warn!(
            open_files_limit = limit.rlim_cur,
            max_connections,
            "the open-files limit is below --max-connections: connections beyond it wait \
             unaccepted; raise the hard limit (ulimit -Hn, LimitNOFILE=) or lower \
             --max-connections"
        );
    }
}

/// Runs a command other than serving: prints its one-line result to stdout,
/// or why it failed to stderr.
async fn run(command: &Command) -> ExitCode {
    match command {
        Command::Backup { data_dir, to } => match points::backup(data_dir, to) {
            Ok(summary) => {
                println!("{summary}");
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("points-server: backup failed: {error}");
                ExitCode::FAILURE
            }
        },
        Command::CheckTokens { file } => match Authenticator::from_file(file) {
            Ok(authenticator) => {
                for client in authenticator.clients() {
                    println!("{client}");
                }
                println!("{}: valid, {} client(s)", file.display(), authenticator.clients().len());
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("points-server: {error}");
                ExitCode::FAILURE
            }
        },
        Command::Migrate { data_dir, database_url } => {
            let options = DatabaseOptions::new(&database_url.0);
            match points::migrate(data_dir, &options).await {
                Ok(summary) => {
                    println!("{summary}");
                    ExitCode::SUCCESS
                }
                Err(error) => {
                    eprintln!("points-server: migrate failed: {error}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Installs the SIGINT and SIGTERM handlers now, so that a signal arriving at
/// any point after start-up stops the server cleanly rather than killing it,
/// and returns a future that completes on the first of them.
fn shutdown_signal() -> std::io::Result<impl Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => tracing::info!("SIGINT received"),
            _ = terminate.recv() => tracing::info!("SIGTERM received"),
        }
    })
}
