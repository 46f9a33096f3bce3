//! A real PostgreSQL for the tests, and a fresh database per test.
//!
//! The server used is, in order: `POINTS_TEST_DATABASE_URL` if set (a URL
//! of a role that may create databases); else the one on 127.0.0.1:5432
//! (user postgres) if it answers; else a private cluster started from the
//! machine's PostgreSQL binaries (`initdb`, `pg_ctl`) under the target
//! directory, stopped when the test binary exits. If none of these exist
//! the test fails saying how to install PostgreSQL; it never skips.
//! Tests that stop and restart the database itself own a [`Cluster`] of
//! their own.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio_postgres::NoTls;

use super::metrics::free_port;
use super::tools::run;

/// Runs `work` on a runtime of its own on another thread, so that the
/// helpers work from synchronous tests and from inside async ones alike.
fn block_on<T: Send + 'static>(work: impl std::future::Future<Output = T> + Send + 'static) -> T {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime for the database helper")
            .block_on(work)
    })
    .join()
    .expect("the database helper thread")
}

/// Runs `sql` on the database at `url`.
pub fn execute(url: &str, sql: &str) -> Result<(), String> {
    let (url, sql) = (url.to_owned(), sql.to_owned());
    block_on(async move {
        let mut config: tokio_postgres::Config = url.parse().map_err(|error| format!("{error}"))?;
        config.connect_timeout(Duration::from_secs(5));
        let (client, connection) = config.connect(NoTls).await.map_err(|e| e.to_string())?;
        tokio::spawn(connection);
        client.batch_execute(&sql).await.map_err(|error| format!("{error:?}"))
    })
}

/// The rows of `sql` on the database at `url`, each column as text.
pub fn query(url: &str, sql: &str) -> Vec<Vec<Option<String>>> {
    let (url, sql) = (url.to_owned(), sql.to_owned());
    block_on(async move {
        let (client, connection) =
            tokio_postgres::connect(&url, NoTls).await.expect("connect to the test database");
        tokio::spawn(connection);
        let messages = client.simple_query(&sql).await.expect("run the query");
        messages
            .into_iter()
            .filter_map(|message| match message {
                tokio_postgres::SimpleQueryMessage::Row(row) => {
                    Some((0..row.len()).map(|column| row.get(column).map(str::to_owned)).collect())
                }
                _ => None,
            })
            .collect()
    })
}

/// A database of its own for one test, dropped (with its connections) when
/// this is dropped.
pub struct TestDatabase {
    /// Its connection URL.
    pub url: String,
    name: String,
    admin_url: String,
}

impl TestDatabase {
    /// A new, empty database on the shared test server.
    pub fn create() -> Self {
        Self::create_on(shared_server())
    }

    /// A new, empty database on the server administered through `admin_url`.
    pub fn create_on(admin_url: &str) -> Self {
        static COUNT: AtomicU32 = AtomicU32::new(0);
        let name =
            format!("points_test_{}_{}", std::process::id(), COUNT.fetch_add(1, Ordering::Relaxed));
        execute(admin_url, &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .and_then(|()| execute(admin_url, &format!("CREATE DATABASE {name}")))
            .unwrap_or_else(|error| panic!("cannot create the test database {name}: {error}"));
        Self { url: with_database(admin_url, &name), name, admin_url: admin_url.to_owned() }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let drop_sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        if let Err(error) = execute(&self.admin_url, &drop_sql) {
            eprintln!("cannot drop the test database {}: {error}", self.name);
        }
    }
}

/// `url` with its database replaced by `database`.
fn with_database(url: &str, database: &str) -> String {
    let (base, query) =
        url.split_once('?').map_or((url, None), |(base, query)| (base, Some(query)));
    let authority_end = base.find("://").map_or(0, |scheme| scheme + 3);
    let base = match base[authority_end..].find('/') {
        Some(slash) => &base[..authority_end + slash],
        None => base,
    };
    match query {
        Some(query) => format!("{base}/{database}?{query}"),
        None => format!("{base}/{database}"),
    }
}

/// The admin URL of the server the tests share; see the module documentation.
fn shared_server() -> &'static str {
    static SERVER: OnceLock<String> = OnceLock::new();
    SERVER.get_or_init(|| {
        if let Ok(url) = std::env::var("POINTS_TEST_DATABASE_URL") {
            return url;
        }
        let local = "postgres://postgres@127.0.0.1:5432/postgres";
        if execute(local, "SELECT 1").is_ok() {
            return local.to_owned();
        }
        let cluster = Cluster::start();
        let url = cluster.admin_url();
        // Stopped when the test binary exits.
        let _ = PRIVATE_CLUSTER.set(cluster);
        // SAFETY: registers a plain function without captures to run at exit.
        unsafe { libc::atexit(stop_private_cluster) };
        url
    })
}

