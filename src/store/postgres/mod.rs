//! The PostgreSQL backend: any number of replicas keep their users in one
//! database and give the same answers as one server.
//!
//! Each user's accepted commands are an append-only stream of chunks in
//! `points_user_records`, primary key `(user_id, seq)`: a chunk holds the
//! records (the embedded journal's [`JournalRecord`] encoding) one group
//! commit stored for that user, and `seq` numbers a user's chunks 1, 2, 3…
//! A replica caches users in the ledger core, loading one on first use
//! (its chunks replayed), so start-up is O(1). A write is decided on the
//! cached ledger and its record stored by the [`committer`] in the chunk
//! after the last one the cache reflects; if another replica stored that
//! place first, the insert conflicts, the cached ledger is dropped, and the
//! store decides the write again on the stored state. Nothing else is
//! needed for correctness: the primary key is the only arbiter, so two
//! replicas can never both extend a user from the same state, and a
//! request id applies once because a retry is decided on every stored
//! chunk. A read first asks for the user's last chunk (one primary-key
//! lookup) and applies any it has not seen.
//!
//! Loading a user reads their snapshot in `points_user_snapshots` (their
//! whole ledger, in the embedded snapshot's encoding, as of one chunk) and
//! replays only the chunks after it, a page at a time. The replica that
//! stores a user's writes takes a new snapshot in the background once
//! enough chunks followed the last, in proportion to its size, so that
//! snapshots cost O(1) per chunk and loading stays bounded. Chunks are never
//! deleted: they are the user's audit trail.
//!
//! Modules: [`migrations`] (the schema), [`committer`] (group commit),
//! [`import`] (copying a data directory in: `points-server migrate`).

mod committer;
mod import;
mod migrations;

pub use import::{MigrateError, MigrateSummary, migrate};

use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio::sync::{Notify, oneshot, watch};
use tokio_postgres::{Client, NoTls};

use self::committer::Pending;
use super::backend::{Backend, BoxFuture, Freshness, Receipt};
use super::embedded::records::JournalRecord;
use super::embedded::replay::replay;
use super::embedded::snapshot::{decode_one_user, encode_one_user};
use super::sweeper::wait_finished;
use super::users::{StoredPosition, UserLedger, read_lock, write_lock};
use super::{DatabaseOptions, OpenError, SnapshotFailed, StoreError};
use crate::ledger::Ledger;

/// What one chunk of a user's stream holds: the records one round of group
/// commit stored for them, in the order their ledger applied them.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RecordChunk {
    /// The records.
    #[prost(message, repeated, tag = "1")]
    pub records: Vec<JournalRecord>,
    /// In a user's first chunk only, for a user copied in from a data
    /// directory (`points-server migrate`): their whole ledger as it was
    /// there, as a one-user snapshot at chunk 1. Kept forever, like every
    /// chunk: the user's history before the move.
    #[prost(bytes = "vec", tag = "2")]
    pub imported_ledger: Vec<u8>,
}

/// A database shared with other replicas, a pool of connections for loading
/// and refreshing users, and the committer storing what this replica takes.
pub(crate) struct Postgres {
    pool: Pool,
    shared: Arc<Shared>,
    committer: Mutex<Option<JoinHandle<()>>>,
    /// Where the database is, for messages (no password).
    location: String,
    cache_max_users: usize,
    /// Snapshots being taken at once, at most [`SNAPSHOT_TASKS`].
    snapshot_slots: Arc<tokio::sync::Semaphore>,
}

/// Most user snapshots taken at once by one replica.
const SNAPSHOT_TASKS: usize = 2;

impl std::fmt::Debug for Postgres {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("Postgres").field("database", &self.location).finish_non_exhaustive()
    }
}

