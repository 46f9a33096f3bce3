//! The store: every user's ledger, the write and read paths shared by every
//! backend, and the seam to where commands are kept.
//!
//! Each user has an in-memory [`Ledger`] behind its own lock, the source of
//! every read. A write is admitted by the backend before anything changes,
//! executed under the user's write lock (request-id replay and the limits
//! are decided here, once, for every backend), and its record handed to the
//! backend in the same critical section, so each user's records are in the
//! order its ledger applied them; the reply waits outside the lock until the
//! record is durable. Refused commands keep nothing, except refusals of calls
//! with a request id, which retries must see again. Every reply (a read, a
//! refusal, a retry) waits until every change it reflects is durable; a user
//! with nothing pending never waits.
//!
//! Modules: [`backend`] (the seam, and the in-memory backend), [`embedded`]
//! (the journal and snapshots in a data directory), `users` (the per-user
//! locks), `sweeper` (releasing expired request ids), `deadlines` (users
//! whose holds time out or points expire next, so that the server brings
//! them forward without a call), `options`, `error`.
//!
//! Time: every write first advances the user's ledger to the time it is
//! accepted at (holds time out, points expire), and that time and the
//! validity go into its record, so that replay does the same; a read of a
//! user with something due first brings the user forward as a write would.

pub mod backend;
mod changes;
mod commands;
mod deadlines;
pub mod embedded;
mod error;
mod ids;
mod options;
mod postgres;
mod sweeper;
pub mod users;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use chrono::Utc;
use dashmap::DashMap;

use self::backend::{Backend, Freshness, InMemory, Receipt};
pub use self::changes::ChangeSubscription;
use self::changes::Changes;
use self::deadlines::Deadlines;
use self::embedded::Embedded;
use self::embedded::records::{AdvanceClockCommand, Command, JournalRecord};
use self::postgres::Postgres;
use self::sweeper::Sweeper;
use self::users::{UserLedger, Users, collect_users, off_runtime, read_lock, write_lock};
use crate::ledger::{Clock, Ledger, LedgerError, Outcome, Request};
pub use commands::{AsOf, AsOfRefusal, Balances};
pub use embedded::wal::FsyncPolicy;
#[cfg(any(test, feature = "testing"))]
pub use embedded::{journal_records_bytes, read_journal};
pub use error::{OpenError, SnapshotFailed, StoreError};
pub use ids::{PayerName, RequestId, UserId};
pub use options::{DatabaseOptions, DurableOptions, Storage, StoreOptions};
#[cfg(any(test, feature = "testing"))]
pub use postgres::RecordChunk;
pub use postgres::{MigrateError, MigrateSummary, migrate};

/// The user of calls that name none.
pub const DEFAULT_USER: &str = "default";

/// Every user's ledger, kept by a backend: what the service calls. Each user
/// has its own lock, so calls for different users never wait on each other.
///
/// Dropping a store closes it ([`Store::close`]): its threads stop and its
/// data directory is unlocked.
pub struct Store {
    users: Arc<Users>,
    /// Loads of users from the backend, one at a time per stripe of users.
    loading: Box<[tokio::sync::Mutex<()>]>,
    backend: Box<dyn Backend>,
    limits: Limits,
    /// Users whose ledger changes by itself at a known time.
    deadlines: Deadlines,
    /// Who follows which user's history.
    changes: Arc<Changes>,
    /// The sweeper, and how far closing got; held while closing, so that
    /// concurrent closes wait for one another.
    closing: Mutex<Closing>,
}

/// How far a store's closing got.
#[derive(Debug)]
struct Closing {
    sweeper: Sweeper,
    state: CloseState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CloseState {
    Open,
    /// Everything stopped: closing again does nothing.
    Closed,
    /// A close gave up at its deadline (a stalled disk); a later close tries
    /// again, a drop does not wait again.
    GaveUp,
}

/// Where a read of a [shared](Store::is_shared) store's user starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadFrom {
    /// What is stored: a cached user is first brought up to it.
    Stored,
    /// The cached user as it is (loaded if missing or stale), for a
    /// follower whose user [`Store::wake_followers`] brings up to date.
    Cached,
}

/// How long dropping a store that nobody closed waits for it to close: a
/// stalled disk must not hang whoever drops it.
const DROP_CLOSE_GRACE: Duration = Duration::from_secs(60);

/// Stripes of users whose loads wait for one another: enough that loads of
/// different users rarely wait, as many as the default connection pool
/// could serve at once several times over.
const LOAD_STRIPES: usize = 64;

/// The stripe of [`Store::loading`] `user_id` loads under (FNV-1a).
fn load_stripe(user_id: &str) -> usize {
    let hash = user_id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    });
    (hash % LOAD_STRIPES as u64) as usize
}

