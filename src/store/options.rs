//! How a store is configured: where it keeps its data and its limits.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::embedded::file_system::{FileSystem, OsFileSystem};
use super::embedded::wal::FsyncPolicy;

/// Where the store keeps its data.
#[derive(Debug, Clone)]
pub enum Storage {
    /// No files at all: everything is lost when the process ends.
    InMemory,
    /// A journal and snapshots in a data directory.
    Durable(DurableOptions),
    /// A PostgreSQL database, shared with other replicas; opened with
    /// [`Store::connect`](super::Store::connect).
    Database(DatabaseOptions),
}

/// Where and how the embedded journal keeps its data.
#[derive(Debug, Clone)]
pub struct DurableOptions {
    /// The data directory; created if missing, locked while open.
    pub data_dir: PathBuf,
    /// When a change counts as written.
    pub fsync: FsyncPolicy,
    /// Journal segment size that triggers a snapshot.
    pub snapshot_threshold_bytes: u64,
    /// Bytes appended and not yet durable past which new writes are refused.
    pub max_journal_backlog_bytes: u64,
    /// How far ahead of its records a journal segment's file is extended
    /// with zeros, so that a commit's `fdatasync` changes no file size
    /// (only data); 0 for none. Worth it only under `--fsync always`.
    pub journal_preallocate_bytes: u64,
    /// The file system the directory is on: the operating system's,
    /// or a simulated disk in tests.
    pub file_system: Arc<dyn FileSystem>,
}

/// Where and how the PostgreSQL backend keeps its data, for replicas that
/// share one database.
#[derive(Clone)]
pub struct DatabaseOptions {
    /// The connection URL (`postgres://user:password@host:port/database`).
    pub url: String,
    /// The most connections the pool opens for loading and refreshing users
    /// (the committer has one more of its own).
    pub pool_size: usize,
    /// How long connecting may take before the call fails, in milliseconds.
    pub connect_timeout_ms: u64,
    /// How long one statement may run before the database cancels it, in
    /// milliseconds.
    pub statement_timeout_ms: u64,
    /// The most users a replica keeps in memory; past it, users with no
    /// call in progress are dropped from memory (and loaded again on use).
    pub cache_max_users: usize,
}

impl DatabaseOptions {
    /// The default pool size.
    pub const DEFAULT_POOL_SIZE: usize = 16;
    /// The default connect timeout.
    pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 2_000;
    /// The default statement timeout.
    pub const DEFAULT_STATEMENT_TIMEOUT_MS: u64 = 5_000;
    /// The default bound of cached users.
    pub const DEFAULT_CACHE_MAX_USERS: usize = 100_000;

    /// At `url`, with the default pool and timeouts.
    pub fn new(url: &str) -> Self {
        Self {
            url: url.to_owned(),
            pool_size: Self::DEFAULT_POOL_SIZE,
            connect_timeout_ms: Self::DEFAULT_CONNECT_TIMEOUT_MS,
            statement_timeout_ms: Self::DEFAULT_STATEMENT_TIMEOUT_MS,
            cache_max_users: Self::DEFAULT_CACHE_MAX_USERS,
        }
    }
}

impl std::fmt::Debug for DatabaseOptions {
    /// Everything but the URL, which may hold a password.
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("DatabaseOptions")
            .field("url", &"<redacted>")
            .field("pool_size", &self.pool_size)
            .field("connect_timeout_ms", &self.connect_timeout_ms)
            .field("statement_timeout_ms", &self.statement_timeout_ms)
            .field("cache_max_users", &self.cache_max_users)
            .finish()
    }
}

/// How the store keeps its data, remembers request ids, and bounds memory.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Where the data lives.
    pub storage: Storage,
    /// How long a request id is remembered, in milliseconds.
    pub request_id_retention_ms: i64,
    /// The most users with a ledger; a write for a new user past it is refused.
    pub max_users: usize,
    /// The most payers one user may have; crediting a new payer past it is refused.
    pub max_payers_per_user: usize,
    /// The most request ids one user may have remembered at once; a command
    /// with a new request id past it is refused.
    pub max_request_ids_per_user: usize,
    /// How long a lot's points stay valid after its timestamp, in
    /// milliseconds; `None`: points never expire.
    pub points_validity_ms: Option<i64>,
}

impl StoreOptions {
    /// Request ids remembered for 24 hours.
    pub const DEFAULT_REQUEST_ID_RETENTION_MS: i64 = 24 * 3600 * 1000;
    /// The default limit of users.
    pub const DEFAULT_MAX_USERS: usize = 1_000_000;
    /// The default limit of payers per user.
    pub const DEFAULT_MAX_PAYERS_PER_USER: usize = 10_000;
    /// The default limit of request ids remembered per user: more than one
    /// a second for the whole default retention of 24 hours, and at most a
    /// few tens of MB for one user.
    pub const DEFAULT_MAX_REQUEST_IDS_PER_USER: usize = 100_000;
    /// The default limit of journal bytes waiting for the disk: far above
    /// what a healthy disk ever has pending (a few batches), small enough
    /// that a stalled disk cannot exhaust memory.
    pub const DEFAULT_MAX_JOURNAL_BACKLOG_BYTES: u64 = 64 << 20;
    /// The default preallocation of journal segments under `--fsync always`:
    /// one extension (a few milliseconds of writing zeros) per ~40,000
    /// single-call records; none under `--fsync never`, which never waits
    /// for an fsync anyway.
    pub const DEFAULT_JOURNAL_PREALLOCATE_BYTES: u64 = 4 << 20;

    /// The default preallocation of journal segments under `fsync`.
    pub fn default_journal_preallocate_bytes(fsync: FsyncPolicy) -> u64 {
        match fsync {
            FsyncPolicy::Always => Self::DEFAULT_JOURNAL_PREALLOCATE_BYTES,
            FsyncPolicy::Never => 0,
        }
    }

    /// In memory, with the default retention and limits.
    pub fn in_memory() -> Self {
        Self {
            storage: Storage::InMemory,
            request_id_retention_ms: Self::DEFAULT_REQUEST_ID_RETENTION_MS,
            max_users: Self::DEFAULT_MAX_USERS,
            max_payers_per_user: Self::DEFAULT_MAX_PAYERS_PER_USER,
            max_request_ids_per_user: Self::DEFAULT_MAX_REQUEST_IDS_PER_USER,
            points_validity_ms: None,
        }
    }

    /// In `data_dir`, with the default retention and limits.
    pub fn durable(data_dir: &Path, fsync: FsyncPolicy, snapshot_threshold_bytes: u64) -> Self {
        Self {
            storage: Storage::Durable(DurableOptions {
                data_dir: data_dir.to_owned(),
                fsync,
                snapshot_threshold_bytes,
                max_journal_backlog_bytes: Self::DEFAULT_MAX_JOURNAL_BACKLOG_BYTES,
                journal_preallocate_bytes: Self::default_journal_preallocate_bytes(fsync),
                file_system: Arc::new(OsFileSystem),
            }),
            ..Self::in_memory()
        }
    }
}