static PRIVATE_CLUSTER: OnceLock<Cluster> = OnceLock::new();

extern "C" fn stop_private_cluster() {
    if let Some(cluster) = PRIVATE_CLUSTER.get() {
        cluster.stop();
    }
}

/// A private PostgreSQL cluster in a directory of its own under the target
/// directory, on a free port, stopped when dropped; tests restart it to
/// cause database faults for real.
pub struct Cluster {
    bin: PathBuf,
    data_dir: PathBuf,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Cluster {
    /// Initializes and starts a cluster (trust authentication, fsync on).
    pub fn start() -> Self {
        let bin = postgres_binaries();
        // Under the target directory; but PostgreSQL refuses to run as
        // root, and the postgres user it then runs as may not be able to
        // reach the target directory (a checkout in a private directory):
        // then in the system's temporary directory.
        let builder = tempfile::Builder::new().prefix("points-pg-cluster-").clone();
        let dir = if running_as_root() {
            builder.tempdir()
        } else {
            builder.tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        }
        .expect("a directory for the cluster");
        let data_dir = dir.path().join("data");
        // PostgreSQL refuses to run as root: then it runs as the postgres
        // user, who must own the directory.
        if running_as_root() {
            run(Command::new("chown").arg("postgres:").arg(dir.path()), "chown");
        }
        let port = free_port();
        let cluster = Self { bin, data_dir, port, _dir: dir };
        let mut initdb = cluster.pg_command("initdb");
        initdb.args(["-U", "postgres", "--auth=trust", "--no-sync", "-D"]).arg(&cluster.data_dir);
        run(&mut initdb, "initdb");
        cluster.start_server();
        cluster
    }

    /// A PostgreSQL program, run as the postgres user when the tests run as
    /// root.
    fn pg_command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        let mut command = if running_as_root() {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(path);
            command
        } else {
            Command::new(path)
        };
        // A working directory the postgres user can enter.
        command.current_dir(std::env::temp_dir());
        command
    }

    fn start_server(&self) {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories='{}' -c fsync=on",
            self.port,
            self.data_dir.display()
        );
        let log = self.data_dir.join("server.log");
        let mut start = self.pg_command("pg_ctl");
        start.args(["start", "-w", "-t", "60", "-D"]).arg(&self.data_dir);
        start.arg("-l").arg(&log).args(["-o", &options]);
        run(&mut start, "pg_ctl start");
    }

    /// Stops the server at once (connections are cut), as a crash would.
    pub fn stop(&self) {
        let mut stop = self.pg_command("pg_ctl");
        stop.args(["stop", "-m", "immediate", "-w", "-D"]).arg(&self.data_dir);
        let _ = stop.output();
    }

    /// Starts it again after [`Cluster::stop`].
    pub fn restart(&self) {
        self.start_server();
    }

    /// The URL of its `postgres` database as the `postgres` superuser.
    pub fn admin_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The directory holding `initdb` and `pg_ctl`: on the PATH, or in a
/// Debian-style /usr/lib/postgresql/VERSION/bin (newest first).
fn postgres_binaries() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>());
    let mut versioned: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|entries| entries.flatten().map(|entry| entry.path().join("bin")).collect())
        .unwrap_or_default();
    versioned.sort();
    versioned.reverse();
    on_path
        .chain(versioned)
        .find(|dir| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file())
        .unwrap_or_else(|| {
            panic!(
                "no PostgreSQL found: nothing answers on 127.0.0.1:5432, POINTS_TEST_DATABASE_URL \
                 is not set, and initdb/pg_ctl are not installed. Install PostgreSQL (for \
                 example `apt-get install postgresql`) or point POINTS_TEST_DATABASE_URL at a \
                 server where this user may create databases"
            )
        })
}

fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}