/// The limits and retention every backend shares.
#[derive(Debug, Clone, Copy)]
struct Limits {
    request_id_retention_ms: i64,
    max_users: usize,
    max_payers_per_user: usize,
    max_request_ids_per_user: usize,
    points_validity_ms: Option<i64>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Store")
            .field("backend", &self.backend)
            .field("users", &self.users.len())
            .finish_non_exhaustive()
    }
}

/// What recovery found, for the start-up log.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// The rotation sequence of the snapshot loaded, if any.
    pub snapshot_sequence: Option<u64>,
    /// Journal records replayed after the snapshot.
    pub records_replayed: u64,
    /// Bytes of a torn journal tail cut off (not counting zeros after it).
    pub torn_bytes_cut: u64,
}

impl Store {
    /// A store that keeps nothing on disk, with the default limits.
    pub fn in_memory() -> Self {
        Self::assemble(Arc::default(), Box::new(InMemory::default()), &StoreOptions::in_memory())
    }

    /// Opens the store: in memory, or recovering the data directory (newest
    /// snapshot, then the journal after it) and starting the journal writer.
    pub fn open(options: &StoreOptions) -> Result<(Self, Recovery), OpenError> {
        let users: Arc<Users> = Arc::new(DashMap::new());
        let (backend, recovery): (Box<dyn Backend>, _) = match &options.storage {
            Storage::InMemory => (Box::new(InMemory::default()), Recovery::default()),
            Storage::Durable(durable) => {
                let (embedded, recovery) =
                    Embedded::open(durable, &users, options.request_id_retention_ms)?;
                (Box::new(embedded), recovery)
            }
            Storage::Database(_) => return Err(OpenError::NeedsConnect),
        };
        Ok((Self::assemble(users, backend, options), recovery))
    }

    /// Opens the store: [`Store::open`] for data in memory or a data
    /// directory; for a database, connects, migrates the schema and starts
    /// the committer (needs a Tokio runtime). Users are loaded on first use.
    pub async fn connect(options: &StoreOptions) -> Result<Self, OpenError> {
        match &options.storage {
            Storage::Database(database) => {
                let backend = Postgres::open(database).await?;
                Ok(Self::assemble(Arc::new(DashMap::new()), Box::new(backend), options))
            }
            _ => Self::open(options).map(|(store, _)| store),
        }
    }

    fn assemble(users: Arc<Users>, backend: Box<dyn Backend>, options: &StoreOptions) -> Self {
        let limits = Limits {
            request_id_retention_ms: options.request_id_retention_ms,
            max_users: options.max_users,
            max_payers_per_user: options.max_payers_per_user,
            max_request_ids_per_user: options.max_request_ids_per_user,
            points_validity_ms: options.points_validity_ms,
        };
        // Users recovered from a data directory: when each next changes by
        // itself, under this start's validity.
        let deadlines = Deadlines::default();
        for (user_id, user) in collect_users(&users) {
            let mut user = user.write().unwrap_or_else(|poisoned| poisoned.into_inner());
            user.due_ms = user.ledger.next_due_ms(limits.points_validity_ms);
            deadlines.set(&user_id, user.due_ms);
        }
        let sweeper = Sweeper::start(Arc::clone(&users), limits.request_id_retention_ms);
        let closing = Mutex::new(Closing { sweeper, state: CloseState::Open });
        let loading = (0..LOAD_STRIPES).map(|_| tokio::sync::Mutex::new(())).collect();
        let changes = Arc::default();
        Self { users, loading, backend, limits, deadlines, changes, closing }
    }

    /// The clock a call accepted now runs at.
    fn clock_now(&self) -> Clock {
        Clock {
            now_ms: Utc::now().timestamp_millis(),
            points_validity_ms: self.limits.points_validity_ms,
        }
    }

    /// Follows `user_id`'s history: the subscription wakes once a change of
    /// theirs written through this store is taken (a read then waits for it
    /// to be durable), and, for a
    /// [shared](Store::is_shared) store, when [`Store::wake_followers`]
    /// finds one another replica stored.
    pub fn subscribe_changes(&self, user_id: UserId<'_>) -> ChangeSubscription {
        self.changes.subscribe(user_id.as_str())
    }