/// What writers and the committer share.
struct Shared {
    queue: Mutex<Queue>,
    /// Wakes the committer when records are queued or the store closes.
    wake: Notify,
    /// The sequence up to which every record taken is resolved (stored,
    /// refused as conflicting, or failed).
    resolved: watch::Sender<u64>,
    /// Whether the database answers.
    serving: watch::Sender<bool>,
    /// Bound of every database operation, client side: a statement that
    /// does not finish (or a network that stopped answering) fails the
    /// call after it.
    operation_timeout: Duration,
    /// Bytes of records queued past which writes are refused.
    max_queued_bytes: usize,
}

/// Records taken and not yet handed to a round.
#[derive(Default)]
struct Queue {
    last_sequence: u64,
    records: Vec<Pending>,
    bytes: usize,
    closing: bool,
    /// The committer stopped: nothing more will be stored.
    stopped: bool,
}

impl Shared {
    /// Every queued record, and whether the store is closing.
    fn take_queued(&self) -> (Vec<Pending>, bool) {
        let mut queue = self.queue.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        queue.bytes = 0;
        (std::mem::take(&mut queue.records), queue.closing)
    }

    /// Marks the committer stopped if nothing is queued (under the queue's
    /// lock, so that no record is taken after it); returns whether it did.
    fn stop_if_empty(&self) -> bool {
        let mut queue = self.queue.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        queue.stopped = queue.records.is_empty();
        queue.stopped
    }

    /// Reports whether the database answers, logging changes.
    fn set_serving(&self, serving: bool, reason: &str) {
        let changed = self.serving.send_if_modified(|current| {
            let changed = *current != serving;
            *current = serving;
            changed
        });
        if changed {
            if serving {
                tracing::info!("the database answers again: serving");
            } else {
                tracing::error!(%reason, "the database is unreachable: not serving");
            }
        }
    }
}

/// Bytes of records queued for the database past which writes are refused
/// (`DATABASE_BACKLOG`): far above what a healthy database has queued (one
/// round), small enough that a stalled one cannot exhaust memory.
const MAX_QUEUED_BYTES: usize = 64 << 20;

/// Chunks read per query: bounds the memory and the statement time of one
/// read however long a user's history is.
const CHUNKS_PER_PAGE: usize = 512;

/// Followed users whose newest chunk one statement looks up: bounds a
/// statement's parameters and time however many streams are open.
const LATEST_CHUNKS_PER_QUERY: usize = 1024;

/// Fewest chunks stored after a user's snapshot before a new one is taken:
/// loading a user replays at most about this many chunks past its snapshot
/// (or [`SNAPSHOT_BYTES_PER_CHUNK`] of the snapshot's size, if more).
const SNAPSHOT_MIN_INTERVAL_CHUNKS: u64 = 256;

/// Snapshot bytes per chunk of interval: a large user is snapshotted less
/// often, in proportion, so that snapshots cost O(1) per chunk stored.
const SNAPSHOT_BYTES_PER_CHUNK: u64 = 64;

/// Chunks after a snapshot of `snapshot_bytes` past which the next is due.
fn snapshot_interval(snapshot_bytes: usize) -> u64 {
    (snapshot_bytes as u64 / SNAPSHOT_BYTES_PER_CHUNK).max(SNAPSHOT_MIN_INTERVAL_CHUNKS)
}

