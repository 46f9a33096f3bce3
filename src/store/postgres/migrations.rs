//! The database schema, created and migrated at start by versioned
//! migrations embedded in the binary.
//!
//! Each migration runs once, in order, in one transaction with the row that
//! records it in `points_schema_migrations`. The whole run holds a
//! transaction-scoped advisory lock, so replicas starting at once take turns:
//! the first applies what is missing, the others then find nothing to do.
//! A database migrated by a newer binary (a version this one does not know)
//! is refused rather than used.

use tokio_postgres::Client;

/// The advisory lock key every replica takes while migrating: "points" in
/// ASCII, so that it is recognisable in `pg_locks`.
const MIGRATION_LOCK_KEY: i64 = 0x706f_696e_7473;

/// The migrations, in order; a migration's version is its place in this list
/// (from 1). Never edit or reorder one that was released: add a new one.
const MIGRATIONS: &[(&str, &str)] = &[
    (
        "user records and snapshots",
        "CREATE TABLE points_user_records (
             user_id text NOT NULL,
             seq bigint NOT NULL CHECK (seq > 0),
             records bytea NOT NULL,
             PRIMARY KEY (user_id, seq)
         );
         CREATE TABLE points_user_snapshots (
             user_id text PRIMARY KEY,
             seq bigint NOT NULL CHECK (seq > 0),
             state bytea NOT NULL
         );",
    ),
    (
        "when each user's ledger next changes by itself",
        // One row per user with a hold open or points that will expire:
        // when their ledger next changes by itself (milliseconds since the
        // Unix epoch), written with the chunk that made it so. Every
        // replica's clock task reads the due ones by the index. Users stored
        // before it are listed as due at once: each is brought forward
        // once, and then listed as it should be (or not at all).
        "CREATE TABLE points_user_deadlines (
             user_id text PRIMARY KEY,
             due_at_ms bigint NOT NULL
         );
         CREATE INDEX points_user_deadlines_by_due ON points_user_deadlines (due_at_ms);
         INSERT INTO points_user_deadlines (user_id, due_at_ms)
             SELECT DISTINCT user_id, 0 FROM points_user_records;",
    ),
];

/// Brings the schema up to the newest version this binary knows and returns
/// the versions it applied.
pub(super) async fn migrate(client: &mut Client) -> Result<Vec<i32>, String> {
    let transaction = client.transaction().await.map_err(|error| error.to_string())?;
    transaction
        .execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK_KEY])
        .await
        .map_err(|error| format!("cannot take the migration lock: {error}"))?;
    transaction
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS points_schema_migrations (
                 version integer PRIMARY KEY,
                 description text NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now()
             )",
        )
        .await
        .map_err(|error| format!("cannot create points_schema_migrations: {error}"))?;
    let current: i32 = transaction
        .query_one("SELECT coalesce(max(version), 0) FROM points_schema_migrations", &[])
        .await
        .map_err(|error| format!("cannot read the schema version: {error}"))?
        .get(0);
    let known = i32::try_from(MIGRATIONS.len()).unwrap_or(i32::MAX);
    if current > known {
        return Err(format!(
            "the database's schema is at version {current}, newer than this points-server knows \
             ({known}); run a points-server at least as new as the one that migrated it"
        ));
    }
    let mut applied = Vec::new();
    for (version, (description, sql)) in (1..).zip(MIGRATIONS).skip(current.max(0) as usize) {
        transaction
            .batch_execute(sql)
            .await
            .map_err(|error| format!("migration {version} ({description}) failed: {error}"))?;
        transaction
            .execute(
                "INSERT INTO points_schema_migrations (version, description) VALUES ($1, $2)",
                &[&version, description],
            )
            .await
            .map_err(|error| format!("cannot record migration {version}: {error}"))?;
        applied.push(version);
    }
    transaction.commit().await.map_err(|error| format!("cannot commit the migrations: {error}"))?;
    Ok(applied)
}