    /// For a [shared](Store::is_shared) store: looks up (in one query per
    /// thousand users) where every followed user's stored history ends;
    /// for each whose end moved since `seen` (where this call last found
    /// it; users first looked up count as moved, as they may have changed
    /// since their followers last read), brings their cached ledger up to
    /// it once and wakes their followers, who then read it as cached
    /// ([`Store::followed_history_page`]). The server runs this four times
    /// a second, so that followers see what other replicas write within a
    /// second, at one look-up per tick and one catch-up per changed user,
    /// however many streams follow them.
    ///
    /// A follower never misses a change: it marks what it has seen before
    /// reading, its first read sees every chunk committed before it, and a
    /// chunk committed after that is found here by a later look-up, caught
    /// up and then woken for. A user whose catch-up fails is looked up again
    /// at the next tick.
    pub async fn wake_followers(self: &Arc<Self>, seen: &mut HashMap<Arc<str>, u64>) {
        let followed = self.changes.followed();
        seen.retain(|user_id, _| followed.binary_search(user_id).is_ok());
        if followed.is_empty() || !self.backend.is_shared() {
            return;
        }
        let latest = match self.backend.latest_chunks(&followed).await {
            Ok(latest) => latest,
            Err(error) => {
                tracing::warn!(%error, "cannot look for changes of followed users");
                return;
            }
        };
        let mut running = tokio::task::JoinSet::new();
        for (user_id, seq) in latest {
            let Ok(index) = followed.binary_search_by(|known| (**known).cmp(&*user_id)) else {
                continue;
            };
            if seen.get(&followed[index]) == Some(&seq) {
                continue;
            }
            while running.len() >= DUE_USERS_AT_ONCE {
                if let Some(Ok(Some((user_id, seq)))) = running.join_next().await {
                    seen.insert(user_id, seq);
                }
            }
            let (store, user_id) = (Arc::clone(self), Arc::clone(&followed[index]));
            running.spawn(async move {
                let cached = store.users.get(&*user_id).map(|user| Arc::clone(user.value()));
                if let Some(user) = cached
                    && let Err(error) = store.backend.refresh(&user_id, &user).await
                {
                    tracing::warn!(%user_id, %error, "cannot catch up a followed user");
                    return None;
                }
                store.changes.notify(&user_id);
                Some((user_id, seq))
            });
        }
        while let Some(caught_up) = running.join_next().await {
            if let Ok(Some((user_id, seq))) = caught_up {
                seen.insert(user_id, seq);
            }
        }
    }

    /// Whether other processes write the same users (replicas sharing a
    /// database).
    pub fn is_shared(&self) -> bool {
        self.backend.is_shared()
    }

    /// Brings `user_id`'s ledger to now: releases holds that timed out and
    /// expires points, keeping the change like a command's. Nothing is kept
    /// when nothing was due.
    pub async fn advance_clock(&self, user_id: UserId<'_>) -> Result<(), StoreError> {
        self.write(
            user_id,
            None,
            false,
            |_, _| Ok(Outcome::Repeated(Ok(()))),
            |_| Command::AdvanceClock(AdvanceClockCommand {}),
        )
        .await
    }

    /// Advances every user whose ledger is due by now (up to `limit` of
    /// them, earliest first), [`DUE_USERS_AT_ONCE`] at a time so that their
    /// records share commits; returns how many were due. The server runs
    /// this about every second, so that idle users' holds time out and
    /// points expire without a call.
    pub async fn advance_due_users(self: &Arc<Self>, limit: usize) -> usize {
        let now_ms = Utc::now().timestamp_millis();
        // Users this replica has in memory, then those only the backend
        // knows are due (a shared database: users no replica has loaded
        // since a restart).
        let mut due: Vec<(Arc<str>, Option<i64>)> =
            self.deadlines.due(now_ms, limit).into_iter().map(|user| (user, None)).collect();
        let listed: HashSet<Arc<str>> = due.iter().map(|(user, _)| Arc::clone(user)).collect();
        match self.backend.due_users(now_ms, limit - due.len()).await {
            Ok(stored) => due.extend(
                stored
                    .into_iter()
                    .filter(|(user, _)| !listed.contains(user.as_str()))
                    .map(|(user, due_ms)| (Arc::from(user), Some(due_ms))),
            ),
            Err(error) => tracing::warn!(%error, "cannot read which users are due"),
        }
        debug_assert!(due.len() <= limit);
        let count = due.len();
        let mut running = tokio::task::JoinSet::new();
        for (user_id, listed_due_ms) in due {
            if running.len() >= DUE_USERS_AT_ONCE {
                running.join_next().await;
            }
            let store = Arc::clone(self);
            running.spawn(async move {
                let advanced = store.advance_clock(UserId::new(&user_id)).await;
                let backend = &store.backend;
                let listed = match listed_due_ms {
                    None => Ok(()),
                    Some(listed_due_ms) => {
                        // The ledger as brought forward, held while the
                        // listing is corrected: loaded again if it was
                        // dropped from memory meanwhile, so that a user
                        // evicted between the two is not taken for one with
                        // nothing kept (whose listing is deleted).
                        let reloaded = match &advanced {
                            Ok(()) => store.user(UserId::new(&user_id)).await.map_err(Some),
                            Err(_) => Err(None),
                        };
                        match reloaded {
                            Ok(user) => {
                                let user = user.map(|cached| cached.user);
                                backend
                                    .due_user_advanced(&user_id, listed_due_ms, user.as_ref())
                                    .await
                            }
                            // Not brought forward, or not loaded again:
                            // listed later, not looked at every second.
                            Err(load_error) => {
                                let retry_at_ms = now_ms.saturating_add(DUE_USER_RETRY_MS);
                                backend
                                    .postpone_due_user(&user_id, listed_due_ms, retry_at_ms)
                                    .await
                                    .and(load_error.map_or(Ok(()), Err))
                            }
                        }
                    }
                };
                if let Err(error) = advanced.and(listed) {
                    tracing::warn!(user_id = %user_id, %error, "cannot bring a user's clock forward");
                }
            });
        }
        while running.join_next().await.is_some() {}
        count
    }