impl Postgres {
    /// Connects, migrates the schema and starts the committer. Fails when
    /// the database cannot be reached or migrated.
    pub(crate) async fn open(options: &DatabaseOptions) -> Result<Self, OpenError> {
        let mut config: tokio_postgres::Config =
            options.url.as_str().parse().map_err(|error| OpenError::Database {
                location: "the --database-url".to_owned(),
                reason: format!("it is not a PostgreSQL connection URL: {error}"),
            })?;
        let location = location_of(&config);
        let fail = |reason: String| OpenError::Database { location: location.clone(), reason };
        let connect_timeout = Duration::from_millis(options.connect_timeout_ms.max(1));
        let statement_timeout_ms = options.statement_timeout_ms.max(1);
        let mut session_options = config.get_options().unwrap_or_default().to_owned();
        session_options.push_str(&format!(
            " -c statement_timeout={statement_timeout_ms} -c client_min_messages=warning"
        ));
        config
            .connect_timeout(connect_timeout)
            .application_name("points-server")
            .options(session_options.trim())
            .keepalives_idle(Duration::from_secs(10));
        // Client side, a little past the server's statement timeout.
        let operation_timeout =
            Duration::from_millis(statement_timeout_ms) + connect_timeout + Duration::from_secs(1);

        let mut client = connect(&config, operation_timeout).await.map_err(fail)?;
        let migrate = migrations::migrate(&mut client);
        let applied = tokio::time::timeout(operation_timeout * 4, migrate)
            .await
            .map_err(|_| fail("migrating the schema timed out".to_owned()))?
            .map_err(fail)?;
        drop(client);
        if applied.is_empty() {
            tracing::info!(database = %location, "the database schema is up to date");
        } else {
            tracing::info!(database = %location, ?applied, "migrated the database schema");
        }

        let manager = Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig { recycling_method: RecyclingMethod::Fast },
        );
        let pool = Pool::builder(manager)
            .max_size(options.pool_size.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(connect_timeout))
            .create_timeout(Some(connect_timeout))
            .recycle_timeout(Some(connect_timeout))
            .build()
            .map_err(|error| fail(format!("cannot build the connection pool: {error}")))?;

        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            wake: Notify::new(),
            resolved: watch::Sender::new(0),
            serving: watch::Sender::new(true),
            operation_timeout,
            max_queued_bytes: MAX_QUEUED_BYTES,
        });
        let committer_shared = Arc::clone(&shared);
        let committer = std::thread::Builder::new()
            .name("points-db-commit".to_owned())
            .spawn(move || committer::run(committer_shared, config))
            .map_err(|error| fail(format!("cannot start the committer thread: {error}")))?;
        Ok(Self {
            pool,
            shared,
            committer: Mutex::new(Some(committer)),
            location,
            cache_max_users: options.cache_max_users.max(1),
            snapshot_slots: Arc::new(tokio::sync::Semaphore::new(SNAPSHOT_TASKS)),
        })
    }

    /// A pooled connection, or UNAVAILABLE at once when the database is
    /// known not to answer.
    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        if !*self.shared.serving.borrow() {
            return Err(self.unreachable("it did not answer the last check"));
        }
        self.pool.get().await.map_err(|error| self.unreachable(&error.to_string()))
    }

    fn unreachable(&self, reason: &str) -> StoreError {
        StoreError::Unavailable(format!(
            "the database at {} is unreachable ({reason}); retry shortly",
            self.location
        ))
    }

    /// Runs one query, bounded by the operation timeout.
    async fn query(
        &self,
        client: &deadpool_postgres::Object,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>, StoreError> {
        let run = async {
            let statement = client.prepare_cached(sql).await?;
            client.query(&statement, params).await
        };
        let span = crate::telemetry::call_child_span!(
            "postgres_query",
            db.system = "postgresql",
            db.statement = sql
        );
        let run = crate::telemetry::spanning(span, run);
        match tokio::time::timeout(self.shared.operation_timeout, run).await {
            Ok(Ok(rows)) => Ok(rows),
            Ok(Err(error)) => Err(self.unreachable(&database_error(&error))),
            Err(_) => Err(self.unreachable("the query timed out")),
        }
    }

    /// `user_id`'s stored snapshot, checked: the ledger, the place of the
    /// last chunk it reflects and its size; `None` if there is none yet. The
    /// inner error says how a stored snapshot is damaged (the chunks can
    /// replace it); the outer one, that the database could not be asked.
    async fn snapshot(
        &self,
        client: &deadpool_postgres::Object,
        user_id: &str,
    ) -> Result<Result<Option<(Ledger, u64, usize)>, String>, StoreError> {
        let rows = self
            .query(
                client,
                "SELECT seq, state FROM points_user_snapshots WHERE user_id = $1",
                &[&user_id],
            )
            .await?;
        let Some(row) = rows.first() else { return Ok(Ok(None)) };
        let checked = || -> Result<(Ledger, u64, usize), String> {
            let seq: i64 = row.try_get(0).map_err(|error| error.to_string())?;
            let state: &[u8] = row.try_get(1).map_err(|error| error.to_string())?;
            let snapshot = decode_one_user(state)?;
            if snapshot.user_id != user_id
                || i64::try_from(snapshot.last_sequence).ok() != Some(seq)
            {
                return Err(format!(
                    "it holds user {:?} at chunk {}, its row says {user_id:?} at {seq}",
                    snapshot.user_id, snapshot.last_sequence
                ));
            }
            Ok((snapshot.ledger, snapshot.last_sequence, state.len()))
        };
        Ok(checked()
            .map(Some)
            .map_err(|reason| format!("user {user_id:?}'s stored snapshot is damaged: {reason}")))
    }

    /// Up to [`CHUNKS_PER_PAGE`] of `user_id`'s chunks after `after`,
    /// decoded and checked to follow on from it, in order.
    async fn chunks_after(
        &self,
        client: &deadpool_postgres::Object,
        user_id: &str,
        after: u64,
    ) -> Result<Vec<(u64, RecordChunk)>, StoreError> {
        let after_i64 = i64::try_from(after).unwrap_or(i64::MAX);
        let rows = self
            .query(
                client,
                "SELECT seq, records FROM points_user_records WHERE user_id = $1 AND seq > $2 \
                 ORDER BY seq LIMIT $3",
                &[&user_id, &after_i64, &(CHUNKS_PER_PAGE as i64)],
            )
            .await?;
        debug_assert!(rows.len() <= CHUNKS_PER_PAGE);
        let mut chunks = Vec::with_capacity(rows.len());
        let mut last = after;
        for row in rows {
            let seq: i64 = row.try_get(0).map_err(|error| damaged(user_id, last + 1, &error))?;
            if u64::try_from(seq).ok() != Some(last + 1) {
                return Err(damaged(user_id, last + 1, &format!("found chunk {seq} instead")));
            }
            last += 1;
            let bytes: &[u8] = row.try_get(1).map_err(|error| damaged(user_id, last, &error))?;
            let chunk = <RecordChunk as prost::Message>::decode(bytes)
                .map_err(|error| damaged(user_id, last, &error))?;
            if let Some(record) = chunk.records.iter().find(|record| record.user_id != user_id) {
                let found = &record.user_id;
                return Err(damaged(user_id, last, &format!("it holds a record of {found:?}")));
            }
            chunks.push((last, chunk));
        }
        Ok(chunks)
    }
}

