//! Why a store did not open, or did not do what was asked.

use std::path::PathBuf;

use crate::ledger::LedgerError;

/// Why the store could not open. Each names the file and what to do.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Another process holds the data directory.
    #[error(
        "data directory {path} is in use by another points-server (lock file {lock} is held); \
         stop that server or choose another --data-dir"
    )]
    Locked {
        /// The data directory.
        path: PathBuf,
        /// Its lock file.
        lock: PathBuf,
    },
    /// A file operation failed.
    #[error("cannot {action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// A file is damaged; nothing was changed or dropped.
    #[error(
        "{path} is damaged at byte offset {offset}: {reason}. Refusing to start so that no data \
         is dropped silently; restore the file from a backup, or move it aside only if you \
         accept losing what it holds from that offset on"
    )]
    Damaged {
        /// The damaged file.
        path: PathBuf,
        /// Where the damage starts.
        offset: usize,
        /// What is wrong.
        reason: String,
    },
    /// The database cannot be reached, migrated or used.
    #[error(
        "cannot use the database at {location}: {reason}. Check --database-url and that the \
         database accepts connections"
    )]
    Database {
        /// Where it is (never the password).
        location: String,
        /// What went wrong.
        reason: String,
    },
    /// The data is in a database: open it with `Store::connect`.
    #[error("the store's data is in a database; open it with Store::connect")]
    NeedsConnect,
    /// The files are each intact but do not fit together.
    #[error("{path}: {reason}")]
    Inconsistent {
        /// The file where the inconsistency shows.
        path: PathBuf,
        /// What does not fit.
        reason: String,
    },
}

/// Why a store operation did not happen.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The ledger refused the command; nothing changed.
    #[error(transparent)]
    Refused(#[from] LedgerError),
    /// A limit of the server would be passed; nothing changed.
    #[error("{message}")]
    LimitReached {
        /// Stable UPPER_SNAKE_CASE name of the limit.
        reason: &'static str,
        /// What was refused and why.
        message: String,
    },
    /// Crediting a new payer would pass the server's limit of payers per
    /// user (`--max-payers-per-user`); nothing changed.
    #[error(
        "{}this user already has the maximum of {limit} payers; no new payer can be credited",
        batch_index.map(|index| format!(
            "transaction {index} of the batch was refused, so none was recorded: "
        )).unwrap_or_default()
    )]
    PayerLimitReached {
        /// The limit.
        limit: usize,
        /// For a batch, the position (from 0) of the first entry that would
        /// credit a payer past the limit.
        batch_index: Option<usize>,
    },
    /// The store cannot serve: the journal failed (fail-stop) or the ledger
    /// was left unusable by an internal error.
    #[error("{0}")]
    Unavailable(String),
    /// A shared backend refused the write's record because another replica
    /// wrote the user meanwhile; the store decides the write again on the
    /// stored state, and returns this (ABORTED) only when that kept
    /// happening; nothing changed.
    #[error(
        "this user was written concurrently through other replicas {attempts} times in a row; \
         nothing changed, retry"
    )]
    Conflict {
        /// How many times the write was decided.
        attempts: u32,
    },
    /// The store cannot take this write now, but may shortly (the disk is
    /// behind); nothing changed.
    #[error("{message}")]
    Busy {
        /// Stable UPPER_SNAKE_CASE name of the condition.
        reason: &'static str,
        /// What is wrong and what to do.
        message: String,
    },
}

/// Why a snapshot was not written; the journal still holds everything, so
/// nothing is lost, and the next snapshot tries again.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("snapshot not written: {0}")]
pub struct SnapshotFailed(pub String);