    /// Runs `read` on `user_id`'s ledger (an empty one for an unknown user)
    /// and returns its result once every change it saw is durable, so that
    /// no reply shows what a crash could take back. A user with nothing
    /// pending does not wait.
    ///
    /// With a shared backend the cached user is first brought up to what is
    /// stored, so that the read sees every change acknowledged (by any
    /// replica) before it started; if a change it saw turns out never to be
    /// stored, the read is done again.
    pub async fn read<T>(
        &self,
        user_id: UserId<'_>,
        read: impl Fn(&Ledger) -> T,
    ) -> Result<T, StoreError> {
        self.read_from(user_id, ReadFrom::Stored, read).await
    }

    /// [`Store::read`], from where `from` says.
    async fn read_from<T>(
        &self,
        user_id: UserId<'_>,
        from: ReadFrom,
        read: impl Fn(&Ledger) -> T,
    ) -> Result<T, StoreError> {
        // After a backend failure the in-memory state may hold changes that a
        // restart would not have: serve nothing rather than contradict it.
        self.backend.check_healthy()?;
        let shared = self.backend.is_shared();
        for attempt in 1..=MAX_ATTEMPTS {
            let Some(Cached { user, loaded }) = self.user(user_id).await? else {
                return Ok(read(&Ledger::new()));
            };
            if shared && !loaded && from == ReadFrom::Stored {
                let freshness = self.backend.refresh(user_id.as_str(), &user).await?;
                if freshness == Freshness::Stale {
                    continue;
                }
            }
            // A hold past its timeout or points past their validity: no
            // read may show them, so the ledger is first brought to now
            // (kept like a write), then read.
            let clock = self.clock_now();
            let due = read_lock(&user)?
                .ledger
                .next_due_ms(clock.points_validity_ms)
                .is_some_and(|due_ms| due_ms <= clock.now_ms);
            if due {
                self.advance_clock(user_id).await?;
                continue;
            }
            let (result, seen_sequence) = {
                let user = read_lock(&user)?;
                (read(&user.ledger), user.last_sequence)
            };
            self.wait_durable(seen_sequence).await?;
            if shared && read_lock(&user)?.stored.is_stale() {
                back_off(attempt).await;
                continue;
            }
            return Ok(result);
        }
        Err(StoreError::Conflict { attempts: MAX_ATTEMPTS })
    }

    /// Whether the store can serve now, as it changes, for a backend whose
    /// readiness comes and goes (a database); `None` for one that serves
    /// until [`Store::failed`].
    pub fn serving(&self) -> Option<tokio::sync::watch::Receiver<bool>> {
        self.backend.serving()
    }

    /// Completes when the store stops accepting changes because its backend
    /// failed, with why; never, for a healthy or in-memory store.
    pub async fn failed(&self) -> String {
        self.backend.failed().await
    }

    /// Why the store failed, if it did: a journal write or fsync error, while
    /// serving or while writing out at close. `None` for a healthy or
    /// normally closed store, and for backends that do not fail this way
    /// (a database that cannot be reached is retried, not failed).
    pub fn failure(&self) -> Option<String> {
        self.backend.check_healthy().err().map(|error| error.to_string())
    }

    /// Takes a snapshot now and returns once it is written (or why not);
    /// normally the journal's growth triggers snapshots on their own. For
    /// tests and tools; an in-memory store has nothing to snapshot.
    pub fn snapshot_now(&self) -> Result<(), SnapshotFailed> {
        self.backend.snapshot_now()
    }