/// Takes and stores users' snapshots in the background.
struct Snapshots {
    pool: Pool,
    shared: Arc<Shared>,
}

impl Snapshots {
    /// Encodes `user`'s ledger if it holds exactly what is stored (nothing
    /// of this replica's pending, not stale) and stores it as the user's
    /// snapshot unless a newer one is there.
    async fn take(
        &self,
        user_id: &str,
        user: Arc<RwLock<UserLedger>>,
        stored: &StoredPosition,
    ) -> Result<(), String> {
        let shared = Arc::clone(&self.shared);
        let owned_user_id = user_id.to_owned();
        // Encoding a large ledger is CPU work under the user's read lock.
        let encode = move || -> Result<Option<(u64, Vec<u8>)>, String> {
            let user = read_lock(&user).map_err(|error| error.to_string())?;
            let resolved = *shared.resolved.borrow();
            if user.stored.is_stale() || resolved < user.last_sequence {
                return Ok(None);
            }
            let seq = user.stored.seq();
            let encoded = encode_one_user(&owned_user_id, seq, &user.ledger)
                .map_err(|error| error.to_string())?;
            Ok(Some((seq, encoded)))
        };
        let encoded =
            tokio::task::spawn_blocking(encode).await.map_err(|error| error.to_string())?;
        let Some((seq, encoded)) = encoded? else { return Ok(()) };
        let seq_i64 = i64::try_from(seq).map_err(|error| error.to_string())?;
        let run = async {
            let client = self.pool.get().await.map_err(|error| error.to_string())?;
            let statement = client
                .prepare_cached(
                    "INSERT INTO points_user_snapshots (user_id, seq, state) VALUES ($1, $2, $3) \
                     ON CONFLICT (user_id) DO UPDATE SET seq = excluded.seq, state = excluded.state \
                     WHERE points_user_snapshots.seq < excluded.seq",
                )
                .await
                .map_err(|error| database_error(&error))?;
            client
                .execute(&statement, &[&user_id, &seq_i64, &encoded])
                .await
                .map_err(|error| database_error(&error))
        };
        tokio::time::timeout(self.shared.operation_timeout, run)
            .await
            .map_err(|_| "storing the snapshot timed out".to_owned())??;
        stored.set_snapshot(seq, snapshot_interval(encoded.len()));
        metrics::counter!("points_database_snapshots_total").increment(1);
        Ok(())
    }
}

/// Executes `chunks`' records again on `ledger`; returns the place of the
/// last chunk applied (`after` for none). On an error the ledger may be
/// half updated.
fn apply_chunks(
    user_id: &str,
    after: u64,
    chunks: Vec<(u64, RecordChunk)>,
    ledger: &mut Ledger,
) -> Result<u64, StoreError> {
    let mut last = after;
    for (seq, chunk) in chunks {
        debug_assert_eq!(seq, last + 1, "chunks_after checked their order");
        if !chunk.imported_ledger.is_empty() {
            let imported = decode_one_user(&chunk.imported_ledger)
                .map_err(|error| damaged(user_id, seq, &error))?;
            if seq != 1 || imported.user_id != user_id || imported.last_sequence != 1 {
                let found = format!(
                    "an imported ledger of {:?} at chunk {} in chunk {seq}",
                    imported.user_id, imported.last_sequence
                );
                return Err(damaged(user_id, seq, &found));
            }
            *ledger = imported.ledger;
        }
        for record in chunk.records {
            replay(ledger, record).map_err(|error| damaged(user_id, seq, &error))?;
        }
        last = seq;
    }
    Ok(last)
}

/// A stored chunk that cannot be applied: nothing of that user is served.
fn damaged(user_id: &str, seq: u64, error: &dyn std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!(
        "user {user_id:?}'s stored records are damaged at chunk {seq}: {error}"
    ))
}

/// Opens one connection, its driver on the current runtime.
async fn connect(config: &tokio_postgres::Config, timeout: Duration) -> Result<Client, String> {
    let (client, connection) = tokio::time::timeout(timeout, config.connect(NoTls))
        .await
        .map_err(|_| "connecting timed out".to_owned())?
        .map_err(|error| database_error(&error))?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "a database connection ended");
        }
    });
    Ok(client)
}

/// A database error with the server's own message when there is one.
fn database_error(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db_error) => format!("{}: {}", db_error.code().code(), db_error.message()),
        None => error.to_string(),
    }
}