    /// Writes out everything buffered and stops the background threads,
    /// waiting as long as that takes. Closing a closed store does nothing.
    pub fn close(&self) {
        self.close_within(Duration::MAX);
    }

    /// Writes out everything buffered and stops the background threads,
    /// giving up after `grace` (a stalled disk, a long snapshot): returns
    /// whether everything stopped. What was acknowledged is durable either
    /// way; giving up only leaves the writing of unacknowledged records, or a
    /// snapshot, unfinished, which start-up handles as after a crash. Once
    /// it has succeeded, later calls return `true` at once; after it gave
    /// up, a later call tries again.
    pub fn close_within(&self, grace: Duration) -> bool {
        let mut closing = self.closing.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if closing.state == CloseState::Closed {
            return true;
        }
        let deadline = Instant::now().checked_add(grace);
        closing.sweeper.signal();
        let backend_stopped = self.backend.close(deadline);
        let sweeper_stopped = closing.sweeper.stop(deadline);
        let stopped = backend_stopped && sweeper_stopped;
        closing.state = if stopped { CloseState::Closed } else { CloseState::GaveUp };
        if !stopped {
            tracing::error!(
                "the store did not stop within the shutdown grace period (a stalled disk or \
                 a long snapshot); exiting anyway: every acknowledged change is durable"
            );
        }
        stopped
    }

    /// `user_id`'s ledger: cached, or loaded from the backend (and cached)
    /// on first use; `None` for a user with nothing kept. A cached ledger
    /// gone stale is dropped and loaded anew.
    async fn user(&self, user_id: UserId<'_>) -> Result<Option<Cached>, StoreError> {
        let user_id = user_id.as_str();
        if let Some(user) = self.fresh_cached(user_id)? {
            return Ok(Some(Cached { user, loaded: false }));
        }
        // One load per user at a time: calls that find a user missing or
        // stale together (all writers of a hot user after a conflict) wait
        // for the first one's load rather than each load the whole user.
        let _loading = self.loading[load_stripe(user_id)].lock().await;
        if let Some(user) = self.fresh_cached(user_id)? {
            return Ok(Some(Cached { user, loaded: false }));
        }
        let stale = self.users.get(user_id).map(|user| Arc::clone(user.value()));
        if let Some(stale) = &stale
            && self.users.remove_if(user_id, |_, cached| Arc::ptr_eq(cached, stale)).is_some()
        {
            metrics::gauge!("points_users").decrement(1.0);
        }
        let Some(mut loaded) = self.backend.load_user(user_id).await? else { return Ok(None) };
        self.note_due(UserId::new(user_id), &mut loaded);
        if stale.is_some() {
            // Gone stale: another replica writes this user too.
            loaded.stored.note_contention();
        }
        self.cache_loaded(user_id, loaded)
    }

    /// `user_id`'s cached ledger unless it is missing or gone stale.
    fn fresh_cached(&self, user_id: &str) -> Result<Option<Arc<RwLock<UserLedger>>>, StoreError> {
        let Some(user) = self.users.get(user_id).map(|user| Arc::clone(user.value())) else {
            return Ok(None);
        };
        let fresh = !self.backend.is_shared() || !read_lock(&user)?.stored.is_stale();
        Ok(fresh.then_some(user))
    }

    /// Caches a user just loaded, unless a concurrent call cached them
    /// first (the first one cached wins).
    fn cache_loaded(
        &self,
        user_id: &str,
        loaded: UserLedger,
    ) -> Result<Option<Cached>, StoreError> {
        let mut loaded = Some(loaded);
        let user = self.users.entry(user_id.into()).or_insert_with(|| {
            metrics::gauge!("points_users").increment(1.0);
            Arc::new(RwLock::new(loaded.take().unwrap_or_default()))
        });
        let cached = Cached { user: Arc::clone(user.value()), loaded: loaded.is_none() };
        drop(user);
        self.bound_cache();
        Ok(Some(cached))
    }

    /// Past the backend's bound of cached users, drops users with no call
    /// in progress and nothing waiting to be stored, down to nine tenths of
    /// the bound (so that passes are rare); they are loaded again on use.
    fn bound_cache(&self) {
        let Some(max_users) = self.backend.cache_max_users() else { return };
        if self.users.len() <= max_users {
            return;
        }
        let target = max_users - max_users / 10;
        let mut evicted = 0;
        for (user_id, _held_here) in collect_users(&self.users) {
            if self.users.len() <= target {
                break;
            }
            // Held by the map and this loop only: no call uses it.
            let idle = |cached: &Arc<RwLock<UserLedger>>| {
                Arc::strong_count(cached) == 2
                    && cached.try_read().is_ok_and(|ledger| {
                        self.backend.is_durable(ledger.last_sequence).unwrap_or(false)
                    })
            };
            if self.users.remove_if(&user_id, |_, cached| idle(cached)).is_some() {
                evicted += 1;
            }
        }
        metrics::gauge!("points_users").decrement(f64::from(evicted));
        tracing::info!(evicted, cached = self.users.len(), "dropped idle users from memory");
    }

    /// Completes once every record up to `sequence` is durable.
    async fn wait_durable(&self, sequence: u64) -> Result<(), StoreError> {
        if !self.backend.is_durable(sequence)? {
            let span = crate::telemetry::call_child_span!("durable_wait", sequence);
            crate::telemetry::spanning(span, self.backend.wait_durable(sequence)).await?;
        }
        Ok(())
    }

    /// Executes a command under the user's write lock and, if it changed
    /// anything or is a refusal to remember, hands its record to the backend
    /// in the same critical section (so each user's records are in order);
    /// then waits outside the lock until everything the reply reflects is
    /// durable: its own record, or for a refusal or a retry, every record
    /// of the user it was decided on.
    ///
    /// With a shared backend, a write whose record is refused as conflicting
    /// with another replica's is decided again on the stored state, and an
    /// outcome that records nothing (a refusal, a retry's reply) is checked
    /// against what is stored, a bounded number of times.
    async fn write<T>(
        &self,
        user_id: UserId<'_>,
        request_id: Option<RequestId<'_>>,
        heavy: bool,
        execute: impl Fn(&mut Ledger, Option<Request<'_>>) -> Result<Outcome<T>, StoreError>,
        command: impl Fn(&Result<T, LedgerError>) -> Command,
    ) -> Result<T, StoreError> {
        for attempt in 1..=MAX_ATTEMPTS {
            // Before anything changes: the backend must be able to take the
            // record, so that no applied change is ever left unkept.
            self.backend.admit()?;
            let cached = self.user(user_id).await?;
            // A user other replicas write is likely behind: catch up first
            // rather than decide on it, conflict and reload.
            if let Some(Cached { user, loaded: false }) = &cached
                && self.backend.is_shared()
                && read_lock(user)?.stored.take_contended_write()
                && self.backend.refresh(user_id.as_str(), user).await? == Freshness::Stale
            {
                continue;
            }
            let existing = cached.map(|cached| cached.user);
            let clock = self.clock_now();
            let request = request_id.map(|id| Request {
                id: id.as_str(),
                now_ms: clock.now_ms,
                retention_ms: self.limits.request_id_retention_ms,
                max_remembered: self.limits.max_request_ids_per_user,
            });
            let step = WriteStep { user_id, request_id, clock, request, new_user: false };
            let run = || match &existing {
                Some(user) => {
                    let (result, durable, _) =
                        self.execute_locked(&mut *write_lock(user)?, step, &execute, &command);
                    Ok::<_, StoreError>((result, durable, Some(Arc::clone(user))))
                }
                None => self.first_write(step, &execute, &command),
            };
            // A large batch is milliseconds of ledger work under the user's
            // lock: not on a worker of the async runtime.
            let (result, durable, decided_on) = if heavy { off_runtime(run)? } else { run()? };
            match durable {
                Durability::Receipt(receipt) => match receipt.wait().await {
                    Err(StoreError::Conflict { .. }) => {
                        back_off(attempt).await;
                        continue;
                    }
                    stored => {
                        stored?;
                        if let Some(user) = decided_on.filter(|_| self.backend.is_shared()) {
                            self.backend.stored(user_id.as_str(), &user);
                        }
                    }
                },
                Durability::Sequence(sequence) => {
                    self.wait_durable(sequence).await?;
                    // Decided on the cache without storing anything: it
                    // stands only if nothing newer was stored meanwhile.
                    if let Some(user) = decided_on.filter(|_| self.backend.is_shared()) {
                        let freshness = self.backend.refresh(user_id.as_str(), &user).await?;
                        if freshness != Freshness::Current {
                            continue;
                        }
                    }
                }
            }
            return result;
        }
        Err(StoreError::Conflict { attempts: MAX_ATTEMPTS })
    }

    /// Executes a command on a user's ledger whose write lock the caller
    /// holds, and hands its record to the backend if it changed anything or
    /// is a refusal to remember. Returns the result, what to wait for, and
    /// whether the ledger changed.
    fn execute_locked<T>(
        &self,
        user: &mut UserLedger,
        step: WriteStep<'_>,
        execute: &impl Fn(&mut Ledger, Option<Request<'_>>) -> Result<Outcome<T>, StoreError>,
        command: &impl Fn(&Result<T, LedgerError>) -> Command,
    ) -> (Result<T, StoreError>, Durability, bool) {
        let before = (user.ledger.payer_count(), user.ledger.lot_count());
        // Time moves first: holds that timed out are released and expired
        // points leave before the command is decided. The ledger's time is
        // the later of now and what it has seen; that time is what the
        // record keeps, so that replay decides everything at the same time.
        let clock_before = user.ledger.clock();
        let advanced = user.ledger.advance(step.clock);
        let clock = user.ledger.clock();
        let request = step.request.map(|request| Request { now_ms: clock.now_ms, ..request });
        let outcome = execute(&mut user.ledger, request);
        let after = (user.ledger.payer_count(), user.ledger.lot_count());
        if after != before {
            metrics::gauge!("points_payers").increment((after.0 - before.0) as f64);
            metrics::gauge!("points_lots").increment((after.1 - before.1) as f64);
        }
        let decided = match outcome {
            // Refused by a limit of the server before the ledger was asked.
            Err(refusal) => Decided::Unkept(Err(refusal)),
            Ok(Outcome::Repeated(result)) => Decided::Unkept(result.map_err(StoreError::from)),
            Ok(Outcome::Fresh(result)) => {
                // A refusal is remembered (for retries with its request id)
                // only for a user who exists: remembering it would create
                // the user, and made-up user ids would then fill the user
                // limit. A retry of a refusal for a user with no ledger is
                // decided afresh.
                let keep = match &result {
                    Ok(_) => true,
                    Err(error) => {
                        !step.new_user && step.request_id.is_some() && error.depends_on_state()
                    }
                };
                if keep {
                    Decided::Kept(result)
                } else {
                    Decided::Unkept(result.map_err(StoreError::from))
                }
            }
        };
        let refused = match &decided {
            Decided::Kept(result) => Some(result.is_err()),
            Decided::Unkept(_) => None,
        };
        if refused.is_none() && !advanced {
            // Nothing kept: the ledger's time stays where the records put
            // it. Decided on everything the user has.
            user.ledger.rewind_clock(clock_before);
            self.note_due(step.user_id, user);
            return (decided.into_result(), Durability::Sequence(user.last_sequence), false);
        }
        // Before the record is taken: a shared backend stores the due time
        // with it.
        self.note_due(step.user_id, user);
        // What only moved the clock is kept too, in a record of its own. The
        // record is built only by a backend that keeps it.
        let (sequence, receipt) = self.backend.append(user, &|| JournalRecord {
            command: Some(match &decided {
                Decided::Kept(result) => command(result),
                Decided::Unkept(_) => Command::AdvanceClock(AdvanceClockCommand {}),
            }),
            user_id: step.user_id.as_str().to_owned(),
            request_id: match (refused, step.request_id) {
                (Some(_), Some(id)) => id.as_str().to_owned(),
                _ => String::new(),
            },
            accepted_at_ms: clock.now_ms,
            refused: refused.unwrap_or(false),
            points_validity_ms: clock.points_validity_ms.unwrap_or(0),
        });
        assert!(sequence > user.last_sequence, "a user's records are in sequence order");
        user.last_sequence = sequence;
        // Followers are woken here, with the record taken, not once it is
        // durable: the writer's call may be cancelled before that, and
        // nobody would wake them. Their read waits for what it shows to be
        // durable (and reads again if it never is).
        self.changes.notify(step.user_id.as_str());
        (decided.into_result(), Durability::Receipt(receipt), true)
    }

    /// Keeps the deadlines in step with when `user`'s ledger next changes
    /// by itself, touching them only when that changed.
    fn note_due(&self, user_id: UserId<'_>, user: &mut UserLedger) {
        let due_ms = user.ledger.next_due_ms(self.limits.points_validity_ms);
        if due_ms != user.due_ms {
            user.due_ms = due_ms;
            self.deadlines.set(user_id.as_str(), due_ms);
        }
    }

    /// A write for a user without a ledger. It runs on a new ledger while
    /// holding the user's vacant map entry (so concurrent first writes wait
    /// for it), and the user is kept only if the write changed something: a
    /// refused write creates no user, so refusals cannot fill the user limit.
    #[allow(clippy::type_complexity)]
    fn first_write<T>(
        &self,
        step: WriteStep<'_>,
        execute: &impl Fn(&mut Ledger, Option<Request<'_>>) -> Result<Outcome<T>, StoreError>,
        command: &impl Fn(&Result<T, LedgerError>) -> Command,
    ) -> Result<(Result<T, StoreError>, Durability, Option<Arc<RwLock<UserLedger>>>), StoreError>
    {
        // Checked before taking the entry: counting users reads every shard,
        // including the one the entry locks. Concurrent first writes may pass
        // together, so the bound is exact up to the calls in flight.
        // A backend that caches users lazily holds them elsewhere; its
        // cache is bounded by dropping idle users instead.
        let max_users = self.limits.max_users;
        if self.backend.cache_max_users().is_none()
            && self.users.len() >= max_users
            && !self.users.contains_key(step.user_id.as_str())
        {
            return Err(StoreError::LimitReached {
                reason: "USER_LIMIT_REACHED",
                message: format!(
                    "the server already holds its maximum of {max_users} users; no new user can \
                     be added"
                ),
            });
        }
        match self.users.entry(step.user_id.as_str().into()) {
            dashmap::Entry::Occupied(entry) => {
                let user = Arc::clone(entry.get());
                drop(entry);
                let (result, durable, _) =
                    self.execute_locked(&mut *write_lock(&user)?, step, execute, command);
                Ok((result, durable, Some(user)))
            }
            dashmap::Entry::Vacant(entry) => {
                let mut user = UserLedger::default();
                let step = WriteStep { new_user: true, ..step };
                let (result, durable, changed) =
                    self.execute_locked(&mut user, step, execute, command);
                if changed {
                    entry.insert(Arc::new(RwLock::new(user)));
                    metrics::gauge!("points_users").increment(1.0);
                    self.bound_cache();
                }
                // Decided on an empty ledger: the backend had no user when
                // asked, after the call started.
                Ok((result, durable, None))
            }
        }
    }
}

impl Drop for Store {
    /// Closes the store if nobody did: its threads stop, everything buffered
    /// is written out and the data directory is unlocked. Waits at most
    /// [`DROP_CLOSE_GRACE`], and not again after a close that gave up.
    fn drop(&mut self) {
        let state = self.closing.get_mut().map_or(CloseState::GaveUp, |closing| closing.state);
        match state {
            CloseState::Open => {
                self.close_within(DROP_CLOSE_GRACE);
            }
            CloseState::GaveUp => {
                self.close_within(Duration::ZERO);
            }
            CloseState::Closed => {}
        }
    }
}

/// How long a due user that could not be brought forward waits before the
/// next try, in milliseconds.
const DUE_USER_RETRY_MS: i64 = 60_000;

/// Due users brought forward at once by [`Store::advance_due_users`].
const DUE_USERS_AT_ONCE: usize = 64;

/// Batches at least this long run off the async runtime's workers: about a
/// millisecond of ledger work or more under the user's lock.
const HEAVY_BATCH_ENTRIES: usize = 1_000;

/// How many times a write or read is decided before giving up with
/// [`StoreError::Conflict`], when other replicas keep writing the user.
const MAX_ATTEMPTS: u32 = 16;

/// Waits before deciding again after a conflict: a random time up to a bound
/// that doubles with each attempt (1 ms, 2 ms, … 64 ms), so that replicas
/// contending for one user stop colliding.
async fn back_off(attempt: u32) {
    let bound_us = 1_000u64 << attempt.min(6);
    tokio::time::sleep(Duration::from_micros(fastrand::u64(0..bound_us))).await;
}

/// A user's cached ledger, and whether it was just loaded from the backend
/// (so it is as fresh as can be).
struct Cached {
    user: Arc<RwLock<UserLedger>>,
    loaded: bool,
}

/// The request-scoped facts of one write.
#[derive(Clone, Copy)]
struct WriteStep<'a> {
    user_id: UserId<'a>,
    request_id: Option<RequestId<'a>>,
    /// The time it is accepted at, and how long points stay valid.
    clock: Clock,
    request: Option<Request<'a>>,
    /// Whether the user has no ledger yet (so a refusal must leave none).
    new_user: bool,
}

/// A command's outcome, and whether it is kept in a record.
enum Decided<T> {
    /// Kept: an accepted command, or a refusal retries must see again.
    Kept(Result<T, LedgerError>),
    /// Nothing of the command is kept (a retry's reply, a refusal).
    Unkept(Result<T, StoreError>),
}

impl<T> Decided<T> {
    fn into_result(self) -> Result<T, StoreError> {
        match self {
            Decided::Kept(result) => result.map_err(StoreError::from),
            Decided::Unkept(result) => result,
        }
    }
}

/// What a write must wait for before its reply.
enum Durability {
    /// Its own record.
    Receipt(Receipt),
    /// Nothing of its own was kept (a retry, or a refusal not remembered):
    /// the user's records up to this sequence, on which its outcome was
    /// decided (0 for a new user).
    Sequence(u64),
}

#[cfg(test)]
mod tests;