/// `host:port/database` of a configuration, for messages: never the password.
fn location_of(config: &tokio_postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
        Some(tokio_postgres::config::Host::Unix(path)) => path.display().to_string(),
        None => "localhost".to_owned(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let database = config.get_dbname().or(config.get_user()).unwrap_or("postgres");
    format!("{host}:{port}/{database}")
}

impl Backend for Postgres {
    fn load_user<'a>(
        &'a self,
        user_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<UserLedger>, StoreError>> {
        Box::pin(async move {
            let client = self.client().await?;
            let (snapshot, snapshot_damage) = match self.snapshot(&client, user_id).await? {
                Ok(snapshot) => (snapshot.unwrap_or_default(), None),
                // The chunks are the record; a snapshot only saves time.
                Err(damage) => {
                    tracing::error!(user_id, %damage, "loading the user from all their chunks");
                    (Default::default(), Some(damage))
                }
            };
            let (mut ledger, snapshot_seq, snapshot_bytes) = snapshot;
            let explain = |error: StoreError| match (&snapshot_damage, error) {
                (Some(damage), StoreError::Unavailable(error)) => StoreError::Unavailable(format!(
                    "{damage}, and the chunks cannot replace it: {error}"
                )),
                (_, error) => error,
            };
            let mut last = snapshot_seq;
            loop {
                let chunks = self.chunks_after(&client, user_id, last).await.map_err(explain)?;
                let full_page = chunks.len() == CHUNKS_PER_PAGE;
                last = apply_chunks(user_id, last, chunks, &mut ledger).map_err(explain)?;
                if !full_page {
                    break;
                }
            }
            drop(client);
            if last == 0 {
                return Ok(None);
            }
            let stored = StoredPosition::at(last);
            stored.set_snapshot(snapshot_seq, snapshot_interval(snapshot_bytes));
            Ok(Some(UserLedger {
                ledger,
                last_sequence: 0,
                stored: Arc::new(stored),
                due_ms: None,
            }))
        })
    }

    fn is_shared(&self) -> bool {
        true
    }

    fn cache_max_users(&self) -> Option<usize> {
        Some(self.cache_max_users)
    }

    fn refresh<'a>(
        &'a self,
        user_id: &'a str,
        user: &'a Arc<RwLock<UserLedger>>,
    ) -> BoxFuture<'a, Result<Freshness, StoreError>> {
        Box::pin(async move {
            let mut client = self.client().await?;
            // Bounded: each round either finds the cache current, applies
            // what is newer, or waits for this replica's own records (which
            // then conflict, making the cache stale).
            for _ in 0..8 {
                let (stored, last_sequence) = {
                    let user = read_lock(user)?;
                    if user.stored.is_stale() {
                        return Ok(Freshness::Stale);
                    }
                    (user.stored.seq(), user.last_sequence)
                };
                // One query both checks and catches up: none when current.
                let chunks = self.chunks_after(&client, user_id, stored).await?;
                if chunks.is_empty() {
                    return Ok(Freshness::Current);
                }
                // Records of ours still on their way were decided on a
                // ledger without the newer chunks: they will conflict.
                if !self.is_durable(last_sequence)? {
                    // Not holding a pooled connection while waiting.
                    drop(client);
                    self.wait_durable(last_sequence).await?;
                    client = self.client().await?;
                    continue;
                }
                let mut user = write_lock(user)?;
                if user.stored.is_stale() {
                    return Ok(Freshness::Stale);
                }
                // Changed meanwhile (another call caught it up, or this
                // replica decided a record on it): look again.
                if user.stored.seq() != stored || user.last_sequence != last_sequence {
                    continue;
                }
                if chunks.len() == CHUNKS_PER_PAGE {
                    // Far behind (nothing of ours is pending): loading the
                    // user anew from its snapshot is cheaper.
                    user.stored.mark_stale();
                    return Ok(Freshness::Stale);
                }
                match apply_chunks(user_id, stored, chunks, &mut user.ledger) {
                    Ok(last) => {
                        user.stored.set_seq(last);
                        user.stored.note_contention();
                        return Ok(Freshness::CaughtUp);
                    }
                    Err(error) => {
                        // Possibly half applied: nobody may use it again.
                        user.stored.mark_stale();
                        return Err(error);
                    }
                }
            }
            Ok(Freshness::Stale)
        })
    }

    fn due_users(
        &self,
        now_ms: i64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<(String, i64)>, StoreError>> {
        Box::pin(async move {
            let client = self.client().await?;
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let rows = self
                .query(
                    &client,
                    "SELECT user_id, due_at_ms FROM points_user_deadlines WHERE due_at_ms <= $1 \
                     ORDER BY due_at_ms LIMIT $2",
                    &[&now_ms, &limit],
                )
                .await?;
            rows.iter()
                .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
                .collect::<Result<_, tokio_postgres::Error>>()
                .map_err(|error| self.unreachable(&database_error(&error)))
        })
    }

    fn due_user_advanced<'a>(
        &'a self,
        user_id: &'a str,
        listed_due_ms: i64,
        user: Option<&'a Arc<RwLock<UserLedger>>>,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let (due_ms, stored) = match user {
                Some(user) => {
                    let user = read_lock(user)?;
                    // A record of ours on its way writes the row itself; a
                    // ledger gone stale is no guide.
                    if user.stored.is_stale() || !self.is_durable(user.last_sequence)? {
                        return Ok(());
                    }
                    (user.due_ms, Some(Arc::clone(&user.stored)))
                }
                // No records: nothing can come due.
                None => (None, None),
            };
            if due_ms == Some(listed_due_ms) {
                return Ok(());
            }
            let client = self.client().await?;
            // Only if the row still says what was listed: a chunk stored
            // since wrote a newer one.
            match due_ms {
                Some(due_ms) => {
                    self.query(
                        &client,
                        "UPDATE points_user_deadlines SET due_at_ms = $3 \
                         WHERE user_id = $1 AND due_at_ms = $2",
                        &[&user_id, &listed_due_ms, &due_ms],
                    )
                    .await?
                }
                None => {
                    self.query(
                        &client,
                        "DELETE FROM points_user_deadlines WHERE user_id = $1 AND due_at_ms = $2",
                        &[&user_id, &listed_due_ms],
                    )
                    .await?
                }
            };
            if let Some(stored) = stored {
                stored.set_deadline_row(None);
            }
            Ok(())
        })
    }

    fn postpone_due_user<'a>(
        &'a self,
        user_id: &'a str,
        listed_due_ms: i64,
        retry_at_ms: i64,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let client = self.client().await?;
            self.query(
                &client,
                "UPDATE points_user_deadlines SET due_at_ms = $3 \
                 WHERE user_id = $1 AND due_at_ms = $2",
                &[&user_id, &listed_due_ms, &retry_at_ms],
            )
            .await?;
            Ok(())
        })
    }

    fn latest_chunks<'a>(
        &'a self,
        user_ids: &'a [Arc<str>],
    ) -> BoxFuture<'a, Result<Vec<(String, u64)>, StoreError>> {
        Box::pin(async move {
            let client = self.client().await?;
            let mut latest = Vec::with_capacity(user_ids.len());
            // Bounded statements: a few thousand index probes each.
            for batch in user_ids.chunks(LATEST_CHUNKS_PER_QUERY) {
                let batch: Vec<&str> = batch.iter().map(|user_id| &**user_id).collect();
                let rows = self
                    .query(
                        &client,
                        "SELECT followed.user_id, newest.seq \
                         FROM unnest($1::text[]) AS followed(user_id) \
                         CROSS JOIN LATERAL (SELECT seq FROM points_user_records \
                             WHERE user_id = followed.user_id ORDER BY seq DESC LIMIT 1) AS newest",
                        &[&batch],
                    )
                    .await?;
                for row in rows {
                    let user_id: String = row
                        .try_get(0)
                        .map_err(|error| self.unreachable(&database_error(&error)))?;
                    let seq: i64 = row
                        .try_get(1)
                        .map_err(|error| self.unreachable(&database_error(&error)))?;
                    // The table's CHECK keeps seq positive.
                    latest.push((user_id, u64::try_from(seq).unwrap_or(0)));
                }
            }
            Ok(latest)
        })
    }

    fn serving(&self) -> Option<watch::Receiver<bool>> {
        Some(self.shared.serving.subscribe())
    }

    fn stored(&self, user_id: &str, user: &Arc<RwLock<UserLedger>>) {
        let Ok(cached) = user.try_read() else { return };
        let stored = Arc::clone(&cached.stored);
        drop(cached);
        if !stored.claim_snapshot(SNAPSHOT_MIN_INTERVAL_CHUNKS) {
            return;
        }
        // Bounded: a few at once, so that snapshots due together (after a
        // restart) cannot take the pool from loads and reads.
        let (Ok(runtime), Ok(slot)) = (
            tokio::runtime::Handle::try_current(),
            Arc::clone(&self.snapshot_slots).try_acquire_owned(),
        ) else {
            stored.snapshot_done();
            return;
        };
        let snapshots = Snapshots { pool: self.pool.clone(), shared: Arc::clone(&self.shared) };
        let (user_id, user) = (user_id.to_owned(), Arc::clone(user));
        runtime.spawn(async move {
            if let Err(error) = snapshots.take(&user_id, user, &stored).await {
                // Not again at the next write: after twice as many chunks.
                stored.postpone_snapshot(SNAPSHOT_MIN_INTERVAL_CHUNKS);
                tracing::warn!(%error, user_id, "cannot store a snapshot of a user; will try again");
            }
            stored.snapshot_done();
            drop(slot);
        });
    }

    fn admit(&self) -> Result<(), StoreError> {
        if !*self.shared.serving.borrow() {
            return Err(self.unreachable("it did not answer the last check"));
        }
        let queue = self.shared.queue.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if queue.closing {
            return Err(StoreError::Unavailable("the server is shutting down".to_owned()));
        }
        if queue.bytes > self.shared.max_queued_bytes {
            return Err(StoreError::Busy {
                reason: "DATABASE_BACKLOG",
                message: format!(
                    "more than {} MiB of changes are waiting for the database; retry shortly",
                    self.shared.max_queued_bytes >> 20
                ),
            });
        }
        Ok(())
    }

    fn check_healthy(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn append(&self, user: &UserLedger, record: &dyn Fn() -> JournalRecord) -> (u64, Receipt) {
        let record = record();
        let bytes = prost::Message::encoded_len(&record);
        let (reply, receipt) = oneshot::channel();
        let mut queue = self.shared.queue.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if queue.stopped {
            // Closed after this write was admitted: it is refused (the
            // receipt's sender is dropped) and the ledger it changed is
            // never used again.
            user.stored.mark_stale();
            queue.last_sequence += 1;
            self.shared.resolved.send_replace(queue.last_sequence);
            return (queue.last_sequence, Receipt::Database(receipt));
        }
        queue.last_sequence += 1;
        let sequence = queue.last_sequence;
        queue.bytes += bytes;
        queue.records.push(Pending {
            sequence,
            stored: Arc::clone(&user.stored),
            record,
            due_ms: user.due_ms,
            reply,
        });
        drop(queue);
        self.shared.wake.notify_one();
        (sequence, Receipt::Database(receipt))
    }

    fn is_durable(&self, sequence: u64) -> Result<bool, StoreError> {
        Ok(*self.shared.resolved.borrow() >= sequence)
    }

    fn wait_durable(&self, sequence: u64) -> BoxFuture<'_, Result<(), StoreError>> {
        let mut resolved = self.shared.resolved.subscribe();
        Box::pin(async move {
            resolved
                .wait_for(|resolved| *resolved >= sequence)
                .await
                .map(|_| ())
                .map_err(|_| StoreError::Unavailable("the database committer stopped".to_owned()))
        })
    }

    fn failed(&self) -> BoxFuture<'_, String> {
        Box::pin(std::future::pending())
    }

    fn snapshot_now(&self) -> Result<(), SnapshotFailed> {
        Ok(())
    }

    fn close(&self, deadline: Option<Instant>) -> bool {
        self.shared.queue.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).closing = true;
        self.shared.wake.notify_one();
        let mut committer = self.committer.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let Some(thread) = committer.take() else { return true };
        if wait_finished(&thread, deadline) {
            let _ = thread.join();
            true
        } else {
            *committer = Some(thread);
            false
        }
    }
}
